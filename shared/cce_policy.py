"""Confidential container (CCE) policies in the format `az confcom acipolicygen` emits.

A confidential ACI group carries its policy in `confidentialComputeProperties.ccePolicy`
(base64 of a Rego module). SEV-SNP reports sha256(policy text) as the group's host data
(`x-ms-sevsnpvm-hostdata`), and Key Vault releases a key only to the host data its release
policy pins, so the text must be byte-for-byte deterministic.

The text, as acipolicygen writes it (non-debug):

    package policy

    import future.keywords.every
    import future.keywords.in

    api_version := "0.10.0"
    framework_version := "0.2.3"

    fragments := <the fragment imports as JSON, indent 2, sorted keys>

    containers := <the containers as compact JSON, separators "," ":", sorted keys>

    allow_properties_access := true
    allow_dump_stacks := false
    allow_runtime_logging := false
    allow_environment_variable_dropping := true
    allow_unencrypted_scratch := false
    allow_capability_dropping := true

    mount_device := data.framework.mount_device
    ... (one `<rule> := data.framework.<rule>` line per enforcement point)

    reason := {"errors": data.framework.errors}          (no newline after it)

Each container: `id` (the image reference; the pause container has none), `name`, `layers`
(dm-verity root hashes), `command`, `env_rules` (`pattern`, `strategy` `string`|`re2`,
`required`), `working_dir`, `mounts` (`destination`, `options`, `source`, `type`),
`exec_processes`, `signals`, `allow_elevated`, `allow_stdio_access`, `no_new_privileges`,
`seccomp_profile_sha256`, `user` (`user_idname`, `group_idnames`, `umask`) and `capabilities`
(`bounding`, `effective`, `inheritable`, `permitted`, `ambient`). For a user container,
acipolicygen writes the env rules in this order: the ARM template's variables (a literal value
-> `NAME=value` `string`; a value left as an unresolved parameter -> `NAME=.*` `re2` once
wildcards are approved; all `required: false`), then the image config's `Env` entries as
`string` rules for names the template did not set, then the platform rules (`TERM=xterm`,
the Service Fabric, managed-identity and restart variables). It adds the resolv.conf bind
mount, the default unprivileged capabilities (sorted) and the `any` user unless the image
config names one; after the user containers comes the pause container.

Enforcement (hcsshim's framework.rego): every variable `NAME=VALUE` of a container must match
some rule (`string`: equal; `re2`: the regex matches), and every `required` rule must be matched
by some variable. With `allow_environment_variable_dropping` the enforcer may drop variables no
rule matches, but it cannot invent a missing one: a required rule is what binds a value.
`with_required_env` adds such a rule to a template; that is how a group's policy (and so its
host data) is bound to one contract's digest.

Format learnt from (read, not copied):
- Azure/azure-cli-extensions src/confcom/azext_confcom/data/customer_rego_policy.txt (the text
  around the containers), data/internal_config.json (api version, default fragment, platform
  env rules, pause container, default user, capabilities, mount table), config.py (field
  names), container.py (per-container JSON, env rule and capability handling),
  security_policy.py (non-debug flags, compact containers / pretty fragments, pause container
  appended), template_util.py (ARM env values -> string rules, unresolved parameters -> `.*`
  re2 rules, JSON serialisation), samples/aci/environment_variables/policy.rego (a full
  expected output);
- microsoft/confidential-sidecar-containers tests/attestation/policy_attestation.rego (a real
  generated group policy), docker/skr/Dockerfile.skr and examples/skr/aci/ (the SKR sidecar's
  command and environment);
- microsoft/hcsshim's framework.rego (env_ok / rule_ok: how env rules are enforced).
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

API_VERSION = "0.10.0"
FRAMEWORK_VERSION = "0.2.3"

STRATEGIES = ("string", "re2")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTAINERS_START = re.compile(r"^containers := ", re.MULTILINE)


class CcePolicyError(ValueError):
    """A policy that cannot be built or read."""


@functools.lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error:
        raise CcePolicyError("a re2 env rule is not a valid regular expression") from None


@dataclass(frozen=True)
class EnvRule:
    """One entry of a container's `env_rules`: `pattern` is `NAME=VALUE` (string) or a regex
    over `NAME=VALUE` (re2)."""
    pattern: str
    strategy: str
    required: bool

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise CcePolicyError(f"env rule strategy must be one of {', '.join(STRATEGIES)}")
        if self.strategy == "re2":
            _regex(self.pattern)

    def matches(self, variable: str) -> bool:
        """Does `NAME=VALUE` satisfy this rule? re2 patterns must match the whole variable
        (stricter than OPA's unanchored regex.match)."""
        if self.strategy == "string":
            return variable == self.pattern
        return _regex(self.pattern).fullmatch(variable) is not None

    @property
    def name(self) -> str:
        """The variable name the rule is about (the pattern up to its first '=')."""
        return self.pattern.split("=", 1)[0]

    def to_json(self) -> dict:
        return {"pattern": self.pattern, "required": self.required, "strategy": self.strategy}


def string_rule(name: str, value: str, required: bool = False) -> EnvRule:
    """What acipolicygen writes for a variable whose value is known: `NAME=value`, string."""
    return EnvRule(f"{_checked_name(name)}={value}", "string", required)


def wildcard_rule(name: str) -> EnvRule:
    """What acipolicygen writes for a variable whose value is a parameter left unresolved
    (`--approve-wildcards`): `NAME=.*`, re2, not required."""
    return EnvRule(f"{_checked_name(name)}=.*", "re2", False)


def _checked_name(name: str) -> str:
    if not _ENV_NAME.match(name or ""):
        raise CcePolicyError("an environment variable name must be letters, digits and underscores")
    return name


# Platform env rules acipolicygen adds to every user container (internal_config.json:
# openGCS, fabric, managedIdentity, enableRestart), in its order.
PLATFORM_ENV_RULES = (
    EnvRule("TERM=xterm", "string", False),
    EnvRule("(?i)(FABRIC)_.+=.+", "re2", False),
    EnvRule("HOSTNAME=.+", "re2", False),
    EnvRule("T(E)?MP=.+", "re2", False),
    EnvRule("FabricPackageFileName=.+", "re2", False),
    EnvRule("HostedServiceName=.+", "re2", False),
    EnvRule("IDENTITY_API_VERSION=.+", "re2", False),
    EnvRule("IDENTITY_HEADER=.+", "re2", False),
    EnvRule("IDENTITY_SERVER_THUMBPRINT=.+", "re2", False),
    EnvRule("azurecontainerinstance_restarted_by=.+", "re2", False),
)

# The default unprivileged capability set, in internal_config.json's order (the pause
# container keeps this order; user containers get it sorted).
UNPRIVILEGED_CAPABILITIES = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
                             "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
                             "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")

PAUSE_CONTAINER_NAME = "pause-container"
PAUSE_LAYER = "16b514057a06ad665f92c02863aca074fd5976c755d26bff16365299169e8415"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class IdName:
    """A user or group matcher: strategy `id`, `name`, `re2` or `any`."""
    pattern: str = ""
    strategy: str = "any"

    def to_json(self) -> dict:
        return {"pattern": self.pattern, "strategy": self.strategy}


@dataclass(frozen=True)
class User:
    user_idname: IdName = IdName()
    group_idnames: tuple[IdName, ...] = (IdName(),)
    umask: str = "0022"

    def to_json(self) -> dict:
        return {"group_idnames": [g.to_json() for g in self.group_idnames], "umask": self.umask,
                "user_idname": self.user_idname.to_json()}


@dataclass(frozen=True)
class Capabilities:
    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()

    @classmethod
    def unprivileged(cls, ordered: bool = True) -> "Capabilities":
        """The default set: sorted for user containers, config order for the pause container."""
        caps = tuple(sorted(UNPRIVILEGED_CAPABILITIES)) if ordered else UNPRIVILEGED_CAPABILITIES
        return cls(bounding=caps, effective=caps, permitted=caps)

    def to_json(self) -> dict:
        return {"ambient": list(self.ambient), "bounding": list(self.bounding), "effective": list(self.effective),
                "inheritable": list(self.inheritable), "permitted": list(self.permitted)}


@dataclass(frozen=True)
class Mount:
    destination: str
    source: str
    options: tuple[str, ...] = ("rbind", "rshared", "rw")
    type: str = "bind"

    def to_json(self) -> dict:
        return {"destination": self.destination, "options": list(self.options), "source": self.source,
                "type": self.type}


# The mount acipolicygen adds to every user container (default_mounts_user: resolvconf).
RESOLV_CONF_MOUNT = Mount("/etc/resolv.conf", "sandbox:///tmp/atlas/resolvconf/.+")


@dataclass(frozen=True)
class ExecProcess:
    command: tuple[str, ...]
    signals: tuple[int, ...] = ()

    def to_json(self) -> dict:
        return {"command": list(self.command), "signals": list(self.signals)}


@dataclass(frozen=True)
class PolicyContainer:
    """One entry of the policy's `containers`: what a container may be. `id` is the image
    reference (None for the pause container, which acipolicygen writes without one)."""
    id: str | None
    name: str | None
    layers: tuple[str, ...]
    command: tuple[str, ...]
    env_rules: tuple[EnvRule, ...]
    working_dir: str = "/"
    mounts: tuple[Mount, ...] = ()
    exec_processes: tuple[ExecProcess, ...] = ()
    signals: tuple[int, ...] = ()
    allow_elevated: bool = False
    allow_stdio_access: bool = True
    no_new_privileges: bool = False
    seccomp_profile_sha256: str = ""
    user: User = field(default_factory=User)
    capabilities: Capabilities = field(default_factory=Capabilities.unprivileged)

    def env_problem(self, environment: Mapping[str, str]) -> str | None:
        """None when every `NAME=VALUE` matches some rule and every required rule is matched
        by some variable; otherwise one line naming the variable (never its value)."""
        variables = [f"{name}={value}" for name, value in sorted(environment.items())]
        for name, variable in zip(sorted(environment), variables):
            if not any(rule.matches(variable) for rule in self.env_rules):
                return f"environment variable {name} is not allowed by the policy (name or value)"
        for rule in self.env_rules:
            if rule.required and not any(rule.matches(variable) for variable in variables):
                return f"environment variable {rule.name} is required by the policy and is missing or has another value"
        return None

    def to_json(self) -> dict:
        data = {
            "allow_elevated": self.allow_elevated, "allow_stdio_access": self.allow_stdio_access,
            "capabilities": self.capabilities.to_json(), "command": list(self.command),
            "env_rules": [rule.to_json() for rule in self.env_rules],
            "exec_processes": [p.to_json() for p in self.exec_processes], "layers": list(self.layers),
            "mounts": [m.to_json() for m in self.mounts], "no_new_privileges": self.no_new_privileges,
            "seccomp_profile_sha256": self.seccomp_profile_sha256, "signals": list(self.signals),
            "user": self.user.to_json(), "working_dir": self.working_dir}
        if self.id is not None:
            data["id"] = self.id
        if self.name is not None:
            data["name"] = self.name
        return data

    @classmethod
    def from_json(cls, data: Any) -> "PolicyContainer":
        """Read one entry back (strictly: a field of the wrong type is a CcePolicyError)."""
        try:
            return cls(
                id=_optional_str(data.get("id")), name=_optional_str(data.get("name")),
                layers=_strings(data["layers"]), command=_strings(data.get("command") or []),
                env_rules=tuple(EnvRule(_str(r["pattern"]), _str(r["strategy"]), _bool(r.get("required", False)))
                                for r in _list(data["env_rules"])),
                working_dir=_str(data.get("working_dir", "/")),
                mounts=tuple(Mount(_str(m["destination"]), _str(m["source"]), _strings(m.get("options", [])),
                                   _str(m.get("type", "bind"))) for m in _list(data.get("mounts", []))),
                exec_processes=tuple(ExecProcess(_strings(p["command"]), _ints(p.get("signals", [])))
                                     for p in _list(data.get("exec_processes", []))),
                signals=_ints(data.get("signals", [])),
                allow_elevated=_bool(data.get("allow_elevated", False)),
                allow_stdio_access=_bool(data.get("allow_stdio_access", True)),
                no_new_privileges=_bool(data.get("no_new_privileges", False)),
                seccomp_profile_sha256=_str(data.get("seccomp_profile_sha256", "")),
                user=_user(data.get("user")), capabilities=_capabilities(data.get("capabilities")))
        except (KeyError, TypeError, AttributeError):
            raise CcePolicyError("cce_policy containers list is malformed") from None


def _str(value) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _optional_str(value) -> str | None:
    return None if value is None else _str(value)


def _bool(value) -> bool:
    if not isinstance(value, bool):
        raise TypeError("not a boolean")
    return value


def _list(value) -> list:
    if not isinstance(value, list):
        raise TypeError("not a list")
    return value


def _strings(value) -> tuple[str, ...]:
    return tuple(_str(v) for v in _list(value))


def _ints(value) -> tuple[int, ...]:
    items = _list(value)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise TypeError("not integers")
    return tuple(items)


def _id_name(value) -> IdName:
    return IdName(_str(value["pattern"]), _str(value["strategy"]))


def _user(value) -> User:
    if value is None:
        return User()
    return User(_id_name(value["user_idname"]), tuple(_id_name(g) for g in _list(value["group_idnames"])),
                _str(value["umask"]))


def _capabilities(value) -> Capabilities:
    if value is None:
        return Capabilities()
    return Capabilities(*(_strings(value.get(key, [])) for key in
                          ("bounding", "effective", "inheritable", "permitted", "ambient")))


def user_container(image: str, name: str, layers: Sequence[str], command: Sequence[str],
                   template_env: Sequence[EnvRule], image_env: Sequence[str] = (), working_dir: str = "/",
                   user: User = User(), mounts: Sequence[Mount] = ()) -> PolicyContainer:
    """A container as acipolicygen writes one from an ARM template: the template's env rules,
    then the image config's `Env` (`NAME=value` strings) for names the template does not set,
    then the platform rules; the template's mounts plus resolv.conf; default capabilities."""
    if not command:
        raise CcePolicyError("a container's command must not be empty")
    rules = list(template_env)
    names = {rule.name for rule in rules}
    for entry in image_env:
        env_name, _, value = entry.partition("=")
        if env_name not in names:
            rules.append(string_rule(env_name, value))
    names = {rule.name for rule in rules}
    rules += [rule for rule in PLATFORM_ENV_RULES if rule.name not in names]
    all_mounts = list(mounts)
    if RESOLV_CONF_MOUNT.destination not in {m.destination for m in all_mounts}:
        all_mounts.append(RESOLV_CONF_MOUNT)
    return PolicyContainer(id=image, name=name, layers=tuple(layers), command=tuple(command), env_rules=tuple(rules),
                           working_dir=working_dir, mounts=tuple(all_mounts), user=user)


def pause_container() -> PolicyContainer:
    """The pause container acipolicygen appends to every group (pre-computed layer)."""
    return PolicyContainer(id=None, name=PAUSE_CONTAINER_NAME, layers=(PAUSE_LAYER,), command=("/pause",),
                           env_rules=(EnvRule(DEFAULT_PATH, "string", True), EnvRule("TERM=xterm", "string", False)),
                           capabilities=Capabilities.unprivileged(ordered=False))


@dataclass(frozen=True)
class Fragment:
    """A policy fragment import."""
    feed: str
    issuer: str
    minimum_svn: str
    includes: tuple[str, ...] = ("containers", "fragments")

    def to_json(self) -> dict:
        return {"feed": self.feed, "includes": list(self.includes), "issuer": self.issuer,
                "minimum_svn": self.minimum_svn}


# The Azure infrastructure fragment (sidecars ACI injects) every acipolicygen policy imports.
INFRA_FRAGMENT = Fragment(
    feed="mcr.microsoft.com/aci/aci-cc-infra-fragment",
    issuer="did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::eku:1.3.6.1.4.1.311.76.59.1.3",
    minimum_svn="1")

# Non-debug switches, in the order the text lists them.
FLAGS = (("allow_properties_access", True), ("allow_dump_stacks", False), ("allow_runtime_logging", False),
         ("allow_environment_variable_dropping", True), ("allow_unencrypted_scratch", False),
         ("allow_capability_dropping", True))

# Enforcement points delegated to the framework, in the order the text lists them.
FRAMEWORK_RULES = ("mount_device", "unmount_device", "mount_overlay", "unmount_overlay", "create_container",
                   "exec_in_container", "exec_external", "shutdown_container", "signal_container_process",
                   "plan9_mount", "plan9_unmount", "get_properties", "dump_stacks", "runtime_logging",
                   "load_fragment", "scratch_mount", "scratch_unmount")


def _compact(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def policy_text(containers: Sequence[PolicyContainer], fragments: Sequence[Fragment] = (INFRA_FRAGMENT,)) -> str:
    """The Rego text (deterministic: same containers, same bytes)."""
    if not containers:
        raise CcePolicyError("a policy needs at least one container")
    lines = ["package policy", "", "import future.keywords.every", "import future.keywords.in", "",
             f"api_version := {json.dumps(API_VERSION)}", f"framework_version := {json.dumps(FRAMEWORK_VERSION)}", "",
             "fragments := " + json.dumps([f.to_json() for f in fragments], indent=2, sort_keys=True), "",
             "containers := " + _compact([c.to_json() for c in containers]), ""]
    lines += [f"{flag} := {json.dumps(value)}" for flag, value in FLAGS]
    lines.append("")
    lines += [f"{rule} := data.framework.{rule}" for rule in FRAMEWORK_RULES]
    lines += ["", 'reason := {"errors": data.framework.errors}']
    return "\n".join(lines)


def encode_policy(containers: Sequence[PolicyContainer]) -> str:
    """Base64 of the policy text: what ACI's `ccePolicy` holds."""
    return base64.b64encode(policy_text(containers).encode("ascii")).decode("ascii")


def decode_policy(policy_b64: str) -> str:
    try:
        return base64.b64decode(policy_b64, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
        raise CcePolicyError("cce_policy is not base64 of a UTF-8 policy") from None


def hostdata_of(policy_b64: str) -> str:
    """What SEV-SNP reports as the group's host data: sha256 hex of the policy text."""
    return hashlib.sha256(decode_policy(policy_b64).encode("utf-8")).hexdigest()


def _containers_span(text: str) -> tuple[list, int, int]:
    """The parsed `containers := [...]` value and where its JSON starts and ends in `text`."""
    match = _CONTAINERS_START.search(text)
    if not match:
        raise CcePolicyError("cce_policy has no containers list")
    try:
        value, end = json.JSONDecoder().raw_decode(text, match.end())
    except ValueError:
        raise CcePolicyError("cce_policy containers list is not JSON") from None
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise CcePolicyError("cce_policy containers list is malformed")
    return value, match.end(), end


def containers_of_text(text: str) -> list[PolicyContainer]:
    return [PolicyContainer.from_json(entry) for entry in _containers_span(text)[0]]


def policy_containers(policy_b64: str) -> list[PolicyContainer]:
    """Read back the containers a policy allows (what the enforcement agent checks)."""
    return containers_of_text(decode_policy(policy_b64))


def with_required_env(policy_text: str, container_id: str, name: str, value: str) -> str:
    """The same policy with one more env rule `NAME=value` (string, required) appended to the
    container whose `id` is `container_id`; every other byte is unchanged. The containers list
    must be in acipolicygen's compact form, and that container must not already pin `name`."""
    entries, start, end = _containers_span(policy_text)
    if _compact(entries) != policy_text[start:end]:
        raise CcePolicyError("cce_policy containers list is not in acipolicygen's compact form")
    matching = [entry for entry in entries if entry.get("id") == container_id]
    if len(matching) != 1:
        raise CcePolicyError("the policy must have exactly one container with that id")
    container = PolicyContainer.from_json(matching[0])
    rule = string_rule(name, value, required=True)
    if any(r.name == name and (r.required or r.strategy == "string") for r in container.env_rules):
        raise CcePolicyError(f"the policy already pins environment variable {name} in that container")
    matching[0]["env_rules"].append(rule.to_json())
    return policy_text[:start] + _compact(entries) + policy_text[end:]
