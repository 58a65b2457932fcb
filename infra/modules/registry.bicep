// The registry the trainer image is pushed to and pulled from by digest (contracts pin
// <registry>/<repository>@sha256:<digest>). No admin user and no anonymous pull: pushes and
// pulls are Entra ID (AcrPush for the deployer, AcrPull for the trainer's identity).
param location string
param tags object
param name string

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  // checkov:skip=CKV_AZURE_139:confidential container groups without VNet pull the trainer image over the public endpoint with their identity (AcrPull); no anonymous pull, no admin user
  // checkov:skip=CKV_AZURE_166:the image is pinned by digest in each contract and in the container policy the parties' keys are bound to; a quarantine tag adds nothing to that check and would block the pull
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Premium'
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: 'Enabled'
    zoneRedundancy: 'Enabled'
    policies: {
      retentionPolicy: {
        status: 'enabled'
        days: 30
      }
    }
  }
}

output name string = registry.name
output loginServer string = registry.properties.loginServer
output id string = registry.id
