"""The join never holds keys as Python strings (DuckDB keeps an 8-byte salted digest per key): adding a
third dataset must not add a third set of key strings to the Python-side peak (bench/join_scale.py
measures the whole process at 1 and 10 million rows)."""
from __future__ import annotations

import hashlib
import sys
import tracemalloc

import numpy as np
import pandas as pd

from shared.pipeline import JoinSpec
from trainer_container.join import join_datasets

ROWS = 100_000


def test_a_third_dataset_does_not_add_a_third_set_of_keys_to_the_peak(tmp_path):
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(ROWS)]  # pseudonym-shaped
    rng = np.random.default_rng(0)
    paths = {}
    for name, column in (("a", "t"), ("b", "x"), ("c", "y")):
        order = rng.permutation(ROWS)
        paths[name] = tmp_path / f"{name}.csv"
        pd.DataFrame({"pseudonym": np.array(keys, dtype=object)[order],
                      column: order % 2}).to_csv(paths[name], index=False)
    datasets = [{"name": n, "join_key": "pseudonym", "columns": [c]} for n, c in (("a", "t"), ("b", "x"), ("c", "y"))]
    key_bytes = sum(sys.getsizeof(key) for key in keys)

    def peak(count: int) -> tuple[int, pd.DataFrame]:
        spec = JoinSpec.from_dict({"datasets": datasets[:count], "target": "t"})
        tracemalloc.start()
        try:
            table = join_datasets(spec, {d.name: paths[d.name] for d in spec.datasets})
            return tracemalloc.get_traced_memory()[1], table
        finally:
            tracemalloc.stop()

    two, _ = peak(2)
    three, table = peak(3)
    assert len(table) == ROWS and (table["t"] == table["x"]).all() and (table["x"] == table["y"]).all()
    assert three - two < key_bytes / 2, f"third dataset added {(three - two) / key_bytes:.2f} key sets to the peak"
