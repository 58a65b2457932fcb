"""The confidential container group a run deploys, and the CCE policy that pins it.

Key release policies are written when a party imports its key, long before any run: they pin
the hostdata of the policy built here from the trainer image alone. So the policy depends
only on the image digest, the fixed trainer command and the fixed set of environment
variable *names* below; run-specific values never change it.
"""
from __future__ import annotations

import re
from typing import Mapping

from azure.mgmt.containerinstance.models import (ConfidentialComputeProperties, Container, ContainerGroup,
                                                 EnvironmentVariable, ResourceRequests, ResourceRequirements)

from shared.cce_policy import (SKR_SIDECAR_COMMAND, SKR_SIDECAR_IMAGE, build_cce_policy, hostdata_of)

TRAINER_IMAGE_NAME = "ccr-trainer"
TRAINER_IMAGE = re.compile(r"^ccr-trainer@(sha256:[0-9a-f]{64})$")
TRAINER_COMMAND = ("python", "-m", "trainer_container")
TRAINER_CONTAINER_NAME = "trainer"
SKR_CONTAINER_NAME = "skr-sidecar"
SKR_PORT = 8080
SKR_URL_IN_GROUP = f"http://localhost:{SKR_PORT}"

# Everything the trainer reads (trainer_container/environment.py); the policy pins the names.
# Storage access is CCR_BLOB_URLS (per-blob SAS URLs, shared/blob_sas.py), never a connection string.
TRAINER_ENV_NAMES = ("CCR_BLOB_URLS", "CCR_CA_BUNDLE", "CCR_CONTRACT", "CCR_CONTRACT_URL", "CCR_EPSILON_BUDGET",
                     "CCR_EVENTGRID_KEY", "CCR_EVENTGRID_TOPIC_URL", "CCR_KEYVAULT_URL", "CCR_MAA_URL", "CCR_RUN_ID",
                     "CCR_SKR_URL")
SECURE_ENV_NAMES = frozenset({"CCR_BLOB_URLS", "CCR_EVENTGRID_KEY"})


def trainer_image_digest(trainer_image: str) -> str:
    """`sha256:<hex>` of a pinned trainer image reference (`ccr-trainer@sha256:<hex>`)."""
    match = TRAINER_IMAGE.match(trainer_image or "")
    if not match:
        raise ValueError("trainer image must be pinned by digest: 'ccr-trainer@sha256:<64 hex>'")
    return match.group(1)


def trainer_cce_policy(trainer_image: str) -> str:
    """Base64 CCE policy of the group that runs this trainer image."""
    return build_cce_policy(trainer_image, trainer_image_digest(trainer_image), TRAINER_COMMAND, TRAINER_ENV_NAMES)


def trainer_hostdata(trainer_image: str) -> str:
    """The host data SEV-SNP reports for that group: what key release policies pin."""
    return hostdata_of(trainer_cce_policy(trainer_image))


def _environment(values: Mapping[str, str]) -> list[EnvironmentVariable]:
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


def build_container_group(trainer_image: str, environment: Mapping[str, str], location: str,
                          cpu: float = 1.0, memory_in_gb: float = 2.0) -> ContainerGroup:
    """Trainer + SKR sidecar, `sku=Confidential` with the trainer's CCE policy, no public IP,
    never restarted (a run is one attempt). Secrets go in as secure values."""
    environment = {"CCR_SKR_URL": SKR_URL_IN_GROUP, **environment}
    trainer = Container(
        name=TRAINER_CONTAINER_NAME, image=trainer_image, command=list(TRAINER_COMMAND),
        environment_variables=_environment(environment),
        resources=ResourceRequirements(requests=ResourceRequests(memory_in_gb=memory_in_gb, cpu=cpu)))
    sidecar = Container(
        name=SKR_CONTAINER_NAME, image=SKR_SIDECAR_IMAGE, command=list(SKR_SIDECAR_COMMAND),
        environment_variables=[EnvironmentVariable(name="Port", value=str(SKR_PORT))],
        resources=ResourceRequirements(requests=ResourceRequests(memory_in_gb=0.5, cpu=0.5)))
    return ContainerGroup(
        location=location, containers=[trainer, sidecar], os_type="Linux", restart_policy="Never",
        sku="Confidential", ip_address=None,
        confidential_compute_properties=ConfidentialComputeProperties(cce_policy=trainer_cce_policy(trainer_image)))
