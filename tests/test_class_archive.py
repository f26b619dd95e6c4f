"""The class-data-sharing archive of the run server's JVM (common/class_archive.py): the first
server writes it at exit, the next one maps it, and a broken one is removed instead of failing
the run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from common import class_archive
from common.config import load_config
from common.paths import is_published, partition_path
from dags import runner
from scripts import spark_cluster, spark_connect
from sources.synthetic import generate

DS = "2026-11-01"
JAVA = shutil.which("java") or "/usr/bin/java"


def _cfg(where: str, **conf) -> dict:
    return {"spark": {"class_archive_dir": where, "conf": conf}}


@pytest.mark.skipif(not shutil.which("java"), reason="needs a java binary to key the archive on")
def test_the_archive_is_keyed_on_what_makes_it_unusable(tmp_path):
    assert class_archive.archive_path(_cfg(""), JAVA) is None
    base = class_archive.archive_path(_cfg(str(tmp_path)), JAVA)
    assert base.parent == tmp_path and base.suffix == ".jsa"
    assert class_archive.archive_path(_cfg(str(tmp_path)), JAVA) == base
    assert class_archive.archive_path(_cfg(str(tmp_path), **{"spark.driver.extraJavaOptions": "-Xss4m"}), JAVA) != base
    assert class_archive.archive_path(_cfg(str(tmp_path), **{"spark.jars": "/x.jar"}), JAVA) != base
    assert class_archive.archive_path(_cfg(str(tmp_path), **{"spark.sql.shuffle.partitions": "4"}), JAVA) == base
    assert class_archive.archive_path(_cfg("rel/dir"), JAVA).parent == class_archive.REPO_ROOT / "rel" / "dir"


def test_only_a_whole_dump_is_kept_and_never_over_an_archive(tmp_path):
    magic = class_archive.DYNAMIC_MAGIC.to_bytes(4, "little")
    archive, dump = tmp_path / "a" / "x.jsa", tmp_path / "dump.jsa"
    assert class_archive.java_option(None, dump) == ""
    assert class_archive.java_option(archive, dump) == f"-XX:ArchiveClassesAtExit={dump}"
    dump.write_bytes(b"\0" * 64)  # a dump cut short: Java writes the header last
    assert not class_archive.keep(dump, archive) and not archive.exists() and not dump.exists()
    dump.write_bytes(magic + b"1" * 60)
    assert class_archive.keep(dump, archive) and archive.read_bytes() == magic + b"1" * 60 and not dump.exists()
    assert class_archive.java_option(archive, dump) == f"-XX:SharedArchiveFile={archive}"
    dump.write_bytes(magic + b"2" * 60)
    assert not class_archive.keep(dump, archive) and archive.read_bytes() == magic + b"1" * 60
    assert [p.name for p in archive.parent.iterdir()] == ["x.jsa"]  # no temporary left behind
    archive.write_bytes(b"not an archive")
    assert class_archive.java_option(archive, dump) == f"-XX:ArchiveClassesAtExit={dump}"


def _mapped(server: dict, archive: Path) -> bool:
    """Whether a process of the run server maps ``archive`` (its JVM uses it)."""
    state = spark_connect.read_state(Path(server["state_dir"]))
    for pid in spark_cluster.group_members(state["pids"]["server"]):
        try:
            if str(archive) in Path(f"/proc/{pid}/maps").read_text():
                return True
        except OSError:
            continue
    return False


@pytest.mark.spark
@pytest.mark.slow
def test_the_first_run_server_writes_the_archive_the_next_maps_it_and_a_broken_one_is_replaced(tmp_path, monkeypatch):
    monkeypatch.delenv("PIPELINE__SPARK__REMOTE", raising=False)
    monkeypatch.setenv("PIPELINE__SPARK__CLASS_ARCHIVE_DIR", str(tmp_path / "jvm"))
    root = tmp_path / "data"
    generate(root, DS, 1, n_users=20, n_items=60, events_per_user_day=8.0, seed=3)
    params = {"data_root": str(root)}
    archive = class_archive.archive_path(load_config(), runner.check_java(runner._spark_env(params)))
    assert archive.parent == tmp_path / "jvm" and not archive.exists()

    first = runner.start_run_server(params)
    try:
        assert first["archive"] == str(archive) and not _mapped(first, archive)
        runner.spark_step("validate", DS, params, first)
    finally:
        runner.stop_run_server(first, params)
    assert class_archive.whole(archive) and archive.stat().st_size > 10 * 2**20

    second = runner.start_run_server(params)
    try:
        assert "dump" not in second and runner.server_ready(second) and _mapped(second, archive)
        runner.spark_step("sessionize", DS, params, second)
    finally:
        runner.stop_run_server(second, params)
    assert is_published(partition_path(root, "sessions", "behavior_sessions", DS))

    # An archive whose header is whole but whose body is cut short crashes a JVM that maps it: the
    # first Spark task finds the server dead with a crash report, removes the archive and runs its
    # own spark-submit application; the next run's server writes a new archive.
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 8])
    third = runner.start_run_server(params)
    try:
        assert "dump" not in third
        runner.spark_step("build_samples", DS, params, third)
        assert not archive.exists()
        assert not list(class_archive.REPO_ROOT.glob("hs_err_pid*.log"))  # the crash report stays in the run's state
    finally:
        runner.stop_run_server(third, params)
    assert is_published(partition_path(root, "samples", "karma_samples", DS))
    fourth = runner.start_run_server(params)
    try:
        assert fourth.get("dump") and runner.server_ready(fourth)
    finally:
        runner.stop_run_server(fourth, params)
    assert class_archive.whole(archive)
