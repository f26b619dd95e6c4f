"""Streaming Parquet writer of the synthetic partitions: row groups of about ``chunk_rows``,
rolling to a new ``part-NNNNN.parquet`` every ``rows_per_file`` rows, so memory stays bounded."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class PartitionWriter:
    """Streams tables into ``part-NNNNN.parquet`` files: row groups of ~chunk_rows, rolling files."""

    def __init__(self, folder: Path, schema: pa.Schema, chunk_rows: int, rows_per_file: int | None = None):
        self.folder, self.schema, self.chunk_rows = Path(folder), schema, max(1, int(chunk_rows))
        self.rows_per_file = rows_per_file or 8 * self.chunk_rows
        self.rows = 0
        self.files: list[str] = []
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._buffer.append(table)
        self._buffered += table.num_rows
        if self._buffered >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer).combine_chunks()
        self._buffer, self._buffered = [], 0
        while table.num_rows:
            if self._writer is None:
                self._open()
            piece = table.slice(0, self.rows_per_file - self._rows_in_file)
            table = table.slice(piece.num_rows)
            self._writer.write_table(piece, row_group_size=self.chunk_rows)
            self.rows += piece.num_rows
            self._rows_in_file += piece.num_rows
            if self._rows_in_file >= self.rows_per_file:
                self._writer.close()
                self._writer = None

    def _open(self) -> None:
        name = f"part-{len(self.files):05d}.parquet"
        self.files.append(name)
        self._writer = pq.ParquetWriter(self.folder / name, self.schema)
        self._rows_in_file = 0

    def close(self) -> None:
        self._flush()
        if not self.files:                 # an empty partition still carries the schema
            self._open()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
