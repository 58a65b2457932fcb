// The clean room's Azure deployment (azd: `azd up`; docs/DEPLOY.md walks it step by step).
// Modelled on Microsoft's Flex Consumption quickstarts for Durable Functions and for Event Grid
// blob triggers, with every resource written out here (no registry modules).
//
// One resource group holds:
//   - the Function App (Flex Consumption, Python 3.11) under a user-assigned identity, reaching
//     its storage with that identity (AzureWebJobsStorage__accountName, no keys anywhere);
//   - the storage account: task hub, deployment package and the data containers, shared-key
//     access off, with an Event Grid system topic for the blob triggers;
//   - the run/completion topic the trainer publishes to;
//   - Key Vault Premium (RBAC, purge protection): the operator's vault for key-encryption keys
//     and the app's two secrets;
//   - the registry the trainer image is pulled from, and the trainer's user-assigned identity
//     (key release and image pull, nothing else);
//   - Log Analytics and Application Insights.
// The event subscriptions that point at the app's functions need the deployed code (a system
// key only exists once the blob triggers are indexed): infra/subscriptions.bicep, run by the
// postdeploy hook.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name: names the resource group and seeds every resource name.')
param environmentName string

@minLength(1)
@description('Region of every resource: one with Flex Consumption and confidential container groups.')
param location string

@description('Attestation authority (Microsoft Azure Attestation) that release policies and completion events name, e.g. https://sharedeus.eus.attest.azure.net.')
param maaEndpoint string

@description('The contract ledger (CCF/SCITT) base URL: the app reads dataset version declarations from it (continued training).')
param ledgerUrl string

@secure()
@description('Secret of the party API token authority (CCR_PARTY_AUTH_SECRET): 32 random bytes, base64.')
param partyAuthSecret string

@description('Object id of the user running azd: may push trainer images (AcrPush). Empty: no role.')
param principalId string = ''

@description('The SKR sidecar every trainer group runs, pinned by digest (<registry>/<repository>@sha256:<hex>; the app refuses a tag). Empty: the default of shared/skr_sidecar.py. Contracts must be written for the same one (docs/DEPLOY.md, section 3).')
param skrSidecarImage string = ''

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module identities 'modules/identities.bicep' = {
  name: 'identities'
  scope: rg
  params: {
    location: location
    tags: tags
    appIdentityName: 'id-app-${resourceToken}'
    trainerIdentityName: 'id-trainer-${resourceToken}'
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'st${resourceToken}'
    deploymentContainerName: 'app-package-${resourceToken}'
    systemTopicName: 'evgst-${resourceToken}'
  }
}

module events 'modules/events.bicep' = {
  name: 'events'
  scope: rg
  params: {
    location: location
    tags: tags
    topicName: 'evgt-${resourceToken}'
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'cr${resourceToken}'
  }
}

module vault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'kv-${resourceToken}'
    topicName: events.outputs.topicName
    partyAuthSecret: partyAuthSecret
  }
}

module app 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'func-${resourceToken}'
    planName: 'plan-${resourceToken}'
    identityId: identities.outputs.appIdentityId
    identityClientId: identities.outputs.appClientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: storage.outputs.deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    maaEndpoint: maaEndpoint
    ledgerUrl: ledgerUrl
    keyVaultUri: vault.outputs.uri
    topicEndpoint: events.outputs.endpoint
    topicKeySecretUri: vault.outputs.topicKeySecretUri
    partyAuthSecretUri: vault.outputs.partyAuthSecretUri
    trainerIdentityId: identities.outputs.trainerIdentityId
    registryLoginServer: registry.outputs.loginServer
    skrSidecarImage: skrSidecarImage
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    appPrincipalId: identities.outputs.appPrincipalId
    trainerPrincipalId: identities.outputs.trainerPrincipalId
    deployerPrincipalId: principalId
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultName: vault.outputs.name
    topicKeySecretName: vault.outputs.topicKeySecretName
    partyAuthSecretName: vault.outputs.partyAuthSecretName
    registryName: registry.outputs.name
    topicName: events.outputs.topicName
    trainerIdentityName: identities.outputs.trainerIdentityName
  }
}

// azd keeps these in the environment (.azure/<env>/.env): the postdeploy hook and docs/DEPLOY.md read them.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.name
output CCR_FUNCTIONS_URL string = app.outputs.url
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output STORAGE_SYSTEM_TOPIC_NAME string = storage.outputs.systemTopicName
output CCR_EVENTGRID_TOPIC_NAME string = events.outputs.topicName
output CCR_EVENTGRID_TOPIC_URL string = events.outputs.endpoint
output CCR_KEYVAULT_URL string = vault.outputs.uri
output CCR_MAA_URL string = maaEndpoint
output CCR_LEDGER_URL string = ledgerUrl
output AZURE_CONTAINER_REGISTRY_NAME string = registry.outputs.name
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = registry.outputs.loginServer
output APP_PRINCIPAL_ID string = identities.outputs.appPrincipalId
output TRAINER_IDENTITY_ID string = identities.outputs.trainerIdentityId
output TRAINER_PRINCIPAL_ID string = identities.outputs.trainerPrincipalId
