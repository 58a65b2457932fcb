"""Twin of Microsoft's SKR sidecar container (confidential-sidecar-containers `skr`).

In a confidential container group the sidecar is the only way to a data key: it gets a
hardware report for its group, attests it at MAA with an ephemeral RSA key as runtime data,
presents the token to Key Vault's release operation and unwraps the result with the ephemeral
private key (shared.key_release). Its HTTP API, on 127.0.0.1 like the real one on
localhost:8080 (plain http, inside the group):

- `GET /status` -> 200 `{"message": "Status OK"}`
- `POST /attest/maa {"maa_endpoint", "runtime_data"}` -> `{"token"}`; runtime_data is base64 of
  the caller's runtime JSON
- `POST /key/release {"maa_endpoint", "akv_endpoint", "kid"[, "access_token"]}` ->
  `{"key": "<JWK json>"}` (the released key: `kty`, its material, `key_ops`; no `kid`)

Exactly as strict as Microsoft's (microsoft/confidential-sidecar-containers v2.13:
internal/httpginendpoints/httpginendpoints.go, pkg/skr/skr.go, pkg/common/{akv,maa,token}.go):
- `maa_endpoint` and `akv_endpoint` are host names: it builds `https://<maa>/attest/SevSnpVM`
  and `https://<akv_endpoint>/keys/<kid>/release?api-version=7.4` by string formatting, so a
  scheme-prefixed endpoint makes a URL that reaches nothing; `kid` is a key NAME (or
  `name/version`), pasted into the path, so a key URL names no key Key Vault has. The twin
  refuses both before any call, with the status the real one ends with.
- A body that does not bind (not JSON, a required field missing, empty or not a string) is 400;
  `/key/release` then answers `{"error": {}}` (gin serialises the wrapped Go error as an empty
  object), `/attest/maa` `{"error": "<reason>"}`. Every later failure (attestation, token,
  Key Vault refusing or unreachable, a bad release result) is 403 `{"error": "<reason>"}`.
- Without `access_token` it asks the group's managed identity (IMDS, resource
  `https://vault.azure.net`, or `https://managedhsm.azure.net` when the endpoint names
  managedhsm; a client id only when SkrSideCarArgs names one). Here the ACI twin hands the
  sidecar its group's identity as `identity_token(resource) -> token`.

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
import re
import socket
import struct
from typing import Callable

import requests
from jwcrypto import jwk

from local_emulator.attestation import API_VERSION, build_attest_request
from local_emulator.sevsnp import HardwareRoot
from local_emulator.tls import LoopbackServer, Peer
from shared.cce_policy import decode_policy, hostdata_of
from shared.key_release import KeyReleaseFormatError, released_jwk

EPHEMERAL_KEY_BITS = 2048
EPHEMERAL_KID = "skr-sidecar-ephemeral"
UPSTREAM_TIMEOUT_SECONDS = 30
PROC_NET_TCP = ("/proc/net/tcp", "/proc/net/tcp6")
TCP_OWNERLESS_STATES = {"06", "0C"}     # TIME_WAIT, NEW_SYN_RECV: no socket, so no owner (uid 0 shown)


RELEASE_API_VERSION = "7.4"              # pkg/skr httpginendpoints: api-version=7.4
VAULT_RESOURCE = "https://vault.azure.net"
MANAGED_HSM_RESOURCE = "https://managedhsm.azure.net"
# What `https://%s/...` reaches: a host name or address, optionally a port (the twins' loopback
# ports); anything else (a scheme, a path, user info) makes a URL that reaches no service.
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?$")
# What Key Vault finds under /keys/<kid>/release: a key name, or name/version.
_KID = re.compile(r"^[0-9A-Za-z-]{1,127}(?:/[0-9a-f]{32})?$")
IdentityToken = Callable[[str], str]      # resource -> bearer token of the group's identity


class SidecarError(Exception):
    """`status` and the reason; `shown=False` answers `{"error": {}}` as Microsoft's binding
    errors on /key/release do."""

    def __init__(self, status: int, message: str, shown: bool = True):
        super().__init__(message)
        self.status, self.shown = status, shown


def _release_failed(cause: str) -> SidecarError:
    return SidecarError(403, f"secure key release failed: {cause}")


def _bound(body: bytes, fields: tuple[str, ...], shown: bool) -> dict:
    """The request as gin's ShouldBindJSON with `binding:"required"` string fields binds it."""
    try:
        value = json.loads(body or b"")
    except ValueError:
        raise SidecarError(400, "invalid request format: the body is not JSON", shown) from None
    if not isinstance(value, dict):
        raise SidecarError(400, "invalid request format: the body is not a JSON object", shown)
    for name in fields:
        if not isinstance(value.get(name), str) or not value[name]:
            raise SidecarError(400, f"invalid request format: {name} is required", shown)
    if value.get("access_token") is not None and not isinstance(value["access_token"], str):
        raise SidecarError(400, "invalid request format: access_token is not a string", shown)
    return value


def _https(endpoint: str, refused: Callable[[str], SidecarError]) -> str:
    """`https://<endpoint>` as Microsoft's sidecar builds it, when that reaches a service."""
    if not _HOST.match(endpoint):
        raise refused(f"https://{endpoint}/... reaches no service: endpoints are host names, without a scheme")
    return f"https://{endpoint}"


class SkrSidecar:
    """`start()`, `stop()`, `url`; one per container group, bound to its CCE policy and
    answering only processes of `allowed_uid` (settable until started)."""

    def __init__(self, hardware_root: HardwareRoot, cce_policy_b64: str, ca_bundle: str | bool,
                 identity_token: IdentityToken | str, is_debuggable: bool = False, port: int = 0,
                 allowed_uid: int | None = None):
        self._root = hardware_root
        self._policy_text = decode_policy(cce_policy_b64).encode()
        self._hostdata = hostdata_of(cce_policy_b64)
        self._ca_bundle = ca_bundle
        # the group's managed identity (a fixed token: a test's stand-in for one)
        self._identity_token = identity_token if callable(identity_token) else (lambda resource: identity_token)
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
                return 200, {"message": "Status OK"}, {}
            if method == "POST" and path == "/attest/maa":
                request = _bound(body, ("maa_endpoint", "runtime_data"), shown=True)
                runtime = self._runtime_data(request["runtime_data"])
                maa_url = _https(request["maa_endpoint"], lambda why: SidecarError(403, f"attestation failed: {why}"))
                try:
                    return 200, {"token": self.attest(maa_url, runtime)}, {}
                except SidecarError as error:
                    raise SidecarError(403, f"attestation failed: {error}") from None
            if method == "POST" and path == "/key/release":
                request = _bound(body, ("maa_endpoint", "akv_endpoint", "kid"), shown=False)
                key = self.release(request["maa_endpoint"], request["akv_endpoint"], request["kid"],
                                   request.get("access_token") or None)
                return 200, {"key": json.dumps(key)}, {}
            raise SidecarError(404, "no such operation")
        except SidecarError as error:
            return error.status, {"error": str(error) if error.shown else {}}, {}

    @staticmethod
    def _runtime_data(value: str) -> bytes:
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise SidecarError(400, "decoding base64-encoded runtime data of request failed") from None

    # --- attestation and release ----------------------------------------------------------

    def attest(self, maa_url: str, runtime_data: bytes) -> str:
        """An MAA token for this group's hardware report binding `runtime_data`."""
        report = self._root.report(self._hostdata, hashlib.sha256(runtime_data).digest(), self._is_debuggable)
        body = build_attest_request(report, runtime_data, self._policy_text)
        try:
            response = requests.post(f"{maa_url}/attest/SevSnpVm?api-version={API_VERSION}", json=body,
                                     verify=self._ca_bundle, timeout=UPSTREAM_TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise SidecarError(403, f"attestation service unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise SidecarError(403, f"attestation refused (HTTP {response.status_code}): {_maa_reason(response)}")
        try:
            token = response.json().get("token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str):
            raise SidecarError(403, "attestation service returned no token")
        return token

    def release(self, maa_endpoint: str, akv_endpoint: str, kid: str, access_token: str | None = None) -> dict:
        """The key `kid` (a key name, or name/version) of the vault at host `akv_endpoint`,
        released to this attested group, as a private JWK dict; with no `access_token`, as the
        group's identity. Every failure is 403, as Microsoft's sidecar answers."""
        if self._ephemeral is None:
            raise _release_failed("the sidecar is not started")
        maa_url = _https(maa_endpoint, lambda why: _release_failed(f"attestation failed: {why}"))
        akv_url = _https(akv_endpoint, lambda why: _release_failed(f"AKV post request failed: {why}"))
        if not _KID.match(kid):
            raise _release_failed(f"releasing the key failed: kid is a key name (or name/version) that "
                                  f"{akv_url}/keys/<kid>/release finds, not a key URL")
        public = self._ephemeral.export_public(as_dict=True)
        public.update(kid=EPHEMERAL_KID, key_ops=["encrypt"])
        try:
            token = self.attest(maa_url, json.dumps({"keys": [public]}).encode())
        except SidecarError as error:
            raise _release_failed(f"attestation failed: {error}") from None
        if not access_token:
            resource = MANAGED_HSM_RESOURCE if "managedhsm" in akv_endpoint else VAULT_RESOURCE
            try:
                access_token = self._identity_token(resource)
            except Exception as error:             # the identity endpoint's failure, never its token
                raise _release_failed(f"retrieving authentication token failed ({type(error).__name__})") from None
        try:
            response = requests.post(f"{akv_url}/keys/{kid}/release?api-version={RELEASE_API_VERSION}",
                                     json={"target": token}, headers={"Authorization": f"Bearer {access_token}"},
                                     verify=self._ca_bundle, timeout=UPSTREAM_TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise _release_failed(f"AKV post request failed ({type(exc).__name__})") from None
        if not 200 <= response.status_code <= 207:
            raise _release_failed(f"releasing the key {kid} failed: http response status equal to "
                                  f"{response.status_code}: {_vault_reason(response)}")
        try:
            value = response.json()["value"]
            released = released_jwk(value, self._ephemeral, _read_ca(self._ca_bundle))
        except (ValueError, KeyError, TypeError) as error:
            reason = error if isinstance(error, KeyReleaseFormatError) else "no release result"
            raise _release_failed(f"releasing the key {kid} failed: {reason}") from None
        released.pop("kid", None)               # Microsoft's JWK carries the material and key_ops only
        return released


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


def _maa_reason(response: requests.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return "no reason given"


def _vault_reason(response: requests.Response) -> str:
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
