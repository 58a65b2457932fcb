"""The SKR sidecar is a digest-pinned parameter of the policy and group builders (shared/
skr_sidecar.py): a tag is refused wherever it is named, a different sidecar is a different
policy (template digest and host data), the deployment refuses a contract written for another
sidecar, and the ACI twin runs only the sidecar it is configured with, as the policy names it."""
from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError

from local_emulator.aci import AciTwin
from orchestrations import deployment
from shared import skr_sidecar
from shared.cce_policy import hostdata_of, policy_containers
from shared.container_group import (build_container_group, policy_template_sha256, training_cce_policy,
                                    training_hostdata)
from shared.skr_sidecar import DEFAULT_SIDECAR, SidecarError, SidecarSpec
from tests.aci.conftest import LOCATION, RESOURCE_GROUP

pytestmark = pytest.mark.timeout(120)

IMAGE = "ccr-trainer@sha256:" + "a1" * 32
CONTRACT = "c0" * 32
OTHER = SidecarSpec("registry.example/aci/skr@sha256:" + "5e" * 32)   # e.g. an operator's own mirror of another tag


@pytest.mark.parametrize("reference", ["mcr.microsoft.com/aci/skr:2.14", "mcr.microsoft.com/aci/skr",
                                       "mcr.microsoft.com/aci/skr@sha256:abc", "skr@sha256:" + "ab" * 32,
                                       "mcr.microsoft.com/aci/skr:2.14@sha256:" + "ab" * 32])
def test_a_sidecar_not_pinned_by_digest_is_refused(reference, monkeypatch):
    with pytest.raises(SidecarError, match="must pin the SKR sidecar by digest"):
        SidecarSpec(reference)
    monkeypatch.setenv(skr_sidecar.SIDECAR_IMAGE_SETTING, reference)
    with pytest.raises(SidecarError, match="CCR_SKR_SIDECAR_IMAGE must pin the SKR sidecar by digest"):
        skr_sidecar.configured()


def test_the_default_is_microsofts_image_by_digest(monkeypatch):
    monkeypatch.delenv(skr_sidecar.SIDECAR_IMAGE_SETTING, raising=False)
    assert skr_sidecar.configured() == DEFAULT_SIDECAR
    assert DEFAULT_SIDECAR.image.startswith("mcr.microsoft.com/aci/skr@sha256:")
    monkeypatch.setenv(skr_sidecar.SIDECAR_IMAGE_SETTING, OTHER.image)
    assert skr_sidecar.configured() == OTHER


def test_changing_the_sidecar_changes_the_template_digest_and_the_host_data():
    assert policy_template_sha256(IMAGE, OTHER) != policy_template_sha256(IMAGE, DEFAULT_SIDECAR)
    assert training_hostdata(IMAGE, CONTRACT, OTHER) != training_hostdata(IMAGE, CONTRACT, DEFAULT_SIDECAR)
    assert policy_template_sha256(IMAGE) == policy_template_sha256(IMAGE, DEFAULT_SIDECAR)
    # the command and environment are part of the spec, hence of the policy, too
    assert policy_template_sha256(IMAGE, SidecarSpec(OTHER.image, command=("/bin/sh",))) != \
        policy_template_sha256(IMAGE, OTHER)
    assert policy_template_sha256(IMAGE, SidecarSpec(OTHER.image, environment=(("Port", "9090"),))) != \
        policy_template_sha256(IMAGE, OTHER)


def test_the_group_runs_the_sidecar_its_policy_names():
    group = build_container_group(IMAGE, CONTRACT, {"CCR_RUN_ID": "run-1"}, LOCATION, sidecar=OTHER)
    _, sidecar = group.containers
    assert sidecar.image == OTHER.image and sidecar.command == list(OTHER.command)
    _, named, _ = policy_containers(group.confidential_compute_properties.cce_policy)
    assert named.id == OTHER.image
    assert hostdata_of(group.confidential_compute_properties.cce_policy) == training_hostdata(IMAGE, CONTRACT, OTHER)


def _payload(sidecar: SidecarSpec | None, template: str | None = None) -> dict:
    training = {"image": IMAGE, "policy_template_sha256": template or policy_template_sha256(IMAGE, sidecar or
                                                                                               DEFAULT_SIDECAR)}
    if sidecar is not None:
        training["skr_sidecar_image"] = sidecar.image
    return {"workloads": {"training": training}}


def test_the_deployment_refuses_a_contract_for_another_sidecar_before_deploying(monkeypatch):
    monkeypatch.delenv(skr_sidecar.SIDECAR_IMAGE_SETTING, raising=False)
    assert deployment.policy_problem(_payload(None)) is None               # a contract before the field
    assert deployment.policy_problem(_payload(DEFAULT_SIDECAR)) is None
    reason = deployment.policy_problem(_payload(OTHER))
    assert f"written for SKR sidecar {OTHER.image}" in reason and "CCR_SKR_SIDECAR_IMAGE" in reason
    monkeypatch.setenv(skr_sidecar.SIDECAR_IMAGE_SETTING, OTHER.image)
    assert deployment.policy_problem(_payload(OTHER)) is None
    assert "CCR_SKR_SIDECAR_IMAGE" in deployment.policy_problem(_payload(None))
    # a contract that names the sidecar but pins a template computed with another one
    forged = _payload(OTHER, template=policy_template_sha256(IMAGE, DEFAULT_SIDECAR))
    assert "policy_template_sha256 is not the policy template" in deployment.policy_problem(forged)
    monkeypatch.setenv(skr_sidecar.SIDECAR_IMAGE_SETTING, "mcr.microsoft.com/aci/skr:2.14")
    assert "CCR_SKR_SIDECAR_IMAGE must pin" in deployment.policy_problem(_payload(OTHER))


def _refused(client, twin, name: str, spec, reason: str) -> None:
    with pytest.raises(HttpResponseError) as refused:
        client.container_groups.begin_create_or_update(RESOURCE_GROUP, name, spec).result()
    assert reason in str(refused.value)
    record = twin.runtime.get(client.container_groups.get(RESOURCE_GROUP, name).id)
    assert record["pid"] is None and record["sidecar"] is None


def test_the_twin_refuses_a_sidecar_image_its_policy_does_not_name(client, twin, stand_in_image, sidecars):
    """A group whose sidecar container runs another image than the platform's (and its
    policy's) SKR sidecar: nothing starts, no sidecar twin is created."""
    spec = build_container_group(stand_in_image.ref, CONTRACT, {"CCR_RUN_ID": "run-1"}, LOCATION)
    spec.containers[1].image = OTHER.image
    _refused(client, twin, "run-swapped-sidecar", spec, f"other containers: {spec.containers[0].name}")
    assert sidecars == []


def test_the_twin_recognises_the_configured_sidecar_only(tmp_path, images_dir, tls, token, hardware_root,
                                                         stand_in_image):
    from azure.mgmt.containerinstance import ContainerInstanceManagementClient

    from local_emulator.aci import skr_sidecar_factory
    from shared.credentials import StaticTokenCredential
    from tests.aci.conftest import SUBSCRIPTION
    with pytest.raises(SidecarError, match="must pin the SKR sidecar by digest"):
        AciTwin(tmp_path / "refused", images_dir, tls.server_context(), token, None,
                sidecar_image="mcr.microsoft.com/aci/skr:2.14")
    started = []    # the policy each sidecar twin was bound to

    def factory(policy):
        started.append(policy)
        return skr_sidecar_factory(hardware_root, str(tls.ca_path), token)(policy)

    twin = AciTwin(tmp_path / "aci", images_dir, tls.server_context(), token, factory, kill_grace_seconds=2.0,
                   sidecar_image=OTHER.image).start()
    try:
        with ContainerInstanceManagementClient(StaticTokenCredential(token), SUBSCRIPTION, base_url=twin.url,
                                               connection_verify=str(tls.ca_path)) as client:
            default = build_container_group(stand_in_image.ref, CONTRACT, {"CCR_RUN_ID": "run-1"}, LOCATION)
            _refused(client, twin, "run-default-sidecar", default, f"platform's {OTHER.image}")
            mixed = build_container_group(stand_in_image.ref, CONTRACT, {"CCR_RUN_ID": "run-1"}, LOCATION)
            mixed.containers[1].image = OTHER.image        # the platform's sidecar, the policy names another
            _refused(client, twin, "run-policy-names-another", mixed,
                     f"the CCE policy does not name the SKR sidecar image {OTHER.image}")
            assert started == []
            matching = build_container_group(stand_in_image.ref, CONTRACT, {"CCR_RUN_ID": "run-1"}, LOCATION,
                                             sidecar=OTHER)
            group = client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-other", matching).result()
            assert group.provisioning_state == "Succeeded"
            assert started == [training_cce_policy(stand_in_image.ref, CONTRACT, OTHER)]
            client.container_groups.begin_delete(RESOURCE_GROUP, "run-other").result()
    finally:
        twin.stop()
