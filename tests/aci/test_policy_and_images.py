"""CCE policy text, the container-group spec, and content-addressed trainer images."""
from __future__ import annotations

import base64
import hashlib
import shutil

import pytest

from local_emulator import images
from shared import settings
from shared.cce_policy import (CcePolicyError, EnvRule, PolicyContainer, decode_policy, encode_policy, hostdata_of,
                               policy_containers, policy_text, user_container)
from shared.container_group import (CONTRACT_DIGEST_ENV, SECURE_ENV_NAMES, TRAINER_COMMAND, TRAINER_ENV_NAMES,
                                    build_container_group, policy_template_sha256, training_cce_policy,
                                    training_hostdata, training_policy_template)
from shared.skr_sidecar import DEFAULT_SIDECAR

DIGEST_A = "sha256:" + "a1" * 32
DIGEST_B = "sha256:" + "b2" * 32
IMAGE_A = "ccr-trainer@" + DIGEST_A
CONTRACT = "c0" * 32


def test_policy_is_deterministic_and_hostdata_is_sha256_of_its_text():
    first = training_cce_policy(IMAGE_A, CONTRACT)
    assert first == training_cce_policy(IMAGE_A, CONTRACT)
    text = base64.b64decode(first).decode()
    assert text.startswith("package policy\n") and 'api_version := "0.10.0"' in text
    assert "allow_dump_stacks := false" in text and "allow_runtime_logging := false" in text
    assert "allow_environment_variable_dropping := true" in text
    assert hostdata_of(first) == hashlib.sha256(text.encode()).hexdigest()
    assert encode_policy(policy_containers(first)) == first      # read back losslessly


def test_policy_pins_image_command_and_the_run_variables():
    trainer, sidecar, pause = policy_containers(training_cce_policy(IMAGE_A, CONTRACT))
    assert trainer.id == IMAGE_A and trainer.layers == (DIGEST_A.split(":")[1],)
    assert trainer.command == TRAINER_COMMAND and trainer.working_dir == "/app"
    wildcards = {r.name for r in trainer.env_rules if r.strategy == "re2" and r.pattern.endswith("=.*")}
    assert SECURE_ENV_NAMES <= wildcards and set(TRAINER_ENV_NAMES) - {"CCR_SKR_URL"} == wildcards
    assert "CCR_STORAGE_CONNECTION" not in {r.name for r in trainer.env_rules}  # storage is per-blob SAS URLs only
    assert "CCR_EPSILON_BUDGET" not in TRAINER_ENV_NAMES and CONTRACT_DIGEST_ENV in TRAINER_ENV_NAMES
    assert sidecar.id == DEFAULT_SIDECAR.image and sidecar.command == DEFAULT_SIDECAR.command
    assert pause.id is None and pause.command == ("/pause",)
    assert training_hostdata(IMAGE_A, CONTRACT) != training_hostdata("ccr-trainer@" + DIGEST_B, CONTRACT)
    assert policy_template_sha256(IMAGE_A) != policy_template_sha256("ccr-trainer@" + DIGEST_B)


def test_hostdata_does_not_depend_on_run_values():
    one = build_container_group(IMAGE_A, CONTRACT, {"CCR_RUN_ID": "run-1111111111111111", "CCR_EVENTGRID_KEY": "k1"},
                                "x")
    two = build_container_group(IMAGE_A, CONTRACT, {"CCR_RUN_ID": "run-2222222222222222", "CCR_EVENTGRID_KEY": "k2"},
                                "x")
    assert one.confidential_compute_properties.cce_policy == two.confidential_compute_properties.cce_policy
    assert "k1" not in decode_policy(one.confidential_compute_properties.cce_policy)
    assert hostdata_of(one.confidential_compute_properties.cce_policy) == training_hostdata(IMAGE_A, CONTRACT)


def test_container_group_shape():
    group = build_container_group(IMAGE_A, CONTRACT, {"CCR_RUN_ID": "run-1111111111111111", "CCR_BLOB_URLS": "{}"},
                                  "westeurope")
    assert group.sku == "Confidential" and group.restart_policy == "Never" and group.ip_address is None
    trainer, sidecar = group.containers
    assert trainer.image == IMAGE_A and trainer.command == list(TRAINER_COMMAND)
    env = {v.name: v for v in trainer.environment_variables}
    assert env["CCR_BLOB_URLS"].secure_value == "{}" and env["CCR_BLOB_URLS"].value is None
    assert env["CCR_RUN_ID"].value == "run-1111111111111111"
    assert env["CCR_SKR_URL"].value == "http://localhost:8080"
    assert env[CONTRACT_DIGEST_ENV].value == CONTRACT
    assert sidecar.image == DEFAULT_SIDECAR.image and sidecar.command == list(DEFAULT_SIDECAR.command)
    # the group's own environments satisfy its policy
    policy_trainer, policy_sidecar, _ = policy_containers(group.confidential_compute_properties.cce_policy)
    assert policy_trainer.env_problem({n: v.value or v.secure_value for n, v in env.items()}) is None
    assert policy_sidecar.env_problem({v.name: v.value for v in sidecar.environment_variables}) is None


@pytest.mark.parametrize("image", ["ccr-trainer:latest", "ccr-trainer@sha256:abc", "other@" + DIGEST_A, ""])
def test_trainer_image_must_be_pinned_by_digest(image):
    with pytest.raises(ValueError, match="pinned by digest"):
        build_container_group(image, CONTRACT, {}, "westeurope")
    with pytest.raises(ValueError, match="pinned by digest"):
        training_policy_template(image)


def test_unknown_environment_variable_is_refused_by_the_builder():
    with pytest.raises(ValueError, match="LD_PRELOAD"):
        build_container_group(IMAGE_A, CONTRACT, {"LD_PRELOAD": "/tmp/x.so"}, "westeurope")
    with pytest.raises(ValueError, match="CCR_EPSILON_BUDGET"):
        build_container_group(IMAGE_A, CONTRACT, {"CCR_EPSILON_BUDGET": "1.0"}, "westeurope")


BAD_REGEX = b'containers := [{"id": "x", "layers": [], "env_rules": [{"pattern": "(", "strategy": "re2"}]}]'
BAD_STRATEGY = b'containers := [{"layers": [], "env_rules": [{"pattern": "A=1", "strategy": "glob"}]}]'


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"package policy\n").decode(),
                                 base64.b64encode(b'containers := [{"id": 1}]').decode(),
                                 base64.b64encode(b'containers := {"id": 1}').decode(),
                                 base64.b64encode(BAD_REGEX).decode(), base64.b64encode(BAD_STRATEGY).decode()])
def test_malformed_policy_is_a_clear_error(bad):
    with pytest.raises(CcePolicyError):
        policy_containers(bad)


def test_env_problem_matches_by_value_and_never_names_the_value():
    container = PolicyContainer(id="img", name="c", layers=(), command=("run",), env_rules=(
        EnvRule("MODE=fast", "string", False), EnvRule("RUN_ID=run-[0-9]+", "re2", False),
        EnvRule("TOKEN=t-1", "string", True)))
    assert container.env_problem({"MODE": "fast", "RUN_ID": "run-42", "TOKEN": "t-1"}) is None
    assert container.env_problem({"TOKEN": "t-1"}) is None                      # optional rules may go unused
    assert "MODE" in container.env_problem({"MODE": "slow-secret", "TOKEN": "t-1"})
    assert "slow-secret" not in container.env_problem({"MODE": "slow-secret", "TOKEN": "t-1"})
    # a re2 pattern must match the whole variable
    assert "RUN_ID" in container.env_problem({"RUN_ID": "run-42x", "TOKEN": "t-1"})
    assert "TOKEN" in container.env_problem({"MODE": "fast"})
    assert "TOKEN" in container.env_problem({"TOKEN": "t-2"})


def test_policy_text_needs_containers_and_commands():
    with pytest.raises(CcePolicyError):
        policy_text([])
    with pytest.raises(CcePolicyError, match="command"):
        user_container(IMAGE_A, "trainer", ("a1" * 32,), (), [])
    with pytest.raises(CcePolicyError):
        EnvRule("A=.*", "glob", False)


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
    assert policy_template_sha256(changed.ref) != policy_template_sha256(first.ref)
    assert training_hostdata(changed.ref, CONTRACT) != training_hostdata(first.ref, CONTRACT)
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
