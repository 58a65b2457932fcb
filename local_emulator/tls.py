"""Loopback TLS for the twins: one persisted CA (`<emulator_dir>/tls/ca.pem`, what clients pass
as `connection_verify=`), a server certificate for 127.0.0.1/localhost signed by it, and a
small JSON-over-HTTP(S) server bound to 127.0.0.1 that the Key Vault, attestation and SKR
sidecar twins share.

Azure SDK clients refuse bearer tokens over plain http, so the twins that take tokens serve
HTTPS. Private keys are written 0600; nothing here logs requests (URLs can name keys)."""
from __future__ import annotations

import hmac
import json
import os
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, NamedTuple
from urllib.parse import parse_qs, urlsplit

import trustme

SERVER_IDENTITIES = ("127.0.0.1", "localhost")


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by the owner only (atomic replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header is `Bearer <token>` (constant-time comparison): the
    twins' one check of the static access token that stands in for Entra ID."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@dataclass(frozen=True)
class LoopbackTls:
    """Paths of the persisted CA and server certificate."""
    ca_path: Path            # CA certificate (public): clients trust this
    ca_key_path: Path        # CA private key (0600)
    server_chain_path: Path  # server key + certificate chain (0600)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.server_chain_path))
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def server_certificate_chain_pem(self) -> list[bytes]:
        """The server's certificate chain (leaf first), without its private key."""
        text = self.server_chain_path.read_bytes()
        marker = b"-----BEGIN CERTIFICATE-----"
        return [marker + part for part in text.split(marker)[1:]] + [self.ca_path.read_bytes()]

    def server_private_key_pem(self) -> bytes:
        text = self.server_chain_path.read_bytes()
        return text[: text.index(b"-----BEGIN CERTIFICATE-----")]


def load_or_create(emulator_dir: str | Path) -> LoopbackTls:
    """The CA and server certificate under `<emulator_dir>/tls/`, created on first use."""
    folder = Path(emulator_dir) / "tls"
    tls = LoopbackTls(folder / "ca.pem", folder / "ca.key", folder / "server.pem")
    if tls.ca_path.exists() and tls.ca_key_path.exists():
        ca = trustme.CA.from_pem(tls.ca_path.read_bytes(), tls.ca_key_path.read_bytes())
    else:
        ca = trustme.CA(organization_name="CCR local emulator")
        write_private(tls.ca_key_path, ca.private_key_pem.bytes())
        tls.ca_path.write_bytes(ca.cert_pem.bytes())
    if not tls.server_chain_path.exists():
        cert = ca.issue_cert(*SERVER_IDENTITIES, key_type=trustme.KeyType.RSA)
        write_private(tls.server_chain_path, cert.private_key_and_cert_chain_pem.bytes())
    return tls


# --- a JSON server on loopback ------------------------------------------------------

Response = tuple[int, "dict | None", dict]
Router = Callable[[str, str, dict, dict, bytes], Response]
"""router(method, path, query, headers, body) -> (status, JSON body or None, extra headers)"""


class Peer(NamedTuple):
    """The TCP connection a request came on: the client's and this server's (host, port)."""
    client: tuple[str, int]
    server: tuple[str, int]


PeerRouter = Callable[[str, str, dict, dict, bytes, Peer], Response]
"""router(method, path, query, headers, body, peer): a Router that also gets the connection"""


class LoopbackServer:
    """HTTP (or HTTPS, given an SSL context) on 127.0.0.1; the TLS handshake runs in the
    request's thread so a silent client cannot stall the accept loop. With `with_peer=True`
    the router is a PeerRouter: it also gets the request's connection (`Peer`)."""

    def __init__(self, router: Router | PeerRouter, ssl_context: ssl.SSLContext | None = None, port: int = 0,
                 host: str = "127.0.0.1", name: str = "twin", with_peer: bool = False):
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("twins listen on loopback only")
        self._router, self._ssl_context, self._port, self._host, self._name = router, ssl_context, port, host, name
        self._with_peer = with_peer
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"the {self._name} is not started")
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "LoopbackServer":
        if self._server is not None:       # a second server would be left running, unreachable
            raise RuntimeError(f"the {self._name} is already started")
        server = _QuietServer((self._host, self._port), _handler_class(self._router, self._with_peer))
        server.daemon_threads = True
        if self._ssl_context is not None:
            try:
                server.socket = self._ssl_context.wrap_socket(server.socket, server_side=True,
                                                              do_handshake_on_connect=False)
            except Exception:
                server.server_close()
                raise
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None


class _QuietServer(ThreadingHTTPServer):
    """Dropped connections and failed handshakes (a client that does not trust the CA) are the
    client's business: no traceback on stderr."""

    def handle_error(self, request, client_address) -> None:
        pass


def _handler_class(router: Router | PeerRouter, with_peer: bool = False):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle on, the body waits for the client's
        # delayed ACK (about 40 ms per request on Linux).
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:     # no request lines (key names, tokens) on stderr
            pass

        def _dispatch(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True          # the body's end is unknown: no keep-alive
                return self._reply(400, {"error": {"code": "BadRequest", "message": "invalid Content-Length"}}, {})
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
            try:
                if with_peer:
                    peer = Peer(tuple(self.client_address[:2]), tuple(self.connection.getsockname()[:2]))
                    status, payload, headers = router(self.command, parts.path, query, self.headers, body, peer)
                else:
                    status, payload, headers = router(self.command, parts.path, query, self.headers, body)
            except Exception as exc:  # a bug in a twin: say so without echoing request data
                status, headers = 500, {}
                payload = {"error": {"code": "InternalError", "message": f"twin error ({type(exc).__name__})"}}
            self._reply(status, payload, headers)

        def _reply(self, status: int, payload: dict | None, headers: dict) -> None:
            data = json.dumps(payload).encode() if payload is not None else b""
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _dispatch

    return Handler
