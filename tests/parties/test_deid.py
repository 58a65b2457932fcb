"""De-identification: the three COVID providers' prepared tables join exactly like the raw
files, hold no direct identifier, and bad input is refused with file, line and column."""
from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from shared import deid
from shared.deid import DeidError
from shared.pipeline import JoinSpec
from local_emulator import covid_reference as covid_model
from trainer_container.join import join_datasets

COVID = covid_model.COVID_DATA
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "covid"
KEY = bytes.fromhex("a1" * 32)
IDENTIFIERS = {  # provider -> raw columns holding direct identifiers
    "icmr": ["icmrnumber", "icmr_patient_mobilenumber", "srfnumber"],
    "cowin": ["cowin_registered_mobile", "beneficiary_name", "id_verified", "uhid", "beneficiary_reference_id",
              "d1_vaccinated_by", "d1_vaccinated_at", "d2_vaccinated_at"],
    "index": ["idcpatient", "pname", "pcnumber", "srfnumber", "icmrnumber", "bucode", "trbucode", "pahospital",
              "paddress"],
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("prepared")
    paths = {}
    for name, raw in covid_model.RAW_FILES.items():
        config = deid.load_config(CONFIGS / f"{name}.json")
        table = deid.prepare_csv(config, COVID / raw, out / f"{name}.csv", KEY)
        assert table.rows == len((COVID / raw).read_text().splitlines()) - 1
        assert table.schema["join_keys"] == ["pseudonym"]
        paths[name] = out / f"{name}.csv"
    return paths


def _raw_join_count() -> int:
    tables = {n: pd.read_csv(COVID / f, dtype=str) for n, f in covid_model.RAW_FILES.items()}
    keys = covid_model.RAW_JOIN_KEYS
    joined = tables["icmr"].merge(tables["cowin"], left_on=keys["icmr"], right_on=keys["cowin"])
    return len(joined.merge(tables["index"], left_on=keys["icmr"], right_on=keys["index"]))


def test_prepared_tables_join_like_the_raw_files(prepared):
    raw = _raw_join_count()
    assert raw > 0
    tables = [pd.read_csv(prepared[n], dtype=str) for n in ("icmr", "cowin", "index")]
    joined = tables[0].merge(tables[1], on="pseudonym").merge(tables[2], on="pseudonym")
    assert len(joined) == raw
    spec = JoinSpec.from_dict(covid_model.covid_join_spec({n: "pseudonym" for n in covid_model.RAW_FILES}))
    trainer_view = join_datasets(spec, prepared)  # what the clean room will do with them
    assert len(trainer_view) == raw
    assert list(trainer_view.columns) == [c for d in spec.datasets for c in d.columns]


def test_no_direct_identifier_survives(prepared):
    forbidden = set()
    for name, columns in IDENTIFIERS.items():
        raw = pd.read_csv(COVID / covid_model.RAW_FILES[name], dtype=str)
        for column in columns:
            forbidden.update(v.strip() for v in raw[column].dropna())
    forbidden.discard("D2_Pending")  # a placeholder, not an identifier
    assert len(forbidden) > 10000
    texts = {name: path.read_text() for name, path in prepared.items()}
    cells = {cell for text in texts.values() for row in csv.reader(text.splitlines()) for cell in row}
    assert not cells & forbidden
    for text in texts.values():  # and nothing else could hide one: hex pseudonyms and small numbers only
        header, *rows = list(csv.reader(text.splitlines()))
        assert header[0] == "pseudonym" and "pseudonym" not in header[1:]
        for row in rows:
            assert re.fullmatch(r"[0-9a-f]{64}", row[0])
            assert all(re.fullmatch(r"-?\d{1,3}", cell) for cell in row[1:])
    phones = pd.read_csv(COVID / covid_model.RAW_FILES["icmr"], dtype=str)["icmr_patient_mobilenumber"]
    unsalted = {hashlib.sha256(p.encode()).hexdigest() for p in phones}
    assert not cells & unsalted


def test_pseudonyms_depend_on_the_key_and_agree_across_providers(tmp_path):
    config = deid.load_config(CONFIGS / "icmr.json")
    source = COVID / covid_model.RAW_FILES["icmr"]
    deid.prepare_csv(config, source, tmp_path / "a.csv", KEY)
    deid.prepare_csv(config, source, tmp_path / "b.csv", bytes.fromhex("b2" * 32))
    first, second = (pd.read_csv(tmp_path / f, dtype=str)["pseudonym"] for f in ("a.csv", "b.csv"))
    assert not set(first) & set(second)
    assert deid.pseudonym(KEY, "+91 98450-12345", "phone") == deid.pseudonym(KEY, "9845012345", "phone")
    assert deid.pseudonym(KEY, "9845012345", "phone") != deid.pseudonym(KEY, "9845012346", "phone")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


SMALL_CONFIG = {"dataset": "t", "pseudonymize": {"phone": {"as": "pseudonym", "normalize": "phone"}},
                "drop": ["name"], "keep": ["age", "sex"],
                "types": {"age": "int", "sex": {"map": {"M": 0, "F": 1}}}}


@pytest.mark.parametrize("text, location, secret", [
    ("phone,name,age\n9845012345,Asha Rao,41\n", "line 1: column(s) sex", None),
    ("phone,name,age,sex,email\n9845012345,Asha Rao,41,F,asha@x.in\n", "line 1: column(s) email", None),
    ("phone,name,age,sex\n9845012345,Asha Rao,41,F\n9845012346,Ravi K,52\n", "line 3: 3 fields", None),
    ("phone,name,age,sex\n9845012345,Asha Rao,41,F\n9845012346,\"Ravi K,52,M\n", "line 3: malformed", None),
    ("phone,name,age,sex\n9845012345,Asha Rao,41,F\n9845012346,Ravi K,fifty,M\n", "line 3: column age", "fifty"),
    ("phone,name,age,sex\n9845012345,Asha Rao,41,X\n", "line 2: column sex", None),
    ("phone,name,age,sex\n9845012345,Asha Rao,41,F\n--,Ravi K,52,M\n", "line 3: column phone", None),
    ("", "line 1: empty file", None),
])
def test_bad_input_names_file_line_and_column_and_writes_nothing(tmp_path, text, location, secret):
    source = _write(tmp_path / "provider.csv", text)
    with pytest.raises(DeidError) as raised:
        deid.prepare_csv(deid.parse_config(SMALL_CONFIG), source, tmp_path / "out.csv", KEY)
    message = str(raised.value)
    assert message.startswith(f"{source}: ") and location in message
    for value in ("9845012345", "Asha Rao", "Ravi K", secret):
        assert value is None or value not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["provider.csv"]


def test_small_table_is_prepared_with_types_and_order(tmp_path):
    source = _write(tmp_path / "p.csv", "phone,name,age,sex\n+91 98450 12345,Asha Rao, 41 ,F\n")
    table = deid.prepare_csv(deid.parse_config(SMALL_CONFIG), source, tmp_path / "out.csv", KEY)
    rows = list(csv.reader((tmp_path / "out.csv").read_text().splitlines()))
    assert rows == [["pseudonym", "age", "sex"], [deid.pseudonym(KEY, "9845012345", "phone"), "41", "1"]]
    assert table.rows == 1 and [c["name"] for c in table.schema["columns"]] == ["pseudonym", "age", "sex"]


@pytest.mark.parametrize("change, message", [
    ({"keep": ["age", "sex", "name"]}, "both drop and keep"),
    ({"pseudonymize": {"phone": {"as": "pseudonym", "normalize": "sha1"}}}, "pseudonymize.phone"),
    ({"pseudonymize": {"phone": {"as": 7, "normalize": "phone"}}}, "pseudonymize.phone"),
    ({"types": {"age": "integer"}}, "types.age"),
    ({"types": ["age", "int"]}, "types must map"),
    ({"types": {"name": "str"}}, "types.name names a column that is not kept"),
    ({"rename": {"age": "pseudonym"}}, "same output name"),
    ({"colour": "blue"}, "unknown field(s) colour"),
    ({"dataset": "../etc"}, "dataset must be a plain name"),
])
def test_bad_configs_are_refused(change, message):
    with pytest.raises(DeidError, match=message.replace("(", r"\(").replace(")", r"\)")):
        deid.parse_config(SMALL_CONFIG | change)


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(DeidError, match="not valid JSON"):
        deid.load_config(_write(tmp_path / "c.json", "{nope"))
    with pytest.raises(DeidError, match="not found"):
        deid.load_config(tmp_path / "missing.json")
    assert deid.load_config(_write(tmp_path / "ok.json", json.dumps(SMALL_CONFIG))).dataset == "t"


@pytest.mark.parametrize("text, message", [("abc", "hex"), ("00" * 16, "at least 32 bytes")])
def test_bad_pseudonym_keys(text, message):
    with pytest.raises(DeidError, match=message):
        deid.parse_pseudonym_key(text, "key.hex")
    assert deid.parse_pseudonym_key(deid.new_pseudonym_key() + "\n", "key.hex") != bytes(32)
