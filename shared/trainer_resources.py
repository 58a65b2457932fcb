"""What a run's trainer container may ask of Azure Container Instances (CPU cores, memory in GB).

A contract may set `workloads.training.resources = {"cpu": <number>, "memory_gb": <number>}`;
without it the trainer gets the defaults below. The group also runs the SKR sidecar, so the
trainer's share is the group's maximum minus the sidecar's fixed request. A request beyond that
is refused when the contract is validated, so nobody signs (and no run deploys) a group ARM
would refuse.

Maximum resources per confidential container group: 4 CPU, 16 GB memory — Microsoft Learn,
"Resource availability & quota limits for ACI", table "Confidential Container Resources"
(https://learn.microsoft.com/azure/container-instances/container-instances-resource-and-quota-limits;
source MicrosoftDocs/azure-docs articles/container-instances/container-instances-resource-and-quota-limits.md).
Regions may grant less under load; the page says so and ARM then fails the deployment.
No third-party imports: the contract module, the group builder and the ACI twin all read it.
"""
from __future__ import annotations

import math

CONFIDENTIAL_GROUP_MAX_CPU = 4.0
CONFIDENTIAL_GROUP_MAX_MEMORY_GB = 16.0
SIDECAR_CPU = 0.5
SIDECAR_MEMORY_GB = 0.5
DEFAULT_CPU = 1.0
DEFAULT_MEMORY_GB = 2.0
MAX_CPU = CONFIDENTIAL_GROUP_MAX_CPU - SIDECAR_CPU              # 3.5: the trainer's share
MAX_MEMORY_GB = CONFIDENTIAL_GROUP_MAX_MEMORY_GB - SIDECAR_MEMORY_GB   # 15.5
FIELDS = ("cpu", "memory_gb")


def _bounded(value, name: str, maximum: float) -> str | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return f"{name} must be a finite number"
    if value <= 0:
        return f"{name} must be > 0"
    if value > maximum:
        return (f"{name} {value:g} exceeds {maximum:g}, the most a trainer can have in a confidential container "
                f"group ({CONFIDENTIAL_GROUP_MAX_CPU:g} CPU / {CONFIDENTIAL_GROUP_MAX_MEMORY_GB:g} GB per group, "
                f"less the SKR sidecar's {SIDECAR_CPU:g} CPU / {SIDECAR_MEMORY_GB:g} GB)")
    return None


def problem(resources) -> str | None:
    """Why `resources` (the contract's object) cannot be deployed, or None."""
    if not isinstance(resources, dict):
        return "must be an object {\"cpu\": <number>, \"memory_gb\": <number>}"
    unknown = sorted(set(resources) - set(FIELDS))
    if unknown:
        return f"has unknown fields {', '.join(unknown)} (allowed: {', '.join(FIELDS)})"
    for name, maximum in (("cpu", MAX_CPU), ("memory_gb", MAX_MEMORY_GB)):
        if name in resources:
            reason = _bounded(resources[name], name, maximum)
            if reason:
                return reason
    return None


def of_training(training: dict) -> tuple[float, float]:
    """(cpu, memory_gb) for a validated training workload: its resources or the defaults."""
    resources = training.get("resources") or {}
    return float(resources.get("cpu", DEFAULT_CPU)), float(resources.get("memory_gb", DEFAULT_MEMORY_GB))


def group_problem(requests: list[tuple[float, float]]) -> str | None:
    """Why a confidential group whose containers request these (cpu, memory_gb) is too large, or None."""
    cpu = sum(c for c, _ in requests)
    memory = sum(m for _, m in requests)
    if cpu > CONFIDENTIAL_GROUP_MAX_CPU + 1e-9 or memory > CONFIDENTIAL_GROUP_MAX_MEMORY_GB + 1e-9:
        return (f"the container group requests {cpu:g} CPU and {memory:g} GB; a confidential container group "
                f"may have at most {CONFIDENTIAL_GROUP_MAX_CPU:g} CPU and {CONFIDENTIAL_GROUP_MAX_MEMORY_GB:g} GB")
    return None
