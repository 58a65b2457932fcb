"""Confidential container (CCE) policies, as ACI's `cce_policy` carries them.

The text is modelled on what `az confcom acipolicygen` emits: a Rego module with
`api_version`, a `containers` list (image id, layer digests, command, environment rules,
mounts) and the `allow_*` switches of a non-debug policy. SEV-SNP reports the sha256 of this
text as the group's host data, and Key Vault only releases keys to that host data, so the
text must be byte-for-byte deterministic: same inputs, same policy, same hostdata.

Environment rules pin variable *names* only (`NAME=.*`): values differ per run (run id,
secrets) while the key release policy, fixed when a party imports its key, must not.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

API_VERSION = "0.10.0"
FRAMEWORK_VERSION = "0.2.3"
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

# The SKR sidecar every confidential group runs beside the trainer (Microsoft's image).
SKR_SIDECAR_IMAGE = "mcr.microsoft.com/aci/skr:2.7"
SKR_SIDECAR_COMMAND = ("/skr.sh",)
SKR_SIDECAR_ENV_NAMES = ("Port",)

_CONTAINERS_LINE = re.compile(r"^containers := (.*)$", re.MULTILINE)


class CcePolicyError(ValueError):
    """A policy that cannot be built or read."""


@dataclass(frozen=True)
class PolicyContainer:
    """What the policy lets one container be: its image, layers, command and env names."""
    image_ref: str
    layers: tuple[str, ...]
    command: tuple[str, ...]
    env_names: tuple[str, ...]

    def allows_env(self, name: str) -> bool:
        return name in self.env_names


def trainer_policy_container(image_ref: str, image_digest: str, command: Sequence[str],
                             env_names: Iterable[str]) -> PolicyContainer:
    if not DIGEST.match(image_digest or ""):
        raise CcePolicyError("image digest must be 'sha256:<64 hex>'")
    if not command:
        raise CcePolicyError("a container's command must not be empty")
    return PolicyContainer(image_ref, (image_digest.split(":", 1)[1],), tuple(command), tuple(sorted(set(env_names))))


def sidecar_policy_container() -> PolicyContainer:
    return PolicyContainer(SKR_SIDECAR_IMAGE, (), SKR_SIDECAR_COMMAND, SKR_SIDECAR_ENV_NAMES)


def build_cce_policy(image_ref: str, image_digest: str, command: Sequence[str], env_names: Iterable[str]) -> str:
    """Base64 policy for a group of this trainer and the standard SKR sidecar."""
    trainer = trainer_policy_container(image_ref, image_digest, command, env_names)
    return encode_policy([trainer, sidecar_policy_container()])


def encode_policy(containers: Sequence[PolicyContainer]) -> str:
    return base64.b64encode(policy_text(containers).encode()).decode()


def policy_text(containers: Sequence[PolicyContainer]) -> str:
    """The Rego text; `containers` is one canonical-JSON line so it can be read back."""
    rules = [_container_rule(c) for c in containers]
    return "\n".join([
        "package policy",
        "",
        "import future.keywords.every",
        "import future.keywords.in",
        "",
        f'api_version := "{API_VERSION}"',
        f'framework_version := "{FRAMEWORK_VERSION}"',
        "",
        "fragments := []",
        "",
        "containers := " + json.dumps(rules, sort_keys=True, separators=(",", ":")),
        "",
        "allow_properties_access := false",
        "allow_dump_stacks := false",
        "allow_runtime_logging := false",
        "allow_environment_variable_dropping := true",
        "allow_unencrypted_scratch := false",
        "allow_capability_dropping := true",
        "",
        "mount_device := data.framework.mount_device",
        "unmount_device := data.framework.unmount_device",
        "mount_overlay := data.framework.mount_overlay",
        "unmount_overlay := data.framework.unmount_overlay",
        "create_container := data.framework.create_container",
        "exec_in_container := data.framework.exec_in_container",
        "exec_external := data.framework.exec_external",
        "shutdown_container := data.framework.shutdown_container",
        "signal_container_process := data.framework.signal_container_process",
        "plan9_mount := data.framework.plan9_mount",
        "plan9_unmount := data.framework.plan9_unmount",
        "get_properties := data.framework.get_properties",
        "dump_stacks := data.framework.dump_stacks",
        "runtime_logging := data.framework.runtime_logging",
        "load_fragment := data.framework.load_fragment",
        "scratch_mount := data.framework.scratch_mount",
        "scratch_unmount := data.framework.scratch_unmount",
        "",
        'reason := {"errors": data.framework.errors}',
        "",
    ])


def _container_rule(container: PolicyContainer) -> dict:
    return {
        "id": container.image_ref,
        "layers": list(container.layers),
        "command": list(container.command),
        "env_rules": [{"pattern": f"{name}=.*", "strategy": "re2", "required": False}
                      for name in container.env_names],
        "mounts": [],
        "exec_processes": [],
        "signals": [],
        "working_dir": "/app",
        "allow_elevated": False,
        "allow_stdio_access": True,
        "no_new_privileges": True,
        "seccomp_profile_sha256": "",
        "user": {"user_idname": {"pattern": "", "strategy": "any"},
                 "group_idnames": [{"pattern": "", "strategy": "any"}], "umask": "0022"},
    }


def decode_policy(policy_b64: str) -> str:
    try:
        return base64.b64decode(policy_b64, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, TypeError):
        raise CcePolicyError("cce_policy is not base64 of a UTF-8 policy") from None


def hostdata_of(policy_b64: str) -> str:
    """What SEV-SNP reports as the group's host data: sha256 hex of the policy text."""
    return hashlib.sha256(decode_policy(policy_b64).encode()).hexdigest()


def policy_containers(policy_b64: str) -> list[PolicyContainer]:
    """Read back the containers a policy allows (what the enforcement agent checks)."""
    match = _CONTAINERS_LINE.search(decode_policy(policy_b64))
    if not match:
        raise CcePolicyError("cce_policy has no containers list")
    try:
        rules = json.loads(match.group(1))
        return [PolicyContainer(rule["id"], tuple(rule["layers"]), tuple(rule["command"]),
                                tuple(r["pattern"].split("=", 1)[0] for r in rule["env_rules"]))
                for rule in rules]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CcePolicyError("cce_policy containers list is malformed") from None
