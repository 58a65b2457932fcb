"""infra/ as pycep-parser (0.7.1) reads it: every Bicep file's JSON, and small helpers to find
resources and resolve the few expressions the tests look through (a `var` object's member, a
conditional resource's body)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pycep import BicepParser

INFRA = Path(__file__).resolve().parents[2] / "infra"


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@lru_cache(maxsize=None)
def parsed(relative: str) -> dict:
    """pycep's JSON of `infra/<relative>`."""
    return BicepParser().parse(file_path=INFRA / relative)


def body(resource: dict) -> dict:
    """A resource's declared body, also for `resource x '...' = if (...) { ... }`."""
    config = resource["config"]
    return config["config"] if "condition" in config and "config" in config else config


def resources(relative: str, type_: str | None = None) -> dict[str, dict]:
    """Symbolic name -> resource (type, existing, config) of one file, of one type if given."""
    found = parsed(relative).get("resources", {})
    return {name: r for name, r in found.items() if type_ is None or r["type"] == type_}


def one(relative: str, type_: str) -> dict:
    """The body of the single non-`existing` resource of `type_` in a file."""
    declared = [r for r in resources(relative, type_).values() if not r["existing"]]
    assert len(declared) == 1, f"{relative}: {len(declared)} resources of type {type_}"
    return body(declared[0])


def variable(relative: str, name: str):
    return parsed(relative)["variables"][name]["value"]


def member_of(expression, variables: dict):
    """`roles.acrPull` (a property access on a var object) -> its literal value."""
    operands = expression["operator"]["operands"]
    return variables[operands["operand_1"]]["value"][operands["operand_2"]]


def app_settings(relative: str = "modules/functionapp.bicep") -> dict:
    """The Function App's settings (siteConfig.appSettings) as name -> pycep value."""
    site = one(relative, "Microsoft.Web/sites")
    return {item["name"]: item["value"] for item in site["properties"]["siteConfig"]["appSettings"]}
