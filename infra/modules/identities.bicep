// Two user-assigned identities: the Function App's (storage, its two secrets, key policies,
// container groups) and the trainer's, which the app attaches to each confidential container
// group: the SKR sidecar releases keys with it and the group pulls the trainer image with it.
// The trainer's identity holds no data role: a key release still needs an attestation token
// that satisfies the key's policy (the contract's host data), so one shared identity gives a
// group nothing another group's policy would not; and the app never needs the right to create
// role assignments, as minting an identity per run would require.
param location string
param tags object
param appIdentityName string
param trainerIdentityName string

resource appIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: appIdentityName
  location: location
  tags: tags
}

resource trainerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: trainerIdentityName
  location: location
  tags: tags
}

output appIdentityId string = appIdentity.id
output appClientId string = appIdentity.properties.clientId
output appPrincipalId string = appIdentity.properties.principalId
output trainerIdentityId string = trainerIdentity.id
output trainerIdentityName string = trainerIdentity.name
output trainerPrincipalId string = trainerIdentity.properties.principalId
