// The event subscriptions that deliver to the app's functions, deployed after its code (the
// postdeploy hook in azure.yaml: a function's webhook needs the system key the host creates
// when it indexes the blob triggers).
//
// - BlobCreated in datasets/, models/ and inference-batches/ (the storage account's system topic) to the blob
//   triggers dataset_arrived and model_arrived (functions/input_arrivals.py) and
//   inference_batch_arrived (functions/inference_arrivals.py), which on Flex
//   Consumption take their events from Event Grid: the blobs extension's webhook with its key.
// - CCR.Trainer.Completed / .Failed / .Progress on the run topic to the Event Grid trigger trainer_finished
//   (functions/completion_events.py).
targetScope = 'resourceGroup'

param functionAppName string
param storageSystemTopicName string
param topicName string

resource app 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource blobEvents 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: storageSystemTopicName
}

resource topic 'Microsoft.EventGrid/topics@2022-06-15' existing = {
  name: topicName
}

var blobsExtensionKey = listKeys('${app.id}/host/default', '2024-04-01').systemKeys.blobs_extension
var blobsWebhook = 'https://${app.properties.defaultHostName}/runtime/webhooks/blobs'

resource datasetsArrived 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: blobEvents
  name: 'ccr-datasets-arrived'
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: '${blobsWebhook}?functionName=Host.Functions.dataset_arrived&code=${blobsExtensionKey}'
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: '/blobServices/default/containers/datasets/'
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}

resource modelsArrived 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: blobEvents
  name: 'ccr-models-arrived'
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: '${blobsWebhook}?functionName=Host.Functions.model_arrived&code=${blobsExtensionKey}'
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: '/blobServices/default/containers/models/'
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}

resource inferenceBatchesArrived 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: blobEvents
  name: 'ccr-inference-batches-arrived'
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: '${blobsWebhook}?functionName=Host.Functions.inference_batch_arrived&code=${blobsExtensionKey}'
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: '/blobServices/default/containers/inference-batches/'
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}

resource trainerFinished 'Microsoft.EventGrid/topics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: 'ccr-trainer-finished'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${app.id}/functions/trainer_finished'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'CCR.Trainer.Completed'
        'CCR.Trainer.Failed'
        'CCR.Trainer.Progress'
      ]
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}
