"""The confidential container group a run deploys, and the CCE policy that pins it.

The group's policy is a per-image *template* (what `az confcom acipolicygen` writes for the
group's ARM template with the contract digest left as a parameter: pause container, trainer,
SKR sidecar) plus one rule added per contract: `CCR_CONTRACT_DIGEST=<digest>`, strategy
`string`, required, in the trainer. So the policy text, and the SEV-SNP host data that key
release policies pin (sha256 of it), differ per contract: a provider that wraps its data key
for one contract's host data releases it to that contract's group only, whatever image
another contract runs. Contracts pin `policy_template_sha256(image, sidecar)` so a party can check
the template before trusting the host data computed from it. The SKR sidecar (image by digest,
command, environment) is a parameter of every builder here (shared/skr_sidecar.py): a contract
names the one it was written for, and the template, its digest and the host data follow it.

Run-specific values (run id, SAS URLs, keys) are `NAME=.*` re2 rules in the template: they
never change the policy. The trainer reads `CCR_CONTRACT_DIGEST` and checks it against the
contract it verifies.
"""
from __future__ import annotations

import base64
import hashlib
import re
from typing import TYPE_CHECKING, Mapping

from shared import trainer_resources
from shared.cce_policy import (IdName, User, hostdata_of, pause_container, policy_text, string_rule, user_container,
                               wildcard_rule, with_required_env)
from shared.skr_sidecar import DEFAULT_SIDECAR, SKR_PORT, SidecarSpec

if TYPE_CHECKING:   # imported where a group is built: the trainer imports this module, and its image has no ARM SDK
    from azure.mgmt.containerinstance.models import ContainerGroup, EnvironmentVariable

TRAINER_IMAGE_NAME = "ccr-trainer"
# A registry host (a DNS name, optional port) and a repository (OCI distribution-spec names),
# pinned by the manifest digest; or the local emulator's source-tarball form `ccr-trainer@...`.
REGISTRY_REPOSITORY = (r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?"
                       r"/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*")
TRAINER_IMAGE = re.compile(rf"^(?:ccr-trainer|{REGISTRY_REPOSITORY})@(?P<digest>sha256:[0-9a-f]{{64}})$")
TRAINER_COMMAND = ("python", "-m", "trainer_container")
# The inference workload: the same image, its own entrypoint (trainer_container/infer.py). The
# command is in the policy, so an inference group's host data differs from the training group's
# of the same contract: a grant pins one workload, or both by name (shared/key_grants.py).
INFERENCE_COMMAND = ("python", "-m", "trainer_container.infer")
TRAINER_CONTAINER_NAME = "trainer"
SKR_CONTAINER_NAME = "skr-sidecar"
SKR_URL_IN_GROUP = f"http://localhost:{SKR_PORT}"
CONTRACT_DIGEST_ENV = "CCR_CONTRACT_DIGEST"
CONTRACT_DIGEST = re.compile(r"^[0-9a-f]{64}$")

# Everything the trainer reads (trainer_container/environment.py); the template pins the names.
# Storage access is CCR_BLOB_URLS (per-blob SAS URLs, shared/blob_sas.py), never a connection string.
TRAINER_ENV_NAMES = ("CCR_BLOB_URLS", "CCR_CA_BUNDLE", "CCR_CONTRACT", CONTRACT_DIGEST_ENV, "CCR_EVENTGRID_KEY",
                     "CCR_EVENTGRID_TOPIC_URL", "CCR_KEYVAULT_URL", "CCR_MAA_URL", "CCR_RUN_ID", "CCR_RUN_NONCE",
                     "CCR_SKR_URL")
SECURE_ENV_NAMES = frozenset({"CCR_BLOB_URLS", "CCR_EVENTGRID_KEY"})
# Values fixed in the group's ARM template (acipolicygen pins them as `string` rules).
TRAINER_FIXED_ENV = {"CCR_SKR_URL": SKR_URL_IN_GROUP}

# The trainer image's config as tools/trainer_image.py (and the equivalent recipe,
# trainer_container/Dockerfile) writes it, and acipolicygen reads it from the pushed image:
# Env, WorkingDir, User. (PATH keeps the python:3.11-slim value the first Dockerfile had.)
TRAINER_IMAGE_ENV = ("PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                     "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "PIP_NO_CACHE_DIR=1")
TRAINER_WORKING_DIR = "/app"
TRAINER_USER = User(user_idname=IdName("trainer", "name"))


def trainer_image_digest(trainer_image: str) -> str:
    """`sha256:<hex>` of a pinned trainer image reference (`<registry>/<repository>@sha256:<hex>`,
    the manifest digest; or the local tarball form `ccr-trainer@sha256:<hex>`)."""
    match = TRAINER_IMAGE.match(trainer_image or "")
    if not match:
        raise ValueError("trainer image must be pinned by digest: '<registry>/<repository>@sha256:<64 hex>'")
    return match.group("digest")


# Both workloads read the same variables (an inference's batch is named by the request document
# the control plane writes beside the model state: shared/inference_requests.py); only the
# command differs.
WORKLOAD_COMMANDS = {"training": TRAINER_COMMAND, "inference": INFERENCE_COMMAND}


def _trainer_template_rules():
    return [string_rule(name, TRAINER_FIXED_ENV[name]) if name in TRAINER_FIXED_ENV else wildcard_rule(name)
            for name in TRAINER_ENV_NAMES]


def training_policy_template(trainer_image: str, sidecar: SidecarSpec = DEFAULT_SIDECAR,
                             workload: str = "training") -> str:
    """The group's policy text without any contract rule: trainer (this image's layer, the
    workload's fixed command, `NAME=.*` rules for run values), SKR sidecar (its image, command
    and environment), pause container."""
    layer = trainer_image_digest(trainer_image).split(":", 1)[1]
    trainer = user_container(trainer_image, TRAINER_CONTAINER_NAME, (layer,), WORKLOAD_COMMANDS[workload],
                             _trainer_template_rules(), TRAINER_IMAGE_ENV, TRAINER_WORKING_DIR, TRAINER_USER)
    skr = user_container(sidecar.image, SKR_CONTAINER_NAME, (), sidecar.command,
                         [string_rule(name, value) for name, value in sidecar.environment])
    return policy_text([trainer, skr, pause_container()])


def policy_template_sha256(trainer_image: str, sidecar: SidecarSpec = DEFAULT_SIDECAR,
                           workload: str = "training") -> str:
    """sha256 hex of the template text (what a contract pins, per workload)."""
    return hashlib.sha256(training_policy_template(trainer_image, sidecar, workload).encode("ascii")).hexdigest()


def _checked_digest(contract_digest: str) -> str:
    if not isinstance(contract_digest, str) or not CONTRACT_DIGEST.match(contract_digest):
        raise ValueError("contract digest must be 64 lowercase hex characters")
    return contract_digest


def training_cce_policy(trainer_image: str, contract_digest: str, sidecar: SidecarSpec = DEFAULT_SIDECAR,
                        workload: str = "training") -> str:
    """Base64 CCE policy of the group that runs this image for this contract (and workload)."""
    text = with_required_env(training_policy_template(trainer_image, sidecar, workload), trainer_image,
                             CONTRACT_DIGEST_ENV,
                             _checked_digest(contract_digest))
    return base64.b64encode(text.encode("ascii")).decode("ascii")


def training_hostdata(trainer_image: str, contract_digest: str, sidecar: SidecarSpec = DEFAULT_SIDECAR) -> str:
    """The host data SEV-SNP reports for that group: what key release policies pin."""
    return hostdata_of(training_cce_policy(trainer_image, contract_digest, sidecar))


def inference_hostdata(image: str, contract_digest: str, sidecar: SidecarSpec = DEFAULT_SIDECAR) -> str:
    """The host data of the contract's inference group (its own command: never the training's)."""
    return hostdata_of(training_cce_policy(image, contract_digest, sidecar, "inference"))


def _environment(values: Mapping[str, str]) -> list[EnvironmentVariable]:
    from azure.mgmt.containerinstance.models import EnvironmentVariable
    unknown = sorted(set(values) - set(TRAINER_ENV_NAMES))
    if unknown:
        raise ValueError(f"environment variables not allowed by the trainer policy: {', '.join(unknown)}")
    variables = []
    for name in sorted(values):
        if name in SECURE_ENV_NAMES:
            variables.append(EnvironmentVariable(name=name, secure_value=values[name]))
        else:
            variables.append(EnvironmentVariable(name=name, value=values[name]))
    return variables


def build_container_group(trainer_image: str, contract_digest: str, environment: Mapping[str, str], location: str,
                          cpu: float = trainer_resources.DEFAULT_CPU,
                          memory_in_gb: float = trainer_resources.DEFAULT_MEMORY_GB,
                          identity_id: str | None = None, registry: str | None = None,
                          sidecar: SidecarSpec = DEFAULT_SIDECAR, workload: str = "training") -> ContainerGroup:
    """Trainer + SKR sidecar, `sku=Confidential` with the contract's CCE policy, no public IP,
    never restarted (a run is one attempt). Secrets go in as secure values. The builder sets
    `CCR_CONTRACT_DIGEST` itself; a caller passing it is refused. `cpu` / `memory_in_gb` are the
    trainer's (the contract's `workloads.training.resources`), within shared/trainer_resources.py.
    `identity_id` (a user-assigned identity's resource id, `CCR_TRAINER_IDENTITY_ID`) is the
    group's identity: the SKR sidecar gets its Key Vault token from it (IMDS), as in Microsoft's
    ACI example, so that identity needs Key Vault Crypto Service Release User on each vault.
    `registry` (`CCR_TRAINER_REGISTRY`, a login server): a trainer image from it is pulled with
    that identity (imageRegistryCredentials `identity`; it needs AcrPull there), never with a
    password, so the registry can refuse anonymous pulls. `sidecar`: the SKR sidecar container,
    the same spec the policy names. `workload` "inference" runs the inference entrypoint under
    its own policy (INFERENCE_COMMAND)."""
    from azure.mgmt.containerinstance.models import (ConfidentialComputeProperties, Container, ContainerGroup,
                                                     ContainerGroupIdentity, EnvironmentVariable,
                                                     ImageRegistryCredential, ResourceRequests, ResourceRequirements,
                                                     UserAssignedIdentities)
    if CONTRACT_DIGEST_ENV in environment:
        raise ValueError(f"{CONTRACT_DIGEST_ENV} is set by build_container_group from contract_digest")
    reason = trainer_resources.problem({"cpu": cpu, "memory_gb": memory_in_gb})
    if reason:
        raise ValueError(f"trainer resources: {reason}")
    pulled_from_registry = bool(registry) and trainer_image.startswith(f"{registry}/")
    if pulled_from_registry and identity_id is None:
        raise ValueError(f"the trainer image comes from {registry}: the group needs an identity to pull it with")
    cce_policy = training_cce_policy(trainer_image, contract_digest, sidecar, workload)
    environment = {**TRAINER_FIXED_ENV, **environment, CONTRACT_DIGEST_ENV: contract_digest}
    trainer = Container(
        name=TRAINER_CONTAINER_NAME, image=trainer_image, command=list(WORKLOAD_COMMANDS[workload]),
        environment_variables=_environment(environment),
        resources=ResourceRequirements(requests=ResourceRequests(memory_in_gb=memory_in_gb, cpu=cpu)))
    sidecar = Container(
        name=SKR_CONTAINER_NAME, image=sidecar.image, command=list(sidecar.command),
        environment_variables=[EnvironmentVariable(name=n, value=v) for n, v in sidecar.environment],
        resources=ResourceRequirements(requests=ResourceRequests(memory_in_gb=trainer_resources.SIDECAR_MEMORY_GB,
                                                                 cpu=trainer_resources.SIDECAR_CPU)))
    return ContainerGroup(
        location=location, containers=[trainer, sidecar], os_type="Linux", restart_policy="Never",
        sku="Confidential", ip_address=None,
        confidential_compute_properties=ConfidentialComputeProperties(cce_policy=cce_policy),
        image_registry_credentials=[ImageRegistryCredential(server=registry, identity=identity_id)]
        if pulled_from_registry else None,
        identity=None if identity_id is None else ContainerGroupIdentity(
            type="UserAssigned", user_assigned_identities={identity_id: UserAssignedIdentities()}))
