"""The declarative join: each provider's decrypted CSV contributes its selected columns,
rows are matched on each dataset's join key (an inner join), and only the selected columns
come out (never the keys), as float32, in the spec's column order and the first dataset's row
order. Nothing from a party is executed: the SQL below is ours, with column names from the
signed spec (plain names, shared/pipeline.py) and the CSV's own columns addressed by position.

Engine: DuckDB in memory, reading each CSV as a stream (a decrypted package arrives through a
pipe, trainer_container/plaintext_pipe.py: no plaintext file), never spilling to disk
(`temp_directory` is empty: over its memory the join fails instead of writing rows to a file).
Measured before choosing, on the bench's tables (2 M joined rows, three COVID-shaped CSV files,
450 MB; this 2-core machine was shared, load 10-30, so CPU seconds say more than wall seconds):

    engine (version), from plaintext files         CPU s   wall s   peak RSS
    pandas 3.1 chunks + hash index (the join before)  23.6     107    1.80 GB
    pyarrow 26.0.1 read_csv + index_in                11.9      99    1.12 GB
    pyarrow 26.0.1 read_csv + Acero join + sort          -     120    1.77 GB
    polars 2.1.0 read_csv + join(validate="1:1")       9.3      57    1.11 GB  (reads a stream whole)
    duckdb 2.0.1 read_csv + SQL join, string keys      4.8      35    1.21 GB
    this module (duckdb 2.0.1), from packages          ~10      ~30   0.75 GB  (decryption included)

None was installed (pandas 3 does not need pyarrow), so each costs one dependency; DuckDB was
the fastest, and reads a pipe in constant memory.

Memory: a key is held as a 64-bit digest (DuckDB's `hash` of a per-join random salt and the
key, computed inside DuckDB, vectorised, as the CSV streams in), not as a string: 8 bytes instead
of ~80 per key, and a third of the CPU of the MD5 digest used before (bench/join_scale.py).
DuckDB reads a pipe on one thread, so datasets load two at a time, in order, the next as soon as
one is in: the cores stay busy while the first are joined. The first dataset keeps only its
digests once its values are out; each later one is dropped once joined.

Why 64 bits are enough here. Equal keys give equal digests. Every dataset's digests are checked
unique, so a collision inside one dataset, or between a key of one dataset and a *matched* key
of another (the other's own copy of that key then collides with it too), refuses the join as
"not unique": loud, never a wrong row. The one silent case is a key of the first dataset that
no other dataset holds colliding with a key of another dataset that the first does not hold:
one spurious row pairing two people's features, each person still in at most one row (the
DP-SGD bound per person holds). For a digest that behaves randomly that takes probability at
most u1 * u2 / 2^64 for u1 and u2 unmatched keys (3e-10 for 100 k each; 5e-6 in the extreme
of 10 M each), and a refusal about n^2 / 2^65 (3e-6 at 10 M keys). The salt, drawn from the OS
for each join and never output, is what keeps the digests unpredictable; DuckDB's hash is not
cryptographic, but a party able to build collisions gains nothing: it can only refuse a run (as
it can by not signing) or add a row, and the providers share the pseudonym key, so a provider
can already name any row it likes.
bench/join_scale.py measures 1 M and 10 M rows, before and after, from encrypted packages; at
10 M rows in one run (shared machine, load 5-7): before (decrypt to files, pandas) 200 s and
4.47 GB, after 75.5 s and 2.09 GB, 54 CPU s of which a quarter is system time (pipes, pages).
The 64-bit digest instead of MD5 took it to 44.9 CPU s and 1819 MB; on two quiet cores 23.6 s,
37.1 CPU s. Then, profiled per step at 10 M rows (CPU s, under load): the uniqueness check as
DuckDB's count(DISTINCT) 3.2-3.6 per dataset against about 0.5 as a numpy sort; the first
dataset's digests copied in row order (ORDER BY rowid) 1.05, against nothing for dropping its
value columns; the values cast from text 0.45 per 2 M rows and dataset more than parsed by the
reader; and the third dataset, loaded alone, left a core idle. With all four changes, on two
quiet cores (load 1.0-1.4): 10 M rows in 16.1 s, 27.1 CPU s, 1813 MB peak; 1 M rows in 1.9 s.
What remains is DuckDB reading the CSV (about 0.5 CPU s per million rows and table), the two
joins with the first dataset's digests (about 1.5 CPU s each at 10 M) and decryption (0.93 CPU
s per GB to nowhere, bench/crypto_throughput.py: about 0.07 per million rows and table).

Values: parsed by DuckDB's CSV reader as float64 (what Python's float() reads: signs,
exponents, blanks around, inf and nan spellings, underscores between digits; non-ASCII digits
are refused), then float32, values beyond its range becoming +-inf; a missing, NaN or
non-numeric value refuses the dataset (parsing in the reader costs 0.45 CPU s less per 2 M
rows and dataset than casting its text afterwards). A key that is empty or one of pandas'
default NA strings counts as missing. Errors name columns and datasets, never a value
(DuckDB's own messages quote rows, so none is passed on).
"""
from __future__ import annotations

import csv
import os
import re
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, closing, nullcontext
from pathlib import Path
from typing import Callable, Mapping, Union

import duckdb
import numpy as np
import pandas as pd

from shared.pipeline import JoinDataset, JoinSpec

# A dataset's plaintext: a CSV file, or an opener of a readable stream such as a pipe (the
# context manager yields a path the reader opens, and checks the stream's integrity on exit).
JoinSource = Union[Path, Callable[[], AbstractContextManager[Path]]]

MAX_HEADER_BYTES = 1 << 20
FETCH_VECTORS = 128  # result rows fetched at a time, in DuckDB vectors of 2048 rows
# pandas' default NA strings: a join key spelled like one of these was missing to pandas.
NA_KEYS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
           "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
# float64 -> float32 as numpy rounds: below FLT_MAX + half an ulp stays finite, the rest is +-inf
# (DuckDB's own cast refuses such values).
_FLOAT32_EDGE = 3.4028235677973366e38
_MACROS = f"""
CREATE MACRO ccr_float32(d) AS CASE WHEN d IS NULL OR isnan(d) THEN NULL
                                    WHEN abs(d) < {_FLOAT32_EDGE!r} THEN d::FLOAT
                                    WHEN d > 0 THEN 'inf'::FLOAT ELSE '-inf'::FLOAT END;
"""


class JoinError(ValueError):
    """The decrypted datasets do not fit the contract's join spec."""


def join_datasets(spec: JoinSpec, sources: Mapping[str, JoinSource]) -> pd.DataFrame:
    """The joined table: one column per feature plus the target, in the spec's order."""
    first, *others = spec.datasets
    salt = os.urandom(16).hex()  # one per join: every dataset's keys are digested alike
    tables = [f"dataset_{index}" for index in range(len(spec.datasets))]
    with closing(_database()) as con, ThreadPoolExecutor(max_workers=2, thread_name_prefix="ccr-join-load") as pool:

        def load(index: int) -> Future:
            dataset = spec.datasets[index]
            return pool.submit(_load_on_cursor, con, tables[index], dataset, spec, sources[dataset.name], salt)

        # DuckDB reads a pipe on one thread: datasets load two at a time, in order, each next
        # one as soon as one before it is in, so both cores stay busy while the first are joined.
        loading = [load(index) for index in range(len(tables))]
        try:
            loading[0].result()
            rows = con.execute(f"SELECT count(*) FROM {tables[0]}").fetchone()[0]
            columns: dict[str, np.ndarray] = {}
            present = _fill(con, f"SELECT rowid AS base_row, {_select(_wanted(first, spec))} FROM {tables[0]}",
                            _wanted(first, spec), rows, columns)
            # the first dataset's values are in `columns` now: only its key digests stay, under
            # the same row ids (dropping a column keeps them, and costs nothing, unlike a copy)
            for column in _wanted(first, spec):
                con.execute(f"ALTER TABLE {tables[0]} DROP COLUMN {_quote(column)}")
            for index, dataset in enumerate(others, start=1):
                loading[index].result()
                if index == len(others):  # no load writing any more: the dropped columns' memory is freed
                    con.execute("CHECKPOINT")  # before the last fill, when the most columns are held
                wanted = _wanted(dataset, spec)
                present &= _fill(con, f"SELECT base.rowid AS base_row"
                                      f"{''.join(f', other.{_quote(c)}' for c in wanted)} FROM {tables[index]} "
                                      f"AS other JOIN {tables[0]} AS base ON other.fp = base.fp", wanted, rows, columns)
                con.execute(f"DROP TABLE {tables[index]}")
        except BaseException:
            for pending in loading:  # a load not yet started never starts
                pending.cancel()
            raise
    # one column at a time, each freed once compacted: never two copies of the whole table
    return pd.DataFrame({column: columns.pop(column)[present] for column in list(columns)}, copy=False)


def _load_on_cursor(con: duckdb.DuckDBPyConnection, *args) -> None:
    """`_load` on a connection of its own to the same database, so loads run side by side."""
    with closing(con.cursor()) as cursor:
        cursor.execute("SET enable_progress_bar = false")
        _load(cursor, *args)


def _fill(con: duckdb.DuckDBPyConnection, query: str, names: list[str], rows: int,
          columns: dict[str, np.ndarray]) -> np.ndarray:
    """Runs `query` (a `base_row` column, then `names`) and writes each value at its base row
    in `columns` (new float32 arrays of `rows`, NaN where no row came), a chunk of the result
    at a time, never the whole result at once; returns which base rows came."""
    came = np.zeros(rows, dtype=bool)
    columns.update({name: np.full(rows, np.nan, dtype=np.float32) for name in names})
    result = con.execute(query)
    while len(chunk := result.fetch_df_chunk(FETCH_VECTORS)):
        at = chunk["base_row"].to_numpy()
        came[at] = True
        for name in names:
            columns[name][at] = chunk[name].to_numpy()
    return came


def _cores() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def _wanted(dataset: JoinDataset, spec: JoinSpec) -> list[str]:
    return [c for c in dataset.columns if c not in spec.drop_columns]


def _database() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that never writes to disk nor fetches extensions."""
    con = duckdb.connect(":memory:", config={
        "threads": _cores(), "temp_directory": "", "preserve_insertion_order": True,  # row ids in the CSV's order
        "autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute("SET enable_progress_bar = false")  # a connection option: nothing printed
    # freed memory goes back to the system promptly: a dropped dataset's is not kept beside the next one
    con.execute("SET allocator_flush_threshold = '16MB'")
    con.execute("SET allocator_background_threads = true")
    con.execute(_MACROS)
    return con


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _select(columns: list[str]) -> str:
    return ", ".join(_quote(c) for c in columns)


def _opened(source: JoinSource) -> AbstractContextManager[Path]:
    return nullcontext(Path(source)) if isinstance(source, (str, os.PathLike)) else source()


def _load(con: duckdb.DuckDBPyConnection, table: str, dataset: JoinDataset, spec: JoinSpec,
          source: JoinSource, salt: str) -> None:
    """Reads one dataset into `table` (key digest `fp`, then its wanted columns as float32 or
    NULL) and checks it: every column present, every key present and unique, every value a
    number. The source's integrity check (its context manager's exit) runs before any verdict
    on its content, so a damaged package is reported as such."""
    with _opened(source) as path:
        header, piped = _read_header(dataset, path)
        missing = [c for c in (dataset.join_key, *dataset.columns) if c not in header]
        if missing:
            raise JoinError(f"dataset {dataset.name} has no column {', '.join(missing)}")
        position = {name: index for index, name in reversed(list(enumerate(header)))}  # first of a repeated name
        wanted = _wanted(dataset, spec)
        numeric = {position[c]: c for c in wanted}  # parsed as float64 by the reader, the rest kept as text
        values = "".join(f", ccr_float32(c{i}) AS {_quote(c)}" for i, c in numeric.items())  # -> float32
        types = "{" + ", ".join(f"'c{i}': '{'DOUBLE' if i in numeric else 'VARCHAR'}'" for i in range(len(header))) + "}"
        na_keys = ", ".join("'" + na.replace("'", "''") + "'" for na in NA_KEYS)
        try:
            con.execute(
                f"CREATE TABLE {table} AS SELECT CASE WHEN key IS NULL OR key IN ({na_keys}) THEN NULL "
                f"ELSE hash('{salt}' || key) END AS fp{values} "
                f"FROM (SELECT c{position[dataset.join_key]} AS key, * "
                f"FROM read_csv(?, columns = {types}, header = {str(not piped).lower()}, auto_detect = false, "
                "delim = ',', quote = '\"', escape = '\"', strict_mode = true))", [str(path)])
        except duckdb.ConversionException as error:  # a selected value the reader could not parse as a number
            column = numeric.get(_unparsed_column(error))
            if column is None:
                raise JoinError(f"dataset {dataset.name} is not a CSV table (UTF-8, comma-separated, "
                                "one row per line, every row as wide as the header)") from None
            raise JoinError(f"column {column} of dataset {dataset.name} has missing or non-numeric values") from None
        except duckdb.Error:
            raise JoinError(f"dataset {dataset.name} is not a CSV table (UTF-8, comma-separated, "
                            "one row per line, every row as wide as the header)") from None
    null_counts = ["count(*) - count(fp)", *(f"count(*) - count({_quote(c)})" for c in wanted)]
    no_key, *bad = con.execute(f"SELECT {', '.join(null_counts)} FROM {table}").fetchone()
    if no_key:
        raise JoinError(f"dataset {dataset.name} has rows without a join key {dataset.join_key}")
    for column, count in zip(wanted, bad):
        if count:
            raise JoinError(f"column {column} of dataset {dataset.name} has missing or non-numeric values")
    if not _distinct(con, table):
        raise JoinError(f"join key {dataset.join_key} of dataset {dataset.name} is not unique")


def _distinct(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether the key digests of `table` (none missing) are pairwise distinct: sorted in place
    in numpy, a fifth of the CPU of DuckDB's count(DISTINCT) hash table (bench/join_scale.py),
    8 bytes a row for the moment it takes."""
    digests = con.execute(f"SELECT fp FROM {table}").fetchnumpy()["fp"]
    digests.sort()
    return not np.any(digests[1:] == digests[:-1])


def _unparsed_column(error: duckdb.ConversionException) -> int | None:
    """The position of the column DuckDB's CSV reader could not convert, from its message
    (which also quotes the value and the line, so only the column's name `c<position>` is
    taken from it), or None."""
    match = re.search(r'converting column "c(\d+)"', str(error))
    return int(match.group(1)) if match else None


def _read_header(dataset: JoinDataset, path: Path) -> tuple[list[str], bool]:
    """(the CSV's column names, whether the header was consumed from a pipe). From a pipe the
    header line is read byte by byte so the table reader gets exactly the rows that follow."""
    piped = stat.S_ISFIFO(os.stat(path).st_mode)
    line = bytearray()
    with open(path, "rb", buffering=0) as stream:
        while len(line) <= MAX_HEADER_BYTES and not line.endswith(b"\n"):
            byte = stream.read(1 if piped else 4096)
            if not byte:
                break
            line += byte
    line = bytes(line).split(b"\n", 1)[0].removeprefix(b"\xef\xbb\xbf").removesuffix(b"\r")
    try:
        header = next(csv.reader([line.decode("utf-8")], strict=True))
    except (UnicodeDecodeError, csv.Error, StopIteration):
        header = None
    if not header or len(line) > MAX_HEADER_BYTES:
        raise JoinError(f"dataset {dataset.name} is not a CSV table (no header line)")
    return header, piped
