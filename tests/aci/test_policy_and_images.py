"""CCE policy text, the container-group spec, and content-addressed trainer images."""
from __future__ import annotations

import base64
import hashlib
import shutil

import pytest

from local_emulator import images
from shared import settings
from shared.cce_policy import (CcePolicyError, build_cce_policy, decode_policy, hostdata_of, policy_containers)
from shared.container_group import (SECURE_ENV_NAMES, TRAINER_COMMAND, build_container_group, trainer_cce_policy,
                                    trainer_hostdata)

DIGEST_A = "sha256:" + "a1" * 32
DIGEST_B = "sha256:" + "b2" * 32


def test_policy_is_deterministic_and_hostdata_is_sha256_of_its_text():
    first = build_cce_policy("ccr-trainer@" + DIGEST_A, DIGEST_A, TRAINER_COMMAND, ["B", "A"])
    second = build_cce_policy("ccr-trainer@" + DIGEST_A, DIGEST_A, TRAINER_COMMAND, ["A", "B", "A"])
    assert first == second
    text = base64.b64decode(first).decode()
    assert text.startswith("package policy\n") and 'api_version := "' in text
    assert "allow_dump_stacks := false" in text and "allow_runtime_logging := false" in text
    assert hostdata_of(first) == hashlib.sha256(text.encode()).hexdigest()


def test_policy_pins_digest_command_and_env_names_only():
    policy = trainer_cce_policy("ccr-trainer@" + DIGEST_A)
    trainer, sidecar = policy_containers(policy)
    assert trainer.layers == (DIGEST_A.split(":")[1],) and trainer.command == TRAINER_COMMAND
    assert SECURE_ENV_NAMES <= set(trainer.env_names)
    assert "CCR_STORAGE_CONNECTION" not in trainer.env_names  # storage is per-blob SAS URLs only
    assert sidecar.image_ref.startswith("mcr.microsoft.com/aci/skr")
    assert trainer_hostdata("ccr-trainer@" + DIGEST_A) != trainer_hostdata("ccr-trainer@" + DIGEST_B)
    other_command = build_cce_policy("ccr-trainer@" + DIGEST_A, DIGEST_A, ("python", "-m", "other"), trainer.env_names)
    assert hostdata_of(other_command) != hostdata_of(policy)


def test_hostdata_does_not_depend_on_run_values():
    image = "ccr-trainer@" + DIGEST_A
    one = build_container_group(image, {"CCR_RUN_ID": "run-1111111111111111", "CCR_EVENTGRID_KEY": "k1"}, "x")
    two = build_container_group(image, {"CCR_RUN_ID": "run-2222222222222222", "CCR_EVENTGRID_KEY": "k2"}, "x")
    assert one.confidential_compute_properties.cce_policy == two.confidential_compute_properties.cce_policy
    assert "k1" not in decode_policy(one.confidential_compute_properties.cce_policy)
    assert hostdata_of(one.confidential_compute_properties.cce_policy) == trainer_hostdata(image)


def test_container_group_shape():
    group = build_container_group("ccr-trainer@" + DIGEST_A, {"CCR_RUN_ID": "run-1111111111111111",
                                                             "CCR_BLOB_URLS": "{}"}, "westeurope")
    assert group.sku == "Confidential" and group.restart_policy == "Never" and group.ip_address is None
    trainer, sidecar = group.containers
    assert trainer.image == "ccr-trainer@" + DIGEST_A and trainer.command == list(TRAINER_COMMAND)
    env = {v.name: v for v in trainer.environment_variables}
    assert env["CCR_BLOB_URLS"].secure_value == "{}" and env["CCR_BLOB_URLS"].value is None
    assert env["CCR_RUN_ID"].value == "run-1111111111111111"
    assert env["CCR_SKR_URL"].value == "http://localhost:8080"
    assert sidecar.image.startswith("mcr.microsoft.com/aci/skr")


@pytest.mark.parametrize("image", ["ccr-trainer:latest", "ccr-trainer@sha256:abc", "other@" + DIGEST_A, ""])
def test_trainer_image_must_be_pinned_by_digest(image):
    with pytest.raises(ValueError, match="pinned by digest"):
        build_container_group(image, {}, "westeurope")


def test_unknown_environment_variable_is_refused_by_the_builder():
    with pytest.raises(ValueError, match="LD_PRELOAD"):
        build_container_group("ccr-trainer@" + DIGEST_A, {"LD_PRELOAD": "/tmp/x.so"}, "westeurope")


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"package policy\n").decode(),
                                 base64.b64encode(b"containers := [{\"id\": 1}]").decode()])
def test_malformed_policy_is_a_clear_error(bad):
    with pytest.raises(CcePolicyError):
        policy_containers(bad)


def test_bad_digest_is_refused():
    with pytest.raises(CcePolicyError, match="sha256"):
        build_cce_policy("ccr-trainer@x", "md5:1234", TRAINER_COMMAND, [])


def _copy_trainer_source(destination):
    for package in images.TRAINER_PACKAGES:
        shutil.copytree(settings.PROJECT_ROOT / package, destination / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def test_real_trainer_image_is_stable_and_content_addressed(tmp_path):
    first = images.build_image(images_dir=tmp_path / "one", tag="t1")
    second = images.build_image(images_dir=tmp_path / "two", tag="t1")
    assert first.digest == second.digest
    assert first.path.read_bytes() == second.path.read_bytes()
    assert hashlib.sha256(first.path.read_bytes()).hexdigest() == first.digest.split(":")[1]
    assert images.resolve("ccr-trainer:t1", tmp_path / "one").digest == first.digest
    assert images.resolve(first.ref, tmp_path / "one").path == first.path

    copy = _copy_trainer_source(tmp_path / "src")
    (copy / "trainer_container" / "__pycache__").mkdir(exist_ok=True)
    (copy / "trainer_container" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    same = images.build_image(copy, images_dir=tmp_path / "three")
    assert same.digest == first.digest      # bytecode and mtimes do not count

    target = sorted((copy / "trainer_container").glob("*.py"))[0]
    target.write_text(target.read_text() + "\n# changed\n")
    changed = images.build_image(copy, images_dir=tmp_path / "three")
    assert changed.digest != first.digest
    assert trainer_hostdata(changed.ref) != trainer_hostdata(first.ref)
    assert images.resolve(first.ref, tmp_path / "three").digest == first.digest  # both kept


def test_archive_has_fixed_metadata_and_no_bytecode(tmp_path):
    import tarfile
    image = images.build_image(images_dir=tmp_path)
    with tarfile.open(image.path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and "trainer_container/__init__.py" in names and "shared/__init__.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(0, 0, 0, "")}


def test_resolve_refuses_unknown_tag_and_bad_reference(tmp_path):
    with pytest.raises(images.ImageError, match="not in the local image index"):
        images.resolve("ccr-trainer:nope", tmp_path)
    with pytest.raises(images.ImageError, match="neither"):
        images.resolve("ccr-trainer", tmp_path)


def test_cli_build_prints_the_reference(tmp_path, capsys):
    assert images.main(["build", "--tag", "cli", "--images-dir", str(tmp_path)]) == 0
    ref = capsys.readouterr().out.strip()
    assert ref.startswith("ccr-trainer@sha256:")
    assert images.read_index(tmp_path)["ccr-trainer:cli"] == ref.split("@", 1)[1]
