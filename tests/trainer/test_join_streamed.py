"""The trainer's join reads each dataset as its package decrypts into a pipe: same table as
the pandas join it replaced, the same clear refusals (naming columns and datasets, never a
value), a damaged package reported as such, and no plaintext file written on the way."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.pandas_join import join_datasets as pandas_join
from shared import package
from shared.pipeline import JoinSpec
from trainer_container.join import join_datasets
from trainer_container.plaintext_pipe import decrypted_pipe

ROOT = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))
SECRET = "SECRET-VALUE-4711"  # a value no error message may quote
SPEC = JoinSpec.from_dict({"datasets": [{"name": "one", "join_key": "k", "columns": ["x", "t"]},
                                        {"name": "two", "join_key": "key2", "columns": ["y", "z"]},
                                        {"name": "three", "join_key": "id", "columns": ["w"]}],
                           "drop_columns": ["z"], "target": "t"})


def seal(folder: Path, name: str, plaintext: bytes) -> Path:
    """`plaintext` as a package under KEY (its plaintext file removed)."""
    plain, sealed = folder / f"{name}.csv", folder / f"{name}.ccr"
    plain.write_bytes(plaintext)
    package.encrypt_file(plain, sealed, KEY, "test-key", "text/csv")
    plain.unlink()
    return sealed


def tables(rows: int = 3000, seed: int = 1) -> dict[str, pd.DataFrame]:
    """Three providers' tables: shared keys in each one's own order plus keys of their own,
    decimals, negatives, a repeated header name and columns the spec does not select."""
    rng = np.random.default_rng(seed)
    keys = np.array([f"{i:064x}" for i in rng.permutation(10**6)[:rows + 300]], dtype=object)
    shared, own = keys[:rows], keys[rows:]

    def rows_of(extra: np.ndarray) -> np.ndarray:
        return rng.permutation(np.concatenate([shared, extra]))

    one, two, three = rows_of(own[:100]), rows_of(own[100:200]), rows_of(own[200:])
    return {
        "one": pd.DataFrame({"name": ["n"] * len(one), "k": one, "x": rng.normal(0, 1e3, len(one)).round(3),
                             "t": rng.integers(0, 2, len(one))}),
        "two": pd.DataFrame({"key2": two, "y": rng.integers(-50, 50, len(two)), "z": rng.random(len(two)),
                             "note": ["a,b"] * len(two)}),
        "three": pd.DataFrame({"w": rng.random(len(three)) * 1e6, "id": three}),
    }


def csv_bytes(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode()


def piped(sealed: dict[str, Path]) -> dict:
    return {name: partial(decrypted_pipe, path, KEY) for name, path in sealed.items()}


def test_streamed_join_equals_the_pandas_join(tmp_path):
    plain = tables()
    for name, table in plain.items():
        (tmp_path / f"{name}.csv").write_bytes(csv_bytes(table))
    expected = pandas_join(SPEC, {name: tmp_path / f"{name}.csv" for name in plain})
    (tmp_path / "sealed").mkdir()
    sealed = {name: seal(tmp_path / "sealed", name, csv_bytes(table)) for name, table in plain.items()}
    joined = join_datasets(SPEC, piped(sealed))
    assert len(joined) == 3000 and list(joined.columns) == ["x", "t", "y", "w"]
    assert set(joined.dtypes) == {np.dtype(np.float32)}
    pd.testing.assert_frame_equal(joined, expected)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the pandas join's 1e39
def test_values_convert_as_the_pandas_join_did(tmp_path):
    """Signs, exponents, surrounding blanks, infinities and overflow beyond float32 read
    alike; quoted fields and a Windows line end too."""
    text = ('k,x,t\r\na," 5",1\r\nb,-1e3,0\r\nc,+.5,1\r\nd,inf,0\r\ne,-Infinity,1\r\nf,1e39,0\r\n'
            'g,"3.4028235e38",1\r\nh,0.1,0\r\n')
    (tmp_path / "one.csv").write_text(text)
    spec = JoinSpec.from_dict({"datasets": [{"name": "one", "join_key": "k", "columns": ["x", "t"]}], "target": "t"})
    expected = pandas_join(spec, {"one": tmp_path / "one.csv"})
    joined = join_datasets(spec, piped({"one": seal(tmp_path, "one-sealed", text.encode())}))
    assert np.isposinf(joined["x"].iloc[5]) and joined["x"].iloc[2] == np.float32(0.5)
    pd.testing.assert_frame_equal(joined, expected)


def test_digit_group_underscores_read_as_python_reads_them(tmp_path):
    """The reader parses a number as Python's float() does: underscores between digits group
    them (pandas refused those; misplaced ones are refused below)."""
    text = "k,x,t\na,1_000,1\nb,0.000_5,0\nc,1e1_0,1\n"
    spec = JoinSpec.from_dict({"datasets": [{"name": "one", "join_key": "k", "columns": ["x", "t"]}], "target": "t"})
    joined = join_datasets(spec, piped({"one": seal(tmp_path, "one", text.encode())}))
    assert joined["x"].tolist() == [np.float32(float(v)) for v in ("1_000", "0.000_5", "1e1_0")]


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("one.csv", date_time=(2024, 1, 1, 0, 0, 0)), "k,x,t\na,1,0\n" * 50)
    return buffer.getvalue()


NOT_CSV = ("dataset one is not a CSV table", "dataset one has no column k, x, t")  # garbage: either is clear
REFUSALS = {  # case -> (dataset one's plaintext, the error's beginning)
    "not_csv": (_zip(), NOT_CSV),
    "binary": (bytes(range(256)) * 64, NOT_CSV),
    "empty": (b"", "dataset one is not a CSV table"),
    "ragged": (f"k,x,t\na,1,0\nb,2,1,{SECRET}\n".encode(), "dataset one is not a CSV table"),
    "missing_column": (f"k,x,{SECRET}\na,1,0\n".encode(), "dataset one has no column t"),
    "non_numeric": (f"k,x,t\na,1,0\nb,{SECRET},1\n".encode(), "column x of dataset one has missing or non-numeric"),
    "missing_value": (b"k,x,t\na,1,0\nb,,1\n", "column x of dataset one has missing or non-numeric"),
    "nan_value": (b"k,x,t\na,NaN,0\n", "column x of dataset one has missing or non-numeric"),
    "misplaced_underscore": (b"k,x,t\na,1__000,0\n", "column x of dataset one has missing or non-numeric"),
    "arabic_indic_digits": ("k,x,t\na,\u0661\u0662,0\n".encode(), "column x of dataset one has missing or non-numeric"),
    "missing_key": (b"k,x,t\na,1,0\n,2,1\n", "dataset one has rows without a join key k"),
    "na_key": (b"k,x,t\na,1,0\nNA,2,1\n", "dataset one has rows without a join key k"),
    "duplicate_key": (f"k,x,t\n{SECRET},1,0\nb,2,1\n{SECRET},3,0\n".encode(), "join key k of dataset one is not unique"),
}
TWO = b"key2,y,z\na,1,0\nb,2,0\n"
THREE = b"id,w\na,1\nb,2\n"

# A child process joins each case from packages, with every file a Python open() writes
# recorded by an audit hook, TMPDIR and the working directory empty folders of its own.
CHILD = """
import json, sys
from functools import partial
from pathlib import Path
written = []
sys.addaudithook(lambda event, args: written.append(str(args[0])) if event == "open" and not isinstance(args[0], int)
                 and ((isinstance(args[1], str) and set(args[1]) & set("wax+"))
                      or (args[1] is None and args[2] & 0o3)) else None)
from shared.pipeline import JoinSpec
from trainer_container.join import JoinError, join_datasets
from trainer_container.plaintext_pipe import decrypted_pipe
job = json.load(sys.stdin)
spec, key = JoinSpec.from_dict(job["spec"]), bytes.fromhex(job["key"])
errors = {}
for case, packages in job["cases"].items():
    try:
        join_datasets(spec, {name: partial(decrypted_pipe, Path(path), key) for name, path in packages.items()})
        errors[case] = None
    except JoinError as error:
        errors[case] = str(error)
print(json.dumps({"errors": errors, "written": written}))
"""


def test_bad_plaintexts_are_refused_clearly_and_no_plaintext_file_is_written(tmp_path):
    sealed = tmp_path / "packages"
    sealed.mkdir()
    two, three = seal(sealed, "two", TWO), seal(sealed, "three", THREE)
    cases = {case: {"one": str(seal(sealed, case, plaintext)), "two": str(two), "three": str(three)}
             for case, (plaintext, _) in REFUSALS.items()}
    scratch, workdir = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir(), workdir.mkdir()
    before = sorted(p.name for p in sealed.iterdir())
    job = {"spec": {"datasets": [{"name": d.name, "join_key": d.join_key, "columns": list(d.columns)}
                                 for d in SPEC.datasets], "drop_columns": ["z"], "target": "t"},
           "key": KEY.hex(), "cases": cases}
    result = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(job), capture_output=True, text=True,
                            cwd=workdir, env={**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(ROOT)},
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    for case, (_, message) in REFUSALS.items():
        assert outcome["errors"][case] is not None and outcome["errors"][case].startswith(message), case
        assert SECRET not in outcome["errors"][case]
    assert outcome["written"] == []  # no file opened for writing, by the join or the decryption
    assert list(scratch.iterdir()) == [] and list(workdir.iterdir()) == []
    assert sorted(p.name for p in sealed.iterdir()) == before  # packages untouched, nothing beside them


def test_a_tampered_package_is_reported_as_such_not_as_a_table_or_a_join_error(tmp_path):
    """A bit flipped in the last segment: the join has already read a valid first megabyte
    of rows when the pipe ends, and must report the package, not what it made of the part."""
    rows = pd.DataFrame({"k": [f"{i:064x}" for i in range(30000)], "x": np.arange(30000), "t": np.arange(30000) % 2})
    sealed = seal(tmp_path, "one", csv_bytes(rows))
    assert package.read_header(sealed.read_bytes()).segment_count == 3
    data = bytearray(sealed.read_bytes())
    data[len(data) - 1000] ^= 1
    sealed.write_bytes(bytes(data))
    spec = JoinSpec.from_dict({"datasets": [{"name": "one", "join_key": "k", "columns": ["x", "t"]}], "target": "t"})
    with pytest.raises(package.TamperedPackage, match=r"segment 2 of 3 failed authentication"):
        join_datasets(spec, piped({"one": sealed}))


def test_a_pipe_read_only_in_part_fails_since_its_digest_was_never_checked(tmp_path):
    sealed = seal(tmp_path, "one", b"k,x\n" + b"a,1\n" * 600_000)
    with pytest.raises(package.PackageError, match="reader stopped before the end"):
        with decrypted_pipe(sealed, KEY) as path, open(path, "rb") as stream:
            assert stream.read(4) == b"k,x\n"


def test_a_wrong_key_fails_before_the_join_reads_anything(tmp_path):
    sealed = seal(tmp_path, "one", b"k,x,t\na,1,0\n")
    spec = JoinSpec.from_dict({"datasets": [{"name": "one", "join_key": "k", "columns": ["x", "t"]}], "target": "t"})
    with pytest.raises(package.WrongKey):
        join_datasets(spec, {"one": partial(decrypted_pipe, sealed, bytes(32))})
