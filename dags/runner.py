"""The one step runner of the DAGs: every heavy step is a subprocess started here.

A task never imports torch, transformers or pyspark: it calls :func:`python_step` (``python -m
common.steps <module> ...``, under torchrun for DDP) or :func:`spark_step` (``spark-submit
common/steps.py jobs.<job> ...``). The runner

- streams the step's output (stdout and stderr) line by line into the task log;
- reads the step's result from the file it names in ``PIPELINE_RESULT_FILE`` (no stdout scraping);
- applies one exit-code policy (``common.steps``): 2 bad input / arguments / config, 3 gate
  refused, 4 model, index or input missing: the task fails at once without retrying
  (``AirflowFailException``); any other failure raises ``StepFailed`` and Airflow retries it;
- stops the step's whole process group when the task is killed or times out.

Spark settings of the profile reach the application as spark-submit options: ``--master`` from
the ``spark_default`` connection (the profile's ``spark.master`` when there is none),
``--driver-memory`` from ``spark.driver_memory`` (it must be set before the driver JVM starts, so
it cannot come from the session builder), and every ``spark.conf`` entry as ``--conf``. A
missing Java fails the task without retrying, saying so. With a Spark Connect server
(the ``spark_connect_default`` connection, else the profile's ``spark.remote``) a job runs as its
client instead: one long-lived application does every task's work and no JVM starts per task
(``scripts/spark_connect.py`` runs such a server with the profile's settings). Without one, a
Spark DAG run starts its own server in a setup task and stops it in a teardown task
(:func:`start_run_server`, ``spark.application: run``, the default): the run's tasks share one
application; ``spark.application: task`` gives each task its own spark-submit application.

Also here: the date a run processes (:func:`resolve_ds`) and the run's config (:func:`settings`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from airflow.sdk import BaseHook, Param
from airflow.sdk.exceptions import AirflowFailException

from common import class_archive
from common.config import ConfigError, load_config
from common.paths import check_ds
from common.steps import NO_RETRY_EXITS, RESULT_FILE_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = "common.steps"
MIN_JAVA = 17
logger = logging.getLogger(__name__)


class StepFailed(RuntimeError):
    """A step failed in a way a retry may fix (crash, lost worker, out of memory, ...)."""


def settings(params: Mapping) -> tuple[dict, str]:
    """``(config, data_root)`` of a run: the config file / profile of its Params (empty = the
    defaults), the ``data_root`` Param over the profile's. Raises ``AirflowFailException`` on a
    bad config (no retry can fix it)."""
    try:
        cfg = load_config(params.get("config") or None, params.get("profile") or None)
    except ConfigError as exc:
        raise AirflowFailException(f"bad configuration: {exc}") from exc
    root = str(Path(params["data_root"]).resolve()) if params.get("data_root") else cfg["data_root"]
    return cfg, root


def run_params(ds_description: str) -> dict:
    """The Params every DAG takes: ``config``, ``profile``, ``data_root`` and ``ds`` (see :func:`resolve_ds`)."""
    return {
        "config": Param("", type="string", description="config file; empty = conf/pipeline.yaml"),
        "profile": Param("", type="string", description="config profile; empty = PIPELINE_PROFILE or local"),
        "data_root": Param("", type="string", description="data root; empty = the profile's"),
        "ds": Param("", type="string", pattern=r"^(\d{4}-\d{2}-\d{2})?$", description=ds_description),
    }


def common_args(params: Mapping) -> list[str]:
    """``--config/--profile/--data-root`` of the run's Params, for every entry point."""
    out: list[str] = []
    for name in ("config", "profile", "data_root"):
        if params.get(name):
            out += [f"--{name.replace('_', '-')}", str(params[name])]
    return out


def resolve_ds(params: Mapping, logical_date=None, triggering_asset_events=None) -> str:
    """The date a run processes, by one rule for every DAG:

    1. the ``ds`` Param when set (manual runs and backfills by hand);
    2. else the newest ``ds`` in the extras of the asset events that triggered the run (an
       asset-triggered run has no logical date of its own);
    3. else the logical date. Scheduled ``behavior_etl`` runs use a data-interval timetable, so
       the run started at 00:00 of D+1 has logical date D: it processes the day that ended.

    >>> resolve_ds({"ds": "2026-11-03"})
    '2026-11-03'
    >>> class E:
    ...     def __init__(self, ds): self.extra = {"ds": ds}
    >>> resolve_ds({}, None, {"a": [E("2026-11-01"), E("2026-11-02")], "b": [E("2026-11-02")]})
    '2026-11-02'
    """
    if params.get("ds"):
        return check_ds(params["ds"])
    dates = [e.extra.get("ds") for events in (triggering_asset_events or {}).values() for e in events
             if getattr(e, "extra", None) and e.extra.get("ds")]
    if dates:
        if len(set(dates)) > 1:
            logger.warning("triggering asset events carry several dates %s: processing the newest", sorted(set(dates)))
        return check_ds(max(dates))
    if logical_date is not None:
        return logical_date.strftime("%Y-%m-%d")
    raise AirflowFailException("no date to process: set the ds Param, or let the run be triggered by its asset events")


def step_env(params: Mapping, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a step: the worker's, plus the repository on ``PYTHONPATH``,
    ``OMP_NUM_THREADS`` from the Params, and the offline Hugging Face switches."""
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": str(params.get("omp_threads") or 1),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(extra or {})}


def python_command(module: str, args: list[str], nproc: int = 1) -> list[str]:
    """``python -m common.steps module args``, under ``torch.distributed.run`` (torchrun) with
    ``nproc`` processes on this node when ``nproc > 1``."""
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                "-m", LAUNCHER, module, *args]
    return [sys.executable, "-m", LAUNCHER, module, *args]


def run_step(cmd: list[str], name: str, env: Mapping[str, str]) -> dict:
    """Run one step; return the result it wrote. See the module docstring for the exit policy."""
    fd, result_path = tempfile.mkstemp(prefix=f"step-{name.replace('/', '_')}-", suffix=".json")
    os.close(fd)
    os.unlink(result_path)
    env = {**env, RESULT_FILE_ENV: result_path}
    logger.info("running %s", " ".join(cmd))
    tail: list[str] = []
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            logger.info("%s", line)
            tail = [*tail[-19:], line]
        code = proc.wait()
    finally:
        if proc.poll() is None:  # the task was killed or timed out: stop the step's whole group
            _stop_group(proc)
    try:
        if code in NO_RETRY_EXITS:
            raise AirflowFailException(f"{name}: {NO_RETRY_EXITS[code]} (exit {code}, no retry): "
                                       + _last_error(tail))
        if code != 0:
            raise StepFailed(f"{name} exited with status {code} (retryable): {_last_error(tail)}")
        if not os.path.isfile(result_path):
            raise StepFailed(f"{name} exited 0 but wrote no result to {RESULT_FILE_ENV}")
        with open(result_path) as fh:
            return json.load(fh)
    finally:
        if os.path.exists(result_path):
            os.unlink(result_path)


def _last_error(tail: list[str]) -> str:
    """The most telling line of a failed step's output: its ``STEP FAILED``/``ERROR`` line, else the last."""
    for line in reversed(tail):
        if line.startswith(("STEP FAILED", "ERROR")) or "Error:" in line:
            return line.strip()
    return tail[-1].strip() if tail else "(no output)"


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def python_step(module: str, args: list[str], params: Mapping, nproc: int = 1) -> dict:
    """``python -m common.steps module args --config/--profile`` of the run (torchrun when ``nproc > 1``)."""
    for key in ("config", "profile"):
        if params.get(key) and f"--{key}" not in args:
            args = [*args, f"--{key}", str(params[key])]
    return run_step(python_command(module, args, nproc), module, step_env(params))


def java_version(java: str) -> int | None:
    """The major version ``java -version`` reports, or None when it cannot be read."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major  # "1.8" = Java 8


def check_java(env: Mapping[str, str]) -> str:
    """The ``java`` Spark will start; ``AirflowFailException`` (no retry) when none is usable."""
    java_home = env.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java", path=env.get("PATH"))
    if not java or not os.access(java, os.X_OK):
        where = f"JAVA_HOME={java_home} has no bin/java" if java_home else "no `java` on PATH and JAVA_HOME unset"
        raise AirflowFailException(f"Spark cannot start: Java >= {MIN_JAVA} is required ({where}); install a JDK "
                                   f"{MIN_JAVA} (e.g. Debian's openjdk-17-jre-headless) or set JAVA_HOME")
    version = java_version(java)
    if version is None or version < MIN_JAVA:
        raise AirflowFailException(f"Spark cannot start: Java >= {MIN_JAVA} is required, {java} reports "
                                   f"{version if version is not None else 'no version'}")
    return java


def spark_master(cfg: Mapping) -> str:
    """``--master``: the ``spark_default`` Airflow connection when defined, else the profile's."""
    try:
        conn = BaseHook.get_connection("spark_default")
    except Exception:  # noqa: BLE001 - no connection (or no Airflow context): the profile decides
        return str((cfg.get("spark") or {}).get("master") or "local[2]")
    host = str(conn.host or "")
    if not host:
        return str((cfg.get("spark") or {}).get("master") or "local[2]")
    if conn.port and "://" not in host:  # the URI form spark://h:7077 parses to host h, port 7077
        host = f"spark://{host}"
    return f"{host}:{conn.port}" if conn.port else host


def spark_remote(cfg: Mapping) -> str | None:
    """The Spark Connect server the jobs run in, or None (one spark-submit application per task):
    the ``spark_connect_default`` Airflow connection when defined, else the profile's ``spark.remote``."""
    try:
        from airflow.providers.apache.spark.hooks.spark_connect import SparkConnectHook

        return SparkConnectHook(conn_id="spark_connect_default").get_connection_url()
    except Exception:  # noqa: BLE001 - no connection (or no Airflow context): the profile decides
        return str((cfg.get("spark") or {}).get("remote") or "") or None


def run_server_wanted(cfg: Mapping) -> bool:
    """Whether a DAG run starts its own Spark Connect server (``spark.application: run``, the
    default) rather than one spark-submit application per task (``task``); never when a long-lived
    server is configured (:func:`spark_remote`)."""
    scope = str((cfg.get("spark") or {}).get("application") or "run")
    if scope not in ("run", "task"):
        raise AirflowFailException(f"bad configuration: spark.application is {scope!r}, expected 'run' or 'task'")
    return scope == "run" and not spark_remote(cfg)


def _spark_env(params: Mapping) -> dict[str, str]:
    python = sys.executable
    return step_env(params, {"SPARK_SUBMITTED": "1", "PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python,
                             "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
                             "PATH": os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", "")])})


def _connect_script(command: str, state_dir: str, env: Mapping[str, str], extra: list[str]) -> None:
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "spark_connect.py"), command, "--state-dir", state_dir, *extra]
    logger.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, errors="replace")
    for line in (proc.stdout + proc.stderr).splitlines():
        logger.info("%s", line)
    if proc.returncode != 0:
        raise StepFailed(f"spark_connect.py {command} exited with status {proc.returncode}: "
                         f"{_last_error((proc.stdout + proc.stderr).splitlines())}")


def start_run_server(params: Mapping) -> dict:
    """The setup task of a Spark DAG run: start a Spark Connect server on loopback (a free port, a
    fresh state directory under the system's temp) with the run's master (:func:`spark_master`) and
    the profile's Spark settings, its driver JVM options included, so that the
    run's Spark tasks share one application; ``{}`` when the run does not want one
    (:func:`run_server_wanted`). The tasks must run on this worker (loopback): LocalExecutor, or
    one Celery queue for the DAG. A retry starts a new server. It returns once the server's
    process is spawned; the Spark tasks wait for its port (:func:`server_ready`). The server's JVM
    maps the class archive of ``spark.class_archive_dir`` (``common.class_archive``), or writes it
    at exit when there is none yet."""
    cfg, _root = settings(params)
    if not run_server_wanted(cfg):
        return {}
    env = _spark_env(params)
    env.pop("SPARK_REMOTE", None)
    archive = class_archive.archive_path(cfg, check_java(env))
    state_dir = tempfile.mkdtemp(prefix="spark-connect-run-")
    dump = Path(state_dir) / "classes.jsa"
    java = str(((cfg.get("spark") or {}).get("conf") or {}).get("spark.driver.extraJavaOptions") or "")

    # a JVM crash report goes to the state directory, not the working directory
    option = f"{class_archive.java_option(archive, dump)} -XX:ErrorFile={state_dir}/jvm-crash-%p.log"
    try:  # not waiting for the port: the first Spark task's client does, while the JVM starts
        _connect_script("start", state_dir, env, ["--port", "0", "--no-wait", f"--java-options={java} {option}".strip(),
                                                  "--master", spark_master(cfg),
                                                  *common_args({k: v for k, v in params.items() if k != "data_root"})])
        state = json.loads((Path(state_dir) / "state.json").read_text())
    except BaseException:
        shutil.rmtree(state_dir, ignore_errors=True)
        raise
    server = {"url": state["url"], "state_dir": state_dir, "log": state["logs"]["server"], "pid": state["pids"]["server"]}
    if archive is not None:  # the teardown keeps what a server writes at exit; one that crashes drops what it maps
        server.update(archive=str(archive), **({"dump": str(dump)} if "ArchiveClassesAtExit" in option else {}))
    return server


def server_ready(server: Mapping, timeout: float = 180.0) -> bool:
    """Whether the run's server accepts connections, waiting while its process lives (it may still
    be starting: :func:`start_run_server` does not wait). A server whose JVM crashed while mapping
    the class archive (a crash report in its state directory) has the archive removed, so that the
    next run writes a new one."""
    deadline = time.monotonic() + timeout
    while not _accepts(server["url"], timeout=1.0):
        if not _alive(server.get("pid")) or time.monotonic() > deadline:
            crashed = list(Path(server.get("state_dir") or "/nonexistent").glob("jvm-crash-*.log"))
            if crashed and server.get("archive") and not server.get("dump"):
                class_archive.discard(Path(server["archive"]))
            return False
        time.sleep(0.2)
    return True


def _alive(pid) -> bool:
    """Whether process ``pid`` (the server's spark-submit, whose child is the JVM) still runs."""
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return _proc_state(int(pid)) != "Z"


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def stop_run_server(server: Mapping | None, params: Mapping) -> None:
    """The teardown task: stop the run's server (its process group) and remove its state directory
    after copying the last lines of the server's log into the task log, keeping the class archive
    it wrote at exit (if it was asked to); a no-op without one."""
    if not server or not server.get("state_dir"):
        return
    log = Path(server["log"])
    if log.exists():
        for line in log.read_text(errors="replace").splitlines()[-30:]:
            logger.info("server log: %s", line)
    dumping = bool(server.get("dump"))
    try:  # a server writing its class archive at exit takes longer to stop: give it the time
        _connect_script("stop", server["state_dir"], step_env(params), ["--grace", "180"] if dumping else [])
        if dumping:
            class_archive.keep(Path(server["dump"]), Path(server["archive"]))
    finally:
        shutil.rmtree(server["state_dir"], ignore_errors=True)


def _accepts(url: str, timeout: float = 2.0) -> bool:
    """Whether ``sc://host:port`` accepts a TCP connection."""
    host, _, port = url.removeprefix("sc://").split("/")[0].partition(":")
    try:
        with socket.create_connection((host, int(port or 15002)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def spark_submit_command(job: str, args: list[str], cfg: Mapping, master: str) -> list[str]:
    """``spark-submit --master M --name N --driver-memory X --conf k=v ... common/steps.py jobs.<job> args``."""
    spark = cfg.get("spark") or {}
    binary = shutil.which("spark-submit", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                 os.environ.get("PATH", "")])) or "spark-submit"
    cmd = [binary, "--master", master, "--name", f"{spark.get('app_name_prefix', 'pipeline')}-{job}"]
    if spark.get("driver_memory"):
        cmd += ["--driver-memory", str(spark["driver_memory"])]
    conf = {"spark.sql.session.timeZone": "UTC", **{str(k): str(v) for k, v in (spark.get("conf") or {}).items()}}
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    return [*cmd, str(REPO_ROOT / "common" / "steps.py"), f"jobs.{job}", *args]


def spark_step(job: str, ds: str, params: Mapping, server: Mapping | None = None) -> dict:
    """``jobs.<job>`` for ``ds`` (through the ``through`` Param when set) as a Spark Connect client
    of :func:`spark_remote` when one is set, else of the run's own ``server``
    (:func:`start_run_server`) when it is up, else under spark-submit with the run's profile;
    returns its result (per date, and the Spark settings the running application reports). A run
    server that no longer answers (it died; a retry after it) gives way to spark-submit, warned."""
    cfg, root = settings(params)
    python = sys.executable
    env = _spark_env(params)
    args = ["--ds", ds, "--data-root", root, *common_args({k: v for k, v in params.items() if k != "data_root"})]
    if params.get("through"):  # a range: the job builds --ds through this date in one pass
        args += ["--through", check_ds(params["through"])]
    remote = spark_remote(cfg)
    if not remote and server and server.get("url"):
        if server_ready(server):
            remote = server["url"]
        else:
            logger.warning("the run's Spark Connect server %s does not answer (log %s): this task runs its own "
                           "spark-submit application", server["url"], server.get("log"))
    if remote:  # the server's application does the work: no JVM starts here
        env = {**env, "SPARK_REMOTE": remote}
        env.pop("SPARK_SUBMITTED")
        return run_step([python, str(REPO_ROOT / "common" / "steps.py"), f"jobs.{job}", *args], f"jobs.{job}", env)
    check_java(env)
    return run_step(spark_submit_command(job, args, cfg, spark_master(cfg)), f"jobs.{job}", env)
