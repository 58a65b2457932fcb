"""`ccr profile`: which endpoints and identity `ccr` uses, and why.

Two profiles (shared/settings.py). **azure** (the default): every setting comes from the
environment; a missing one is an error naming it, never a loopback default. **local**: on only
when you say so (`CCR_LOCAL_PROFILE=1`, or `CCR_EMULATOR_DIR=<dir>`); a setting missing from
the environment is then read from `<dir>/endpoints.json`, which `python -m local_emulator up`
writes (default dir: .emulator in the checkout). Whenever a command used a value from that file,
it says so on stderr. Secrets (tokens, connection strings) are never printed: only whether
they are set."""
from __future__ import annotations

import argparse
import sys

NAME = "profile"
HELP = "profile: show which endpoints and identity ccr uses, and why"

SETTINGS = (  # (name, what ccr uses it for, secret?)
    ("CCR_FUNCTIONS_URL", "the clean room (Functions app): authentication, SAS URLs, run status", False),
    ("CCR_LEDGER_URL", "the contract ledger: DIDs, budget declarations, contracts", False),
    ("CCR_KEYVAULT_URL", "the vault where your grants' key-encryption keys are created", False),
    ("CCR_MAA_URL", "the attestation authority your release policies trust", False),
    ("CCR_CA_BUNDLE", "extra CA certificates (the local stack's loopback CA)", False),
    ("CCR_PARTY_DID", "your did:web", False),
    ("CCR_PARTY_KEY", "your private key (PEM file)", False),
    ("CCR_KEYS_DIR", "where your data keys are kept (default ~/.ccr/keys)", False),
    ("CCR_ACCESS_TOKEN", "a static Key Vault token (local stack only)", True),
    ("CCR_STORAGE_CONNECTION", "the storage account connection (operators only; parties use SAS URLs)", True),
)


def register(groups) -> None:
    parser = groups.add_parser(NAME, help=HELP, description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=run_profile)


def describe() -> dict:
    import os

    from shared import settings
    if os.environ.get(settings.LOCAL_PROFILE, "").strip().lower() in ("1", "true", "yes"):
        why = f"{settings.LOCAL_PROFILE} is set"
    elif os.environ.get(settings.EMULATOR_DIR):
        why = f"{settings.EMULATOR_DIR} is set"
    else:
        why = f"the default; set {settings.LOCAL_PROFILE}=1 to read the local stack's endpoints file"
    local = settings.local_profile()
    endpoints = settings.emulator_dir() / "endpoints.json"
    described = {"profile": "local" if local else "azure", "why": why}
    if local:
        described["endpoints_file"] = str(endpoints)
        described["endpoints_file_exists"] = endpoints.is_file()
    rows = []
    for name, use, secret in SETTINGS:
        value = settings.get(name)
        rows.append({"setting": name, "value": ("<set>" if value else None) if secret else value,
                     "source": settings.source(name) or "not set", "used_for": use})
    described["settings"] = rows
    return described


def run_profile(args) -> None:
    from ccr.common import emit
    emit(describe())


def note_local_settings() -> None:
    """After a command: name the settings it took from the local endpoints file (stderr)."""
    settings = sys.modules.get("shared.settings")
    if settings is None or not settings.read_from_endpoints_file:
        return
    names = ", ".join(sorted(settings.read_from_endpoints_file))
    print(f"ccr: local profile: {names} from {settings.emulator_dir() / 'endpoints.json'} (not in the "
          "environment)", file=sys.stderr)
    settings.read_from_endpoints_file.clear()
