"""Validation gates run on a staged export before it is published.

Every check is a pure function of a pyarrow Table (and its thresholds) returning a list of
failure messages with the numbers behind them; an empty list means it passed.
:func:`run_gates` collects the results of named checks for the manifest and
:func:`enforce` raises :class:`GateFailed` naming every failed check, so nothing is published.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc


class GateFailed(RuntimeError):
    """A staged export failed a validation gate; the message names the checks and numbers."""

    def __init__(self, table: str, failures: Mapping[str, list[str]]):
        self.table = table
        self.failures = {k: list(v) for k, v in failures.items() if v}
        detail = "; ".join(f"{name}: {' | '.join(msgs)}" for name, msgs in self.failures.items())
        super().__init__(f"{table}: validation gate failed ({detail})")


def check_coverage(table: pa.Table, expected_users: Iterable[str], min_coverage: float,
                   user_col: str = "user_id") -> list[str]:
    """Share of ``expected_users`` with at least one row >= ``min_coverage``.

    >>> check_coverage(pa.table({"user_id": ["a"]}), ["a", "b"], 0.9)
    ['coverage 0.5000 (1 of 2 expected users) < min 0.9000']
    """
    expected = set(expected_users)
    if not expected:
        return []
    present = set(pc.unique(table[user_col]).to_pylist()) if table.num_rows else set()
    covered = len(expected & present)
    share = covered / len(expected)
    if share < min_coverage:
        return [f"coverage {share:.4f} ({covered} of {len(expected)} expected users) < min {min_coverage:.4f}"]
    return []


def check_null_rates(table: pa.Table, max_null_rate: float | Mapping[str, float],
                     columns: Sequence[str] | None = None) -> list[str]:
    """Per column null share <= the threshold (a number, or ``{column: threshold}`` with the
    columns not named checked against ``max_null_rate.get("*", 0.0)``).

    >>> check_null_rates(pa.table({"q": ["a", None, None, "b"]}), 0.25)
    ['q: null rate 0.5000 (2 of 4 rows) > max 0.2500']
    """
    if table.num_rows == 0:
        return []
    out = []
    for name in columns or table.column_names:
        limit = max_null_rate.get(name, max_null_rate.get("*", 0.0)) if isinstance(max_null_rate, Mapping) \
            else max_null_rate
        nulls = table[name].null_count
        rate = nulls / table.num_rows
        if rate > limit:
            out.append(f"{name}: null rate {rate:.4f} ({nulls} of {table.num_rows} rows) > max {limit:.4f}")
    return out


def check_duplicates(table: pa.Table, keys: Sequence[str]) -> list[str]:
    """No two rows share the ``keys`` columns.

    >>> check_duplicates(pa.table({"u": ["a", "a", "b"], "r": [1, 1, 1]}), ["u", "r"])
    ['duplicate keys (u, r): 1 extra rows over 1 keys, e.g. (a, 1)']
    """
    if table.num_rows == 0:
        return []
    counts = table.group_by(list(keys)).aggregate([([], "count_all")])
    dup = counts.filter(pc.greater(counts["count_all"], 1))
    if dup.num_rows == 0:
        return []
    extra = int(pc.sum(dup["count_all"]).as_py()) - dup.num_rows
    example = ", ".join(str(dup[k][0].as_py()) for k in keys)
    return [f"duplicate keys ({', '.join(keys)}): {extra} extra rows over {dup.num_rows} keys, e.g. ({example})"]


def check_range(table: pa.Table, column: str, low: float, high: float) -> list[str]:
    """Every value of ``column`` is finite and in ``[low, high]`` (nulls are the null gate's).

    >>> check_range(pa.table({"s": [0.5, 1.5, float("nan")]}), "s", 0.0, 1.0)
    ['s: 2 of 3 values outside [0, 1] or not finite (min 0.5, max 1.5)']
    """
    values = [v for v in table[column].to_pylist() if v is not None]
    bad = [v for v in values if not (isinstance(v, (int, float)) and math.isfinite(v) and low <= v <= high)]
    if not bad:
        return []
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (float("nan"), float("nan"))
    return [f"{column}: {len(bad)} of {len(values)} values outside [{low:g}, {high:g}] or not finite "
            f"(min {lo:.4g}, max {hi:.4g})"]


def check_values(table: pa.Table, column: str, allowed: Sequence[str]) -> list[str]:
    """Every value of ``column`` is one of ``allowed`` (nulls are the null-rate gate's).

    >>> check_values(pa.table({"c": ["a", "b", "x"]}), "c", ["a", "b"])
    ["c: 1 rows outside ['a', 'b'], e.g. 'x'"]
    """
    values = table[column].to_pylist()
    bad = [v for v in values if v is not None and v not in allowed]
    return [f"{column}: {len(bad)} rows outside {list(allowed)}, e.g. {bad[0]!r}"] if bad else []


def check_blocklist(table: pa.Table, blocklist, column: str = "query") -> list[str]:
    """Zero rows whose ``column`` the :class:`aigq_model.parsing.Blocklist` blocks.

    >>> from aigq_model.parsing import Blocklist
    >>> check_blocklist(pa.table({"query": ["ok", "bad word"]}), Blocklist(["bad word"]))
    ["query: 1 block-listed values of 2, e.g. 'bad word'"]
    """
    if blocklist is None or not blocklist or table.num_rows == 0:
        return []
    values = table[column].to_pylist()
    blocked = [v for v in values if v is not None and blocklist.blocks(v)]
    if not blocked:
        return []
    return [f"{column}: {len(blocked)} block-listed values of {len(values)}, e.g. {blocked[0]!r}"]


def check_list_lengths(table: pa.Table, group_by: Sequence[str], min_len: int, max_len: int) -> list[str]:
    """Rows per ``group_by`` group (one list) within ``[min_len, max_len]``.

    >>> check_list_lengths(pa.table({"u": ["a", "a", "a", "b"]}), ["u"], 2, 2)
    ['lists per (u): 2 of 2 outside [2, 2] (shortest 1, longest 3)']
    """
    if table.num_rows == 0:
        return []
    counts = table.group_by(list(group_by)).aggregate([([], "count_all")])["count_all"].to_pylist()
    bad = sum(1 for c in counts if c < min_len or c > max_len)
    if not bad:
        return []
    return [f"lists per ({', '.join(group_by)}): {bad} of {len(counts)} outside [{min_len}, {max_len}] "
            f"(shortest {min(counts)}, longest {max(counts)})"]


def check_value_lengths(table: pa.Table, column: str, min_len: int, max_len: int) -> list[str]:
    """Lengths of a list column within ``[min_len, max_len]`` (e.g. every embedding has dim d).

    >>> check_value_lengths(pa.table({"e": [[1.0, 2.0], [1.0]]}), "e", 2, 2)
    ['e: 1 of 2 lists with length outside [2, 2] (shortest 1, longest 2)']
    """
    if table.num_rows == 0:
        return []
    lengths = pc.fill_null(pc.list_value_length(table[column]), 0).to_pylist()
    bad = sum(1 for n in lengths if n < min_len or n > max_len)
    if not bad:
        return []
    return [f"{column}: {bad} of {len(lengths)} lists with length outside [{min_len}, {max_len}] "
            f"(shortest {min(lengths)}, longest {max(lengths)})"]


def check_finite_lists(table: pa.Table, column: str) -> list[str]:
    """No NaN or infinite value inside a list<float> column.

    >>> check_finite_lists(pa.table({"e": [[1.0, float("nan")], [0.0]]}), "e")
    ['e: 1 non-finite values in 1 of 2 rows']
    """
    if table.num_rows == 0:
        return []
    flat = pc.list_flatten(table[column])
    bad = pc.invert(pc.is_finite(flat))
    n_bad = int(pc.sum(bad).as_py() or 0)
    if not n_bad:
        return []
    parents = pc.list_parent_indices(table[column])
    rows = len(set(pc.filter(parents, bad).to_pylist()))
    return [f"{column}: {n_bad} non-finite values in {rows} of {table.num_rows} rows"]


def check_min_rows(table: pa.Table, min_rows: int) -> list[str]:
    """>>> check_min_rows(pa.table({"a": []}), 1)
    ['0 rows < min 1']
    """
    return [f"{table.num_rows} rows < min {min_rows}"] if table.num_rows < min_rows else []


def run_gates(checks: Mapping[str, list[str]]) -> dict[str, dict]:
    """``{check: {"passed": bool, "failures": [...]}}`` for the manifest."""
    return {name: {"passed": not failures, "failures": list(failures)} for name, failures in checks.items()}


def enforce(table_name: str, results: Mapping[str, Mapping]) -> None:
    """Raise :class:`GateFailed` when any check of :func:`run_gates` failed."""
    failed = {name: r["failures"] for name, r in results.items() if not r["passed"]}
    if failed:
        raise GateFailed(table_name, failed)
