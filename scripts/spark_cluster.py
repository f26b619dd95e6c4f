"""A standalone Spark cluster on loopback: one master and N workers from the installed pyspark.

``python scripts/spark_cluster.py start|stop|status [--state-dir DIR] ...`` (``make
spark-cluster-up`` / ``make spark-cluster-down``). ``start`` launches
``bin/spark-class org.apache.spark.deploy.master.Master`` and ``...worker.Worker`` of the pyspark
distribution (no ``sbin/start-*.sh`` ships with the pip package), each in its own process group,
bound to 127.0.0.1, writes ``<state dir>/state.json`` (process ids, master URL, web UI URL, log
paths) and waits until the master's ``/json/`` reports every worker ALIVE. ``stop`` sends SIGTERM
to each process group (so executor JVMs a worker started die too), SIGKILL after a grace period,
and removes the state file. Both are idempotent. A port of 0 picks a free port.

Then point the DAGs at it: ``AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type":"spark","host":
"spark://127.0.0.1","port":7077}'`` and ``PIPELINE_PROFILE=cluster``. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyspark

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".spark-cluster"
HOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
#: exit status of ``status`` when no cluster runs (as LSB init scripts do)
NOT_RUNNING_EXIT = 3


class ClusterError(RuntimeError):
    """The cluster could not be started (the message names the log to read)."""


def spark_home() -> Path:
    """SPARK_HOME of the installed pyspark (its package directory for a pip install)."""
    try:
        # lazy: optional private pyspark helper; the except below falls back without it
        from pyspark.find_spark_home import _find_spark_home

        home = Path(_find_spark_home())
    except Exception:  # pragma: no cover - pyspark without find_spark_home
        home = Path(pyspark.__file__).resolve().parent
    if not (home / "bin" / "spark-class").exists():
        raise ClusterError(f"no bin/spark-class under SPARK_HOME {home}")
    return home


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state letter, process group, start time in clock ticks) of ``pid``; None if absent."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[2]), int(fields[19])


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our exited child (else it stays a zombie in /proc)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """True while ``pid`` runs (a zombie counts as gone); with ``start_ticks``, only while it is
    still the process started then (not a later one that reused the id)."""
    _reap(pid)
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return start_ticks is None or stat[2] == start_ticks


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat and stat[1] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _state_file(state_dir: Path) -> Path:
    return Path(state_dir) / "state.json"


def read_state(state_dir: Path) -> dict | None:
    try:
        return json.loads(_state_file(state_dir).read_text())
    except FileNotFoundError:
        return None


def master_json(state: dict, timeout: float = 3.0) -> dict:
    """The master's state from its web UI (workers, active and completed applications)."""
    with urllib.request.urlopen(f"{state['webui_url']}/json/", timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def alive_workers(info: dict) -> int:
    return sum(1 for w in info.get("workers", []) if w.get("state") == "ALIVE")


def running_or_cleared(state_dir: Path) -> dict | None:
    """The state of the processes recorded in ``state_dir`` when they all run; else ``None``, after
    stopping what is left of a stale start (some process died) so that a new one starts afresh."""
    state = read_state(state_dir)
    if is_running(state):
        return state
    if state:
        stop(state_dir)
    return None


def _ticks(state: dict, name: str) -> int | None:
    return (state.get("start_ticks") or {}).get(name)


def is_running(state: dict | None) -> bool:
    return bool(state) and all(pid_alive(p, _ticks(state, n)) for n, p in state["pids"].items())


def _tail(path: str | Path, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _env(state_dir: Path, home: Path, python: str, daemon_memory: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SPARK_HOME=str(home),
        SPARK_LOCAL_IP=HOST,
        SPARK_LOG_DIR=str(state_dir / "logs"),
        SPARK_WORKER_DIR=str(state_dir / "work"),
        SPARK_DAEMON_MEMORY=daemon_memory,
        PYSPARK_PYTHON=python,
        # a taken port is an error, not a silent move to port + 1 (workers would miss the master)
        SPARK_DAEMON_JAVA_OPTS=f"{os.environ.get('SPARK_DAEMON_JAVA_OPTS', '')} -Dspark.port.maxRetries=0".strip(),
    )
    return env


def _spawn(cmd: list[str], log: Path, env: dict, cwd: Path) -> int:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, start_new_session=True,
        )
    proc.returncode = 0  # it outlives this object on purpose: no "still running" warning
    return proc.pid


def _record(state: dict, name: str, pid: int, log: Path) -> None:
    stat = _proc_stat(pid)
    state["pids"][name] = pid
    state["start_ticks"][name] = stat[2] if stat else None
    state["logs"][name] = str(log)


def start(
    state_dir: str | Path = DEFAULT_STATE_DIR,
    port: int = 7077,
    webui_port: int = 8080,
    workers: int = 2,
    worker_cores: int = 1,
    worker_memory: str = "1g",
    worker_webui_port: int = 8081,
    daemon_memory: str = "256m",
    timeout: float = 120.0,
    python: str | None = None,
) -> tuple[dict, bool]:
    """Start the cluster (or find it running); returns (state, started_now)."""
    state_dir = Path(state_dir).resolve()
    state = running_or_cleared(state_dir)
    if state:
        return state, False
    home = spark_home()
    python = python or sys.executable
    port = port or free_port()
    webui_port = webui_port or free_port()
    worker_ports = [worker_webui_port + i if worker_webui_port else free_port() for i in range(workers)]
    taken = [p for p in (port, webui_port, *worker_ports) if not port_free(p)]
    if taken:
        raise ClusterError(f"port(s) {taken} on {HOST} already in use (another cluster? pass other ports "
                           f"or 0 for free ones)")
    for sub in ("logs", "work"):  # a fresh start: drop the logs and executor dirs of an earlier one
        shutil.rmtree(state_dir / sub, ignore_errors=True)
        (state_dir / sub).mkdir(parents=True)
    env = _env(state_dir, home, python, daemon_memory)
    spark_class = str(home / "bin" / "spark-class")
    master_url = f"spark://{HOST}:{port}"
    state = {
        "master_url": master_url,
        "webui_url": f"http://{HOST}:{webui_port}",
        "spark_home": str(home),
        "state_dir": str(state_dir),
        "worker_dir": str(state_dir / "work"),
        "python": python,
        "pids": {},
        "start_ticks": {},
        "logs": {},
        "worker_webui_ports": worker_ports,
        "started_at": time.time(),
    }
    log = state_dir / "logs" / "master.out"
    pid = _spawn(
        [spark_class, MASTER_CLASS, "--host", HOST, "--port", str(port), "--webui-port", str(webui_port)],
        log, env, state_dir,
    )
    _record(state, "master", pid, log)
    for i, wport in enumerate(worker_ports, start=1):
        name = f"worker-{i}"
        log = state_dir / "logs" / f"{name}.out"
        pid = _spawn(
            [spark_class, WORKER_CLASS, "--host", HOST, "--webui-port", str(wport),
             "--cores", str(worker_cores), "--memory", worker_memory,
             "--work-dir", str(state_dir / "work"), master_url],
            log, env, state_dir,
        )
        _record(state, name, pid, log)
    _state_file(state_dir).write_text(json.dumps(state, indent=2))
    try:
        _wait_for_workers(state, workers, timeout)
    except BaseException:
        stop(state_dir)
        raise
    return state, True


def _wait_for_workers(state: dict, workers: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        for name, pid in state["pids"].items():
            if not pid_alive(pid):
                raise ClusterError(
                    f"{name} (pid {pid}) exited during start-up; {state['logs'][name]}:\n"
                    f"{_tail(state['logs'][name])}"
                )
        try:
            seen = alive_workers(master_json(state, timeout=2.0))
        except (urllib.error.URLError, OSError, ValueError):
            seen = 0
        if seen >= workers:
            return
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}: {p}\n{_tail(p, 10)}" for n, p in state["logs"].items())
            raise ClusterError(
                f"timed out after {timeout:.0f}s: the master at {state['webui_url']}/json/ reports "
                f"{seen} of {workers} workers alive\n{logs}"
            )
        time.sleep(0.5)


def _ours(state: dict, name: str, pgid: int) -> bool:
    """Whether process group ``pgid`` is still the one this state file started."""
    if pid_alive(pgid):
        return pid_alive(pgid, _ticks(state, name))  # the leader itself, not a reused id
    return bool(group_members(pgid))  # leader gone, its children (executors) live on


def stop(state_dir: str | Path = DEFAULT_STATE_DIR, grace: float = 15.0) -> list[int]:
    """SIGTERM each process group of the state file (workers first), SIGKILL what is left after
    ``grace`` seconds, remove the state file; returns the process groups signalled."""
    state_dir = Path(state_dir).resolve()
    state = read_state(state_dir)
    if not state:
        return []
    order = sorted(state["pids"].items(), key=lambda kv: kv[0] == "master")
    groups = [pgid for name, pgid in order if _ours(state, name, pgid)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while any(group_members(g) for g in groups) and time.monotonic() < deadline:
            for g in groups:
                _reap(g)
            time.sleep(0.2)
        if not any(group_members(g) for g in groups):
            break
    left = sorted({p for g in groups for p in group_members(g)})
    if left:
        raise ClusterError(f"processes still running after SIGKILL: {left}")
    _state_file(state_dir).unlink(missing_ok=True)
    return groups


def stop_command(state_dir: str | Path, grace: float, what: str) -> int:
    """``stop`` of a command line: prints what was stopped, 1 with the error when it failed."""
    try:
        pids = stop(state_dir, grace=grace)
    except ClusterError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    print(f"{what} stopped (pids {pids})" if pids else f"{what} not running")
    return 0


def status(state_dir: str | Path = DEFAULT_STATE_DIR) -> dict:
    """Whether the cluster runs, and the master's view of it (workers, applications)."""
    state = read_state(Path(state_dir).resolve())
    if not state:
        return {"running": False, "state_dir": str(Path(state_dir).resolve())}
    out = {
        "running": is_running(state),
        "master_url": state["master_url"],
        "webui_url": state["webui_url"],
        "pids": {n: {"pid": p, "alive": pid_alive(p, _ticks(state, n))} for n, p in state["pids"].items()},
        "logs": state["logs"],
    }
    try:
        info = master_json(state)
        out.update(
            alive_workers=alive_workers(info),
            active_apps=[a.get("name") for a in info.get("activeapps", [])],
            completed_apps=[a.get("name") for a in info.get("completedapps", [])],
        )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        out["master_json_error"] = str(exc)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="default: <repo>/.spark-cluster")
    parser.add_argument("--port", type=int, default=7077, help="master RPC port (0 = a free one)")
    parser.add_argument("--webui-port", type=int, default=8080, help="master web UI port (0 = a free one)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-cores", type=int, default=1)
    parser.add_argument("--worker-memory", default="1g", help="memory a worker gives its executors")
    parser.add_argument("--worker-webui-port", type=int, default=8081,
                        help="web UI port of worker 1, worker i uses this + i - 1 (0 = free ports)")
    parser.add_argument("--daemon-memory", default="256m", help="heap of the master and worker daemons")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the workers")
    parser.add_argument("--python", default=sys.executable, help="PYSPARK_PYTHON of the workers")
    parser.add_argument("--grace", type=float, default=15.0, help="stop: seconds from SIGTERM to SIGKILL")
    args = parser.parse_args(argv)
    if args.command == "start":
        try:
            state, started = start(
                args.state_dir, port=args.port, webui_port=args.webui_port, workers=args.workers,
                worker_cores=args.worker_cores, worker_memory=args.worker_memory,
                worker_webui_port=args.worker_webui_port, daemon_memory=args.daemon_memory,
                timeout=args.timeout, python=args.python,
            )
        except ClusterError as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            return 1
        verb = "started" if started else "already running"
        print(f"spark cluster {verb}: {state['master_url']} (web UI {state['webui_url']}, "
              f"pids {state['pids']}, state {_state_file(Path(args.state_dir).resolve())})")
        return 0
    if args.command == "stop":
        return stop_command(args.state_dir, args.grace, "spark cluster")
    info = status(args.state_dir)
    print(json.dumps(info, indent=2, sort_keys=True))
    return 0 if info["running"] else NOT_RUNNING_EXIT


if __name__ == "__main__":
    sys.exit(main())
