"""The SKR sidecar twin answers only its own container group, as Microsoft's sidecar does on
localhost inside the group: a process outside the group (this test, or another group's
trainer) that POSTs /key/release to a running group's sidecar gets 403 and nothing is attested
or released, while the group's own trainer gets its key. The group's processes run under a
uid of their own that cannot read the twins' secrets, and that uid's processes die with it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyReleasePolicy

from local_emulator import group_isolation, images
from local_emulator.attestation import MaaTwin
from local_emulator.keyvault import KeyVaultTwin
from local_emulator.vault_rbac import CRYPTO_OFFICER, one_principal
from shared.container_group import TRAINER_CONTAINER_NAME, build_container_group, training_hostdata
from shared.credentials import StaticTokenCredential
from shared.release_policy import build_release_policy, policy_to_json
from local_emulator.sevsnp import HardwareRoot
from tests.conftest import PROJECT_ROOT
from tests.aci.conftest import LOCATION, RESOURCE_GROUP, SUBSCRIPTION, pid_alive, sidecar_reachable, wait_for

pytestmark = pytest.mark.timeout(120)   # a hung twin fails fast instead of stalling the suite

CONTRACT = "5e" * 32

# The probe trainer: asks its own sidecar (and any URL in "others") for spec["kid"], prints the
# HTTP status and the released key's type (never the key); tries to read the files in "read";
# leaves a process behind in a session of its own if "escape"; then sleeps.
PROBE = r'''
import json, os, subprocess, sys, time, urllib.error, urllib.request
spec = json.loads(os.environ["CCR_CONTRACT"])
print("uid=%d\ngid=%d\ngroups=%s" % (os.getuid(), os.getgid(), os.getgroups()), flush=True)
body = json.dumps({"maa_endpoint": os.environ["CCR_MAA_URL"].split("://", 1)[-1],
                   "akv_endpoint": os.environ["CCR_KEYVAULT_URL"].split("://", 1)[-1],
                   "kid": spec.get("kid", "")}).encode()
for label, url in [("own", os.environ["CCR_SKR_URL"])] + [("other%d" % i, u) for i, u in enumerate(spec.get("others", []))]:
    request = urllib.request.Request(url + "/key/release", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            kty = json.loads(json.loads(response.read())["key"])["kty"]
            print("%s_status=%d\n%s_kty=%s" % (label, response.status, label, kty), flush=True)
    except urllib.error.HTTPError as error:
        print("%s_status=%d\n%s_error=%s" % (label, error.code, label, json.loads(error.read())["error"]), flush=True)
for i, path in enumerate(spec.get("read", [])):
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        print("read%d=readable" % i, flush=True)
    except OSError as error:
        print("read%d=%s" % (i, type(error).__name__), flush=True)
with open(os.path.join(os.environ["TMPDIR"], "scratch"), "w") as handle:
    handle.write("the container's own writable temp folder")
print("ca_bundle=%s" % ("readable" if open(os.environ["CCR_CA_BUNDLE"]).read().startswith("-----BEGIN") else "?"),
      flush=True)
if spec.get("escape"):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    print("escaped=%d" % child.pid, flush=True)
print("ready", flush=True)
time.sleep(spec.get("sleep", 0))
'''


class CountingVault(KeyVaultTwin):
    """The Key Vault twin, counting the release operations it is asked for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.release_calls = 0

    def _release(self, *args, **kwargs):
        self.release_calls += 1
        return super()._release(*args, **kwargs)


class CountingMaa(MaaTwin):
    """The attestation twin, counting the attestations it is asked for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attest_calls = 0

    def _attest(self, *args, **kwargs):
        self.attest_calls += 1
        return super()._attest(*args, **kwargs)


@pytest.fixture
def probe_image(tmp_path, images_dir):
    package = tmp_path / "probe-src" / "trainer_container"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""isolation probe"""\n')
    (package / "__main__.py").write_text(PROBE)
    return images.build_image(tmp_path / "probe-src", packages=("trainer_container",), images_dir=images_dir)


@pytest.fixture
def services(tmp_path, tls, token, hardware_root):
    vault = CountingVault(tmp_path / "keyvault", tls, one_principal(token, CRYPTO_OFFICER)).start()
    maa = CountingMaa(tmp_path / "maa", tls, [hardware_root.public_pem]).start()
    yield vault, maa
    maa.stop()
    vault.stop()


@pytest.fixture
def kid(services, tls, token, probe_image) -> str:
    """A data key whose release policy pins the probe trainer's group (for CONTRACT)."""
    vault, maa = services
    with KeyClient(vault_url=vault.url, credential=StaticTokenCredential(token), verify_challenge_resource=False,
                   connection_verify=str(tls.ca_path)) as keys:
        policy = build_release_policy(maa.url, training_hostdata(probe_image.ref, CONTRACT))
        key = keys.import_key("tdp-data", JsonWebKey(kty="oct-HSM", k=os.urandom(32), key_ops=["encrypt", "decrypt"]),
                              exportable=True, release_policy=KeyReleasePolicy(policy_to_json(policy), immutable=True))
    return key.name


def _create(client, name: str, image, services, tls, behaviour: dict) -> None:
    vault, maa = services
    environment = {"CCR_CONTRACT": json.dumps(behaviour), "CCR_MAA_URL": maa.url, "CCR_KEYVAULT_URL": vault.url,
                   "CCR_CA_BUNDLE": str(tls.ca_path)}
    spec = build_container_group(image.ref, CONTRACT, environment, LOCATION)
    client.container_groups.begin_create_or_update(RESOURCE_GROUP, name, spec).result()


def _values(client, name: str) -> dict:
    def ready():
        text = client.containers.list_logs(RESOURCE_GROUP, name, TRAINER_CONTAINER_NAME).content or ""
        return text if "\nready" in text else None
    text = wait_for(ready, timeout=60)
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _group_id(name: str) -> str:
    return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
            f"Microsoft.ContainerInstance/containerGroups/{name}")


def test_a_process_outside_the_group_is_refused_and_nothing_is_released(client, twin, sidecars, services, kid, tls,
                                                                        probe_image):
    vault, maa = services
    _create(client, "run-own", probe_image, services, tls, {"kid": kid, "sleep": 60})
    values = _values(client, "run-own")
    # the group's own trainer gets its key, running as the group's uid with no other groups
    assert values["own_status"] == "200" and values["own_kty"] == "oct"
    uid = twin.runtime.get(_group_id("run-own"))["uid"]
    assert group_isolation.TRAINER_UID_FIRST <= uid < group_isolation.TRAINER_UID_FIRST + group_isolation.TRAINER_UID_COUNT
    assert (values["uid"], values["gid"], values["groups"]) == (str(uid), str(uid), "[]")
    assert values["ca_bundle"] == "readable"
    [sidecar] = sidecars
    assert sidecar.allowed_uid == uid
    releases, attestations = vault.release_calls, maa.attest_calls
    assert releases == 1

    # this test process (another uid, another process) asks the running group's sidecar
    body = {"maa_endpoint": maa.url.split("://")[1], "akv_endpoint": vault.url.split("://")[1], "kid": kid}
    for method, path, payload in (("POST", "/key/release", body), ("GET", "/status", None),
                                  ("POST", "/attest/maa", {"maa_endpoint": maa.url.split("://")[1], "runtime_data": "e30="})):
        response = requests.request(method, sidecar.url + path, json=payload, timeout=30)
        assert response.status_code == 403, response.text
        assert set(response.json()) == {"error"} and "own container group" in response.json()["error"]
    assert (vault.release_calls, maa.attest_calls) == (releases, attestations)


def test_another_groups_trainer_is_refused(client, twin, sidecars, services, kid, tls, probe_image):
    vault, maa = services
    _create(client, "run-a", probe_image, services, tls, {"kid": kid, "sleep": 60})
    a = _values(client, "run-a")
    assert a["own_status"] == "200"
    a_url = sidecars[0].url
    _create(client, "run-b", probe_image, services, tls, {"kid": kid, "others": [a_url], "sleep": 60})
    b = _values(client, "run-b")
    assert a["uid"] != b["uid"]
    assert b["own_status"] == "200"          # B's own sidecar serves B
    assert b["other0_status"] == "403" and "own container group" in b["other0_error"]
    assert "other0_kty" not in b
    assert vault.release_calls == 2          # A's and B's own releases; nothing for B through A's sidecar


def test_the_group_cannot_read_the_twins_secrets_and_its_uid_ends_with_it(client, twin, sidecars, services, tls,
                                                                         probe_image, tmp_path):
    HardwareRoot.load_or_create(tmp_path / "hw")
    secrets = [str(tls.ca_key_path), str(tls.server_chain_path), str(tmp_path / "hw" / "sevsnp" / "hardware_root.pem"),
               str(twin.runtime.state_dir / "stats.json"), "/root/.profile", "/etc/shadow"]
    _create(client, "run-c", probe_image, services, tls, {"read": secrets, "escape": True, "sleep": 0.5})
    values = _values(client, "run-c")
    assert all(values[f"read{i}"] in ("PermissionError", "FileNotFoundError") for i in range(len(secrets))), values
    uid, sidecar_url = int(values["uid"]), sidecars[0].url
    escaped = int(values["escaped"])         # left the trainer's process group
    group = wait_for(lambda: (lambda g: g if g.instance_view.state != "Running" else None)(
        client.container_groups.get(RESOURCE_GROUP, "run-c")))
    assert group.instance_view.state == "Succeeded"
    assert not pid_alive(escaped) and group_isolation.processes_of(uid) == []
    home = twin.runtime.state_dir / "groups" / twin.runtime.get(group.id)["dir"] / "home"
    assert not home.exists()                 # the container's writable folder went with it
    assert not sidecar_reachable(sidecar_url)


def test_a_leased_uid_is_never_leased_twice():
    first = group_isolation.lease_uid()
    try:
        second = group_isolation.lease_uid()          # the first is held: another one
        assert second.uid != first.uid
        second.end()
    finally:
        first.end()


CRASHING_TWIN = """
import os, sys
from pathlib import Path
from local_emulator import group_isolation
cwd, log_path = sys.argv[1:3]
lease = group_isolation.lease_uid()
with open(log_path, "ab") as log:
    leftover = group_isolation.start(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)"],
                                     {"PATH": "/usr/bin:/bin"}, Path(cwd), lease.uid, [(cwd, cwd)], log)
print(lease.uid, leftover.pid, flush=True)
os.kill(os.getpid(), 9)
"""


def test_a_uid_whose_process_outlived_its_twin_is_not_leased_again(tmp_path):
    """A twin killed with -9 (its flock gone) left a process of its group's uid: no new group
    may get that uid, or the leftover could ask the new group's sidecar for keys."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(mode=0o755)
    crashed = subprocess.run([sys.executable, "-c", CRASHING_TWIN, str(cwd), str(tmp_path / "log")],
                             capture_output=True, text=True, timeout=60)
    uid, pid = map(int, crashed.stdout.split())
    try:
        assert crashed.returncode == -9 and pid_alive(pid) and group_isolation.processes_of(uid) == [pid]
        fresh = group_isolation.lease_uid()
        assert fresh.uid != uid
        fresh.end()
    finally:
        group_isolation.kill_uid(uid)
    assert not pid_alive(pid) and group_isolation.processes_of(uid) == []


def test_a_ca_bundle_that_is_not_only_certificates_is_never_shown(tmp_path, tls):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    key = private / "ca.pem"
    key.write_bytes(tls.ca_key_path.read_bytes())        # named like a bundle, holds a key
    assert group_isolation.ca_bundle_exposure(str(key), tmp_path / "copy.pem") == []
    bundle = private / "bundle.pem"
    bundle.write_bytes(tls.ca_path.read_bytes())
    assert group_isolation.ca_bundle_exposure(str(bundle), tmp_path / "copy.pem") == [
        (str(tmp_path / "copy.pem"), str(bundle))]
    assert (tmp_path / "copy.pem").read_bytes() == tls.ca_path.read_bytes()


def test_a_container_that_cannot_start_isolated_is_an_error_not_a_stray_process(tmp_path):
    lease = group_isolation.lease_uid()
    try:
        with (tmp_path / "log").open("ab") as log, pytest.raises(group_isolation.IsolationError) as failed:
            group_isolation.start(sys.executable, ["/no/such/trainer"], {"PATH": "/usr/bin:/bin"}, Path("/"),
                                  lease.uid, [], log)
        assert failed.value.code == "ContainerGroupStartFailed" and "FileNotFoundError" in str(failed.value)
        assert group_isolation.processes_of(lease.uid) == []
    finally:
        lease.end()


NOT_ROOT = """
from local_emulator import group_isolation
try:
    group_isolation.lease_uid()
except group_isolation.IsolationError as error:
    print(error.code, error, sep=": ")
"""


def test_without_root_no_group_runs_unisolated(tmp_path):
    """The twin's own code, run by a uid that is not root, refuses to lease a group uid."""
    lease = group_isolation.lease_uid()
    root = str(PROJECT_ROOT)
    try:
        with (tmp_path / "log").open("ab") as log:
            process = group_isolation.start(sys.executable, [sys.executable, "-c", NOT_ROOT],
                                            {"PATH": "/usr/bin:/bin", "PYTHONPATH": root}, PROJECT_ROOT, lease.uid,
                                            [(root, root)], log)
        # the group's uid must be able to traverse to the checkout (not inside a 0700 directory)
        assert process.wait(timeout=60) == 0, (tmp_path / "log").read_text()[-2000:]
        assert (tmp_path / "log").read_text().startswith(
            "ContainerGroupIsolationUnavailable: the ACI twin must run as root")
    finally:
        lease.end()
