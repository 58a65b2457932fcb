"""`ccr tdp check-bounds`: does a proposed public feature bound look derived from the data?

The training config's `feature_bounds` are public: the trainer clips every feature to them and
fits its scaling with differential privacy inside them, so the bounds themselves must carry no
information about anyone's rows. A bound copied from the data's observed minimum or maximum
does (it reveals an extreme person's value). A provider runs this on its own prepared table, on
its own machine, before it signs: nothing leaves that machine. It warns for each bound equal to
the column's observed minimum or maximum, and notes the share of values a bound would clip
(tight bounds are allowed, but clip real values). A coded column (at most CODED_VALUES distinct
values: flags, categories) is exempt from the first warning: its code set's range is public and
is usually also what the data shows.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path


CODED_VALUES = 20


class BoundsError(ValueError):
    """A table or bounds document this check cannot read."""


def observed_ranges(path: Path, columns: list[str]) -> dict[str, dict]:
    """For each of `columns` the table has: min, max and count of its numeric values, and up to
    CODED_VALUES + 1 of its distinct values (one pass, constant memory)."""
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as error:
        raise BoundsError(f"{path}: {error.strerror}") from None
    with handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        index = {name: i for i, name in enumerate(header) if name in columns}
        ranges = {name: {"min": math.inf, "max": -math.inf, "count": 0, "distinct": set()} for name in index}
        for row in reader:
            for name, position in index.items():
                try:
                    value = float(row[position])
                except (ValueError, IndexError):
                    continue
                if math.isfinite(value):
                    found = ranges[name]
                    found["min"], found["max"] = min(found["min"], value), max(found["max"], value)
                    found["count"] += 1
                    if len(found["distinct"]) <= CODED_VALUES:
                        found["distinct"].add(value)
        return ranges


def _clipped(path: Path, column: str, low: float, high: float) -> int:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        position = header.index(column)
        count = 0
        for row in reader:
            try:
                value = float(row[position])
            except (ValueError, IndexError):
                continue
            count += value < low or value > high
        return count


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def check(path: Path, bounds: dict[str, tuple[float, float]]) -> dict:
    """Per bounded column of the table: the bounds, the warnings; columns it lacks are listed."""
    ranges = observed_ranges(path, list(bounds))
    report, warnings = [], []
    for column, (low, high) in bounds.items():
        found = ranges.get(column)
        if found is None:
            continue
        entry = {"column": column, "low": low, "high": high, "verdict": "ok"}
        if len(found["distinct"]) <= CODED_VALUES and found["count"]:
            entry["coded"] = True
        if found["count"] == 0:
            entry["verdict"] = "no numeric values"
            report.append(entry)
            continue
        coded = len(found["distinct"]) <= CODED_VALUES
        derived = [] if coded else [side for side, bound, seen in (("low", low, found["min"]),
                                                                   ("high", high, found["max"])) if _same(bound, seen)]
        if derived:
            entry["verdict"] = "looks derived from the data"
            warnings.append(f"{column}: the {' and '.join(derived)} bound equals this table's observed "
                            f"{'minimum' if derived == ['low'] else 'maximum' if derived == ['high'] else 'range'}: "
                            "take bounds from a codebook or the measurement's physical range, never from the data")
        clipped = _clipped(path, column, low, high)
        if clipped:
            share = clipped / found["count"]
            entry["clipped_share"] = round(share, 4)
            if entry["verdict"] == "ok":
                entry["verdict"] = "clips values"
            warnings.append(f"{column}: {share:.1%} of this table's values lie outside [{low:g}, {high:g}] and "
                            "will be clipped to it")
        report.append(entry)
    return {"table": str(path), "columns": report, "not_in_table": sorted(set(bounds) - set(ranges)),
            "warnings": warnings}
