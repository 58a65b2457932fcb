"""What a publish ships: the Function App's requirements hold only its runtime (no torch, no
ONNX, no emulator or test packages), and the files left after applying .funcignore (gitignore
rules, as Core Tools and azd read it; matched with `pathspec`) are the app alone."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pathspec

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOT_IN_THE_APP = ("torch", "opacus", "onnx", "onnxruntime", "pandas", "numpy", "tqdm", "trustme", "pytest",
                  "pytest-timeout", "azure-data-tables", "azure-storage-queue", "pycep-parser", "pathspec", "checkov")
NEVER_SHIPPED = ("local_emulator/", "tests/", "node_modules/", ".emulator/", ".venv", "trainer_container/", "ccr/",
                 "bench/", "docs/", "infra/", ".git/")


def requirements(relative: str) -> dict[str, str]:
    """name -> version of one requirements file, following `-r` includes."""
    path = PROJECT_ROOT / relative
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            pins.update(requirements(str((path.parent / line[3:].strip()).relative_to(PROJECT_ROOT))))
            continue
        name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line).groups()
        pins[name.lower()] = version
    return pins


def test_the_function_apps_requirements_are_its_runtime_only():
    app = requirements("requirements.txt")
    assert not set(NOT_IN_THE_APP) & set(app)
    assert {"azure-functions", "azure-functions-durable", "azure-identity", "azure-storage-blob"} <= set(app)
    assert app["azure-identity"] == "1.27.0"


def test_the_trainer_and_dev_requirements_and_every_pin_agrees():
    trainer, dev = requirements("trainer_container/requirements.txt"), requirements("requirements-dev.txt")
    assert trainer["torch"] == "2.13.0" and {"opacus", "onnx", "onnxruntime"} <= set(trainer)
    cli = requirements("requirements-cli.txt")
    assert {"onnx", "tqdm"} <= set(cli) and "torch" not in cli
    assert {"pytest", "pycep-parser", "pathspec", "azure-data-tables", "trustme"} <= set(dev)
    assert dev["pycep-parser"] == "0.7.1"
    for name in ("requirements.txt", "requirements-cli.txt", "trainer_container/requirements.txt"):
        for package, version in requirements(name).items():
            assert dev[package] == version, f"{name}: {package}=={version} but dev pins {dev[package]}"
    dockerfile = (PROJECT_ROOT / "trainer_container" / "Dockerfile").read_text()
    assert "COPY trainer_container/requirements.txt /requirements.txt" in dockerfile
    assert "torch==2.13.0" in dockerfile and "sha256:" + "0" * 64 not in dockerfile   # no placeholder base


def published_files(root: Path) -> list[str]:
    """The files under `root` a publish keeps: .funcignore's patterns (gitignore syntax) drop a
    folder whole when the folder itself matches, and a file when its path matches."""
    spec = pathspec.GitIgnoreSpec.from_lines((root / ".funcignore").read_text().splitlines())
    kept = []
    for folder, dirs, files in os.walk(root):
        relative = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if not spec.match_file(f"{(relative / d).as_posix()}/")]
        kept += [(relative / f).as_posix() for f in files if not spec.match_file((relative / f).as_posix())]
    return sorted(kept)


def test_a_publish_ships_the_app_and_nothing_else():
    shipped = published_files(PROJECT_ROOT)
    assert {"function_app.py", "host.json", "requirements.txt"} <= set(shipped)
    for package in ("functions", "orchestrations", "shared"):
        assert any(path.startswith(package + "/") for path in shipped), package
    leaked = [path for path in shipped if path.startswith(NEVER_SHIPPED)]
    assert not leaked, leaked[:10]
    assert set(p.split("/", 1)[0] for p in shipped) <= {"function_app.py", "host.json", "requirements.txt",
                                                         "functions", "orchestrations", "shared"}
    for path in shipped:
        if path.endswith(".py"):
            source = (PROJECT_ROOT / path).read_text()
            assert not re.search(r"^\s*(import|from) (torch|onnx|onnxruntime|opacus|local_emulator|ccr|"
                                 r"trainer_container)\b", source, re.M), path


def test_the_matcher_applies_funcignore_rules(tmp_path):
    for path in ("function_app.py", "shared/a.py", "tests/t.py", "deep/node_modules/x.js", ".venv-checkov/bin/x",
                 "shared/__pycache__/a.pyc", "requirements-dev.txt", ".emulator/endpoints.json"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    (tmp_path / ".funcignore").write_text((PROJECT_ROOT / ".funcignore").read_text())
    assert published_files(tmp_path) == ["function_app.py", "shared/a.py"]
