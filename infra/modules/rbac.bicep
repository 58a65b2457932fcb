// Every role assignment of the deployment, with the built-in role definition ids from
// Microsoft's reference (Azure built-in roles). Each identity gets only what its code does:
//
// the app's identity
//   - Storage Blob Data Owner, Queue Data Contributor, Table Data Contributor on the storage
//     account: the Functions host and Durable task hub (identity-based AzureWebJobsStorage), the
//     deployment package, the data containers, and user delegation keys for per-blob SAS;
//   - Monitoring Metrics Publisher on Application Insights (Entra ID telemetry);
//   - Key Vault Reader on the vault: reads each KEK and its release policy (gather_key_grants);
//     it cannot use, export or release a key;
//   - Clean Room State KEK Creator (custom, below) on the vault: creates a continued-training
//     contract's state KEK with that contract's immutable release policy (shared/model_states.py);
//     keys read and create only, never release;
//   - Key Vault Secrets User on its two secrets only (Key Vault references);
//   - EventGrid Data Sender on the run topic (CCR.Run.Finished);
//   - Azure Container Instances Contributor Role on the resource group: creates and removes the
//     trainer's container groups;
//   - Managed Identity Operator on the trainer's identity: attaches it to those groups.
// the trainer's identity (used by the SKR sidecar and the image pull of each group)
//   - Key Vault Crypto Service Release User on the vault: a release still needs an attestation
//     token that satisfies the key's policy;
//   - AcrPull on the registry.
// the deployer (optional): AcrPush on the registry, to push the trainer image.
// Parties that keep KEKs in vaults of their own grant the same two vault roles there
// (docs/DEPLOY.md).
param appPrincipalId string
param trainerPrincipalId string
param deployerPrincipalId string = ''
param storageAccountName string
param applicationInsightsName string
param keyVaultName string
param topicKeySecretName string
param partyAuthSecretName string
param registryName string
param topicName string
param trainerIdentityName string

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  keyVaultReader: '21090545-7ca7-4776-b22c-e363652d74d2'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  keyVaultCryptoServiceReleaseUser: '08bbd89e-9f13-488c-ac41-acfcb10c90ab'
  eventGridDataSender: 'd5a91429-5739-47e2-a06b-3470a27159e7'
  containerInstancesContributor: '5d977122-f97e-4b4d-a52f-6b43003ddb4d'
  managedIdentityOperator: 'f1a07417-d97a-45cb-824c-7a7467783830'
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d'
  acrPush: '8311e382-0749-4cb8-b61a-304f252e45ec'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource topicKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: topicKeySecretName
}

resource partyAuthSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: partyAuthSecretName
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: registryName
}

resource topic 'Microsoft.EventGrid/topics@2022-06-15' existing = {
  name: topicName
}

resource trainerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: trainerIdentityName
}

// --- the app's identity -------------------------------------------------------------------

resource stateKekCreatorRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'ccr-state-kek-creator')
  properties: {
    roleName: 'Clean Room State KEK Creator (${resourceGroup().name})'
    description: 'Reads keys and creates keys: a continued-training contract\'s state KEK. No release, no delete.'
    type: 'CustomRole'
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: [
          'Microsoft.KeyVault/vaults/keys/read'
          'Microsoft.KeyVault/vaults/keys/create/action'
        ]
        notDataActions: []
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

resource appStateKekCreator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, 'ccr-state-kek-creator')
  scope: vault
  properties: {
    description: 'Clean Room State KEK Creator: continued-training contracts\' state KEKs (create, never release)'
    roleDefinitionId: stateKekCreatorRole.id
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    description: 'Storage Blob Data Owner: the host, the deployment package, the data containers, user delegation keys'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appQueueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    description: 'Storage Queue Data Contributor: the Durable task hub queues'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, roles.storageTableDataContributor)
  scope: storage
  properties: {
    description: 'Storage Table Data Contributor: the Durable task hub tables'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, appPrincipalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    description: 'Monitoring Metrics Publisher: telemetry with Entra ID'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appKeyVaultReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, roles.keyVaultReader)
  scope: vault
  properties: {
    description: 'Key Vault Reader: reads the KEKs and their release policies, never key material'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultReader)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appTopicKeyReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(topicKeySecret.id, appPrincipalId, roles.keyVaultSecretsUser)
  scope: topicKeySecret
  properties: {
    description: 'Key Vault Secrets User: this one secret (CCR_EVENTGRID_KEY)'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appPartyAuthReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(partyAuthSecret.id, appPrincipalId, roles.keyVaultSecretsUser)
  scope: partyAuthSecret
  properties: {
    description: 'Key Vault Secrets User: this one secret (CCR_PARTY_AUTH_SECRET)'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appTopicSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(topic.id, appPrincipalId, roles.eventGridDataSender)
  scope: topic
  properties: {
    description: 'EventGrid Data Sender: publishes CCR.Run.Finished'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventGridDataSender)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appContainerGroups 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, appPrincipalId, roles.containerInstancesContributor)
  properties: {
    description: 'Azure Container Instances Contributor Role: creates and removes the trainer container groups of this resource group'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.containerInstancesContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appAssignsTrainerIdentity 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(trainerIdentity.id, appPrincipalId, roles.managedIdentityOperator)
  scope: trainerIdentity
  properties: {
    description: 'Managed Identity Operator: attaches the trainer identity to its container groups'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.managedIdentityOperator)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// --- the trainer's identity ---------------------------------------------------------------

resource trainerKeyRelease 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, trainerPrincipalId, roles.keyVaultCryptoServiceReleaseUser)
  scope: vault
  properties: {
    description: 'Key Vault Crypto Service Release User: secure key release to an attested trainer group'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultCryptoServiceReleaseUser)
    principalId: trainerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource trainerImagePull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, trainerPrincipalId, roles.acrPull)
  scope: registry
  properties: {
    description: 'AcrPull: the container group pulls the trainer image by digest'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPull)
    principalId: trainerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// --- the deployer ------------------------------------------------------------------------

resource deployerImagePush 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(registry.id, deployerPrincipalId, roles.acrPush)
  scope: registry
  properties: {
    description: 'AcrPush: the deployer pushes the trainer image'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPush)
    principalId: deployerPrincipalId
    principalType: 'User'
  }
}
