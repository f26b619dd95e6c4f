"""The README's "Reading the outputs" section and docs/outputs.md are what ``export.docs`` generates
from ``common.schemas`` (regenerate with ``python -m export.docs``)."""

from __future__ import annotations

import shutil

import pytest

from common import schemas
from export import docs


def test_readme_section_is_the_generated_one():
    text = docs.README.read_text()
    assert text.count(docs.BEGIN) == 1
    assert text.count(docs.END) == 1
    current = text[text.index(docs.BEGIN): text.index(docs.END) + len(docs.END)]
    assert current == docs.readme_section(), "README section stale: run python -m export.docs"


def test_outputs_doc_is_the_generated_one():
    assert docs.OUTPUTS_DOC.read_text() == docs.outputs_doc(), "docs/outputs.md stale: run python -m export.docs"


def test_every_export_column_is_documented_and_nothing_else():
    assert sorted(schemas.COLUMN_DOCS) == sorted(schemas.EXPORT_TABLES)
    for table, schema in schemas.EXPORT_TABLES.items():
        assert list(schemas.COLUMN_DOCS[table]) == schema.names, table


def test_outputs_doc_has_one_row_per_column_of_each_export_table():
    text = docs.outputs_doc()
    for table, schema in schemas.EXPORT_TABLES.items():
        block = text.split(f"## `{table}`", 1)[1].split("\n## ", 1)[0]
        rows = [line.split("|")[1].strip().strip("`") for line in block.splitlines() if line.startswith("| `")]
        assert rows == [schemas.PARTITION_COLUMN, *schema.names], table


def test_the_check_flags_an_edited_section_and_write_restores_it(tmp_path):
    readme, doc = tmp_path / "README.md", tmp_path / "docs" / "outputs.md"
    shutil.copy(docs.README, readme)
    assert docs.stale(readme, doc) == [doc]  # no docs/outputs.md yet
    docs.write(readme, doc)
    assert docs.stale(readme, doc) == []
    readme.write_text(readme.read_text().replace("hive_partitioning = true", "hive_partitioning = false", 1))
    assert docs.stale(readme, doc) == [readme]
    docs.write(readme, doc)
    assert readme.read_text() == docs.README.read_text()


def test_a_readme_without_markers_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert docs.stale(readme, tmp_path / "outputs.md") == [readme, tmp_path / "outputs.md"]
    with pytest.raises(ValueError, match="reading-outputs:begin"):
        docs.write(readme, tmp_path / "outputs.md")
