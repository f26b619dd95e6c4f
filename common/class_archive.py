"""A class-data-sharing archive of the Spark driver JVM (Java's dynamic AppCDS), kept between runs.

A fresh Spark driver JVM loads and verifies many thousands of classes before its first job, and more
the first time each kind of stage runs. Java can write the classes a JVM loaded into an archive
when it exits (``-XX:ArchiveClassesAtExit``), and a later JVM maps them in at start
(``-XX:SharedArchiveFile``), skipping their parsing and verification. The Spark Connect server a
``behavior_etl`` run starts (``dags/runner.py: start_run_server``) uses it: the first run on a
machine writes the archive when its server stops (once per Java, pyspark and driver-options
combination; about 200 MB and 15 s of the teardown task), every later run starts from it.
``spark.class_archive_dir`` says where the archives live; empty turns this off.

Safety: an archive is used only whole. A dump is kept only after its JVM exited by itself, with the
dynamic-archive magic in its header (Java writes the header last), moved into place by a rename. A
JVM that cannot use an archive (another Java build, another classpath) ignores it; a server that
does not start with one is started again without it, and the archive is removed
(:func:`discard`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent

#: The first four bytes of a JDK 17+ dynamic archive (``0xf00baba8``, little-endian on disk).
DYNAMIC_MAGIC = 0xF00BABA8


def archive_path(cfg: Mapping, java: str) -> Path | None:
    """The archive for the driver JVMs of ``cfg`` started by the ``java`` binary, or None when
    ``spark.class_archive_dir`` is empty. The file name keys what makes an archive unusable:
    the Java binary (path and modification time), the pyspark version (Spark's jars), the driver's
    JVM options and any extra jars or class path in ``spark.conf``."""
    spark = cfg.get("spark") or {}
    where = str(spark.get("class_archive_dir") or "")
    if not where:
        return None
    conf = {str(k): str(v) for k, v in (spark.get("conf") or {}).items()}
    classpath = {k: v for k, v in conf.items() if "jars" in k.lower() or "classpath" in k.lower()}
    binary = Path(java).resolve()
    try:
        pyspark = version("pyspark")
    except PackageNotFoundError:
        pyspark = "unknown"
    parts = [str(binary), str(binary.stat().st_mtime_ns), pyspark, conf.get("spark.driver.extraJavaOptions", ""),
             json.dumps(classpath, sort_keys=True)]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    folder = Path(where).expanduser()
    return (folder if folder.is_absolute() else REPO_ROOT / folder) / f"spark-driver-{key}.jsa"


def whole(path: Path) -> bool:
    """Whether ``path`` is a file that starts with a dynamic archive's header."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return len(head) == 4 and int.from_bytes(head, "little") == DYNAMIC_MAGIC


def java_option(archive: Path | None, dump: Path) -> str:
    """The JVM option of a driver: map ``archive`` when it is there, else write one to ``dump`` at
    exit (for :func:`keep`); ``""`` when archives are off."""
    if archive is None:
        return ""
    if whole(archive):
        return f"-XX:SharedArchiveFile={archive}"
    return f"-XX:ArchiveClassesAtExit={dump}"


def keep(dump: Path, archive: Path) -> bool:
    """Move a JVM's ``dump`` into place as ``archive`` (a copy and a rename, so readers never see
    part of one) unless one is already there or the dump is not whole; the dump is removed either
    way. Returns whether the archive was written."""
    try:
        if archive.exists() or not whole(dump):
            if not archive.exists():
                logger.warning("no class archive kept: %s is missing or incomplete", dump)
            return False
        archive.parent.mkdir(parents=True, exist_ok=True)
        tmp = archive.with_name(f".{archive.name}.{uuid.uuid4().hex[:8]}")
        try:
            shutil.copyfile(dump, tmp)
            os.replace(tmp, archive)
        finally:
            tmp.unlink(missing_ok=True)
        logger.info("kept the driver JVM's class archive %s (%.0f MB)", archive, archive.stat().st_size / 2**20)
        return True
    except OSError as exc:  # a full disk or a read-only cache costs speed, never the run
        logger.warning("no class archive kept at %s: %s", archive, exc)
        return False
    finally:
        dump.unlink(missing_ok=True)


def discard(archive: Path) -> None:
    """Remove an archive a JVM could not start with."""
    logger.warning("removing the class archive %s: the driver JVM did not start with it", archive)
    archive.unlink(missing_ok=True)
