"""The trainer group's ARM template that `az confcom acipolicygen` reads to produce the policy
template contracts pin (docs/DEPLOY.md, docs/INTERFACES.md "How production produces the
template"): the containers, commands and fixed values of shared/container_group.py, every other
trainer variable (CCR_CONTRACT_DIGEST included) as a parameter without a default, so
acipolicygen writes it as a `NAME=.*` rule, and an empty ccePolicy. The SKR sidecar is the one
`CCR_SKR_SIDECAR_IMAGE` names (digest-pinned; shared/skr_sidecar.py's default otherwise): the
same one the Function App deploys and `ccr contract new` writes into the contract.

    python infra/hooks/trainer_group_template.py <registry>/<repository>@sha256:<digest> > trainer-group.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # the project root: shared/

from shared import container_group as g
from shared import skr_sidecar
from shared.skr_sidecar import SidecarSpec


def template(image: str, sidecar: SidecarSpec | None = None) -> dict:
    sidecar = sidecar or skr_sidecar.configured()
    variable = [n for n in g.TRAINER_ENV_NAMES if n not in g.TRAINER_FIXED_ENV]
    secret = lambda n: n in g.SECURE_ENV_NAMES
    env = [{"name": n, "value": v} for n, v in g.TRAINER_FIXED_ENV.items()] + [
        {"name": n, ("secureValue" if secret(n) else "value"): f"[parameters('{n}')]"} for n in variable]
    group = {"type": "Microsoft.ContainerInstance/containerGroups", "apiVersion": "2023-05-01",
             "name": "ccr-trainer-policy", "location": "[resourceGroup().location]",
             "properties": {"sku": "Confidential", "osType": "Linux", "restartPolicy": "Never",
                            "confidentialComputeProperties": {"ccePolicy": ""},
                            "containers": [
                                {"name": g.TRAINER_CONTAINER_NAME,
                                 "properties": {"image": image, "command": list(g.TRAINER_COMMAND),
                                                "environmentVariables": env,
                                                "resources": {"requests": {"cpu": 1, "memoryInGB": 2}}}},
                                {"name": g.SKR_CONTAINER_NAME,
                                 "properties": {"image": sidecar.image, "command": list(sidecar.command),
                                                "environmentVariables": [{"name": k, "value": v}
                                                                         for k, v in sidecar.environment],
                                                "resources": {"requests": {"cpu": 0.5, "memoryInGB": 0.5}}}}]}}
    return {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
            "contentVersion": "1.0.0.0",
            "parameters": {n: {"type": "securestring" if secret(n) else "string"} for n in variable},
            "resources": [group]}


if __name__ == "__main__":
    print(json.dumps(template(sys.argv[1]), indent=2))
