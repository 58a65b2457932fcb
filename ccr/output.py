"""How `ccr` prints a result, as `az` does: `--output json` (default, indented), `table`
(aligned columns with a header) or `tsv` (tab-separated values, no header: for shell
scripts), after an optional `--query` (a JMESPath expression, https://jmespath.org).

Table and tsv show rows of scalars: a list of objects is one row per object, an object is one
row, and an object whose only field is a list (`{"runs": [...]}`) is that list. Nested values
are left out of a row (pick them with `--query`, e.g. `--query "runs[].{id: run_id, status:
status}"`). A scalar result prints as itself.
"""
from __future__ import annotations

import json
import sys

FORMATS = ("json", "table", "tsv")
# What `ccr` was asked for on its command line (set once by ccr.cli.main).
chosen = {"output": "json", "query": None}


class QueryError(ValueError):
    """A --query that is not a JMESPath expression."""


def apply_query(document, query: str | None):
    if not query:
        return document
    import jmespath
    from jmespath.exceptions import JMESPathError
    try:
        return jmespath.search(query, document)
    except JMESPathError as error:
        raise QueryError(f"--query: {str(error).splitlines()[0]}") from None


def _scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _rows(document) -> list:
    if isinstance(document, dict) and len(document) == 1 and isinstance(next(iter(document.values())), list):
        document = next(iter(document.values()))
    return document if isinstance(document, list) else [document]


def _columns(rows: list) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            for key, value in row.items():
                if _scalar(value):
                    columns.setdefault(key)
    return list(columns)


def render(document, output: str = "json") -> str:
    """The text `ccr` prints for `document` in format `output` (no trailing newline)."""
    if output == "json":
        return json.dumps(document, indent=2)
    if _scalar(document):
        return _text(document)
    rows = _rows(document)
    columns = _columns(rows)
    lines: list[list[str]] = []
    for row in rows:
        if isinstance(row, dict):
            lines.append([_text(row.get(c)) if _scalar(row.get(c)) else "" for c in columns])
        elif isinstance(row, list):
            lines.append([_text(v) for v in row if _scalar(v)])
        else:
            lines.append([_text(row)])
    if output == "tsv":
        return "\n".join("\t".join(line) for line in lines)
    header = [c.replace("_", " ").title() for c in columns] if columns else []
    table = ([header] if header else []) + lines
    widths = [max(len(line[i]) for line in table if i < len(line)) for i in range(max(map(len, table), default=0))]
    out = []
    for number, line in enumerate(table):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if header and number == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write(document, output: str | None = None, query: str | None = None, stream=None) -> None:
    """Prints `document` as chosen on the command line (or as `output` / `query` say)."""
    query = query if query is not None else chosen["query"]
    text = render(apply_query(document, query), output or chosen["output"])
    print(text, file=stream or sys.stdout)
