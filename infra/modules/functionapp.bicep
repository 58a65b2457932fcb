// The Function App on Flex Consumption (Python 3.11), under its user-assigned identity: the
// host reaches storage identity-based (AzureWebJobsStorage__accountName/__credential/__clientId,
// as Microsoft's Flex quickstarts do), the blob triggers' data connection CCR_STORAGE_CONNECTION
// likewise (__blobServiceUri and __queueServiceUri: a blob trigger's identity-based connection
// needs the queue service too, for its poison queue; the Python SDK-type binding reads
// __blobServiceUri), the deployment package comes from a blob container with
// the same identity, and the app's own Azure clients use DefaultAzureCredential with
// AZURE_CLIENT_ID (shared/credentials.py). Settings are those of docs/INTERFACES.md; the two
// secrets are Key Vault references (siteConfig.appSettings: the site's settings, in one place).
param location string
param tags object
param name string
param planName string
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerName string
param applicationInsightsName string
param maaEndpoint string
param ledgerUrl string
param keyVaultUri string
param topicEndpoint string
param topicKeySecretUri string
param partyAuthSecretUri string
param trainerIdentityId string
param registryLoginServer string
@description('The SKR sidecar the trainer groups run (digest-pinned; empty: the app\'s default).')
param skrSidecarImage string = ''

@description('Most instances the app scales out to.')
param maximumInstanceCount int = 40

@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Flex Consumption zone redundancy is offered in some regions only; enable it on the plan where the chosen region has it
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_16:Entra ID sign-in (App Service Authentication) would refuse the contract ledger's webhook and Event Grid deliveries; every route checks a function key or a party's bearer token (functions/party_requests.py)
  // checkov:skip=CKV_AZURE_17:the ledger, Event Grid and the parties present no client certificates
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales from zero; the Durable task hub keeps runs across instances
  // checkov:skip=CKV_AZURE_213:the app serves no health-check route: every HTTP route is authenticated, and a probe would keep a scale-to-zero app awake
  // checkov:skip=CKV_AZURE_222:Event Grid, the contract ledger and the parties call the app over its public endpoint
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'app'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      remoteDebuggingEnabled: false
      cors: {
        allowedOrigins: []
      }
      appSettings: [
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storage.name
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identityClientId
        }
        {
          name: 'CCR_STORAGE_CONNECTION__blobServiceUri'
          value: storage.properties.primaryEndpoints.blob
        }
        {
          name: 'CCR_STORAGE_CONNECTION__queueServiceUri'
          value: storage.properties.primaryEndpoints.queue
        }
        {
          name: 'CCR_STORAGE_CONNECTION__credential'
          value: 'managedidentity'
        }
        {
          name: 'CCR_STORAGE_CONNECTION__clientId'
          value: identityClientId
        }
        {
          name: 'AZURE_CLIENT_ID'
          value: identityClientId
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: applicationInsights.properties.ConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identityClientId};Authorization=AAD'
        }
        {
          name: 'CCR_MAA_URL'
          value: maaEndpoint
        }
        {
          name: 'CCR_KEYVAULT_URL'
          value: keyVaultUri
        }
        {
          name: 'CCR_LEDGER_URL'
          value: ledgerUrl
        }
        {
          name: 'CCR_SUBSCRIPTION_ID'
          value: subscription().subscriptionId
        }
        {
          name: 'CCR_RESOURCE_GROUP'
          value: resourceGroup().name
        }
        {
          name: 'CCR_LOCATION'
          value: location
        }
        {
          name: 'CCR_EVENTGRID_TOPIC_URL'
          value: topicEndpoint
        }
        {
          name: 'CCR_EVENTGRID_KEY'
          value: '@Microsoft.KeyVault(SecretUri=${topicKeySecretUri})'
        }
        {
          name: 'CCR_PARTY_AUTH_SECRET'
          value: '@Microsoft.KeyVault(SecretUri=${partyAuthSecretUri})'
        }
        {
          name: 'CCR_TRAINER_IDENTITY_ID'
          value: trainerIdentityId
        }
        {
          name: 'CCR_TRAINER_REGISTRY'
          value: registryLoginServer
        }
        {
          name: 'CCR_SKR_SIDECAR_IMAGE'
          value: skrSidecarImage
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// No FTP or SCM basic-auth publishing: deployments come from the package container.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = app.name
output url string = 'https://${app.properties.defaultHostName}'
