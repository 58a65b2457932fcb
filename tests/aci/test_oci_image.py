"""A small OCI image, built by the same function as the trainer image (tools/oci_image.py):
this host's Python and its standard library plus the stand-in trainer. skopeo agrees with its
digest; the ACI twin pulls it from a local registry by `<registry>/<repository>@sha256:...`,
verifies it and runs it chrooted with the image's own Python; a tampered layer is refused at
pull, as ARM refuses an inaccessible image, before anything runs. The registry admits only the
group's identity holding AcrPull there (imageRegistryCredentials naming it): an anonymous pull or
another identity's is refused the same way."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from azure.core.exceptions import HttpResponseError

from local_emulator.aci import AciTwin
from local_emulator.registry import LOCAL_REGISTRY, LocalRegistry, PullError
from shared.container_group import (TRAINER_CONTAINER_NAME, TRAINER_IMAGE_ENV, TRAINER_WORKING_DIR,
                                    build_container_group)
from tests.aci.conftest import LOCATION, RESOURCE_GROUP, wait_for
from tests.aci.stand_in_trainer import write_stand_in
from tools import oci_image

pytestmark = pytest.mark.timeout(120)
CONTRACT = "c1" * 32
IDENTITIES = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"
PULLER, NOT_PULLER = IDENTITIES + "id-trainer", IDENTITIES + "id-other"


def group_spec(reference: str, environment: dict, identity: str = PULLER, registry: str | None = LOCAL_REGISTRY):
    return build_container_group(reference, CONTRACT, environment, LOCATION, identity_id=identity, registry=registry)


@pytest.fixture(scope="module")
def small_image(tmp_path_factory):
    source = write_stand_in(tmp_path_factory.mktemp("stand-in-src"))
    layers = [oci_image.host_python_layer(), oci_image.packages_layer(source, ("trainer_container",), "/app")]
    config = oci_image.ImageConfig(env=TRAINER_IMAGE_ENV, entrypoint=("python3", "-m", "trainer_container"),
                                   working_dir=TRAINER_WORKING_DIR)
    return oci_image.build(layers, config, tag="small", cache_dir=tmp_path_factory.mktemp("image-cache"))


@pytest.fixture
def registry_dir(tmp_path, small_image):
    return tmp_path / "registry"


@pytest.fixture
def reference(registry_dir, small_image) -> str:
    return LocalRegistry(registry_dir).push(small_image.layout, "ccr-small", "small")


@pytest.fixture
def twin_with_registry(tmp_path, images_dir, tls, token, hardware_root, registry_dir):
    from local_emulator.aci import skr_sidecar_factory
    aci = AciTwin(tmp_path / "aci", images_dir, tls.server_context(), token,
                  skr_sidecar_factory(hardware_root, str(tls.ca_path), token), kill_grace_seconds=2.0,
                  registry_dir=registry_dir, layer_cache=tmp_path / "layers",
                  identities={PULLER: "puller-token", NOT_PULLER: "other-token"}, registry_pullers=(PULLER,)).start()
    yield aci
    aci.stop()


@pytest.fixture
def client(twin_with_registry, tls, token):
    from azure.mgmt.containerinstance import ContainerInstanceManagementClient
    from shared.credentials import StaticTokenCredential
    from tests.aci.conftest import SUBSCRIPTION
    with ContainerInstanceManagementClient(StaticTokenCredential(token), SUBSCRIPTION, base_url=twin_with_registry.url,
                                           connection_verify=str(tls.ca_path)) as management:
        yield management


def test_build_is_deterministic_and_cached(small_image, tmp_path):
    layout = small_image.layout
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == small_image.digest
    manifest = json.loads((layout / "blobs" / "sha256" / small_image.digest.split(":")[1]).read_text())
    assert [l["mediaType"] for l in manifest["layers"]] == [oci_image.LAYER_MEDIA_TYPE] * 2
    config = json.loads((layout / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_text())
    assert config["rootfs"]["diff_ids"] == list(small_image.layers)
    assert config["config"]["Entrypoint"] == ["python3", "-m", "trainer_container"]
    # the same inputs in another cache give the same digest; progress names each layer built
    source = write_stand_in(tmp_path / "src")
    layers = [oci_image.host_python_layer(), oci_image.packages_layer(source, ("trainer_container",), "/app")]
    image_config = oci_image.ImageConfig(env=TRAINER_IMAGE_ENV, entrypoint=("python3", "-m", "trainer_container"),
                                         working_dir=TRAINER_WORKING_DIR)
    cache = tmp_path / "other-cache"
    assert oci_image.uncached_layers(layers, cache) == layers
    lines: list[str] = []
    again = oci_image.build(layers, image_config, tag="small", cache_dir=cache, progress=lines.append)
    assert again.digest == small_image.digest
    assert [line.split(" in ")[0].split(":")[0] for line in lines] == [
        "layer 1/2 building", "layer 1/2 built", "layer 2/2 building", "layer 2/2 built"]
    assert lines[2] == "layer 2/2 building: COPY trainer_container /app"
    # then the cache has every layer: another tag of the same layers builds none
    assert oci_image.uncached_layers(layers, cache) == []
    lines.clear()
    oci_image.build(layers, image_config, tag="other", cache_dir=cache, progress=lines.append)
    assert [line.split(":")[0] for line in lines] == ["layer 1/2 cached", "layer 2/2 cached"]


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed (make setup installs it)")
def test_skopeo_agrees_with_the_digest(small_image):
    done = subprocess.run(["skopeo", "inspect", f"oci:{small_image.layout}:small"], capture_output=True, text=True,
                          check=True)
    inspected = json.loads(done.stdout)
    assert inspected["Digest"] == small_image.digest
    assert inspected["Layers"] == list(small_image.layers)


def test_twin_runs_the_image_with_its_own_python(client, twin_with_registry, reference, small_image):
    assert reference == f"{LOCAL_REGISTRY}/ccr-small@{small_image.digest}"
    environment = {"CCR_RUN_ID": "run-0123456789abcdef", "CCR_CONTRACT": json.dumps({"lines": 2})}
    spec = group_spec(reference, environment)
    assert [(c.server, c.identity) for c in spec.image_registry_credentials] == [(LOCAL_REGISTRY, PULLER)]
    group = client.container_groups.begin_create_or_update(RESOURCE_GROUP, "oci-run", spec).result()
    assert group.provisioning_state == "Succeeded"
    logs = wait_for(lambda: (lambda t: t if "ready" in t else None)(
        client.containers.list_logs(RESOURCE_GROUP, "oci-run", TRAINER_CONTAINER_NAME).content or ""))
    lines = dict(line.split("=", 1) for line in logs.splitlines() if "=" in line)
    assert lines["file"] == "/app/trainer_container/__main__.py"     # the image's code, chrooted
    assert {"CCR_RUN_ID", "CCR_CONTRACT", "CCR_CONTRACT_DIGEST", "CCR_SKR_URL"} <= set(lines["env"].split(","))
    done = wait_for(lambda: (lambda g: g if g.instance_view.state == "Succeeded" else None)(
        client.container_groups.get(RESOURCE_GROUP, "oci-run")))
    trainer = next(c for c in done.containers if c.name == TRAINER_CONTAINER_NAME)
    assert trainer.instance_view.current_state.exit_code == 0
    # each layer was unpacked once, by digest
    layer_dirs = sorted(p.name for p in twin_with_registry.runtime.registry.layer_cache.iterdir() if p.is_dir())
    assert layer_dirs == sorted(d.split(":")[1] for d in small_image.layers)


def test_tampered_layer_is_refused_at_pull(client, twin_with_registry, registry_dir, reference, small_image):
    blob = registry_dir / "ccr-small" / "blobs" / "sha256" / small_image.layers[-1].split(":")[1]
    data = bytearray(blob.read_bytes())
    blob.unlink()                         # the registry's copy is a hard link into the build cache
    data[600] ^= 1
    blob.write_bytes(bytes(data))
    spec = group_spec(reference, {"CCR_RUN_ID": "run-0123456789abcdef"})
    with pytest.raises(HttpResponseError) as refused:
        client.container_groups.begin_create_or_update(RESOURCE_GROUP, "oci-tampered", spec).result()
    assert "InaccessibleImage" in str(refused.value) and "layer digest mismatch" in str(refused.value)
    group = client.container_groups.get(RESOURCE_GROUP, "oci-tampered")
    assert group.provisioning_state == "Failed"
    assert all(c.instance_view.current_state.state == "Waiting" for c in group.containers)
    record = twin_with_registry.runtime.get(group.id)
    assert record["pid"] is None
    with pytest.raises(PullError, match="layer digest mismatch"):
        LocalRegistry(registry_dir, twin_with_registry.runtime.registry.layer_cache).pull(reference)


def test_pull_refuses_a_tag_another_registry_and_an_unknown_manifest(registry_dir, reference, tmp_path):
    registry = LocalRegistry(registry_dir, tmp_path / "layers")
    for bad, reason in ((f"{LOCAL_REGISTRY}/ccr-small:small", "is not <registry>"),
                        (reference.replace(LOCAL_REGISTRY, "example.azurecr.io"), "not reachable"),
                        (reference[:-64] + "0" * 64, "manifest unknown")):
        with pytest.raises(PullError, match=reason):
            registry.pull(bad)


def test_concurrent_pushes_to_one_repository_keep_every_tag_and_whole_blobs(small_image, tmp_path):
    """Eight pushes at once (as two test workers building images may push): each tag stays in
    the repository's index and every pulled image verifies."""
    from concurrent.futures import ThreadPoolExecutor
    registry = LocalRegistry(tmp_path / "registry", tmp_path / "layers")
    tags = [f"t{n}" for n in range(8)]
    index = json.loads((small_image.layout / "index.json").read_text())
    for tag in tags:   # the same image under another tag: its own layout index, the same blobs
        layout = tmp_path / tag
        layout.mkdir()
        (layout / "blobs").symlink_to(small_image.layout / "blobs")
        tagged = [{**m, "annotations": {"org.opencontainers.image.ref.name": tag}} for m in index["manifests"]]
        (layout / "index.json").write_text(json.dumps({**index, "manifests": tagged}))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda tag: registry.push(tmp_path / tag, "ccr-small", tag), tags))
    index = json.loads((tmp_path / "registry" / "ccr-small" / "index.json").read_text())
    assert sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]) == tags
    assert registry.pull(f"{LOCAL_REGISTRY}/ccr-small@{index['manifests'][0]['digest']}").digest == small_image.digest
    assert not [p.name for p in (tmp_path / "registry" / "ccr-small" / "blobs" / "sha256").iterdir()
                if p.name.startswith(".")]   # no staging file left behind


def test_trainer_dependencies_layer_does_not_depend_on_the_builders_path(tmp_path):
    """pip's RECORD lists the console scripts the dependencies layer removes, hashed with the
    shebang that names the building interpreter's path: two checkouts built two digests from
    the same inputs. Only the entries of files the layer has are kept, whatever their quoting;
    nothing outside site-packages is looked at."""
    from tools.trainer_image import records_of_installed_files_only
    site = tmp_path / "dist-packages"
    (site / "idna").mkdir(parents=True)
    (site / "idna" / "core.py").write_text("x = 1\n")
    (site / "odd, name.py").write_text("")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "idna").write_text("#!/some/checkout/.venv/bin/python\n")   # outside: never kept
    record = site / "idna-3.20.dist-info" / "RECORD"
    record.parent.mkdir()
    record.write_text("idna/core.py,sha256=abc,6\n"
                      '"odd, name.py",sha256=def,0\n'
                      "../../bin/idna,sha256=rUNqey1ojmn3J9zLr_Idz6onxrwrQTX0fZA8dEqZS2o,166\n"
                      "../bin/idna,sha256=same,166\n"
                      "idna-3.20.dist-info/RECORD,,\n")
    records_of_installed_files_only(site)
    assert record.read_text() == ('idna/core.py,sha256=abc,6\n"odd, name.py",sha256=def,0\n'
                                  "idna-3.20.dist-info/RECORD,,\n")


@pytest.mark.parametrize("identity, registry, refusal", [
    (PULLER, None, "pulled anonymously"),                     # no registry credential at all
    (NOT_PULLER, LOCAL_REGISTRY, f"pulled as {NOT_PULLER}, which has no AcrPull there"),
])
def test_only_an_identity_with_acrpull_pulls_the_image(client, twin_with_registry, reference, identity, registry,
                                                       refusal):
    spec = group_spec(reference, {"CCR_RUN_ID": "run-0123456789abcdef"}, identity, registry)
    with pytest.raises(HttpResponseError) as refused:
        client.container_groups.begin_create_or_update(RESOURCE_GROUP, "oci-no-pull", spec).result()
    assert "InaccessibleImage" in str(refused.value) and refusal in str(refused.value)
    group = client.container_groups.get(RESOURCE_GROUP, "oci-no-pull")
    assert group.provisioning_state == "Failed" and twin_with_registry.runtime.get(group.id)["pid"] is None
    assert not any(p.is_dir() for p in twin_with_registry.runtime.registry.layer_cache.glob("*"))  # nothing pulled


def test_a_registry_credential_must_name_the_groups_own_identity(client, reference):
    from azure.mgmt.containerinstance.models import ImageRegistryCredential
    spec = group_spec(reference, {"CCR_RUN_ID": "run-0123456789abcdef"}, identity=NOT_PULLER)
    spec.image_registry_credentials = [ImageRegistryCredential(server=LOCAL_REGISTRY, identity=PULLER)]
    with pytest.raises(HttpResponseError) as refused:
        client.container_groups.begin_create_or_update(RESOURCE_GROUP, "oci-borrowed", spec).result()
    assert refused.value.status_code == 400 and "InvalidImageRegistryCredentialIdentity" in str(refused.value)
    with pytest.raises(HttpResponseError) as missing:
        client.container_groups.get(RESOURCE_GROUP, "oci-borrowed")
    assert missing.value.status_code == 404                      # refused before any group existed


def test_the_builder_will_not_pull_from_the_registry_without_an_identity(reference):
    with pytest.raises(ValueError, match="needs an identity to pull it with"):
        group_spec(reference, {}, identity=None)
    assert group_spec(reference, {}, registry="other.azurecr.io").image_registry_credentials is None
