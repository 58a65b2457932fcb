"""Twin of the confidential Azure Container Instances management plane (ARM REST).

Serves, over HTTPS on loopback, the subset `azure-mgmt-containerinstance` 10.1.0 calls:
create (long-running: 201 + Azure-AsyncOperation), get, list by resource group and by
subscription, delete (long-running), stop, and a container's logs. Every request needs a
Bearer token. What happens to a group (checks, processes, records) is aci_runtime's job.

`GET /_twin/stats` (authenticated) says how many groups were ever created, so tests can
assert that a run created exactly one.
"""
from __future__ import annotations

import base64
import json
import re
import ssl
import sys
from pathlib import Path

from local_emulator.aci_runtime import GroupConflict, GroupRuntime, SidecarFactory
from local_emulator.registry import LocalRegistry
from local_emulator.tls import LoopbackServer, bearer_matches
from shared import skr_sidecar, trainer_resources
from shared.cce_policy import CcePolicyError, policy_containers

PROVIDER = "providers/Microsoft.ContainerInstance"
RESOURCE_TYPE = "Microsoft.ContainerInstance/containerGroups"
RETRY_AFTER_SECONDS = "0.1"    # the SDK's poller honours fractional Retry-After
_NAME = r"[^/]+"
_ROUTES = [
    ("operation", rf"^/subscriptions/(?P<sub>{_NAME})/{PROVIDER}/locations/(?P<loc>{_NAME})/operations/(?P<op>{_NAME})$"),
    ("by_subscription", rf"^/subscriptions/(?P<sub>{_NAME})/{PROVIDER}/containerGroups$"),
    ("by_group", rf"^/subscriptions/(?P<sub>{_NAME})/resourceGroups/(?P<rg>{_NAME})/{PROVIDER}/containerGroups$"),
    ("group", rf"^/subscriptions/(?P<sub>{_NAME})/resourceGroups/(?P<rg>{_NAME})/{PROVIDER}/containerGroups/(?P<name>{_NAME})$"),
    ("action", rf"^/subscriptions/(?P<sub>{_NAME})/resourceGroups/(?P<rg>{_NAME})/{PROVIDER}/containerGroups/(?P<name>{_NAME})/(?P<action>restart|stop|start)$"),
    ("logs", rf"^/subscriptions/(?P<sub>{_NAME})/resourceGroups/(?P<rg>{_NAME})/{PROVIDER}/containerGroups/(?P<name>{_NAME})/containers/(?P<container>{_NAME})/logs$"),
    ("stats", r"^/_twin/stats$"),
]
_ROUTES = [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in _ROUTES]
GROUP_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
RESOURCE_GROUP_NAME = re.compile(r"^[-\w._()]{0,89}[-\w_()]$")   # ARM: no trailing period
SUBSCRIPTION_ID = re.compile(r"^[0-9A-Za-z-]{1,64}$")
USER_ASSIGNED_IDENTITY_ID = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+$",
    re.IGNORECASE)


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def _group_id(sub: str, rg: str, name: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/{PROVIDER}/containerGroups/{name}"


def _sanitized_properties(properties: dict) -> tuple[dict, dict[str, dict]]:
    """Split the PUT's properties into what may be stored and echoed (secure values removed)
    and each container's full environment (kept in memory only, to start the process)."""
    clean = json.loads(json.dumps(properties))
    environments = {}
    for container in clean.get("containers") or []:
        env = {}
        for variable in (container.get("properties") or {}).get("environmentVariables") or []:
            secret = variable.pop("secureValue", None)
            env[variable["name"]] = secret if secret is not None else variable.get("value", "")
        environments[container.get("name")] = env
    return clean, environments


def _validate(body: dict) -> None:
    """What ARM refuses synchronously (400; 409 for a group larger than the location offers),
    before any group exists."""
    properties = body.get("properties")
    if not isinstance(properties, dict):
        raise ArmError(400, "InvalidRequestContent", "the request has no properties")
    if not body.get("location"):
        raise ArmError(400, "LocationRequired", "the container group needs a location")
    if properties.get("sku") != "Confidential":
        raise ArmError(400, "UnsupportedSku", "this twin runs only confidential container groups (sku Confidential)")
    policy = (properties.get("confidentialComputeProperties") or {}).get("ccePolicy")
    if not policy:
        raise ArmError(400, "CcePolicyRequired", "a confidential container group needs a ccePolicy")
    try:
        policy_containers(policy)
    except CcePolicyError as error:
        raise ArmError(400, "InvalidCcePolicy", str(error)) from None
    containers = properties.get("containers")
    if not isinstance(containers, list) or not containers:
        raise ArmError(400, "ContainersRequired", "the container group has no containers")
    for container in containers:
        props = container.get("properties") if isinstance(container, dict) else None
        if not isinstance(props, dict) or not container.get("name") or not props.get("image"):
            raise ArmError(400, "InvalidContainer", "every container needs a name and an image")
        if not props.get("command"):
            raise ArmError(400, "InvalidContainer",
                           f"container {container['name']} needs a command (the CCE policy pins it)")
        for variable in props.get("environmentVariables") or []:
            if not isinstance(variable, dict) or not variable.get("name"):
                raise ArmError(400, "InvalidEnvironmentVariable", "an environment variable has no name")
    requested = [_requests(c) for c in containers]
    if trainer_resources.group_problem(requested):
        # ARM's answer to a group beyond what the location offers (per group, all containers summed)
        cpu, memory = sum(c for c, _ in requested), sum(m for _, m in requested)
        raise ArmError(409, "ServiceUnavailable",
                       f"The requested resource is not available in the location '{body['location']}' at this "
                       f"moment. Please retry with a different resource request or in another location. "
                       f"Resource requested: '{cpu:g}' CPU '{memory:g}' GB memory 'Linux' OS")


def _check_registry_credentials(properties: dict, identity_id: str | None) -> None:
    """imageRegistryCredentials as ARM takes them: each names a server, and one that pulls with
    an identity must name an identity the group carries (no passwords here: the local registry,
    like an ACR without admin user or anonymous pull, admits only identities)."""
    credentials = properties.get("imageRegistryCredentials") or []
    if not isinstance(credentials, list):
        raise ArmError(400, "InvalidImageRegistryCredential", "imageRegistryCredentials must be a list")
    for credential in credentials:
        if not isinstance(credential, dict) or not isinstance(credential.get("server"), str) \
                or not credential["server"]:
            raise ArmError(400, "InvalidImageRegistryCredential", "an image registry credential needs a server")
        if credential.get("password") or credential.get("username"):
            raise ArmError(400, "InvalidImageRegistryCredential",
                           f"registry {credential['server']}: this twin's registry admits identities only, no "
                           "username or password")
        identity = credential.get("identity")
        if not isinstance(identity, str) or identity_id is None or identity.lower() != identity_id.lower():
            raise ArmError(400, "InvalidImageRegistryCredentialIdentity",
                           f"The identity '{identity}' of the image registry credential for server "
                           f"'{credential['server']}' is not assigned to the container group")


def _identity_id(identity, known) -> str | None:
    """The group's user-assigned identity (resource id), refused as ARM refuses it: a malformed id
    is LinkedInvalidPropertyId, one that does not exist (here: not among the twin's `known`) or a
    type other than UserAssigned with identities FailedIdentityOperation. No identity: None."""
    if identity is None:
        return None
    ids = identity.get("userAssignedIdentities") if isinstance(identity, dict) else None
    if not isinstance(identity, dict) or identity.get("type") != "UserAssigned" or not isinstance(ids, dict) \
            or len(ids) != 1:
        raise ArmError(400, "FailedIdentityOperation",
                       "Failed to perform resource identity operation: this twin runs groups with exactly one "
                       "identity, of type UserAssigned, named in userAssignedIdentities")
    [resource_id] = ids
    if not USER_ASSIGNED_IDENTITY_ID.match(resource_id):
        raise ArmError(400, "LinkedInvalidPropertyId",
                       f"Property id '{resource_id}' at path 'identity.userAssignedIdentities' is invalid. Expect "
                       f"fully qualified resource Id that start with '/subscriptions/{{subscriptionId}}'")
    if resource_id.lower() not in known:
        raise ArmError(400, "FailedIdentityOperation",
                       f"Failed to perform resource identity operation. Status: 'BadRequest'. "
                       f"Resource '{resource_id}' was not found.")
    return resource_id


def _requests(container: dict) -> tuple[float, float]:
    requests = ((container.get("properties") or {}).get("resources") or {}).get("requests")
    if not isinstance(requests, dict):
        raise ArmError(400, "InvalidContainer", f"container {container.get('name')} needs resource requests")
    cpu, memory = requests.get("cpu"), requests.get("memoryInGB")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (cpu, memory)):
        raise ArmError(400, "InvalidContainer",
                       f"container {container.get('name')} needs positive cpu and memoryInGB requests")
    return float(cpu), float(memory)


def _arm_view(record: dict) -> dict:
    """The group as ARM returns it (no secure values)."""
    properties = json.loads(json.dumps(record["properties"]))
    properties["provisioningState"] = record["provisioning_state"]
    for container in properties["containers"]:
        state = record["containers"].get(container["name"], {})
        current = {"state": state.get("state", "Waiting"), "detailStatus": state.get("detail", "")}
        for key, arm_key in (("start_time", "startTime"), ("finish_time", "finishTime"), ("exit_code", "exitCode")):
            if state.get(key) is not None:
                current[arm_key] = state[key]
        container["properties"]["instanceView"] = {"restartCount": 0, "currentState": current, "events": []}
    events = []
    if record.get("error"):
        events.append({"count": 1, "name": record["error"]["code"], "message": record["error"]["message"],
                       "type": "Warning"})
    properties["instanceView"] = {"state": record["group_state"], "events": events}
    return {"id": record["id"], "name": record["name"], "type": RESOURCE_TYPE, "location": record["location"],
            "tags": record.get("tags") or {}, "properties": properties}


def _operation_id(kind: str, group_id: str) -> str:
    return f"{kind}.{base64.urlsafe_b64encode(group_id.encode()).decode().rstrip('=')}"


def _parse_operation_id(operation: str) -> tuple[str, str]:
    kind, _, encoded = operation.partition(".")
    try:
        return kind, base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ArmError(404, "OperationNotFound", "no such operation") from None


class AciTwin:
    """The management plane twin: `start()`, `stop()`, `url`, `stats()`."""

    def __init__(self, state_dir: Path, images_dir: Path, ssl_context: ssl.SSLContext, access_token: str,
                 sidecar_factory: SidecarFactory | None, python: str = sys.executable,
                 kill_grace_seconds: float = 5.0, port: int = 0, identities: dict[str, str] | None = None,
                 registry_dir: Path | None = None, layer_cache: Path | None = None,
                 registry_pullers: tuple[str, ...] = (), sidecar_image: str | None = None):
        """`identities`: the user-assigned identities that exist (resource id -> the bearer token
        their IMDS hands out); a group may carry one, and its SKR sidecar then calls Key Vault
        with that identity's token. `registry_dir`: the local registry OCI images are pulled from
        (`registry.ccr.localhost/<repository>@sha256:...`), unpacked once per layer into
        `layer_cache` (default ~/.cache/ccr/layers), by a group whose registry credential names
        its identity, one of `registry_pullers` (the identities with AcrPull on it).
        `sidecar_image`: the SKR sidecar image the platform recognises (digest-pinned; default
        the one `CCR_SKR_SIDECAR_IMAGE` names, else shared/skr_sidecar.py's)."""
        if not access_token:
            raise ValueError("the ACI twin needs the access token it will require from callers")
        registry = LocalRegistry(registry_dir, layer_cache) if registry_dir is not None else None
        self.runtime = GroupRuntime(state_dir, images_dir, sidecar_factory, python, kill_grace_seconds, registry,
                                    sidecar_image or skr_sidecar.configured().image)
        self.runtime.identity_tokens = {k.lower(): v for k, v in (identities or {}).items()}
        self.runtime.registry_pullers = {identity.lower() for identity in registry_pullers}
        self._access_token = access_token
        self._server = LoopbackServer(self._route, ssl_context, port=port, name="ACI twin")

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> "AciTwin":
        self.runtime.recover()
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()
        self.runtime.shutdown()

    def stats(self) -> dict:
        return self.runtime.stats()

    # --- requests (LoopbackServer calls _route) ------------------------------------

    def _authorized(self, header: str | None) -> bool:
        return bearer_matches(header, self._access_token)

    def _route(self, method: str, path: str, query: dict, headers, body: bytes) -> tuple[int, dict | None, dict]:
        if not self._authorized(headers.get("Authorization")):
            return 401, {"error": {"code": "AuthenticationFailed", "message": "a valid Bearer token is required"}}, {
                "WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/common", '
                                    'error="invalid_token"'}
        try:
            return self._handle(method, path, query, body)
        except ArmError as error:
            return error.status, {"error": {"code": error.code, "message": str(error)}}, {}

    def _handle(self, method: str, path: str, query: dict, body: bytes) -> tuple[int, dict | None, dict]:
        """(status, JSON body or None, extra headers) for one authenticated request."""
        for route, pattern in _ROUTES:
            match = pattern.match(path)
            if match:
                break
        else:
            raise ArmError(404, "InvalidResourceType", "no such resource type")
        if route != "stats" and not query.get("api-version"):
            raise ArmError(400, "MissingApiVersionParameter", "the api-version query parameter is required")
        args = match.groupdict()
        if route == "stats" and method == "GET":
            return 200, self.stats(), {}
        if route == "operation" and method == "GET":
            return self._operation(args)
        if route == "by_subscription" and method == "GET":
            return 200, {"value": [_arm_view(r) for r in self.runtime.list(f"/subscriptions/{args['sub']}")]}, {}
        if route == "by_group" and method == "GET":
            prefix = f"/subscriptions/{args['sub']}/resourceGroups/{args['rg']}/{PROVIDER}/containerGroups"
            return 200, {"value": [_arm_view(r) for r in self.runtime.list(prefix)]}, {}
        if route == "logs" and method == "GET":
            tail = query.get("tail")
            content = self.runtime.log_tail(_group_id(args["sub"], args["rg"], args["name"]), args["container"],
                                            int(tail) if tail and tail.isdecimal() else None)
            if content is None:
                raise ArmError(404, "ResourceNotFound", "container group or container not found")
            return 200, {"content": content}, {}
        if route == "action" and method == "POST":
            return self._action(args)
        if route == "group":
            group_id = _group_id(args["sub"], args["rg"], args["name"])
            if method == "GET":
                record = self.runtime.get(group_id)
                if record is None:
                    raise ArmError(404, "ResourceNotFound", f"container group {args['name']} not found")
                return 200, _arm_view(record), {}
            if method == "PUT":
                return self._create(args, group_id, body)
            if method == "DELETE":
                return self._delete(args, group_id)
        raise ArmError(405, "MethodNotAllowed", f"{method} is not supported on this resource")

    def _async_headers(self, args: dict, kind: str, group_id: str) -> dict:
        location = args.get("loc") or "local"
        url = f"{self.url}/subscriptions/{args['sub']}/{PROVIDER}/locations/{location}/operations/" \
              f"{_operation_id(kind, group_id)}?api-version=2023-05-01"
        return {"Azure-AsyncOperation": url, "Retry-After": RETRY_AFTER_SECONDS}

    def _create(self, args: dict, group_id: str, raw: bytes) -> tuple[int, dict, dict]:
        if not (GROUP_NAME.match(args["name"]) and RESOURCE_GROUP_NAME.match(args["rg"])
                and SUBSCRIPTION_ID.match(args["sub"])):
            raise ArmError(400, "InvalidResourceName", "invalid resource group or container group name")
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            raise ArmError(400, "InvalidRequestContent", "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise ArmError(400, "InvalidRequestContent", "the request body is not a JSON object")
        _validate(body)
        identity_id = _identity_id(body.get("identity"), self.runtime.identity_tokens)
        _check_registry_credentials(body["properties"], identity_id)
        properties, environments = _sanitized_properties(body["properties"])
        dirname = "/".join([args["sub"], args["rg"].lower(), args["name"]])
        try:
            record, created = self.runtime.create(group_id, dirname, {
                "name": args["name"], "location": body["location"], "tags": body.get("tags") or {},
                "identity_id": identity_id, "properties": properties}, environments)
        except GroupConflict as conflict:
            raise ArmError(409, conflict.code, str(conflict)) from None
        if not created:
            return 200, _arm_view(record), {}
        return 201, _arm_view(record), self._async_headers({**args, "loc": body["location"]}, "create", group_id)

    def _delete(self, args: dict, group_id: str) -> tuple[int, dict | None, dict]:
        record = self.runtime.get(group_id)
        if record is None:
            return 204, None, {}
        self.runtime.delete(group_id)
        return 202, None, self._async_headers({**args, "loc": record["location"]}, "delete", group_id)

    def _operation(self, args: dict) -> tuple[int, dict, dict]:
        kind, group_id = _parse_operation_id(args["op"])
        record = self.runtime.get(group_id)
        if kind == "delete":
            done = record is None
            return 200, {"status": "Succeeded" if done else "InProgress"}, {} if done else {"Retry-After": RETRY_AFTER_SECONDS}
        if kind != "create":
            raise ArmError(404, "OperationNotFound", "no such operation")
        if record is None:
            return 200, {"status": "Canceled", "error": {"code": "ResourceNotFound", "message": "the group was deleted"}}, {}
        state = record["provisioning_state"]
        if state in ("Creating", "Pending"):
            return 200, {"status": "InProgress"}, {"Retry-After": RETRY_AFTER_SECONDS}
        if state == "Failed":
            return 200, {"status": "Failed", "error": record["error"]}, {}
        return 200, {"status": "Succeeded"}, {}

    def _action(self, args: dict) -> tuple[int, None, dict]:
        group_id = _group_id(args["sub"], args["rg"], args["name"])
        if self.runtime.get(group_id) is None:
            raise ArmError(404, "ResourceNotFound", f"container group {args['name']} not found")
        if args["action"].lower() != "stop":
            raise ArmError(400, "OperationNotSupported",
                           "the twin does not restart confidential groups (secrets are not kept)")
        self.runtime.stop_group(group_id)
        return 204, None, {}


class NoManagedIdentity(Exception):
    """IMDS's answer in a container group that carries no managed identity."""


def _no_identity(resource: str) -> str:
    raise NoManagedIdentity("no managed identity is assigned to this container group")


def skr_sidecar_factory(hardware_root, ca_bundle: str, access_token: str | None) -> SidecarFactory:
    """Sidecar twins bound to each group's policy (local_emulator/skr_sidecar.py), calling Key
    Vault as the group's identity (`identity_token`, given by the runtime for a group that has
    one). A group without one: `access_token` stands in for its identity (a test's twin), or,
    with None, as in Azure, its sidecar gets no token at all (the local stack)."""
    from local_emulator.skr_sidecar import SkrSidecar
    return lambda cce_policy_b64, identity_token=None: SkrSidecar(hardware_root, cce_policy_b64, ca_bundle,
                                                                  identity_token or access_token or _no_identity)
