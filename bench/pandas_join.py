"""The trainer's join as it was before DuckDB (pandas chunks, float32 arrays, a hash index on
the first dataset's keys), read from plaintext CSV files: kept so bench/join_scale.py can
measure before and after in one run, and so a test can check the new join gives the same
table. Not used by the trainer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from shared.pipeline import JoinDataset, JoinSpec
from trainer_container.join import JoinError

CHUNK_ROWS = 1_000_000
def _wanted(dataset: JoinDataset, spec: JoinSpec) -> list[str]:
    return [c for c in dataset.columns if c not in spec.drop_columns]


def read_dataset(dataset: JoinDataset, spec: JoinSpec, path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(join keys as strings, {column: float32 values}) of one provider's CSV."""
    header = pd.read_csv(path, nrows=0).columns
    missing = [c for c in (dataset.join_key, *dataset.columns) if c not in header]
    if missing:
        raise JoinError(f"dataset {dataset.name} has no column {', '.join(missing)}")
    wanted = _wanted(dataset, spec)
    keys, values = [], {c: [] for c in wanted}
    reader = pd.read_csv(path, usecols=[dataset.join_key, *wanted], dtype={dataset.join_key: str},
                         chunksize=CHUNK_ROWS)
    for chunk in reader:
        if chunk[dataset.join_key].isna().any():
            raise JoinError(f"dataset {dataset.name} has rows without a join key {dataset.join_key}")
        keys.append(chunk[dataset.join_key].to_numpy(dtype=object))
        for column in wanted:
            numbers = pd.to_numeric(chunk[column], errors="coerce")
            if numbers.isna().any():
                raise JoinError(f"column {column} of dataset {dataset.name} has missing or non-numeric values")
            values[column].append(numbers.to_numpy(dtype=np.float32))
    all_keys = np.concatenate(keys) if keys else np.array([], dtype=object)
    return all_keys, {c: (np.concatenate(v) if v else np.array([], np.float32)) for c, v in values.items()}


def join_datasets(spec: JoinSpec, paths: dict[str, Path]) -> pd.DataFrame:
    """The joined table: one column per feature plus the target, in the spec's order."""
    first, *others = spec.datasets
    base_index, columns = _indexed(first, spec, paths[first.name])
    present = np.ones(len(base_index), dtype=bool)
    for dataset in others:
        matched, aligned = _aligned(base_index, dataset, spec, paths[dataset.name])
        present &= matched
        columns.update(aligned)
    return pd.DataFrame({column: data[present] for column, data in columns.items()})


def _indexed(dataset: JoinDataset, spec: JoinSpec, path: Path) -> tuple[pd.Index, dict[str, np.ndarray]]:
    keys, values = read_dataset(dataset, spec, path)
    index = pd.Index(keys)
    if not index.is_unique:
        raise JoinError(f"join key {dataset.join_key} of dataset {dataset.name} is not unique")
    return index, values


def _aligned(base_index: pd.Index, dataset: JoinDataset, spec: JoinSpec,
             path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(which base rows this dataset has, its columns in base order). A function of its own so
    this dataset's keys and hash index are freed before the next dataset is read."""
    index, values = _indexed(dataset, spec, path)
    position = base_index.get_indexer(index)
    hit = position >= 0
    matched = np.zeros(len(base_index), dtype=bool)
    matched[position[hit]] = True
    aligned = {}
    for column, data in values.items():
        aligned[column] = np.full(len(base_index), np.nan, dtype=np.float32)
        aligned[column][position[hit]] = data[hit]
    return matched, aligned
