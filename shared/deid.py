"""Declarative de-identification of one provider's CSV before it is encrypted and published.

A preparation config (JSON, one per provider) declares every input column exactly once, so a
column nobody thought about (a new identifier in next month's export) stops the run instead of
leaking:

    {"dataset": "cowin",
     "pseudonymize": {"cowin_registered_mobile": {"as": "pseudonym", "normalize": "phone"}},
     "drop": ["beneficiary_name", "uhid", ...],           # direct identifiers, unneeded columns
     "keep": ["age", "gender", "vaccine_name"],            # output in this order, after pseudonyms
     "rename": {"gender": "sex"}, "prefix": "",            # output name = prefix + (rename or name)
     "types": {"age": "int", "gender": {"map": {"M": 0, "F": 1}}}}

Pseudonyms are HMAC-SHA256 (hex) under the key the contract's providers share, of the value
after its normalisation, so equal identifiers get equal pseudonyms across providers and the
tables still join, while a 10-digit phone number cannot be brute-forced from its pseudonym.
Normalisations: `phone` (digits only, the last 10 kept, so "+91 98450-12345" and "9845012345"
agree), `digits`, `casefold` (trimmed, case-folded), `trim`.
Types: `int`, `float` (finite), `str`, or `{"map": {input: number}}` for categories.

Errors name the file, line and column, never a value (values may be identifiers). Input is
streamed row by row; the output is written beside its destination and renamed into place only
when every row passed.
"""
from __future__ import annotations

import csv
import hmac
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

PSEUDONYM_KEY_BYTES = 32
NORMALIZATIONS = ("phone", "digits", "casefold", "trim")
SIMPLE_TYPES = ("int", "float", "str")
_CONFIG_FIELDS = {"dataset", "pseudonymize", "drop", "keep", "rename", "prefix", "types", "notes"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
_INT = re.compile(r"^[+-]?\d+$")


class DeidError(ValueError):
    """Bad preparation config, key or input; names file, line and column, never a value."""


@dataclass(frozen=True)
class Pseudonym:
    output: str
    normalize: str


@dataclass(frozen=True)
class PreparationConfig:
    dataset: str
    pseudonymize: dict[str, Pseudonym]
    drop: tuple[str, ...]
    keep: tuple[str, ...]
    rename: dict[str, str]
    prefix: str
    types: dict[str, object]

    @property
    def declared(self) -> set[str]:
        return set(self.pseudonymize) | set(self.drop) | set(self.keep)

    def output_name(self, column: str) -> str:
        return self.prefix + self.rename.get(column, column)

    @property
    def output_columns(self) -> list[str]:
        return [p.output for p in self.pseudonymize.values()] + [self.output_name(c) for c in self.keep]

    def schema(self) -> dict:
        """What the prepared table holds (goes into the package manifest; no values)."""
        columns = [{"name": p.output, "type": "pseudonym"} for p in self.pseudonymize.values()]
        for column in self.keep:
            kind = self.types.get(column, "str")
            columns.append({"name": self.output_name(column), "type": "category" if isinstance(kind, dict) else kind})
        return {"dataset": self.dataset, "join_keys": [p.output for p in self.pseudonymize.values()],
                "columns": columns}


@dataclass(frozen=True)
class PreparedTable:
    rows: int
    schema: dict


def _fail_config(where: str, message: str):
    raise DeidError(f"{where}: {message}")


def _names(where: str, value, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        _fail_config(where, f"{field} must be a list of column names")
    if len(set(value)) != len(value):
        _fail_config(where, f"{field} lists a column twice")
    return tuple(value)


def _parse_type(where: str, column: str, kind):
    if isinstance(kind, str) and kind in SIMPLE_TYPES:
        return kind
    if isinstance(kind, dict) and set(kind) == {"map"} and isinstance(kind["map"], dict) and kind["map"] \
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in kind["map"].values()):
        return kind
    _fail_config(where, f"types.{column} must be one of {', '.join(SIMPLE_TYPES)} or {{\"map\": {{value: number}}}}")


def parse_config(data, where: str = "config") -> PreparationConfig:
    """Checks a config document: every name declared once, outputs unique and plain."""
    if not isinstance(data, dict):
        _fail_config(where, "a preparation config is a JSON object")
    unknown = sorted(set(data) - _CONFIG_FIELDS)
    if unknown:
        _fail_config(where, f"unknown field(s) {', '.join(unknown)}")
    for required in ("dataset", "pseudonymize", "drop", "keep"):
        if required not in data:
            _fail_config(where, f"missing field {required}")
    dataset = data["dataset"]
    if not isinstance(dataset, str) or not _NAME.match(dataset):
        _fail_config(where, "dataset must be a plain name")
    raw_pseudonyms = data["pseudonymize"]
    if not isinstance(raw_pseudonyms, dict) or not raw_pseudonyms:
        _fail_config(where, "pseudonymize must map at least one join identifier column to {\"as\", \"normalize\"}")
    pseudonyms = {}
    for column, spec in raw_pseudonyms.items():
        if not isinstance(spec, dict) or set(spec) != {"as", "normalize"} or not isinstance(spec["as"], str) \
                or spec["normalize"] not in NORMALIZATIONS:
            _fail_config(where, f"pseudonymize.{column} must be {{\"as\": name, \"normalize\": one of "
                                f"{', '.join(NORMALIZATIONS)}}}")
        pseudonyms[column] = Pseudonym(spec["as"], spec["normalize"])
    drop, keep = _names(where, data["drop"], "drop"), _names(where, data["keep"], "keep")
    seen: dict[str, str] = {}
    for field, columns in (("pseudonymize", list(pseudonyms)), ("drop", drop), ("keep", keep)):
        for column in columns:
            if column in seen:
                _fail_config(where, f"column {column!r} is listed in both {seen[column]} and {field}")
            seen[column] = field
    rename = data.get("rename", {})
    if not isinstance(rename, dict) or not all(isinstance(v, str) for v in rename.values()):
        _fail_config(where, "rename must map column names to new names")
    for column in rename:
        if column not in keep:
            _fail_config(where, f"rename.{column} names a column that is not kept")
    prefix = data.get("prefix", "")
    if not isinstance(prefix, str):
        _fail_config(where, "prefix must be a string")
    raw_types = data.get("types") or {}
    if not isinstance(raw_types, dict):
        _fail_config(where, "types must map kept column names to types")
    types = {}
    for column, kind in raw_types.items():
        if column not in keep:
            _fail_config(where, f"types.{column} names a column that is not kept")
        types[column] = _parse_type(where, column, kind)
    config = PreparationConfig(dataset, pseudonyms, drop, keep, dict(rename), prefix, types)
    outputs = config.output_columns
    for name in outputs:
        if not _NAME.match(name):
            _fail_config(where, f"output column name {name!r} is not a plain name (letters, digits, '_', '.', '-'; "
                                "not starting with a digit): give it one with \"rename\": {\"<input name>\": "
                                "\"<plain name>\"}")
    if len(set(outputs)) != len(outputs):
        _fail_config(where, "two columns would have the same output name")
    return config


def load_config(path) -> PreparationConfig:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeidError(f"{path}: config file not found") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise DeidError(f"{path}: not valid JSON ({getattr(error, 'msg', 'bad encoding')})") from None
    return parse_config(data, str(path))


def parse_pseudonym_key(text: str, where: str) -> bytes:
    """A pseudonym key is written as hex (64 or more hex digits, whitespace ignored)."""
    compact = "".join(text.split())
    try:
        key = bytes.fromhex(compact)
    except ValueError:
        raise DeidError(f"{where}: pseudonym key must be hex") from None
    if len(key) < PSEUDONYM_KEY_BYTES:
        raise DeidError(f"{where}: pseudonym key must be at least {PSEUDONYM_KEY_BYTES} bytes "
                        f"({2 * PSEUDONYM_KEY_BYTES} hex digits)")
    return key


def new_pseudonym_key() -> str:
    """A fresh key (hex) for the providers of one contract to share."""
    return os.urandom(PSEUDONYM_KEY_BYTES).hex()


def normalize(value: str, how: str) -> str:
    if how == "phone":
        return re.sub(r"\D", "", value)[-10:]
    if how == "digits":
        return re.sub(r"\D", "", value)
    if how == "casefold":
        return " ".join(value.split()).casefold()
    return value.strip()


def pseudonym(key: bytes, value: str, how: str) -> str | None:
    """HMAC-SHA256 hex of the normalised value; None if nothing is left to pseudonymize."""
    normalized = normalize(value, how)
    if not normalized:
        return None
    return hmac.new(key, normalized.encode("utf-8"), sha256).hexdigest()


def _coerce(value: str, kind) -> str | None:
    """The output text of a typed cell, or None if the value does not fit the type."""
    text = value.strip()
    if kind == "str":
        return value
    if kind == "int":
        return str(int(text)) if _INT.match(text) else None
    if kind == "float":
        try:
            number = float(text)
        except ValueError:
            return None
        return repr(number) if math.isfinite(number) else None
    mapped = kind["map"].get(text)
    return None if mapped is None else str(mapped)


def _expected(kind) -> str:
    return "a category listed in the config" if isinstance(kind, dict) else f"type {kind}"


def prepare_csv(config: PreparationConfig, input_path, output_path, pseudonym_key: bytes) -> PreparedTable:
    """De-identifies `input_path` into `output_path` (CSV) following `config`."""
    if not isinstance(pseudonym_key, bytes) or len(pseudonym_key) < PSEUDONYM_KEY_BYTES:
        raise DeidError(f"pseudonym key must be at least {PSEUDONYM_KEY_BYTES} bytes")
    input_path, output_path = Path(input_path), Path(output_path)
    name = str(input_path)
    if not output_path.parent.is_dir():
        raise DeidError(f"{output_path}: output directory does not exist")
    try:
        source = open(input_path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise DeidError(f"{name}: input file not found") from None
    handle = tempfile.NamedTemporaryFile("w", newline="", encoding="utf-8", dir=output_path.parent,
                                         prefix=f".{output_path.name}.", suffix=".part", delete=False)
    try:
        with source, handle:
            rows = _transform(config, csv.reader(source, strict=True), csv.writer(handle, lineterminator="\n"),
                              name, pseudonym_key)
        os.replace(handle.name, output_path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return PreparedTable(rows, config.schema())


def _transform(config: PreparationConfig, reader, writer, name: str, key: bytes) -> int:
    try:
        header = next(reader)
    except StopIteration:
        raise DeidError(f"{name}: line 1: empty file, expected a header row") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise DeidError(f"{name}: line 1: malformed CSV header ({type(error).__name__})") from None
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        raise DeidError(f"{name}: line 1: a column name appears twice in the header")
    missing = [c for c in config.keep + tuple(config.pseudonymize) + config.drop if c not in header]
    undeclared = [c for c in header if c not in config.declared]
    if missing:
        also = (f"; the header has undeclared column(s) {', '.join(undeclared)} (renamed in this export? declare "
                "the header's names; `rename` sets output names)") if undeclared else ""
        raise DeidError(f"{name}: line 1: column(s) {', '.join(missing)} declared in the config are missing{also}")
    if undeclared:
        raise DeidError(f"{name}: line 1: column(s) {', '.join(undeclared)} are not declared in the config "
                        "(list each under pseudonymize, drop or keep)")
    index = {column: i for i, column in enumerate(header)}
    pseudonym_plan = [(index[c], c, p.normalize) for c, p in config.pseudonymize.items()]
    keep_plan = [(index[c], c, config.types.get(c, "str")) for c in config.keep]
    writer.writerow(config.output_columns)
    rows = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except (csv.Error, UnicodeDecodeError) as error:
            raise DeidError(f"{name}: line {reader.line_num}: malformed CSV row ({type(error).__name__})") from None
        line = reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            raise DeidError(f"{name}: line {line}: {len(row)} fields, the header has {len(header)}")
        out = []
        for position, column, how in pseudonym_plan:
            value = pseudonym(key, row[position], how)
            if value is None:
                raise DeidError(f"{name}: line {line}: column {column}: empty join identifier "
                                f"after {how} normalisation")
            out.append(value)
        for position, column, kind in keep_plan:
            value = _coerce(row[position], kind)
            if value is None:
                raise DeidError(f"{name}: line {line}: column {column}: value is not {_expected(kind)}")
            out.append(value)
        writer.writerow(out)
        rows += 1
