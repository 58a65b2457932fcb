"""A twin killed with -9 leaves an orphaned trainer; the next twin kills it and still answers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from azure.mgmt.containerinstance import ContainerInstanceManagementClient

from local_emulator.aci import AciTwin
from shared.credentials import StaticTokenCredential
from shared.container_group import TRAINER_CONTAINER_NAME, build_container_group
from tests.aci.conftest import LOCATION, RESOURCE_GROUP, SUBSCRIPTION, pid_alive, wait_for

pytestmark = pytest.mark.timeout(120)   # a hung twin fails fast instead of stalling the suite


def test_restarted_twin_kills_orphans_and_keeps_records(tmp_path, tls, token, images_dir, stand_in_image):
    state_dir = tmp_path / "aci"
    crashed = subprocess.Popen([sys.executable, "-m", "tests.aci.twin_process", str(state_dir), str(images_dir),
                                str(tls.server_chain_path)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "ACI_TWIN_TOKEN": token})
    pid = None
    try:
        url = crashed.stdout.readline().strip()
        client = ContainerInstanceManagementClient(StaticTokenCredential(token), SUBSCRIPTION, base_url=url,
                                                   connection_verify=str(tls.ca_path))
        spec = build_container_group(stand_in_image.ref, "c0" * 32, {"CCR_CONTRACT": json.dumps({"sleep": 120})},
                                     LOCATION)
        spec.containers = [c for c in spec.containers if c.name == TRAINER_CONTAINER_NAME]  # no sidecar here
        client.container_groups.begin_create_or_update(RESOURCE_GROUP, "orphan", spec).result()
        logs = wait_for(lambda: client.containers.list_logs(RESOURCE_GROUP, "orphan", TRAINER_CONTAINER_NAME).content)
        pid = int(logs.split("pid=", 1)[1].split()[0])

        crashed.send_signal(signal.SIGKILL)
        crashed.wait(timeout=10)
        assert pid_alive(pid)              # the trainer outlived its twin

        twin = AciTwin(state_dir, images_dir, tls.server_context(), token, None, kill_grace_seconds=1.0).start()
        try:
            assert not pid_alive(pid)
            client = ContainerInstanceManagementClient(StaticTokenCredential(token), SUBSCRIPTION, base_url=twin.url,
                                                       connection_verify=str(tls.ca_path))
            group = client.container_groups.get(RESOURCE_GROUP, "orphan")
            assert group.instance_view.state == "Stopped"
            state = group.containers[0].instance_view.current_state
            assert state.state == "Terminated" and state.exit_code == 137 and "restarted" in state.detail_status
            assert twin.stats()["created"] == 1
            client.container_groups.begin_delete(RESOURCE_GROUP, "orphan").result()
            assert list(client.container_groups.list()) == []
        finally:
            twin.stop()
    finally:
        if crashed.poll() is None:
            crashed.kill()
        crashed.stdout.close()
        if pid and pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
