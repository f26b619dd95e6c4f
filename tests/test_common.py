"""common/: config profiles and overrides, partition paths, schemas, atomic publish."""

from __future__ import annotations

import pyarrow as pa
import pytest

from common import schemas
from common.arrow_io import read_partition, write_partition
from common.config import ConfigError, load_config
from common.paths import check_ds, latest_published_ds, partition_path, previous_ds, published_ds
from common.publish import atomic_partition, clean_stale_siblings, read_manifest, staged_partitions


def test_profiles_merge_and_env_overrides(tmp_path):
    conf = tmp_path / "p.yaml"
    conf.write_text(
        "profiles:\n  local:\n    data_root: d\n    spark: {master: 'local[2]', conf: {a: '1'}}\n"
        "  big:\n    spark: {master: 'spark://h:7077'}\n"
    )
    base = load_config(conf, environ={})
    assert base["spark"]["master"] == "local[2]"
    assert base["profile"] == "local"
    big = load_config(conf, environ={"PIPELINE_PROFILE": "big", "PIPELINE__SPARK__CONF__B": "3"})
    assert big["spark"]["master"] == "spark://h:7077"
    assert big["spark"]["conf"] == {"a": "1", "b": 3}  # merged, YAML-typed override
    assert big["data_root"].endswith("/d")
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        load_config(conf, profile="nope", environ={})


def test_repository_config_has_local_and_cluster_profiles():
    assert load_config(environ={})["spark"]["master"].startswith("local")
    assert load_config(profile="cluster", environ={})["spark"]["master"].startswith("spark://")


def test_ds_helpers(tmp_path):
    assert check_ds("2026-11-01") == "2026-11-01"
    for bad in ("2026-1-01", "2026-02-30", "yesterday"):
        with pytest.raises(ValueError):
            check_ds(bad)
    assert previous_ds("2026-11-02", 2) == ["2026-10-31", "2026-11-01"]
    assert partition_path(tmp_path, "raw", "users", "2026-11-01") == tmp_path / "raw/users/ds=2026-11-01"
    for ds in ("2026-11-01", "2026-11-03"):
        write_partition(tmp_path, "raw", "users", ds, [{"user_id": ds}])
    (tmp_path / "raw/users/ds=2026-11-04").mkdir()  # no _SUCCESS: ignored
    assert published_ds(tmp_path, "raw", "users") == ["2026-11-01", "2026-11-03"]
    assert latest_published_ds(tmp_path, "raw", "users", "2026-11-02") == "2026-11-01"
    assert latest_published_ds(tmp_path, "raw", "users", "2026-11-09") == "2026-11-03"
    assert latest_published_ds(tmp_path, "raw", "users", "2026-10-01") is None


def test_every_schema_converts_to_spark_with_same_columns():
    pytest.importorskip("pyspark")
    for name in schemas.ALL_TABLES:
        spark_schema = schemas.spark_schema(name)
        assert spark_schema.fieldNames() == schemas.arrow_schema(name).names, name
    ts = schemas.spark_schema("behavior_events")["event_time"].dataType
    assert ts.typeName() == "timestamp"


def test_type_matches_accepts_physical_variants_only():
    assert schemas.type_matches(pa.string(), pa.large_string())
    assert schemas.type_matches(schemas.STR_LIST, pa.large_list(pa.string()))
    assert schemas.type_matches(schemas.TS, pa.timestamp("ns"))
    assert not schemas.type_matches(pa.string(), pa.int64())
    assert not schemas.type_matches(pa.int32(), pa.int64())
    assert not schemas.type_matches(schemas.STR_LIST, pa.string())


def test_atomic_partition_publishes_replaces_and_rolls_back(tmp_path):
    final = tmp_path / "t" / "ds=2026-11-01"
    with atomic_partition(final, {"rows": 1}) as tmp:
        assert tmp.parent == final.parent
        assert tmp.name.startswith(".tmp-")
        (tmp / "a.txt").write_text("v1")
    assert (final / "_SUCCESS").exists()
    assert read_manifest(final) == {"rows": 1}
    with pytest.raises(RuntimeError):
        with atomic_partition(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("writer died")
    assert (final / "a.txt").read_text() == "v1"  # previous partition untouched
    assert [p.name for p in final.parent.iterdir()] == ["ds=2026-11-01"]  # no temporaries left
    with atomic_partition(final) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(p.name for p in final.iterdir()) == ["_SUCCESS", "_manifest.json", "b.txt"]


def test_stale_temporaries_of_a_killed_writer_are_cleaned(tmp_path):
    final = tmp_path / "t" / "ds=2026-11-01"
    (tmp_path / "t" / ".tmp-ds=2026-11-01-dead").mkdir(parents=True)
    (tmp_path / "t" / ".tmp-ds=2026-11-02-other").mkdir()
    assert clean_stale_siblings(final) == 1
    assert [p.name for p in (tmp_path / "t").iterdir()] == [".tmp-ds=2026-11-02-other"]


def test_staged_partitions_publish_all_or_nothing(tmp_path):
    a, b = tmp_path / "a" / "ds=2026-11-01", tmp_path / "b" / "ds=2026-11-01"
    with pytest.raises(ValueError):
        with staged_partitions() as batch:
            (batch.stage(a) / "x").write_text("1")
            batch.stage(b)
            raise ValueError("second table failed")
    assert not a.exists()
    assert not b.exists()
    assert list((tmp_path / "a").iterdir()) == []
    with staged_partitions() as batch:
        (batch.stage(a) / "x").write_text("1")
        (batch.stage(b, {"rows": 0}) / "y").write_text("2")
    assert (a / "_SUCCESS").exists()
    assert (b / "_SUCCESS").exists()


def test_arrow_round_trip_uses_contract_schema(tmp_path):
    write_partition(tmp_path, "raw", "users", "2026-11-01", [{"user_id": "u1", "city": "x"}])
    table = read_partition(tmp_path, "raw", "users", "2026-11-01")
    assert table.schema.equals(schemas.USERS)
    assert table.to_pylist() == [
        {"user_id": "u1", "gender": None, "age_bucket": None, "city": "x", "purchase_level": None}
    ]
    with pytest.raises(FileNotFoundError, match="not published"):
        read_partition(tmp_path, "raw", "users", "2026-11-02")


def test_runtime_device_setting_on_a_machine_without_cuda(monkeypatch):
    import torch

    from common import device as devices

    before = devices.setting()
    try:
        with pytest.raises(ValueError, match="runtime.device"):
            devices.configure({"runtime": {"device": "tpu"}})
        assert devices.configure({"runtime": {"device": "CPU"}}) == "cpu"
        assert devices.resolve() == torch.device("cpu")
        assert not devices.use_bf16()
        assert devices.configure({}) == "auto"  # no runtime section: auto
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert devices.resolve() == torch.device("cpu")  # auto without a GPU: the CPU
        devices.configure("cuda")
        with pytest.raises(RuntimeError, match="no CUDA device"):
            devices.resolve()
    finally:
        devices.configure(before)


def test_table_writes_run_at_once_every_one_finishes_and_the_first_error_is_raised():
    """jobs.spark.run_concurrently: ``threads`` calls overlap (a barrier only passes when all three
    wait at once), a failing call does not cut the others short, and 1 thread keeps the order."""
    import threading

    from jobs.spark import run_concurrently

    barrier, done = threading.Barrier(3, timeout=10), []

    def meet(name):
        barrier.wait()
        done.append(name)

    run_concurrently([lambda n=n: meet(n) for n in "abc"], threads=3)
    assert sorted(done) == ["a", "b", "c"]

    done.clear()

    def fail():
        raise ValueError("table x: bad write")

    def slow():
        threading.Event().wait(0.3)
        done.append("slow")

    with pytest.raises(ValueError, match="table x"):
        run_concurrently([fail, slow, lambda: done.append("fast")], threads=3)
    assert sorted(done) == ["fast", "slow"]

    done.clear()
    run_concurrently([lambda n=n: done.append(n) for n in "abc"], threads=1)
    assert done == ["a", "b", "c"]
