"""Twin of Microsoft's SKR sidecar container (confidential-sidecar-containers `skr`).

In a confidential container group the sidecar is the only way to a data key: it gets a
hardware report for its group, attests it at MAA with an ephemeral RSA key as runtime data,
presents the token to Key Vault's release operation and unwraps the result with the ephemeral
private key (shared.key_release). Its HTTP API, on 127.0.0.1 like the real one on
localhost:8080 (plain http, inside the group):

- `GET /status` -> `{"message": "STATUS OK"}`
- `POST /attest/maa {"maa_endpoint", "runtime_data"}` -> `{"token"}`; runtime_data is base64 of
  the caller's runtime JSON
- `POST /key/release {"maa_endpoint", "akv_endpoint", "kid"[, "access_token"]}` ->
  `{"key": "<JWK json>"}`; errors are `{"error": "<reason>"}` (403 when Key Vault refuses)

Here the "hardware" is local_emulator.sevsnp.HardwareRoot; the sidecar is bound to one CCE
policy at construction (the ACI twin makes one per group), so its reports always carry that
policy's host data. Keys and tokens are never logged.

Only its own container group can reach it. In Azure the sidecar listens inside the group's
network namespace, so no other process can ask it for a key. Here it listens on the shared
host's loopback, so it answers only connections whose client socket belongs to one uid,
`allowed_uid`: the ACI twin runs each group's processes under a uid of its own that no other
group or host process has (local_emulator/group_isolation.py), and binds the group's sidecar to it.
For every request the sidecar looks its client socket up in /proc/net/tcp (and tcp6, for
v4-mapped clients): the entry whose local address is the client's ip:port and whose remote
address is the sidecar's carries the uid the kernel recorded when that socket was created,
which a process of another uid cannot choose. Anything else (another uid, root, a socket
not found) gets 403 `{"error": ...}` before the body is looked at: nothing is attested or
released. Other mechanisms considered: a network namespace per group would cut the trainer off
from the twins it must reach on the host's loopback; a Unix socket or a bearer token would
change Microsoft's HTTP API; matching the client's process (socket inode -> pid -> session)
without separate uids is weaker, since any process of the same uid can ptrace the trainer or
read its environment. Standalone (no ACI twin, e.g. a test that runs a trainer as itself),
`allowed_uid` defaults to the uid of the process that builds the sidecar."""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import socket
import struct
from urllib.parse import urlsplit

import requests
from azure.core.exceptions import AzureError, HttpResponseError
from azure.keyvault.keys import KeyClient
from jwcrypto import jwk

from local_emulator.attestation import API_VERSION, build_attest_request
from local_emulator.sevsnp import HardwareRoot
from local_emulator.tls import LoopbackServer, Peer
from shared.cce_policy import decode_policy, hostdata_of
from shared.credentials import StaticTokenCredential
from shared.key_release import KeyReleaseFormatError, released_jwk

EPHEMERAL_KEY_BITS = 2048
EPHEMERAL_KID = "skr-sidecar-ephemeral"
UPSTREAM_TIMEOUT_SECONDS = 30
PROC_NET_TCP = ("/proc/net/tcp", "/proc/net/tcp6")
TCP_OWNERLESS_STATES = {"06", "0C"}     # TIME_WAIT, NEW_SYN_RECV: no socket, so no owner (uid 0 shown)


class SidecarError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _https(endpoint) -> str:
    """A service base URL from an endpoint given as host[:port] (as in Azure) or as a URL."""
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise SidecarError(400, "endpoint is required")
    text = endpoint.strip().rstrip("/")
    url = text if "://" in text else "https://" + text
    if urlsplit(url).scheme != "https" or not urlsplit(url).netloc:
        raise SidecarError(400, "endpoints must be https")
    return url


class SkrSidecar:
    """`start()`, `stop()`, `url`; one per container group, bound to its CCE policy and
    answering only processes of `allowed_uid` (settable until started)."""

    def __init__(self, hardware_root: HardwareRoot, cce_policy_b64: str, ca_bundle: str | bool, access_token: str,
                 is_debuggable: bool = False, port: int = 0, allowed_uid: int | None = None):
        self._root = hardware_root
        self._policy_text = decode_policy(cce_policy_b64).encode()
        self._hostdata = hostdata_of(cce_policy_b64)
        self._ca_bundle = ca_bundle
        self._access_token = access_token
        self._is_debuggable = is_debuggable
        self._ephemeral: jwk.JWK | None = None
        self._server = LoopbackServer(self._route, None, port=port, name="skr-sidecar", with_peer=True)
        self._started = False
        self._allowed_uid = os.getuid()
        if allowed_uid is not None:
            self.allowed_uid = allowed_uid

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def allowed_uid(self) -> int:
        """The one uid whose processes this sidecar answers (its container group's)."""
        return self._allowed_uid

    @allowed_uid.setter
    def allowed_uid(self, uid: int) -> None:
        if self._started:
            raise RuntimeError("the sidecar's group is fixed once it is started")
        if isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
            raise ValueError("allowed_uid must be a uid")
        self._allowed_uid = uid

    def start(self) -> "SkrSidecar":
        self._ephemeral = jwk.JWK.generate(kty="RSA", size=EPHEMERAL_KEY_BITS)
        self._server.start()
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self._server.stop()
            self._started = False
        self._ephemeral = None

    # --- HTTP -------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict, headers, body: bytes, peer: Peer):
        try:
            uid = socket_owner_uid(peer)
            if uid != self._allowed_uid:
                who = "an unidentified process" if uid is None else f"uid {uid}"
                raise SidecarError(403, f"the SKR sidecar answers only its own container group, not {who}")
            if method == "GET" and path == "/status":
                return 200, {"message": "STATUS OK"}, {}
            if method == "POST" and path == "/attest/maa":
                request = self._json(body)
                runtime = self._runtime_data(request.get("runtime_data"))
                return 200, {"token": self.attest(_https(request.get("maa_endpoint")), runtime)}, {}
            if method == "POST" and path == "/key/release":
                request = self._json(body)
                key = self.release(_https(request.get("maa_endpoint")), _https(request.get("akv_endpoint")),
                                   request.get("kid"), request.get("access_token") or self._access_token)
                return 200, {"key": json.dumps(key)}, {}
            raise SidecarError(404, "no such operation")
        except SidecarError as error:
            return error.status, {"error": str(error)}, {}

    @staticmethod
    def _json(body: bytes) -> dict:
        try:
            value = json.loads(body or b"{}")
        except ValueError:
            raise SidecarError(400, "request body is not JSON") from None
        if not isinstance(value, dict):
            raise SidecarError(400, "request body must be a JSON object")
        return value

    @staticmethod
    def _runtime_data(value) -> bytes:
        if not isinstance(value, str):
            raise SidecarError(400, "runtime_data (base64) is required")
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise SidecarError(400, "runtime_data is not base64") from None

    # --- attestation and release ----------------------------------------------------------

    def attest(self, maa_url: str, runtime_data: bytes) -> str:
        """An MAA token for this group's hardware report binding `runtime_data`."""
        report = self._root.report(self._hostdata, hashlib.sha256(runtime_data).digest(), self._is_debuggable)
        body = build_attest_request(report, runtime_data, self._policy_text)
        try:
            response = requests.post(f"{maa_url}/attest/SevSnpVm?api-version={API_VERSION}", json=body,
                                     verify=self._ca_bundle, timeout=UPSTREAM_TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise SidecarError(502, f"attestation service unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise SidecarError(502, f"attestation refused (HTTP {response.status_code}): {_maa_reason(response)}")
        try:
            token = response.json().get("token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str):
            raise SidecarError(502, "attestation service returned no token")
        return token

    def release(self, maa_url: str, akv_url: str, kid, access_token: str) -> dict:
        """The key `kid` released to this attested group, as a private JWK dict."""
        if self._ephemeral is None:
            raise SidecarError(503, "sidecar is not started")
        name, version = _key_name_and_version(kid, akv_url)
        public = self._ephemeral.export_public(as_dict=True)
        public.update(kid=EPHEMERAL_KID, key_ops=["encrypt"])
        token = self.attest(maa_url, json.dumps({"keys": [public]}).encode())
        client = KeyClient(vault_url=akv_url, credential=StaticTokenCredential(access_token),
                           verify_challenge_resource=False, connection_verify=self._ca_bundle)
        try:
            result = client.release_key(name, token, version=version)
        except HttpResponseError as error:
            status = 403 if error.status_code in (401, 403) else 502
            raise SidecarError(status, f"key release refused (HTTP {error.status_code}): {error.message}") from None
        except AzureError as error:
            raise SidecarError(502, f"key vault unreachable ({type(error).__name__})") from None
        finally:
            client.close()
        trusted = _read_ca(self._ca_bundle)
        try:
            return released_jwk(result.value, self._ephemeral, trusted)
        except KeyReleaseFormatError as error:
            raise SidecarError(502, f"release result rejected: {error}") from None


def _proc_net_address(family: int, host: str, port: int) -> str:
    """`host:port` as /proc/net/tcp{,6} prints it: the address as 32-bit words in host byte
    order, each in hex, then the port in hex."""
    packed = socket.inet_pton(family, host)
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{word:08X}" for word in words) + f":{port:04X}"


def socket_owner_uid(peer: Peer) -> int | None:
    """The uid that owns the client end of `peer` (a loopback TCP connection to this
    process), from the kernel's socket tables; None when no such socket is found."""
    client_host, client_port = peer.client
    server_host, server_port = peer.server
    candidates = []
    for path, family in zip(PROC_NET_TCP, (socket.AF_INET, socket.AF_INET6)):
        try:
            if family == socket.AF_INET:
                local = _proc_net_address(family, client_host, client_port)
                remote = _proc_net_address(family, server_host, server_port)
            else:                                   # a dual-stack client socket: v4-mapped
                local = _proc_net_address(family, "::ffff:" + client_host, client_port)
                remote = _proc_net_address(family, "::ffff:" + server_host, server_port)
            with open(path) as table:
                lines = table.read().splitlines()[1:]
        except (OSError, ValueError):
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and fields[1] == local and fields[2] == remote and fields[3] not in TCP_OWNERLESS_STATES:
                candidates.append(int(fields[7]))
    return candidates[0] if len(set(candidates)) == 1 else None


def _key_name_and_version(kid, akv_url: str) -> tuple[str, str | None]:
    if not isinstance(kid, str):
        raise SidecarError(400, "kid is required")
    parts = urlsplit(kid if "://" in kid else f"{akv_url}/keys/{kid}")
    segments = parts.path.strip("/").split("/")
    if parts.netloc.lower() != urlsplit(akv_url).netloc.lower():
        raise SidecarError(400, "kid does not belong to akv_endpoint")
    if len(segments) not in (2, 3) or segments[0] != "keys" or not segments[1]:
        raise SidecarError(400, "kid must be https://<vault>/keys/<name>[/<version>]")
    return segments[1], (segments[2] if len(segments) == 3 and segments[2] else None)


def _maa_reason(response: requests.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return "no reason given"


def _read_ca(ca_bundle: str | bool) -> bytes | None:
    """The CA that must have issued the vault's signing certificate (loopback: our CA)."""
    if isinstance(ca_bundle, str):
        with open(ca_bundle, "rb") as handle:
            return handle.read()
    return None
