"""The ACI twin driven by the official azure-mgmt-containerinstance client over HTTPS."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

from local_emulator import images
from shared.credentials import StaticTokenCredential
from shared.cce_policy import hostdata_of
from shared.container_group import TRAINER_CONTAINER_NAME, build_container_group
from tests.aci.conftest import (LOCATION, RESOURCE_GROUP, SUBSCRIPTION, pid_alive, sidecar_reachable,
                              wait_for)

pytestmark = pytest.mark.timeout(120)   # a hung twin fails fast instead of stalling the suite

SIGNATURE = "c2VjcmV0LXNhcy1zaWduYXR1cmU"  # what must never be echoed
CONTRACT = "c0" * 32          # any fixed contract digest
SECRET = json.dumps({"datasets/c1/icmr.ccr": f"http://127.0.0.1:1/a/datasets/c1/icmr.ccr?sp=r&sig={SIGNATURE}"})


def _environment(behaviour: dict) -> dict:
    return {"CCR_RUN_ID": "run-0123456789abcdef", "CCR_CONTRACT": json.dumps(behaviour),
            "CCR_BLOB_URLS": SECRET, "CCR_MAA_URL": "https://127.0.0.1:1/maa"}


def _logs(client, name: str, tail: int | None = None) -> str:
    return client.containers.list_logs(RESOURCE_GROUP, name, TRAINER_CONTAINER_NAME, tail=tail).content or ""


def _log_value(client, name: str, key: str) -> str:
    text = wait_for(lambda: (lambda t: t if "ready" in t else None)(_logs(client, name)))
    return next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "="))


def _stats(twin, tls, token) -> dict:
    response = requests.get(f"{twin.url}/_twin/stats", headers={"Authorization": f"Bearer {token}"},
                            verify=str(tls.ca_path), timeout=10)
    assert response.status_code == 200
    return response.json()


def test_create_get_list_logs_delete(client, twin, tls, token, stand_in_image, sidecars, maa):
    environment = {**_environment({"attest": True, "lines": 30, "sleep": 60}), "CCR_MAA_URL": maa.url}
    spec = build_container_group(stand_in_image.ref, CONTRACT, environment, LOCATION)
    group = client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-a", spec).result()
    assert group.provisioning_state == "Succeeded"
    assert group.sku == "Confidential" and group.ip_address is None

    pid = int(_log_value(client, "run-a", "pid"))
    assert pid_alive(pid)
    # the process runs the image's code, not the working tree's
    assert _log_value(client, "run-a", "file").startswith(str(twin.runtime.state_dir))
    names = _log_value(client, "run-a", "env").split(",")
    assert {"CCR_RUN_ID", "CCR_BLOB_URLS", "CCR_SKR_URL", "CCR_CONTRACT"} <= set(names)
    # its SKR sidecar attests with hardware reports for this group's exact policy
    assert _log_value(client, "run-a", "sidecar_hostdata") == hostdata_of(spec.confidential_compute_properties.cce_policy)

    fetched = client.container_groups.get(RESOURCE_GROUP, "run-a")
    trainer = next(c for c in fetched.containers if c.name == TRAINER_CONTAINER_NAME)
    assert trainer.instance_view.current_state.state == "Running"
    assert fetched.instance_view.state == "Running"
    secure = next(v for v in trainer.environment_variables if v.name == "CCR_BLOB_URLS")
    assert secure.value is None and secure.secure_value is None
    assert SIGNATURE not in json.dumps([v.as_dict() for v in trainer.environment_variables])
    state_files = "".join(p.read_text() for p in twin.runtime.state_dir.rglob("*.json"))
    assert SIGNATURE not in state_files
    assert SIGNATURE not in json.dumps([g.as_dict() for g in client.container_groups.list()])

    assert "run-a" in [g.name for g in client.container_groups.list_by_resource_group(RESOURCE_GROUP)]
    assert "run-a" in [g.name for g in client.container_groups.list()]

    tail = _logs(client, "run-a", tail=2).splitlines()
    assert tail == ["line 29", "ready"]

    assert len(sidecars) == 1 and sidecar_reachable(sidecars[0].url)
    sidecar_url = sidecars[0].url
    client.container_groups.begin_delete(RESOURCE_GROUP, "run-a").result()
    assert not pid_alive(pid)
    assert not sidecar_reachable(sidecar_url)
    with pytest.raises(ResourceNotFoundError):
        client.container_groups.get(RESOURCE_GROUP, "run-a")
    assert list(client.container_groups.list_by_resource_group(RESOURCE_GROUP)) == []
    assert _stats(twin, tls, token)["created"] == 1


def test_exit_code_is_reported_and_sidecar_stopped(client, stand_in_image, sidecars):
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment({"exit": 3, "sleep": 1}), LOCATION)
    client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-exit", spec).result()
    sidecar_url = sidecars[0].url

    def terminated():
        group = client.container_groups.get(RESOURCE_GROUP, "run-exit")
        trainer = next(c for c in group.containers if c.name == TRAINER_CONTAINER_NAME)
        return group if trainer.instance_view.current_state.state == "Terminated" else None

    group = wait_for(terminated)
    trainer = next(c for c in group.containers if c.name == TRAINER_CONTAINER_NAME)
    assert trainer.instance_view.current_state.exit_code == 3
    assert trainer.instance_view.current_state.finish_time is not None
    assert group.instance_view.state == "Failed"
    assert not sidecar_reachable(sidecar_url)


def test_same_spec_twice_creates_one_group_and_other_spec_conflicts(client, twin, stand_in_image):
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment({"sleep": 60}), LOCATION)
    client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-twice", spec).result()
    again = client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-twice", spec).result()
    assert again.provisioning_state == "Succeeded"
    other = build_container_group(stand_in_image.ref, CONTRACT, _environment({"sleep": 1}), LOCATION)
    with pytest.raises(HttpResponseError) as refused:
        client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-twice", other).result()
    assert refused.value.status_code == 409
    assert twin.stats()["created"] == 1 and twin.stats()["groups"]


def _assert_refused_and_nothing_ran(client, twin, name: str, spec, reason: str) -> None:
    with pytest.raises(HttpResponseError) as refused:
        client.container_groups.begin_create_or_update(RESOURCE_GROUP, name, spec).result()
    assert reason in str(refused.value)
    group = client.container_groups.get(RESOURCE_GROUP, name)
    assert group.provisioning_state == "Failed"
    assert all(c.instance_view.current_state.state == "Waiting" for c in group.containers)
    record = twin.runtime.get(group.id)
    assert record["pid"] is None
    group_dir = twin.runtime.state_dir / "groups" / record["dir"]
    assert not (group_dir / "trainer.log").exists() and not (group_dir / "app").exists()


def test_tampered_archive_is_refused(client, twin, stand_in_image, sidecars):
    with stand_in_image.path.open("ab") as archive:
        archive.write(b"\0" * 512)
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment({}), LOCATION)
    _assert_refused_and_nothing_ran(client, twin, "run-tampered", spec, "content digest does not match")
    assert sidecars == []


def test_unknown_image_is_refused(client, twin):
    spec = build_container_group("ccr-trainer@sha256:" + "ab" * 32, CONTRACT, _environment({}), LOCATION)
    _assert_refused_and_nothing_ran(client, twin, "run-unknown", spec, "not found in the local image store")


def test_policy_pinning_another_image_is_refused(client, twin, tmp_path, images_dir, stand_in_image, sidecars):
    source = tmp_path / "stand-in-src"
    (source / "trainer_container" / "extra.py").write_text("CHANGED = True\n")
    other = images.build_image(source, packages=("trainer_container",), images_dir=images_dir)
    assert other.digest != stand_in_image.digest
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment({}), LOCATION)
    spec.confidential_compute_properties = build_container_group(
        other.ref, CONTRACT, {}, LOCATION).confidential_compute_properties
    _assert_refused_and_nothing_ran(client, twin, "run-other-policy", spec,
                                    f"CCE policy does not allow image {stand_in_image.digest}")
    assert sidecars == []


def test_command_not_in_policy_is_refused(client, twin, stand_in_image):
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment({}), LOCATION)
    spec.containers[0].command = ["python", "-c", "print('not the trainer')"]
    _assert_refused_and_nothing_ran(client, twin, "run-command", spec, "does not allow this command")


def test_environment_variable_not_in_policy_is_refused(client, twin, stand_in_image):
    from azure.mgmt.containerinstance.models import EnvironmentVariable
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment({}), LOCATION)
    spec.containers[0].environment_variables.append(EnvironmentVariable(name="PYTHONINSPECT", value="1"))
    _assert_refused_and_nothing_ran(client, twin, "run-env", spec, "environment variable PYTHONINSPECT")


@pytest.mark.parametrize("change, reason", [
    (lambda spec: setattr(spec, "sku", "Standard"), "sku Confidential"),
    (lambda spec: setattr(spec, "confidential_compute_properties", None), "needs a ccePolicy"),
])
def test_non_confidential_group_is_rejected_and_nothing_created(client, twin, stand_in_image, change, reason):
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment({}), LOCATION)
    change(spec)
    with pytest.raises(HttpResponseError) as refused:
        client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-bad", spec).result()
    assert refused.value.status_code == 400 and reason in str(refused.value)
    with pytest.raises(ResourceNotFoundError):
        client.container_groups.get(RESOURCE_GROUP, "run-bad")
    assert twin.stats()["created"] == 0


def test_requests_without_the_token_get_401(twin, tls, stand_in_image):
    from azure.mgmt.containerinstance import ContainerInstanceManagementClient
    stranger = ContainerInstanceManagementClient(StaticTokenCredential("not-the-token"), SUBSCRIPTION, base_url=twin.url,
                                                 connection_verify=str(tls.ca_path))
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment({}), LOCATION)
    with pytest.raises(ClientAuthenticationError):
        stranger.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-401", spec).result()
    path = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.ContainerInstance/containerGroups?api-version=2023-05-01"
    bare = requests.get(twin.url + path, verify=str(tls.ca_path), timeout=10)
    assert bare.status_code == 401 and "Bearer" in bare.headers["WWW-Authenticate"]
    assert twin.stats()["created"] == 0


def test_stop_kills_the_process_group_and_keeps_the_record(client, stand_in_image):
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment({"sleep": 60}), LOCATION)
    client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-stop", spec).result()
    pid = int(_log_value(client, "run-stop", "pid"))
    client.container_groups.stop(RESOURCE_GROUP, "run-stop")
    assert not pid_alive(pid)
    group = client.container_groups.get(RESOURCE_GROUP, "run-stop")
    assert group.instance_view.state == "Stopped"


def test_real_trainer_image_runs_from_its_archive(client, images_dir):
    """The real trainer image starts under the twin; without its settings it says so and exits 2."""
    real = images.build_image(images_dir=images_dir)
    spec = build_container_group(real.ref, CONTRACT, {"CCR_CONTRACT": "{}"}, LOCATION)
    client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-real", spec).result()

    def finished():
        group = client.container_groups.get(RESOURCE_GROUP, "run-real")
        state = next(c for c in group.containers if c.name == TRAINER_CONTAINER_NAME).instance_view.current_state
        return state if state.state == "Terminated" else None

    state = wait_for(finished, timeout=60, interval=0.2)
    assert state.exit_code == 2
    assert "CCR_RUN_ID is not set" in _logs(client, "run-real", tail=5)
    client.container_groups.begin_delete(RESOURCE_GROUP, "run-real").result()


def test_delete_during_creation_leaves_nothing_running(client, twin, stand_in_image, sidecars):
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment({"sleep": 60}), LOCATION)
    client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-hasty", spec, polling=False)
    client.container_groups.begin_delete(RESOURCE_GROUP, "run-hasty").result()
    with pytest.raises(ResourceNotFoundError):
        client.container_groups.get(RESOURCE_GROUP, "run-hasty")
    for sidecar in sidecars:
        with pytest.raises(RuntimeError):
            sidecar.url                       # its server is stopped
    stats = twin.stats()
    assert stats["created"] == 1 and stats["deleted"] == 1
    # nothing of the group is left on disk, and no process of it runs
    assert not any((twin.runtime.state_dir / "groups").rglob("group.json"))
    assert not [p for p in Path("/proc").glob("[0-9]*/cwd") if _cwd_under(p, twin.runtime.state_dir)]


def _cwd_under(link: Path, root: Path) -> bool:
    try:
        return str(link.readlink()).startswith(str(root))
    except OSError:
        return False


@pytest.mark.timeout(30)
def test_a_silent_connection_does_not_block_the_twin(client, twin):
    import socket
    port = int(twin.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)):        # never says hello
        assert list(client.container_groups.list()) == []


def test_concurrent_creates_of_one_group_create_it_once(client, twin, stand_in_image):
    from concurrent.futures import ThreadPoolExecutor
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment({"sleep": 60}), LOCATION)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: client.container_groups.begin_create_or_update(
            RESOURCE_GROUP, "run-race", spec, polling_interval=0.2).result().provisioning_state, range(4)))
    assert results == ["Succeeded"] * 4
    assert twin.stats()["created"] == 1


@pytest.mark.parametrize("resource_group", ["..", "bad.", "a/b"])
def test_resource_names_that_could_escape_the_state_folder_are_refused(client, twin, stand_in_image, resource_group):
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment({}), LOCATION)
    with pytest.raises(HttpResponseError) as refused:
        client.container_groups.begin_create_or_update(resource_group, "run-x", spec).result()
    assert refused.value.status_code in (400, 404)
    assert twin.stats()["created"] == 0
    assert not any((twin.runtime.state_dir.parent).glob("*/run-x"))


def test_processes_left_behind_by_the_trainer_die_with_it(client, stand_in_image):
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment({"child": True, "sleep": 0.5}), LOCATION)
    client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-child", spec).result()
    child = int(_log_value(client, "run-child", "child"))
    wait_for(lambda: not pid_alive(child))
    # the twin records the exit after it has killed the stragglers and stopped the sidecar
    group = wait_for(lambda: (lambda g: g if g.instance_view.state != "Running" else None)(
        client.container_groups.get(RESOURCE_GROUP, "run-child")))
    assert group.instance_view.state == "Succeeded"


@pytest.mark.parametrize("containers", [["not-an-object"], [{"name": "trainer", "properties": "x"}],
                                        [{"name": "trainer", "properties": {"image": "i", "command": ["c"],
                                                                            "environmentVariables": ["x"]}}]])
def test_malformed_containers_are_400_not_a_twin_error(twin, tls, token, stand_in_image, containers):
    from shared.container_group import training_cce_policy
    path = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.ContainerInstance"
            f"/containerGroups/run-raw?api-version=2023-05-01")
    body = {"location": LOCATION, "properties": {
        "sku": "Confidential", "containers": containers,
        "confidentialComputeProperties": {"ccePolicy": training_cce_policy(stand_in_image.ref, CONTRACT)}}}
    response = requests.put(twin.url + path, json=body, headers={"Authorization": f"Bearer {token}"},
                            verify=str(tls.ca_path), timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in ("InvalidContainer", "InvalidEnvironmentVariable")
    assert twin.stats()["created"] == 0
