"""A real Airflow 3 deployment on loopback, for ``make demo`` and the scheduler test.

``LocalAirflow(home, port)`` runs ``airflow standalone`` (API server, scheduler, DAG processor,
triggerer; LocalExecutor on the SQLite DB under ``home``) with this repository's DAG folder, in
its own process group. The pipeline then runs exactly as in production: the caller unpauses
the DAGs and triggers ``behavior_etl``; everything downstream is started by the scheduler from
the Asset events the tasks emit.

:meth:`LocalAirflow.stop` ends the whole deployment: the standalone process group, and every
process still carrying this ``AIRFLOW_HOME`` in its environment (the step runner starts each step
in a session of its own, so that a timed-out task can stop its step's group); it returns the
processes that survived, which callers assert is empty.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
DAG_IDS = ("behavior_etl", "karma_training", "aigq_training", "nightly_export")
TERMINAL = ("success", "failed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AirflowError(RuntimeError):
    pass


class LocalAirflow:
    """Start, drive and stop one standalone Airflow on 127.0.0.1 (see the module docstring)."""

    def __init__(self, home: str | Path, port: int | None = None, env: Mapping[str, str] | None = None,
                 dags_folder: str | Path | None = None):
        self.home = Path(home).resolve()
        self.port = port or free_port()
        self.dags_folder = Path(dags_folder or REPO_ROOT / "dags").resolve()
        self.log_path = self.home / "standalone.log"
        self.proc: subprocess.Popen | None = None
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": os.environ.get("AIRFLOW__CORE__PARALLELISM", "4"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            # tasks, the scheduler and the API server share one SQLite file: wait on its locks
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "common.airflow_db.SQLITE_CONNECT_ARGS",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "common.airflow_db.SQLITE_CONNECT_ARGS_ASYNC",
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "3600",  # the DAG files do not change under a run
            "AIRFLOW_CONN_SPARK_DEFAULT": os.environ.get("AIRFLOW_CONN_SPARK_DEFAULT",
                                                         '{"conn_type": "spark", "host": "local[2]"}'),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
            "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
            **dict(env or {}),
        }
        self.airflow = str(Path(bin_dir) / "airflow")

    # --- lifecycle ------------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        proc = subprocess.run([self.airflow, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise AirflowError(f"airflow {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
        return proc.stdout

    def start(self, timeout: float = 240) -> None:
        """Migrate the DB, start ``airflow standalone``, wait until it is healthy and the DAGs are parsed."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.cli("db", "migrate")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([self.airflow, "standalone"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=REPO_ROOT)
        self.wait(self._healthy, timeout, "Airflow API server, scheduler and DAG processor healthy")
        self.wait(lambda: set(DAG_IDS) <= self.dag_ids(), timeout, f"DAGs {DAG_IDS} parsed")

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AirflowError(f"airflow standalone exited {self.proc.returncode}; see {self.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/monitor/health", timeout=5) as resp:
                health = json.load(resp)
        except OSError:
            return False
        return all((health.get(part) or {}).get("status") == "healthy"
                   for part in ("metadatabase", "scheduler", "dag_processor"))

    def stop(self, grace_s: float = 30) -> list[str]:
        """Stop the deployment and every process of it; returns the ones that survived (``pid cmd``)."""
        groups = {pg for p in self._processes() if (pg := _pgid(p.pid)) is not None}
        if self.proc is not None:
            groups.add(self.proc.pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pgid in groups | {pg for p in self._processes() if (pg := _pgid(p.pid)) is not None}:
                try:
                    os.killpg(pgid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and (self._processes() or self._group_alive()):
                if self.proc is not None:
                    self.proc.poll()  # reap the standalone process: a zombie keeps its group "alive"
                time.sleep(0.5)
            if not self._processes() and not self._group_alive():
                break
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return [f"{p.pid} {' '.join(p.cmdline()[:4])}" for p in self._processes()]

    def _group_alive(self) -> bool:
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _processes(self) -> list[psutil.Process]:
        """Processes (not zombies) whose environment carries this deployment's ``AIRFLOW_HOME``."""
        found = []
        marker = str(self.home)
        mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}  # the caller and its parents
        own_group = os.getpgid(0)
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.pid in mine or _pgid(proc.pid) == own_group or proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if proc.environ().get("AIRFLOW_HOME") == marker:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def __enter__(self) -> LocalAirflow:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- driving ---------------------------------------------------------------------------------
    def unpause(self, dag_ids: Iterable[str] = DAG_IDS) -> None:
        for dag_id in dag_ids:
            self.cli("dags", "unpause", dag_id)

    def trigger(self, dag_id: str, conf: Mapping | None = None, run_id: str | None = None) -> str:
        run_id = run_id or f"manual__{dag_id}__{time.time_ns()}"
        self.cli("dags", "trigger", dag_id, "--run-id", run_id, *(["--conf", json.dumps(conf)] if conf else []))
        return run_id

    # --- reading the metadata DB ------------------------------------------------------------------
    def query(self, sql: str, args: tuple = ()) -> list[dict]:
        con = sqlite3.connect(f"file:{self.home / 'airflow.db'}?mode=ro", uri=True, timeout=60)
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(sql, args).fetchall()]
        finally:
            con.close()

    def dag_ids(self) -> set[str]:
        try:
            return {r["dag_id"] for r in self.query("SELECT dag_id FROM dag WHERE is_stale = 0")}
        except sqlite3.Error:
            return set()

    def runs(self, dag_id: str | None = None) -> list[dict]:
        """Every DAG run (oldest first): dag_id, run_id, run_type, state, conf, start/end dates."""
        sql = ("SELECT dag_id, run_id, run_type, state, conf, start_date, end_date FROM dag_run"
               + (" WHERE dag_id = ?" if dag_id else "") + " ORDER BY id")
        return self.query(sql, (dag_id,) if dag_id else ())

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        rows = self.query("SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                          (dag_id, run_id))
        return {r["task_id"] + (f"[{r['map_index']}]" if r["map_index"] >= 0 else ""): r["state"] for r in rows}

    def xcom(self, dag_id: str, run_id: str, task_id: str):
        rows = self.query("SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = "
                          "'return_value'", (dag_id, run_id, task_id))
        return json.loads(rows[0]["value"]) if rows else None

    def asset_events(self) -> list[dict]:
        return self.query("SELECT a.name AS asset, e.extra, e.source_dag_id, e.source_run_id FROM asset_event e "
                          "JOIN asset a ON a.id = e.asset_id ORDER BY e.id")

    def failed_task_logs(self, tail: int = 60) -> str:
        """The last lines of every failed task attempt's log (for a readable failure)."""
        out = []
        for run in self.runs():
            for task, state in self.task_states(run["dag_id"], run["run_id"]).items():
                if state == "failed":
                    logs = sorted((self.home / "logs" / f"dag_id={run['dag_id']}" / f"run_id={run['run_id']}"
                                   / f"task_id={task.split('[')[0]}").rglob("*.log"))
                    text = logs[-1].read_text(errors="replace").splitlines()[-tail:] if logs else ["(no log)"]
                    out.append(f"--- {run['dag_id']} {run['run_id']} {task}\n" + "\n".join(text))
        return "\n".join(out)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str, every: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(every)
        raise AirflowError(f"timed out after {timeout:.0f}s waiting for {what}")


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
