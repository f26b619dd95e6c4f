"""A Spark Connect server on loopback: one long-lived Spark application the ETL jobs run in.

``python scripts/spark_connect.py start|stop|status [--port P] [--state-dir DIR]`` (``make
spark-connect-up`` / ``make spark-connect-down``). ``start`` launches
``spark-submit --class org.apache.spark.sql.connect.service.SparkConnectServer`` of the installed
pyspark with the profile's master, driver memory and every ``spark.conf`` entry (the settings a
job's spark-submit would get) but the driver's JVM options (``--java-options``, default none: the
profile's ``-XX:TieredStopAtLevel=1`` saves JIT work in a short application and costs a
long-lived one its optimised code), in its own process group, bound to 127.0.0.1; it writes
``<state dir>/state.json`` (process id, ``sc://`` URL, log) and waits until the port accepts.
``stop`` sends SIGTERM to the group, SIGKILL after a grace period. Both are idempotent.

Then point the DAGs at it: ``PIPELINE__SPARK__REMOTE=sc://127.0.0.1:15002`` (or an Airflow
connection ``spark_connect_default`` of type ``spark_connect``): every Spark task runs its job as a
client of this application, so the JVM start and the JIT warm-up are paid once per server, not
once per task (docs/operations.md, "One Spark application for every task"). The server must be
reachable from every worker that runs Spark tasks and see the same data root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.config import load_config  # noqa: E402
from scripts.spark_cluster import (  # noqa: E402
    HOST,
    NOT_RUNNING_EXIT,
    ClusterError,
    _record,
    _spawn,
    _state_file,
    _tail,
    free_port,
    is_running,
    port_free,
    read_state,
    running_or_cleared,
    spark_home,
    stop,
    stop_command,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".spark-connect"
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


#: JVM options of the server's driver: none, so the JIT compiles fully (the profile's
#: ``-XX:TieredStopAtLevel=1`` suits a short application, not one that lives for many runs).
SERVER_JAVA_OPTIONS = ""


def server_command(cfg: dict, port: int, java_options: str = SERVER_JAVA_OPTIONS, master: str | None = None) -> list[str]:
    """``spark-submit --class SparkConnectServer`` with the profile's Spark settings, except the
    driver's JVM options (``java_options``) and, when given, the ``master``."""
    spark = cfg.get("spark") or {}
    cmd = [str(spark_home() / "bin" / "spark-submit"), "--class", SERVER_CLASS,
           "--name", f"{spark.get('app_name_prefix', 'pipeline')}-connect",
           "--master", str(master or spark.get("master") or "local[2]")]
    if spark.get("driver_memory"):
        cmd += ["--driver-memory", str(spark["driver_memory"])]
    conf = {"spark.sql.session.timeZone": "UTC", **{str(k): str(v) for k, v in (spark.get("conf") or {}).items()},
            "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
            "spark.connect.grpc.binding.address": HOST, "spark.connect.grpc.binding.port": str(port),
            "spark.driver.extraJavaOptions": java_options}
    for key, value in conf.items():
        if not value:
            continue
        cmd += ["--conf", f"{key}={value}"]
    return cmd


def accepts(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def start(cfg: dict, state_dir: str | Path = DEFAULT_STATE_DIR, port: int = 15002, timeout: float = 180.0,
          python: str | None = None, java_options: str = SERVER_JAVA_OPTIONS,
          master: str | None = None, wait: bool = True) -> tuple[dict, bool]:
    """Start the server (or find it running); returns (state, started_now). With ``wait=False`` it
    returns once the server's process is spawned: its clients wait for the port themselves."""
    state_dir = Path(state_dir).resolve()
    state = running_or_cleared(state_dir)
    if state:
        return state, False
    port = port or free_port()
    if not port_free(port):
        raise ClusterError(f"port {port} on {HOST} already in use (another server? pass --port)")
    shutil.rmtree(state_dir / "logs", ignore_errors=True)
    (state_dir / "logs").mkdir(parents=True)
    python = python or sys.executable
    env = {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": HOST, "PYSPARK_PYTHON": python,
           "PATH": os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", "")])}
    env.pop("SPARK_REMOTE", None)
    state = {"url": f"sc://{HOST}:{port}", "state_dir": str(state_dir), "pids": {}, "start_ticks": {},
             "logs": {}, "started_at": time.time()}
    log = state_dir / "logs" / "connect.out"
    _record(state, "server", _spawn(server_command(cfg, port, java_options, master), log, env, REPO_ROOT), log)
    _state_file(state_dir).write_text(json.dumps(state, indent=2))
    deadline = time.monotonic() + timeout
    while wait and not accepts(port):
        if not is_running(state) or time.monotonic() > deadline:
            why = "exited during start-up" if not is_running(state) else f"not listening after {timeout:.0f}s"
            stop(state_dir)
            raise ClusterError(f"the Spark Connect server {why}; {log}:\n{_tail(log)}")
        time.sleep(0.3)
    return state, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="default: <repo>/.spark-connect")
    parser.add_argument("--port", type=int, default=15002, help="gRPC port of the server (0: a free one)")
    parser.add_argument("--config", default=None, help="config file (default conf/pipeline.yaml)")
    parser.add_argument("--profile", default=None, help="config profile (default: PIPELINE_PROFILE or local)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the port")
    parser.add_argument("--java-options", default=SERVER_JAVA_OPTIONS,
                        help="the server driver's JVM options, in place of the profile's "
                        "spark.driver.extraJavaOptions (default: none, full JIT for a long-lived server)")
    parser.add_argument("--master", default=None, help="the server's master (default: the profile's spark.master)")
    parser.add_argument("--grace", type=float, default=15.0, help="stop: seconds from SIGTERM to SIGKILL")
    parser.add_argument("--no-wait", action="store_true",
                        help="start: return once the server's process is spawned (its clients wait for the port)")
    args = parser.parse_args(argv)
    if args.command == "start":
        try:
            state, started = start(load_config(args.config, args.profile), args.state_dir, args.port, args.timeout,
                                   java_options=args.java_options, master=args.master, wait=not args.no_wait)
        except ClusterError as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            return 1
        print(f"spark connect server {'started' if started else 'already running'}"
              f"{' (not waiting for its port)' if args.no_wait and started else ''}: {state['url']} "
              f"(pid {state['pids']['server']}, log {state['logs']['server']})")
        return 0
    if args.command == "stop":
        return stop_command(args.state_dir, args.grace, "spark connect server")
    state = read_state(Path(args.state_dir).resolve())
    running = is_running(state)
    print(json.dumps({"running": running, **({"url": state["url"], "log": state["logs"]["server"]} if state else {})},
                     indent=2))
    return 0 if running else NOT_RUNNING_EXIT


if __name__ == "__main__":
    sys.exit(main())
