"""docs/configuration.md is what ``common.config_docs`` generates from conf/pipeline.yaml (regenerate
with ``python -m common.config_docs``), and it documents every key of the ``local`` profile."""

from __future__ import annotations

import yaml

from common import config_docs
from common.config import BASE_PROFILE, DEFAULT_CONFIG, OPEN_MAPS, config_schema

STALE = "docs/configuration.md is stale: run python -m common.config_docs"


def _local_keys(node: dict, prefix: str = "") -> list[str]:
    """Every dotted key of a profile that holds a value (a free-form map is one key), read from
    the YAML itself, not from the schema the generator uses."""
    keys = []
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and path not in OPEN_MAPS:
            keys += _local_keys(value, path)
        else:
            keys.append(path)
    return keys


def _table_rows(text: str) -> dict[str, list[str]]:
    """``{key: its cells}`` of the key tables of the reference (first cell: `` `key` ``)."""
    rows = {}
    body = text.split("## Keys of the `local` profile", 1)[1].split("\n## ", 1)[0]
    for line in body.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_the_reference_is_the_generated_one():
    assert config_docs.CONFIG_DOC.read_text() == config_docs.config_reference(), STALE


def test_every_key_of_the_local_profile_is_in_the_reference():
    local = yaml.safe_load(DEFAULT_CONFIG.read_text())["profiles"][BASE_PROFILE]
    keys = _local_keys(local)
    assert len(keys) > 200
    assert "aigq.generate.seed" in keys
    assert "spark.conf" in keys
    rows = _table_rows(config_docs.CONFIG_DOC.read_text())
    missing = [path for path in keys if path not in rows]
    assert not missing, f"keys of the local profile missing from docs/configuration.md: {missing}. {STALE}"


def test_every_key_has_a_meaning_from_the_comment_beside_it():
    """The comment beside a key in conf/pipeline.yaml is its meaning in the reference."""
    undocumented = [p for p, s in config_schema().items() if s.kind != "section" and not s.doc]
    assert not undocumented, f"add a '# comment' beside these keys of the local profile: {undocumented}"
    rows = _table_rows(config_docs.config_reference())
    assert all(cells[3] for cells in rows.values())


def test_the_reference_shows_type_default_and_meaning():
    rows = _table_rows(config_docs.config_reference())
    assert rows["data_root"][1:] == ["string", "`data`", "relative paths resolve against the repository root"]
    assert rows["aigq.generate.seed"][1:3] == ["integer or null", "`null`"]
    assert rows["synthetic.start_ds"][2] == "`'2026-11-01'`"  # the YAML to write, quoted
    assert rows["karma.variant"][3] == "act \\| act+gen \\| act+rec \\| act+gen+rec"  # pipes escaped
    assert rows["export.lookback_days"][2] == "unset"
    assert rows["export.generate.top_k"][2] == "unset: `aigq.generate.top_k`"


def _write_conf(tmp_path) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "profiles:\n"
        "  local:\n"
        "    data_root: d          # where data lives\n"
        "    spark:                # Spark\n"
        "      master: local[2]    # the master\n"
        "      driver_memory: 2g   # driver heap\n"
        "      conf: {spark.ui.enabled: \"false\"}  # any setting\n"
        "    karma:\n"
        "      base_model: null    # a checkpoint; null = newest\n"
        "      batch_size: 16      # samples per step,\n"
        "                          # continued below\n"
        "      learning_rate: 0.0005\n"
        "  big:                    # a bigger machine\n"
        "    # a note on the profile\n"
        "    karma:\n"
        "      batch_size: 64      # fits the GPU\n"
        "    spark:\n"
        "      conf:\n"
        "        spark.executor.cores: \"4\"\n"
    )
    return str(path)


def test_a_config_file_becomes_tables_and_profile_changes(tmp_path):
    text = config_docs.config_reference(_write_conf(tmp_path))
    rows = _table_rows(text)
    assert list(rows) == ["data_root", "spark.master", "spark.driver_memory", "spark.conf", "karma.base_model", "karma.batch_size",
                          "karma.learning_rate"]
    assert rows["karma.batch_size"][1:] == ["integer", "`16`", "samples per step, continued below"]
    assert rows["karma.learning_rate"][3] == ""
    assert "### `karma`" in text
    assert "### `spark`\n\nSpark\n" in text
    big = text.split("### `big`", 1)[1]
    assert big.startswith("\n\na bigger machine\n\na note on the profile\n")
    assert "| `karma.batch_size` | `16` | `64` | fits the GPU |" in big
    assert "| `spark.conf.spark.executor.cores` | unset | `'4'` | |" in big.replace("|  |", "| |")
    # the validation examples are the loader's own messages
    assert "unknown key 'spark.driver_memroy' (did you mean 'spark.driver_memory'?)" in text
    assert "'karma.batch_size' must be an integer, got str 'big'" in text


def test_check_fails_on_a_stale_reference_and_write_fixes_it(tmp_path, capsys):
    conf, doc = _write_conf(tmp_path), tmp_path / "configuration.md"
    assert config_docs.main(["--check", "--doc", str(doc), "--config", conf]) == 1  # missing
    assert config_docs.main(["--doc", str(doc), "--config", conf]) == 0
    assert config_docs.main(["--check", "--doc", str(doc), "--config", conf]) == 0
    doc.write_text(doc.read_text().replace("the master", "the masters"))
    assert config_docs.main(["--check", "--doc", str(doc), "--config", conf]) == 1
    assert "stale" in capsys.readouterr().err
