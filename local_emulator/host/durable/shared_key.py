"""The task hub's hot storage requests (message puts, receives and deletes, state-row writes,
instance queries), signed with the storage account's shared key by the SDK's own shared-key
policy and sent on the SDK client's own aiohttp session, without the rest of the client's
azure-core pipeline: its policies (seventeen for a queue client) and its request and response
wrappers were over half of such a request's CPU on the host's single event loop (measured
against Azurite: a put and its delete 2.6-3.0 ms CPU through the pipeline, 1.3-1.5 ms this
way; a state-row replace 1.1-1.2 -> 0.55 ms). What the pipeline did that matters here is kept:
the Shared Key signature (each service's own policy computes it), x-ms-date and x-ms-version,
and a retry of a request that failed in transport (a kept-alive connection the server closed)
or with 408/5xx, with a short back-off. A client without an account key (a SAS connection
string) goes through its pipeline as before (send)."""
from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import quote

import aiohttp
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.transport import HttpRequest as TransportRequest
from azure.core.rest import HttpRequest
from azure.data.tables._authentication import SharedKeyCredentialPolicy as TableSharedKeyPolicy
from azure.storage.queue._shared.authentication import SharedKeyCredentialPolicy as QueueSharedKeyPolicy

RETRIES = 3
BACKOFF_SECONDS = 0.2  # doubled after each failed attempt
_RETRIABLE = frozenset({408, 500, 502, 503, 504})
_TIMEOUT = aiohttp.ClientTimeout(total=60)


@dataclass
class Reply:
    status_code: int
    headers: object  # case-insensitive, as the service sent them
    content: bytes

    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class SharedKeySender:
    """Signs and sends one client's requests on that client's transport session."""

    def __init__(self, client, account: str, key: str, table_format: bool):
        self._transport = client._client._client._pipeline._transport
        self._policy = (TableSharedKeyPolicy(AzureNamedKeyCredential(account, key)) if table_format
                        else QueueSharedKeyPolicy(account, key))
        self.api_version = client.api_version

    async def send(self, method: str, url: str, params: dict[str, str], headers: dict[str, str],
                   body: bytes = b"") -> Reply:
        """`url` already percent-encoded; `params` not yet."""
        query = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in params.items())
        full_url = url + ("?" + query if query else "")  # sent as the SDK's transport sends it: a string
        for attempt in range(RETRIES + 1):
            signed = {**headers, "x-ms-date": formatdate(usegmt=True), "x-ms-version": self.api_version,
                      "Content-Length": str(len(body))}
            signed["Authorization"] = self._authorization(method, full_url, signed)
            try:
                if self._transport.session is None:
                    await self._transport.open()
                async with self._transport.session.request(method, full_url, data=body or None, headers=signed,
                                                           timeout=_TIMEOUT) as response:
                    reply = Reply(response.status, response.headers, await response.read())
                if reply.status_code not in _RETRIABLE or attempt == RETRIES:
                    return reply
            except (TimeoutError, aiohttp.ClientConnectionError):
                if attempt == RETRIES:
                    raise
            await asyncio.sleep(BACKOFF_SECONDS * 2 ** attempt)
        raise AssertionError("unreachable")

    def _authorization(self, method: str, url: str, headers: dict[str, str]) -> str:
        """The Authorization header the SDK's own shared-key policy computes for this request
        (`url` percent-encoded, query included): only the pipeline around the policy is skipped."""
        request = PipelineRequest(TransportRequest(method, url, headers=dict(headers)), PipelineContext(self._transport))
        self._policy.on_request(request)
        return request.http_request.headers["Authorization"]


def failure(reply, what: str, errors: dict | None = None) -> HttpResponseError:
    """The client's exception for a reply that failed: the class `errors` maps its status to
    (by default ResourceNotFoundError for 404), else HttpResponseError, naming `what` was
    asked, the status and the start of the service's answer."""
    error = (errors or {404: ResourceNotFoundError}).get(reply.status_code, HttpResponseError)
    return error(message=f"{what}: {reply.status_code} {reply.text()[:300]}")


_senders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def sender_for(client) -> SharedKeySender | None:
    """The client's sender, made on first use; None when the client has no account key."""
    if client not in _senders:
        credential = client.credential
        named = getattr(credential, "named_key", None)  # tables: AzureNamedKeyCredential
        if named is not None:
            _senders[client] = SharedKeySender(client, named.name, named.key, table_format=True)
        elif getattr(credential, "account_key", None):  # queues: the SDK's shared-key policy
            _senders[client] = SharedKeySender(client, credential.account_name, credential.account_key,
                                               table_format=False)
        else:
            _senders[client] = None
    return _senders[client]


async def send(client, method: str, path: str, params: dict[str, str], headers: dict[str, str],
               body: bytes = b""):
    """A request to `client.url` + `path` (percent-encoded: a queue's url, a table service's
    account url), signed directly when the client has an account key, else through the
    client's pipeline; the answer either way (status_code, headers, content, text())."""
    sender = sender_for(client)
    if sender is not None:
        return await sender.send(method, client.url + path, params, headers, body)
    request = HttpRequest(method, client.url + path, params=params, content=body or None,
                          headers={**headers, "x-ms-version": client.api_version})
    return await client._client.send_request(request)  # the client's pipeline: signing, retries

