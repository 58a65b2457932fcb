// The run/completion topic: the trainer publishes CCR.Trainer.Completed / .Failed (signed and
// attested, shared/attested_outcome.py), the app CCR.Run.Finished for the TDC. Its subscription
// to the app's trainer_finished function is in infra/subscriptions.bicep.
param location string
param tags object
param topicName string

resource topic 'Microsoft.EventGrid/topics@2022-06-15' = {
  // checkov:skip=CKV_AZURE_192:the trainer container publishes its completion event with the topic key it is handed at deployment (orchestrations/deployment.py); local auth goes once it publishes with its identity (EventGrid Data Sender)
  // checkov:skip=CKV_AZURE_193:the confidential container groups run without VNet and publish over the public endpoint; events carry nothing the control plane believes without the trainer's attestation
  name: topicName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    inputSchema: 'EventGridSchema'
    publicNetworkAccess: 'Enabled'
    disableLocalAuth: false
  }
}

output topicName string = topic.name
output endpoint string = topic.properties.endpoint
output id string = topic.id
