"""pyarrow helpers to write and read whole partitions with the contract schemas."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common import schemas
from common.paths import is_published, partition_path
from common.publish import atomic_partition, read_manifest


def to_table(table: str, data: pa.Table | list[dict]) -> pa.Table:
    schema = schemas.arrow_schema(table)
    if isinstance(data, pa.Table):
        return data.select(schema.names).cast(schema)
    return pa.Table.from_pylist(list(data), schema=schema)


def write_partition(root, area: str, table: str, ds: str, data: pa.Table | list[dict], manifest=None) -> Path:
    """Publish ``data`` as ``<root>/<area>/<table>/ds=<ds>`` atomically (one file)."""
    tbl = to_table(table, data)
    final = partition_path(root, area, table, ds)
    manifest = {"table": table, "ds": ds, "rows": tbl.num_rows, **(manifest or {})}
    with atomic_partition(final, manifest) as tmp:
        pq.write_table(tbl, tmp / "part-00000.parquet")
    return final


def read_partition(root, area: str, table: str, ds: str, schema: pa.Schema | None = None) -> pa.Table:
    """Read a published partition (raises FileNotFoundError when it is not published)."""
    path = partition_path(root, area, table, ds)
    if not is_published(path):
        raise FileNotFoundError(f"partition not published: {path}")
    files = data_files(path)
    if not files:
        return (schema or schemas.arrow_schema(table)).empty_table()
    # ParquetFile, not read_table: no hive-partition discovery of a "ds" column from the path.
    tables = [pq.ParquetFile(f).read() for f in files]
    if schema is not None:
        tables = [t.select(schema.names).cast(schema) for t in tables]
    return pa.concat_tables(tables, promote_options="default")


def data_files(partition: str | Path) -> list[Path]:
    """Parquet data files of a partition folder (skips ``_*`` and ``.*`` entries at any depth)."""
    root = Path(partition)
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(("_", ".")) for part in p.relative_to(root).parts)
    )


def parquet_row_count(folder: str | Path) -> int:
    """Rows in a folder's Parquet files, from their footers."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in data_files(folder))


def partition_rows(root: str | Path, area: str, table: str, ds: str) -> tuple[int | None, dict]:
    """``(rows, manifest)`` of a published partition; ``(None, {})`` when it is not published."""
    path = partition_path(root, area, table, ds)
    if not is_published(path):
        return None, {}
    manifest = read_manifest(path)
    rows = manifest.get("rows")
    return (int(rows) if isinstance(rows, int) else parquet_row_count(path)), manifest
