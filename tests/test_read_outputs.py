"""Every published table opens with an analyst's tools, as it is on disk.

One tiny data root is built by the real writers: the synthetic source (``raw/``, with corrupted
rows so ``quarantine/`` has some), the Spark jobs ``validate`` → ``sessionize`` → ``build_samples``
for three days (``clean/``, ``sessions/``, ``samples/``) and the nightly export on tiny untrained
models (``exports/``; u2q on two days, so its newest partition carries the runs of the day before
with a ``run_ds`` older than the partition's ``ds``). Each table folder is then opened with
``pandas.read_parquet``, ``pyarrow.dataset.dataset(partitioning="hive")`` and DuckDB
``read_parquet('<table>/*/*.parquet', hive_partitioning=true)``: each must return exactly the
published rows (the manifests' ``rows`` summed over the partitions with ``_SUCCESS``, per ``ds``
too), ``ds`` exactly once (from the folder; no file carries a column of that name), and no
duplicate of the table's unique key (``common.schemas.UNIQUE_KEYS`` plus ``ds``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from common import schemas
from common.paths import MANIFEST, SUCCESS, published_ds
from common.publish import read_manifest
from tests.export_fixtures import register_tiny_karma, register_tiny_policy, tiny_base

pytestmark = [pytest.mark.spark, pytest.mark.slow]

D1, D2, D3 = "2026-11-01", "2026-11-02", "2026-11-03"
DAYS = (D1, D2, D3)
PART = schemas.PARTITION_COLUMN

#: The tables each area must hold after the fixture's run (the test fails on a new, unlisted one).
AREAS = {
    "raw": (*schemas.RAW_TABLES, "true_interests"),
    "clean": tuple(schemas.RAW_TABLES),
    "quarantine": tuple(schemas.RAW_TABLES),
    "sessions": tuple(schemas.SESSION_TABLES),
    "samples": tuple(schemas.SAMPLE_TABLES),
    "exports": tuple(schemas.EXPORT_TABLES),
}
#: Areas whose rows have no unique key: raw is the input as delivered (its exact duplicates are
#: for ``validate`` to quarantine), and quarantine keeps every bad copy.
NO_KEY_AREAS = ("raw", "quarantine")
#: Tables the fixture may leave empty (its corrupted rows are behaviour events only).
MAY_BE_EMPTY = {("quarantine", t) for t in schemas.RAW_TABLES if t != "behavior_events"}
READERS = ("pandas", "pyarrow", "duckdb")
CASES = [(area, table) for area, tables in AREAS.items() for table in tables]


@pytest.fixture(scope="module")
def data_root(spark, tmp_path_factory):
    import torch

    from common.config import load_config
    from export.u2i import export_u2i
    from export.u2q import export_u2q
    from export.x2q import export_x2q
    from jobs import build_samples, sessionize, validate
    from sources.synthetic import generate

    work = tmp_path_factory.mktemp("read_outputs")
    root = work / "data"
    generate(root, D1, len(DAYS), n_users=40, n_items=200, events_per_user_day=12.0, seed=3, bad_row_rate=0.02)
    cfg = load_config(environ={})
    cfg["data_root"] = str(root)
    for ds in DAYS:
        validate.run(spark, cfg, ds)
        sessionize.run(spark, cfg, ds)
        build_samples.run(spark, cfg, ds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = tiny_base(work / "base")
        register_tiny_policy(root, base, work, "aigq_direct", "direct", D1)
        register_tiny_policy(root, base, work, "aigq_think", "think", D1)
        register_tiny_karma(root, base, work, D1)
        cfg["export"] = {**cfg["export"], "batch_users": 16}
        cfg["export"]["generate"] = {**cfg["export"]["generate"], "max_new_tokens": 16}
        for ds in (D2, D3):
            export_u2q(cfg, str(root), ds, f"run-{ds}")
            export_u2i(cfg, str(root), ds, f"run-{ds}")
        export_x2q(cfg, str(root), D3, f"run-{D3}")
    finally:
        torch.set_num_threads(threads)
    return root


# --- what was published -------------------------------------------------------------------------
def published_rows(table_dir: Path) -> dict[str, int]:
    """Rows per published partition, from the manifests (partitions without ``_SUCCESS`` left out)."""
    return {ds: int(read_manifest(table_dir / f"{PART}={ds}")["rows"])
            for ds in published_ds(table_dir.parent.parent, table_dir.parent.name, table_dir.name)}


def file_key_rows(table_dir: Path, key: tuple[str, ...]) -> Counter:
    """(ds from the folder, *key from the files) of every row, reading each file on its own."""
    import pyarrow.parquet as pq

    from common.arrow_io import data_files

    out: Counter = Counter()
    for ds in published_ds(table_dir.parent.parent, table_dir.parent.name, table_dir.name):
        for f in data_files(table_dir / f"{PART}={ds}"):
            t = pq.ParquetFile(f).read(columns=list(key))
            out.update((ds, *row) for row in zip(*(t.column(c).to_pylist() for c in key), strict=True))
    return out


# --- the three readers --------------------------------------------------------------------------
def read_with(reader: str, table_dir: Path) -> tuple[list[str], list[dict]]:
    """Column names and rows (plain Python values) as the reader returns the table folder."""
    if reader == "pandas":
        import pandas as pd

        df = pd.read_parquet(table_dir)
        return list(df.columns), df.to_dict("records")
    if reader == "pyarrow":
        import pyarrow.dataset as pds

        t = pds.dataset(table_dir, format="parquet", partitioning="hive").to_table()
        return t.column_names, t.to_pylist()
    if reader == "duckdb":
        import duckdb

        with duckdb.connect() as con:
            rel = con.sql(f"SELECT * FROM read_parquet('{table_dir}/*/*.parquet', hive_partitioning = true)")
            columns = list(rel.columns)
            return columns, [dict(zip(columns, r, strict=True)) for r in rel.fetchall()]
    raise ValueError(reader)


def canon(value):
    """A reader's value as plain JSON-able Python (numpy arrays and scalars, dates, timestamps)."""
    if isinstance(value, np.ndarray):
        return [canon(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [canon(v) for v in value]
    if isinstance(value, dict):
        return {k: canon(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if hasattr(value, "isoformat"):  # pandas.Timestamp
        return value.isoformat()
    return value


def key_of(row: dict, columns) -> str:
    return json.dumps([canon(row[c]) for c in columns], sort_keys=True, default=str)


# --- tests -----------------------------------------------------------------------------------------
def test_no_schema_has_the_partition_column():
    clashing = sorted(name for name, schema in schemas.ALL_TABLES.items() if PART in schema.names)
    assert clashing == []


def test_every_table_has_a_unique_key_entry_naming_its_columns():
    assert sorted(schemas.UNIQUE_KEYS) == sorted(schemas.ALL_TABLES)
    unknown = {t: [c for c in key if c not in schemas.ALL_TABLES[t].names]
               for t, key in schemas.UNIQUE_KEYS.items() if key}
    assert {t: cols for t, cols in unknown.items() if cols} == {}


@pytest.mark.parametrize("area", sorted(AREAS))
def test_the_areas_hold_exactly_the_listed_tables(data_root, area):
    found = sorted(p.name for p in (data_root / area).iterdir() if not p.name.startswith(("_", ".")))
    assert found == sorted(AREAS[area])


@pytest.mark.parametrize("area,table", CASES)
def test_partitions_hold_markers_the_readers_must_skip(data_root, area, table):
    table_dir = data_root / area / table
    parts = sorted(p for p in table_dir.iterdir() if p.name.startswith(f"{PART}="))
    assert parts, table_dir
    without_markers = [p.name for p in parts if not ((p / SUCCESS).is_file() and (p / MANIFEST).is_file())]
    assert without_markers == []
    if (area, table) not in MAY_BE_EMPTY:
        rows = published_rows(table_dir)
        assert sum(rows.values()) > 0, f"{table_dir}: the fixture published no rows, the read tests prove nothing"


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("area,table", CASES)
def test_each_reader_returns_exactly_the_published_rows(data_root, area, table, reader):
    table_dir = data_root / area / table
    expected = published_rows(table_dir)
    columns, rows = read_with(reader, table_dir)

    schema = schemas.quarantine_arrow_schema(table) if area == "quarantine" else schemas.arrow_schema(table)
    assert sorted(columns) == sorted([*schema.names, PART])  # ds exactly once, from the folder
    assert len(rows) == sum(expected.values())
    per_ds = Counter(str(canon(r[PART]))[:10] for r in rows)
    assert dict(per_ds) == {ds: n for ds, n in expected.items() if n}

    if area in NO_KEY_AREAS:
        return
    key = schemas.UNIQUE_KEYS[table] or tuple(c for c in schema.names)
    seen = Counter(key_of(r, [PART, *key]) for r in rows)
    duplicates = {k: n for k, n in seen.items() if n > 1}
    assert duplicates == {}
    if schemas.UNIQUE_KEYS[table]:  # the key values themselves, against each file read alone
        truth = Counter(key_of(dict(zip([PART, *key], k, strict=True)), [PART, *key])
                        for k in file_key_rows(table_dir, key).elements())
        assert Counter(key_of({**r, PART: str(canon(r[PART]))[:10]}, [PART, *key]) for r in rows) == truth


@pytest.mark.parametrize("reader", READERS)
def test_u2q_carried_runs_keep_their_own_run_date(data_root, reader):
    """The newest u2q partition holds the runs of the day before: their ``run_ds`` (in the files)
    must come back as written, beside the partition's ``ds`` (from the folder)."""
    _, rows = read_with(reader, data_root / "exports" / "u2q")
    pairs = Counter((str(canon(r[PART]))[:10], r["run_ds"]) for r in rows)
    assert pairs[(D3, D2)] > 0  # carried rows, read with their own date
    assert pairs[(D3, D3)] > 0
    assert pairs[(D2, D2)] > 0
    assert sorted(pairs) == [(D2, D2), (D3, D2), (D3, D3)]


def test_the_documented_snippet_reads_the_published_u2q(data_root, monkeypatch):
    """The README's reader snippet (``export.docs``, which the README must match) as it is."""
    from export import docs

    code = docs.reader_snippets().split("```python\n", 1)[1].split("```", 1)[0]
    expected = published_rows(data_root / "exports" / "u2q")
    monkeypatch.chdir(data_root.parent)  # the snippet opens data/exports/u2q
    scope: dict = {}
    exec(code, scope)
    assert len(scope["df"]) == sum(expected.values())
    assert scope["table"].num_rows == sum(expected.values())
    assert len(scope["rel"].fetchall()) == expected[docs.EXAMPLE_DS]
