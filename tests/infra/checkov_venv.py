"""checkov in a venv of its own, `.venv-checkov/` at the project root: checkov 3.3.30 pins an
older pycep-parser (0.5.1) and `packaging` than our tests use, so it cannot share `.venv`.
Created on first use (python -m venv + pip, about a minute here) and reused while it holds the
pinned version; a file lock keeps two pytest processes from building it at once."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

CHECKOV_VERSION = "3.3.30"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
VENV = PROJECT_ROOT / ".venv-checkov"
STAMP = VENV / ".checkov-version"
INSTALL_TIMEOUT = 900


def checkov() -> Path:
    """Path of the pinned checkov executable, installing it first when needed."""
    executable = VENV / "bin" / "checkov"
    with open(PROJECT_ROOT / ".venv-checkov.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if executable.exists() and STAMP.exists() and STAMP.read_text().strip() == CHECKOV_VERSION:
            return executable
        shutil.rmtree(VENV, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        subprocess.run([_base_python(), "-m", "venv", str(VENV)], check=True, env=env)
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        f"checkov=={CHECKOV_VERSION}"], check=True, env=env, timeout=INSTALL_TIMEOUT)
        STAMP.write_text(CHECKOV_VERSION + "\n")
        return executable


def _base_python() -> str:
    """The interpreter .venv was made from (a venv's python makes a venv of the same base)."""
    return getattr(sys, "_base_executable", None) or sys.executable
