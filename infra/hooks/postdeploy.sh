#!/bin/sh
# azd postdeploy hook: the event subscriptions that deliver to the app's functions
# (infra/subscriptions.bicep). They need the blobs extension's system key, which the host
# creates once it has indexed the deployed blob triggers: wait for it, then deploy.
set -eu
: "${AZURE_RESOURCE_GROUP:?run through azd (azd deploy / azd up)}"
: "${AZURE_FUNCTION_APP_NAME:?}" "${STORAGE_SYSTEM_TOPIC_NAME:?}" "${CCR_EVENTGRID_TOPIC_NAME:?}"

app_id=$(az functionapp show --resource-group "$AZURE_RESOURCE_GROUP" --name "$AZURE_FUNCTION_APP_NAME" --query id -o tsv)
tries=0
until [ -n "$(az rest --method post --url "$app_id/host/default/listKeys?api-version=2024-04-01" \
        --query systemKeys.blobs_extension -o tsv 2>/dev/null)" ]; do
  tries=$((tries + 1))
  [ "$tries" -le 30 ] || { echo "the blobs extension key did not appear: are the blob triggers deployed?" >&2; exit 1; }
  sleep 10
done

az deployment group create --resource-group "$AZURE_RESOURCE_GROUP" --name ccr-event-subscriptions \
  --template-file infra/subscriptions.bicep \
  --parameters functionAppName="$AZURE_FUNCTION_APP_NAME" storageSystemTopicName="$STORAGE_SYSTEM_TOPIC_NAME" \
               topicName="$CCR_EVENTGRID_TOPIC_NAME" \
  --output none
echo "event subscriptions deployed: datasets/ and models/ to the blob triggers, trainer events to trainer_finished"
