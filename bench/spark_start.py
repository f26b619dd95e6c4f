"""Fixed costs of the daily ETL: one day of ``behavior_etl`` (validate, sessionize, build_samples)
started the ways a task can start it, side by side in one run.

Arms (each on its own copy of the same data root, interleaved over ``--repeats``):

- ``submit``: one ``spark-submit`` application per task, as ``dags/runner.spark_step`` starts it
  today (the profile's settings);
- ``submit+<option>``: the same with one Spark setting changed (``--options``: whole-stage codegen
  off, 2 shuffle partitions, AQE off), to measure start-up options on this machine;
- ``connect_cold``: one Spark Connect server started for the run (``scripts/spark_connect.py``,
  its start counted), then the three tasks as its clients: one application per DAG run;
- ``connect_profilejvm_cold``: the same with the profile's driver JVM options (short-application
  JIT and GC) instead of full JIT: what ``behavior_etl``'s setup task starts
  (``spark.application: run``);
- ``submit+serial``, ``connect_profilejvm_cold+serial``: the same with one table write at a
  time (``spark.write_threads: 1``; the other arms use the config's, several at once);
- ``connect_warm``: the three tasks as clients of a server that has already run a day: one
  long-lived application (``spark.remote``), its start and JIT warm-up paid before;
- ``run_server``: the day exactly as a ``behavior_etl`` run does it by default: the setup task's
  ``dags.runner.start_run_server`` (its server maps the class archive of ``spark.class_archive_dir``),
  the three ``spark_step`` calls and the teardown's ``stop_run_server`` (``server_stop``, counted);
  ``run_server_first`` when that run found no archive and wrote it at its stop;
  ``run_server_noarchive``: the same with ``spark.class_archive_dir`` empty.

``python bench/spark_start.py [--users 400] [--repeats 2] [--work-dir DIR]`` prints one JSON object:
seconds per arm and step (median over repeats), and ``ratios`` of each arm's day to ``submit``'s.
The data: ``sources.synthetic`` with the demo's size, three days; days 1-2 are built once
(untimed) so that day 3's histories reach back as in the demo.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.config import load_config  # noqa: E402
from dags import runner  # noqa: E402
from dags.runner import spark_submit_command, step_env  # noqa: E402
from scripts import spark_cluster, spark_connect  # noqa: E402

JOBS = ("validate", "sessionize", "build_samples")
DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")
OPTIONS = {
    "nocodegen": {"spark.sql.codegen.wholeStage": "false"},
    "partitions2": {"spark.sql.shuffle.partitions": "2"},
    "noaqe": {"spark.sql.adaptive.enabled": "false"},
}


def _env(extra: dict | None = None) -> dict:
    python = sys.executable
    env = step_env({}, {"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python, "SPARK_LOCAL_IP": "127.0.0.1",
                        "PATH": os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", "")])})
    env.pop("SPARK_REMOTE", None)  # only the arm's own setting below
    env.pop("PIPELINE__SPARK__REMOTE", None)
    return {**env, **(extra or {})}


def _run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def prepare(work: Path, users: int) -> Path:
    """Three synthetic days, days 1-2 built (one range run of each job); day 3 raw only."""
    base = work / "base"
    if (base / "READY").exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    env = _env()
    _run([sys.executable, "-m", "sources.synthetic", "--data-root", str(base), "--start-ds", DAYS[0], "--days", "3",
          "--users", str(users)], env)
    for job in JOBS:
        _run([sys.executable, "-m", f"jobs.{job}", "--ds", DAYS[0], "--through", DAYS[1], "--data-root", str(base)],
             env)
    (base / "READY").write_text("")
    return base


SERIAL = {"PIPELINE__SPARK__WRITE_THREADS": "1"}  # "+serial" arms: one table write at a time


def day_submit(root: Path, cfg: dict, extra: dict | None = None) -> dict:
    env = _env({"SPARK_SUBMITTED": "1", **(extra or {})})
    return {job: _run(spark_submit_command(job, ["--ds", DAYS[2], "--data-root", str(root)], cfg, "local[2]"), env)
            for job in JOBS}


def day_connect(root: Path, url: str, extra: dict | None = None) -> dict:
    env = _env({"SPARK_REMOTE": url, **(extra or {})})
    return {job: _run([sys.executable, str(REPO / "common" / "steps.py"), f"jobs.{job}", "--ds", DAYS[2],
                       "--data-root", str(root)], env) for job in JOBS}


def day_run_server(root: Path, archive: bool) -> tuple[str, dict]:
    """The day as the DAG's setup, Spark and teardown tasks run it (``run_server*`` arms)."""
    saved = os.environ.get("PIPELINE__SPARK__CLASS_ARCHIVE_DIR")
    if not archive:
        os.environ["PIPELINE__SPARK__CLASS_ARCHIVE_DIR"] = ""
    params = {"data_root": str(root)}
    try:
        t0 = time.perf_counter()
        server = runner.start_run_server(params)
        steps = {"server_start": time.perf_counter() - t0}
        try:
            for job in JOBS:
                t0 = time.perf_counter()
                runner.spark_step(job, DAYS[2], params, server)
                steps[job] = time.perf_counter() - t0
        finally:
            t0 = time.perf_counter()
            runner.stop_run_server(server, params)
            steps["server_stop"] = time.perf_counter() - t0
    finally:
        if saved is None:
            os.environ.pop("PIPELINE__SPARK__CLASS_ARCHIVE_DIR", None)
        else:
            os.environ["PIPELINE__SPARK__CLASS_ARCHIVE_DIR"] = saved
    arm = "run_server_noarchive" if not archive else "run_server_first" if server.get("dump") else "run_server"
    return arm, steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=400, help="synthetic users (the demo's 400)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--options", default="nocodegen,partitions2,noaqe",
                        help=f"comma-separated submit options to measure, of {sorted(OPTIONS)} (empty: none)")
    parser.add_argument("--work-dir", default="/tmp/bench_spark_start")
    parser.add_argument("--arms", default="", help="comma-separated arms to run (empty: all); submit always runs")
    args = parser.parse_args(argv)
    result_out = os.fdopen(os.dup(1), "w")  # the JSON; everything else written to stdout (the
    os.dup2(2, 1)                            # runner's task-log lines) goes to stderr
    arms = {"submit", *[a for a in args.arms.split(",") if a]} if args.arms else set()
    work = Path(args.work_dir)
    base = prepare(work, args.users)
    cfg = load_config(environ={})
    options = [o for o in args.options.split(",") if o]
    profile_jvm = str(cfg["spark"]["conf"].get("spark.driver.extraJavaOptions") or "")
    times: dict[str, list[dict]] = {}

    def fresh(arm: str) -> Path:
        root = work / f"arm_{arm}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(base, root)
        return root

    def record(arm: str, steps: dict) -> None:
        steps = {k: round(v, 2) for k, v in steps.items()}
        steps["day"] = round(sum(v for k, v in steps.items() if k in JOBS) + steps.get("server_start", 0.0)
                             + steps.get("server_stop", 0.0), 2)
        steps["load1"] = round(os.getloadavg()[0], 2)
        times.setdefault(arm, []).append(steps)
        print(arm, json.dumps(steps), file=sys.stderr, flush=True)

    def wanted(arm: str) -> bool:
        return not arms or arm in arms

    for _ in range(args.repeats):
        for arm, extra in (("submit", None), ("submit+serial", SERIAL)):
            if wanted(arm):
                record(arm, day_submit(fresh(arm), cfg, extra))
        for opt in options:
            arm_cfg = copy.deepcopy(cfg)
            arm_cfg["spark"]["conf"].update(OPTIONS[opt])
            record(f"submit+{opt}", day_submit(fresh(opt), arm_cfg))
        for arm, java, extra in (("connect", spark_connect.SERVER_JAVA_OPTIONS, None),
                                 ("connect_profilejvm", profile_jvm, None),
                                 ("connect_profilejvm+serial", profile_jvm, SERIAL)):
            cold, warm = arm.replace("connect_profilejvm", "connect_profilejvm_cold"), f"{arm}_warm"
            cold = f"{arm}_cold" if arm == "connect" else cold
            if not (wanted(cold) or (arm == "connect" and wanted(warm))):
                continue
            port, state_dir = spark_cluster.free_port(), work / arm
            spark_connect.stop(state_dir)  # a server left by an interrupted run would not be cold
            t0 = time.perf_counter()
            state, _ = spark_connect.start(cfg, state_dir, port, java_options=java)
            started = time.perf_counter() - t0
            try:
                record(cold, {"server_start": started, **day_connect(fresh(cold), state["url"], extra)})
                if arm == "connect" and wanted(warm):
                    record(warm, day_connect(fresh(warm), state["url"]))
            finally:
                spark_connect.stop(state_dir)
        for archive in (True, False):
            if wanted("run_server" if archive else "run_server_noarchive"):
                arm, steps = day_run_server(fresh("run_server"), archive)
                record(arm, steps)
    medians = {arm: {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]} for arm, rows in times.items()}
    ref = medians["submit"]["day"]
    print(json.dumps({"day": DAYS[2], "users": args.users, "repeats": args.repeats, "cpus": os.cpu_count(),
                      "seconds": medians, "ratios": {arm: round(m["day"] / ref, 3) for arm, m in medians.items()},
                      "runs": times}, indent=2), file=result_out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
