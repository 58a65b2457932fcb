// Key Vault Premium (HSM-backed keys) with Azure RBAC and purge protection: the operator's vault.
// It holds the key-encryption keys of the parties that keep theirs here (each party may name
// its own vault in a contract: docs/DEPLOY.md) and the app's two secrets, which the Function
// App reads as Key Vault references. Nothing here can release a key: only an attested trainer
// group whose host data a key's release policy pins (Key Vault Crypto Service Release User on
// the trainer's identity, in rbac.bicep).
param location string
param tags object
param name string
param topicName string

@secure()
param partyAuthSecret string

@description('When the app secrets expire (redeploying renews them).')
param secretsExpireAt string = dateTimeAdd(utcNow(), 'P1Y')

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109:the parties' ccr (creating KEKs from their own networks) and the SKR sidecars of confidential groups without VNet reach the vault over its public endpoint; Entra ID roles and release policies are the gate
  // checkov:skip=CKV_AZURE_189:same as CKV_AZURE_109: public endpoint needed until parties and trainer groups come over private endpoints
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'premium'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource topic 'Microsoft.EventGrid/topics@2022-06-15' existing = {
  name: topicName
}

resource topicKey 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'eventgrid-topic-key'
  properties: {
    value: topic.listKeys().key1
    contentType: 'text/plain; Event Grid topic access key (CCR_EVENTGRID_KEY)'
    attributes: {
      enabled: true
      exp: dateTimeToEpoch(secretsExpireAt)
    }
  }
}

resource partyAuth 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'party-auth-secret'
  properties: {
    value: partyAuthSecret
    contentType: 'text/plain; party API token authority secret (CCR_PARTY_AUTH_SECRET)'
    attributes: {
      enabled: true
      exp: dateTimeToEpoch(secretsExpireAt)
    }
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
output topicKeySecretName string = topicKey.name
output topicKeySecretUri string = topicKey.properties.secretUri
output partyAuthSecretName string = partyAuth.name
output partyAuthSecretUri string = partyAuth.properties.secretUri
