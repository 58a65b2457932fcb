"""The HTTP transport of the task hub's storage clients: azure-core's aiohttp transport
without environment settings. With them (the SDK's default) every request first
reads ~/.netrc and the proxy variables in a worker thread, two thread hops that cost about a
quarter of a request's CPU on the host's single event loop; the host talks to its own storage
account directly, never through a proxy."""
from __future__ import annotations

from azure.core.pipeline.transport import AioHttpTransport


def direct_transport() -> AioHttpTransport:
    """A transport (owning its aiohttp session) for one SDK client."""
    return AioHttpTransport(use_env_settings=False)
