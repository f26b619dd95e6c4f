"""scripts/check_prereqs.sh (run by `make` before it creates the venv): Python 3.11 and Java >= 17,
one clear line each when missing. Run with a PATH of fake `python3` / `java` stubs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_prereqs.sh"
BASH = shutil.which("bash") or "/bin/bash"
JAVA_HINT = "install openjdk-17-jre-headless or set JAVA_HOME"
PY_HINT = "set PYTHON_BOOT=/path/to/python3.11"


def _stub(folder: Path, name: str, text: str, stderr: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    quoted = text.replace('"', '\\"')
    path.write_text(f'#!/bin/sh\necho "{quoted}"{" >&2" if stderr else ""}\n')
    path.chmod(0o755)
    return path


def _python(folder: Path, version: str) -> Path:
    return _stub(folder, "python3", f"Python {version}")


def _java(folder: Path, version: str) -> Path:  # java -version writes to stderr
    return _stub(folder, "java", f'openjdk version "{version}" 2025-04-15\nOpenJDK Runtime Environment', stderr=True)


def _run(path_dirs: list[Path], *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {"PATH": ":".join(map(str, path_dirs)), "HOME": "/nonexistent", **env}
    return subprocess.run([BASH, str(SCRIPT), *args], env=environ, capture_output=True, text=True, timeout=30)


def test_old_python_and_old_java_each_get_one_line(tmp_path):
    bin_dir = tmp_path / "bin"
    py, java = _python(bin_dir, "3.10.4"), _java(bin_dir, "11.0.2")
    proc = _run([bin_dir])
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"make: Python 3.11 is required (found 3.10.4 at {py}); {PY_HINT}",
        f"make: Java >= 17 is required for Spark (found 11.0.2 at {java}; {JAVA_HINT})",
    ]


def test_no_java_on_path(tmp_path):
    bin_dir = tmp_path / "bin"
    _python(bin_dir, "3.11.9")
    proc = _run([bin_dir])
    assert proc.returncode == 1
    assert proc.stderr == f"make: Java >= 17 is required for Spark (java not found on PATH; {JAVA_HINT})\n"


def test_no_python_and_java_8(tmp_path):
    bin_dir = tmp_path / "bin"
    java = _java(bin_dir, "1.8.0_361")
    proc = _run([bin_dir], "python3.11")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"make: Python 3.11 is required (python3.11 not found on PATH); {PY_HINT}",
        f"make: Java >= 17 is required for Spark (found 1.8.0_361 at {java}; {JAVA_HINT})",
    ]


def test_java_home_wins_over_path_as_for_spark_submit(tmp_path):
    bin_dir, home = tmp_path / "bin", tmp_path / "jdk"
    _python(bin_dir, "3.11.9")
    _java(bin_dir, "21")  # a good java on PATH does not hide a bad JAVA_HOME
    old = _java(home / "bin", "11.0.22")
    proc = _run([bin_dir], JAVA_HOME=str(home))
    assert proc.returncode == 1
    assert proc.stderr == f"make: Java >= 17 is required for Spark (found 11.0.22 at {old}; {JAVA_HINT})\n"
    proc = _run([bin_dir], JAVA_HOME=str(tmp_path / "nope"))
    assert proc.stderr == (f"make: Java >= 17 is required for Spark (JAVA_HOME={tmp_path / 'nope'} has no bin/java; "
                           f"{JAVA_HINT})\n")


@pytest.mark.parametrize("java_version", ["17.0.15", "21", "25-ea"])
def test_good_set_up_is_silent(tmp_path, java_version):
    bin_dir = tmp_path / "bin"
    _python(bin_dir, "3.11.9")
    _java(bin_dir, java_version)
    proc = _run([bin_dir])
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_an_existing_venv_is_named_in_the_hint(tmp_path):
    bin_dir = tmp_path / "bin"
    _java(bin_dir, "17.0.15")
    py = _python(tmp_path / "venv" / "bin", "3.12.1")
    proc = _run([bin_dir], str(py), VENV_DIR=str(tmp_path / "venv"))
    assert proc.stderr == (f"make: Python 3.11 is required (found 3.12.1 at {py}); remove {tmp_path / 'venv'} and "
                           "set PYTHON_BOOT=/path/to/python3.11\n")


def test_make_venv_stops_before_creating_the_venv(tmp_path):
    """The Makefile runs the check first: no venv folder, both lines, a non-zero exit."""
    make = shutil.which("make")
    if make is None:
        pytest.fail("make not found on PATH")
    bin_dir = tmp_path / "bin"
    py, java = _python(bin_dir, "3.10.4"), _java(bin_dir, "11.0.2")
    venv = f".venv-prereqs-test-{tmp_path.name}"  # relative to the repository, never created
    try:
        proc = subprocess.run([make, "-C", str(REPO), f"VENV={venv}", "venv"], capture_output=True, text=True,
                              timeout=60, env={"PATH": str(bin_dir), "HOME": "/nonexistent"})
        assert not (REPO / venv).exists()
    finally:
        shutil.rmtree(REPO / venv, ignore_errors=True)
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert f"make: Python 3.11 is required (found 3.10.4 at {py}); {PY_HINT}" in lines
    assert f"make: Java >= 17 is required for Spark (found 11.0.2 at {java}; {JAVA_HINT})" in lines
