"""Azure SDK clients built from settings, so app code never knows whether it talks to
Azure or to the local twins (which only differ by URL, CA bundle and credential). Where no
key, token or connection string is configured, the credential is the app's identity
(shared/credentials.py)."""
from __future__ import annotations

from functools import lru_cache

from azure.storage.blob import BlobServiceClient

from shared import settings


@lru_cache(maxsize=None)
def blob_service() -> BlobServiceClient:
    """The data storage account: from a connection string, or identity-based
    (`AzureWebJobsStorage__accountName` ...) with the app's identity."""
    account = settings.storage_account()
    if account.connection_string:
        return BlobServiceClient.from_connection_string(account.connection_string)
    from shared.credentials import storage_credential
    return BlobServiceClient(account.blob_url, credential=storage_credential(account),
                             connection_verify=settings.ca_bundle())


def key_client(vault_url: str | None = None):
    """A client of `vault_url` (each party may keep its keys in its own vault), or of
    CCR_KEYVAULT_URL."""
    from azure.keyvault.keys import KeyClient

    from shared.credentials import get_credential
    return KeyClient(vault_url=vault_url or settings.require("CCR_KEYVAULT_URL"), credential=get_credential(),
                     verify_challenge_resource=settings.get("CCR_KEYVAULT_VERIFY_CHALLENGE", "true") != "false",
                     connection_verify=settings.ca_bundle())


def container_client():
    from azure.mgmt.containerinstance import ContainerInstanceManagementClient

    from shared.credentials import get_credential
    kwargs = {"connection_verify": settings.ca_bundle()}
    base_url = settings.get("CCR_ARM_URL")
    if base_url:
        kwargs["base_url"] = base_url
    return ContainerInstanceManagementClient(get_credential(), settings.require("CCR_SUBSCRIPTION_ID"), **kwargs)


def eventgrid_management_client():
    """Event Grid's ARM management plane (event subscriptions), with the app's identity (EventGrid
    EventSubscription Contributor on the run-events topic): CCR_EVENTGRID_ARM_URL, else CCR_ARM_URL,
    else Azure's."""
    from azure.mgmt.eventgrid import EventGridManagementClient

    from shared.credentials import get_credential
    kwargs = {"connection_verify": settings.ca_bundle()}
    base_url = settings.get("CCR_EVENTGRID_ARM_URL") or settings.get("CCR_ARM_URL")
    if base_url:
        kwargs["base_url"] = base_url
    return EventGridManagementClient(get_credential(), settings.require("CCR_SUBSCRIPTION_ID"), **kwargs)


def event_publisher():
    """The run/completion topic: with its access key when CCR_EVENTGRID_KEY is set, otherwise
    with the app's identity (EventGrid Data Sender on the topic)."""
    from azure.eventgrid import EventGridPublisherClient
    endpoint = settings.require("CCR_EVENTGRID_TOPIC_URL")
    key = settings.get("CCR_EVENTGRID_KEY")
    if key:
        from azure.core.credentials import AzureKeyCredential
        return EventGridPublisherClient(endpoint, AzureKeyCredential(key))
    from shared.credentials import get_credential
    return EventGridPublisherClient(endpoint, get_credential())
