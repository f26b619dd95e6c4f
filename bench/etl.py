"""Benchmark the Spark ETL steps (generate, validate, sessionize, build_samples) against event counts.

For each size in ``--events`` the synthetic generator writes ``--days`` days of raw logs into a
temporary data root (total behaviour events ~ size), then every step runs as its own process,
so its wall time and peak RSS are its own. Peak RSS is the sum of the resident sets of the step's
process tree (Python + the Spark JVM), polled every ``--poll-s`` seconds. Validate runs for every
day (the lookback of build_samples); sessionize and build_samples for the last day only.

The sessionisation of the last day is then re-done by DuckDB on the same clean Parquet (same
ordering and gap rule as ``jobs.sessionize.with_session_id``; written to Parquet) in a
subprocess, and both results are compared: distinct (user_id, session_seq) pairs and the rows
that differ. For each Spark step the event log is parsed into per-write timings and the slowest
stages (with GC, spill and shuffle volumes) to show where the time goes.

Prints one JSON object on stdout; progress goes to stderr. Usage::

    .venv/bin/python bench/etl.py --events 1000000 10000000 [--days 1] [--keep] [--run-server]

``--run-server`` adds the three steps as ``behavior_etl`` runs them by default: one Spark Connect
application started for the run (its start counted), the steps its clients, then stopped; and
its ratio to the DuckDB process.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import psutil

REPO = Path(__file__).resolve().parents[1]
START_DS = "2026-11-01"
SPARK_STEPS = ("validate", "sessionize", "build_samples")
EVENT_ORDER = ("search", "view", "click", "cart", "buy", "exit")  # jobs.sessionize.EVENT_ORDER
MB = 2**20


def log(msg: str) -> None:
    print(f"[etl-bench {dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# --- measuring a process tree ------------------------------------------------------------------


PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[str, int, tuple[int, int], float] | None:
    """(command name, RSS bytes, address-space key, CPU seconds) from one read of /proc/<pid>/stat.

    One read keeps name and RSS consistent; the key (start of stack, start of heap) is shared by a
    ``vfork``-ed child before it execs, which would otherwise count the JVM's RSS twice (a forked
    copy-on-write child shares the key too, but not the RSS figure, so it is still counted).
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    f = raw[raw.rindex(")") + 2 :].split()  # f[0] is field 3 (state)
    cpu = (int(f[11]) + int(f[12])) / TICK  # utime + stime
    return name, int(f[21]) * PAGE, (int(f[25]), int(f[44])), cpu


def run_measured(cmd: list[str], env: dict, log_path: Path, timeout_s: float, poll_s: float) -> dict:
    """Run ``cmd``; wall seconds, peak summed RSS and CPU seconds of its process tree, return code, stdout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out_path = log_path.with_suffix(".stdout")
    cpu_by_pid: dict[int, float] = {}
    with open(log_path, "wb") as err, open(out_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
        root = psutil.Process(proc.pid)
        peak = peak_jvm = 0
        breakdown: dict[str, float] = {}
        load_before = os.getloadavg()[0]
        load_max = load_before
        timed_out = False
        while proc.poll() is None:
            total = jvm = other = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                procs = []
            seen_mm: dict[tuple[int, int], int] = {}
            for p in procs:
                st = _proc_stat(p.pid)
                if st is None:
                    continue
                name, rss, mm, cpu = st
                cpu_by_pid[p.pid] = max(cpu, cpu_by_pid.get(p.pid, 0.0))
                if mm in seen_mm and abs(rss - seen_mm[mm]) <= 0.02 * rss:
                    continue  # same address space (vfork child): already counted
                seen_mm[mm] = rss
                total += rss
                if name == "java":
                    jvm += rss
                elif p.pid != proc.pid:
                    other += rss
            if total > peak:
                breakdown = {"step_process": round((total - jvm - other) / MB, 1), "jvm": round(jvm / MB, 1),
                             "other_children": round(other / MB, 1)}
            peak, peak_jvm = max(peak, total), max(peak_jvm, jvm)
            load_max = max(load_max, os.getloadavg()[0])
            if time.perf_counter() - t0 > timeout_s:
                timed_out = True
                for p in reversed(procs):  # children first, then the step itself
                    try:
                        p.kill()
                    except psutil.NoSuchProcess:
                        pass
                proc.wait()
                break
            time.sleep(poll_s)
        seconds = time.perf_counter() - t0
    result = {
        "seconds": round(seconds, 2),
        "cpu_s": round(sum(cpu_by_pid.values()), 1),
        "peak_rss_mb": round(peak / MB, 1),
        "peak_jvm_rss_mb": round(peak_jvm / MB, 1),
        "rss_at_peak_mb": breakdown,
        "loadavg_1m": {"before": round(load_before, 2), "max": round(load_max, 2)},
        "returncode": proc.returncode,
        "ok": proc.returncode == 0 and not timed_out,
    }
    if timed_out:
        result["error"] = f"timed out after {timeout_s:.0f} s"
    stdout = out_path.read_text(errors="replace").strip().splitlines()
    result["stdout_json"] = _last_json(stdout)
    if not result["ok"]:
        result["error_lines"] = error_lines(log_path)
    return result


def _last_json(lines: list[str]):
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def error_lines(log_path: Path, limit: int = 12) -> list[str]:
    """The distinct error-looking lines of a step's stderr (first ``limit``), else its tail."""
    text = log_path.read_text(errors="replace").splitlines()
    pat = re.compile(r"(Error|Exception|ERROR|Killed|OutOfMemory|Traceback)")
    seen, picked = set(), []
    for line in text:
        key = line.strip()[:300]
        if pat.search(line) and key not in seen:
            seen.add(key)
            picked.append(key)
        if len(picked) >= limit:
            break
    return picked or [line[:300] for line in text[-limit:]]


# --- Spark event log ---------------------------------------------------------------------------

_WRITE_PATH = re.compile(r"/(raw|clean|quarantine|sessions|samples)/(\w+)/\.(?:tmp-ds=|stage-)")


def _acc(stage_info: dict) -> dict[str, float]:
    out = {}
    for a in stage_info.get("Accumulables", []):
        try:
            out[a["Name"]] = float(a["Value"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _lines(files: list[Path]):
    for path in files:
        with open(path, errors="replace") as fh:
            yield from fh


def parse_event_log(log_dir: Path, top: int = 6) -> dict:
    """Per SQL execution (write target) wall and task seconds, and the costliest stages."""
    # Spark 4 writes rolling logs: <dir>/eventlog_v2_<app>/events_<n>_<app>.
    files = [p for p in log_dir.rglob("*") if p.is_file() and p.name.startswith(("events_", "local-"))]
    files.sort(key=lambda p: int(m.group(1)) if (m := re.match(r"events_(\d+)_", p.name)) else 0)
    if not files:
        return {}
    sql: dict[int, dict] = {}
    stage_sql: dict[int, int] = {}
    stages = []
    for line in _lines(files):
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        kind = ev.get("Event", "")
        if kind.endswith("SQLExecutionStart"):
            plan = ev.get("physicalPlanDescription", "")
            m = _WRITE_PATH.search(plan)
            if m:
                label = f"write {m.group(1)}/{m.group(2)}"
            else:
                first = next((ln for ln in plan.splitlines()[1:]
                              if ln.strip() and "AdaptiveSparkPlan" not in ln), "")
                label = "action " + re.sub(r"[\s+\-*:()]+", " ", first).strip()[:60]
            sql[ev["executionId"]] = {"id": ev["executionId"], "what": label, "start": ev["time"]}
        elif kind.endswith("SQLExecutionEnd") and ev.get("executionId") in sql:
            entry = sql[ev["executionId"]]
            entry["seconds"] = round((ev["time"] - entry.pop("start")) / 1000, 2)
        elif kind == "SparkListenerJobStart":
            exec_id = (ev.get("Properties") or {}).get("spark.sql.execution.id")
            if exec_id is not None:
                for sid in ev.get("Stage IDs", []):
                    stage_sql[sid] = int(exec_id)
        elif kind == "SparkListenerStageCompleted":
            info = ev["Stage Info"]
            if "Completion Time" not in info or "Submission Time" not in info:
                continue
            acc = _acc(info)
            ops = []
            for rdd in info.get("RDD Info", []):
                try:
                    op = json.loads(rdd.get("Scope") or "{}").get("name", "")
                except json.JSONDecodeError:
                    op = ""
                op = re.sub(r"\s*\(\d+\)$", "", op)
                if op and op not in ops:
                    ops.append(op)
            stages.append({
                "stage": info["Stage ID"],
                "sql_id": stage_sql.get(info["Stage ID"]),
                "tasks": info.get("Number of Tasks"),
                "seconds": round((info["Completion Time"] - info["Submission Time"]) / 1000, 2),
                "task_run_s": round(acc.get("internal.metrics.executorRunTime", 0) / 1000, 1),
                "gc_s": round(acc.get("internal.metrics.jvmGCTime", 0) / 1000, 1),
                "spill_disk_mb": round(acc.get("internal.metrics.diskBytesSpilled", 0) / MB, 1),
                "spill_mem_mb": round(acc.get("internal.metrics.memoryBytesSpilled", 0) / MB, 1),
                "input_mb": round(acc.get("internal.metrics.input.bytesRead", 0) / MB, 1),
                "shuffle_read_mb": round((acc.get("internal.metrics.shuffle.read.localBytesRead", 0)
                                          + acc.get("internal.metrics.shuffle.read.remoteBytesRead", 0))
                                         / MB, 1),
                "shuffle_write_mb": round(acc.get("internal.metrics.shuffle.write.bytesWritten", 0) / MB, 1),
                "output_mb": round(acc.get("internal.metrics.output.bytesWritten", 0) / MB, 1),
                "peak_exec_mem_mb": round(acc.get("internal.metrics.peakExecutionMemory", 0) / MB, 1),
                "operators": ops,
            })
    for st in stages:
        st["what"] = sql.get(st["sql_id"], {}).get("what") if st["sql_id"] is not None else None
    executions = [e for e in sorted(sql.values(), key=lambda e: e["id"]) if "seconds" in e]
    by_what: dict[str, float] = collections.defaultdict(float)
    for e in executions:
        by_what[e["what"]] += e["seconds"]
    task_by_what: dict[str, float] = collections.defaultdict(float)
    for st in stages:
        task_by_what[st["what"] or "other"] += st["task_run_s"]
    totals = {
        k: round(sum(s[k] for s in stages), 1)
        for k in ("task_run_s", "gc_s", "spill_disk_mb", "spill_mem_mb", "shuffle_write_mb")
    }
    return {
        "sql_seconds_by_target": {k: round(v, 2) for k, v in sorted(by_what.items(), key=lambda kv: -kv[1])},
        "task_run_s_by_target": {k: round(v, 1) for k, v in sorted(task_by_what.items(), key=lambda kv: -kv[1])},
        "stage_totals": {"stages": len(stages), "tasks": sum(st["tasks"] or 0 for st in stages), **totals},
        # Stages overlap under AQE, so rank by summed task time (the CPU-ish cost), not wall time.
        "costliest_stages": [
            {k: v for k, v in st.items() if v or k in ("stage", "seconds", "tasks")}
            for st in sorted(stages, key=lambda s: -s["task_run_s"])[:top]
        ],
    }


# --- DuckDB equivalents ------------------------------------------------------------------------


def duckdb_etl(root: str, out: str, days: list[str], gap_minutes: int, history_len: int, threads: int | None) -> dict:
    """The steps of the ETL DuckDB can express, over every day at once, each written to Parquet:
    validate's row checks of ``behavior_events`` (same rules and order as ``jobs.validate``, whole-
    row duplicates; DuckDB cannot hold invalid UTF-8, so that rule is moot), the gap sessions of
    ``jobs.sessionize.with_session_id``, and the history windows of ``jobs.history.index_behaviours``
    (last ``history_len`` behaviours per user with their text). Seconds per query."""
    from common import schemas  # lazy: pyarrow only

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    q = lambda s: s.replace("'", "''")  # noqa: E731
    raw = q(f"{root}/raw/behavior_events/ds=*/*.parquet")
    items = q(f"{root}/clean/items/ds={days[-1]}/*.parquet")
    outp = {k: q(f"{out}/{k}.parquet") for k in ("clean", "quarantine", "sessions", "history")}
    inlist = lambda xs: ", ".join(f"'{x}'" for x in xs)  # noqa: E731
    text_cols = ("user_id", "query", "item_id", "request_id")
    day_us = 86_400_000_000
    start = f"(date_diff('day', DATE '1970-01-01', CAST(ds AS DATE)) * CAST({day_us} AS BIGINT))"
    reason = f"""CASE
      WHEN user_id IS NULL OR trim(user_id) = '' THEN 'null_user_id'
      WHEN event_time IS NULL THEN 'null_event_time'
      WHEN NOT (epoch_us(event_time) >= {start} AND epoch_us(event_time) < {start} + {day_us})
        THEN 'event_time_outside_partition'
      WHEN event_type IS NULL OR event_type NOT IN ({inlist(schemas.EVENT_TYPES)}) THEN 'unknown_event_type'
      WHEN scene IS NOT NULL AND scene NOT IN ({inlist(schemas.SCENES)}) THEN 'unknown_scene'
      WHEN {" OR ".join(f"length({c}) > 256" for c in text_cols)} THEN 'text_too_long'
      WHEN event_type = 'search' AND (query IS NULL OR trim(query) = '') THEN 'search_without_query'
      WHEN event_type IN ({inlist(schemas.ITEM_EVENT_TYPES)}) AND (item_id IS NULL OR trim(item_id) = '')
        THEN 'item_event_without_item_id'
    END"""
    cols = "user_id, event_time, event_type, query, item_id, scene, request_id, ds"
    rank = "CASE event_type " + " ".join(f"WHEN '{n}' THEN {i}" for i, n in enumerate(EVENT_ORDER))
    rank += f" ELSE {len(EVENT_ORDER)} END"
    order = f"event_time, {rank}, coalesce(query, ''), coalesce(item_id, ''), coalesce(request_id, '')"
    tie = f"concat_ws(chr(1), CAST({rank} AS VARCHAR), coalesce(query, ''), coalesce(item_id, ''), coalesce(request_id, ''))"
    gap_us = int(gap_minutes) * 60 * 1_000_000
    steps = {
        "validate": f"""
          CREATE TEMP TABLE checked AS
            SELECT {cols}, {reason} AS reason
            FROM read_parquet('{raw}', hive_partitioning = true, hive_types = {{'ds': VARCHAR}});
          CREATE TEMP TABLE copies AS
            SELECT {cols}, count(*) AS _n FROM checked WHERE reason IS NULL GROUP BY ALL;
          COPY (SELECT {cols} FROM copies) TO '{outp["clean"]}' (FORMAT parquet);
          COPY (SELECT * FROM checked WHERE reason IS NOT NULL
                UNION ALL SELECT {cols}, 'duplicate' FROM (
                  SELECT {cols}, unnest(range(CAST(_n - 1 AS BIGINT))) AS _i FROM copies WHERE _n > 1))
            TO '{outp["quarantine"]}' (FORMAT parquet);""",
        "sessionize": f"""
          COPY (
            WITH lagged AS (
              SELECT *, lag(epoch_us(event_time)) OVER w AS _prev FROM read_parquet('{outp["clean"]}')
              WINDOW w AS (PARTITION BY user_id, ds ORDER BY {order})),
            flagged AS (
              SELECT * EXCLUDE (_prev),
                     CASE WHEN _prev IS NULL OR epoch_us(event_time) - _prev > {gap_us} THEN 1 ELSE 0 END AS _new
              FROM lagged),
            seq AS (
              SELECT * EXCLUDE (_new), CAST(sum(_new) OVER (PARTITION BY user_id, ds ORDER BY {order}
                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS INTEGER) AS session_seq
              FROM flagged)
            SELECT * EXCLUDE (session_seq), user_id || '|' || ds || '|' || session_seq AS session_id, session_seq
            FROM seq
          ) TO '{outp["sessions"]}' (FORMAT parquet);""",
        "history": f"""
          COPY (
            WITH beh AS (
              SELECT e.user_id, e.event_time, e.event_type, e.item_id, {tie} AS _tie,
                     CASE WHEN e.event_type = 'search' THEN e.query ELSE coalesce(i.title, e.item_id) END AS text,
                     i.leaf_category AS category
              FROM read_parquet('{outp["clean"]}') e
              LEFT JOIN (SELECT item_id, title, leaf_category FROM read_parquet('{items}')) i USING (item_id)
              WHERE e.event_type IN ('search', 'click', 'cart', 'buy'))
            SELECT user_id, event_time, _tie,
                   row_number() OVER w AS _bidx,
                   list({{'event_time': event_time, 'event_type': event_type, 'text': text, 'item_id': item_id,
                          'category': category}}) OVER (w ROWS BETWEEN {int(history_len) - 1} PRECEDING AND CURRENT ROW)
                     AS _hist
            FROM beh WINDOW w AS (PARTITION BY user_id ORDER BY event_time, _tie)
          ) TO '{outp["history"]}' (FORMAT parquet);""",
    }
    seconds = {}
    for step, sql in steps.items():
        t0 = time.perf_counter()
        con.execute(sql)
        seconds[step] = round(time.perf_counter() - t0, 2)
    rows = {k: con.execute(f"SELECT count(*) FROM read_parquet('{v}')").fetchone()[0] for k, v in outp.items()}
    threads_used = con.execute("SELECT current_setting('threads')").fetchone()[0]
    return {"query_s": seconds, "rows": rows, "threads": int(threads_used)}


def compare_outputs(root: Path, duck: Path, days: list[str]) -> dict:
    """Spark's clean events and sessions of ``days`` against DuckDB's: rows only on one side
    (EXCEPT ALL both ways) and session counts."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")

    def spark(area: str, table: str) -> str:
        return f"read_parquet('{root / area / table}/ds=*/*.parquet', hive_partitioning = true, hive_types = {{'ds': VARCHAR}})"

    def diff(a: str, b: str, cols: str) -> tuple[int, int]:
        one = con.execute(f"SELECT count(*) FROM (SELECT {cols} FROM {a} EXCEPT ALL SELECT {cols} FROM {b})").fetchone()[0]
        two = con.execute(f"SELECT count(*) FROM (SELECT {cols} FROM {b} EXCEPT ALL SELECT {cols} FROM {a})").fetchone()[0]
        return one, two

    ev = "user_id, event_time, event_type, query, item_id, scene, request_id, ds"
    out = {"clean_behavior_events": diff(spark("clean", "behavior_events"), f"read_parquet('{duck}/clean.parquet')", ev),
           "quarantine_behavior_events": diff(spark("quarantine", "behavior_events"),
                                              f"read_parquet('{duck}/quarantine.parquet')", ev + ", reason"),
           "behavior_sessions": diff(spark("sessions", "behavior_sessions"), f"read_parquet('{duck}/sessions.parquet')",
                                     ev + ", session_seq, session_id")}
    out = {k: {"only_in_spark": a, "only_in_duckdb": b} for k, (a, b) in out.items()}
    out["identical"] = all(v["only_in_spark"] == v["only_in_duckdb"] == 0 for v in out.values())
    return out


# --- one size ----------------------------------------------------------------------------------


def _ds_list(days: int) -> list[str]:
    start = dt.date.fromisoformat(START_DS)
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(days)]


def _raw_events(root: Path, ds: str) -> int:
    manifest = root / "raw" / "behavior_events" / f"ds={ds}" / "_manifest.json"
    return int(json.loads(manifest.read_text())["rows"])


def _step_record(res: dict, events: int) -> dict:
    rec = {k: v for k, v in res.items() if k != "stdout_json"}
    rec["events"] = events
    if res["seconds"] > 0:
        rec["events_per_s"] = round(events / res["seconds"])
    return rec


def bench_size(size: int, args, base_env: dict, work: Path) -> dict:
    days = _ds_list(args.days)
    last = days[-1]
    n_users = max(1, round(size / (args.events_per_user_day * args.days)))
    root = work / "data"
    logs = work / "logs"
    driver_memory = args.driver_memory or ("6g" if size >= 5_000_000 else None)
    env = dict(base_env)
    if driver_memory:
        env["PIPELINE__SPARK__DRIVER_MEMORY"] = driver_memory
    out: dict = {
        "target_events": size, "days": days, "n_users": n_users, "n_items": args.items,
        "events_per_user_day": args.events_per_user_day, "data_root": str(root),
        "spark_master": env["PIPELINE__SPARK__MASTER"],
        "driver_memory": driver_memory or "config default",
        "steps": {},
    }
    t_size = time.perf_counter()

    def finish() -> dict:
        out["total_s"] = round(time.perf_counter() - t_size, 1)
        return out

    log(f"{size:,} events: generate {args.days} day(s), {n_users:,} users -> {root}")
    cmd = [sys.executable, "-m", "sources.synthetic", "--data-root", str(root), "--start-ds", START_DS,
           "--days", str(args.days), "--users", str(n_users), "--items", str(args.items),
           "--events-per-user-day", str(args.events_per_user_day), "--seed", str(args.seed)]
    res = run_measured(cmd, env, logs / "generate.log", args.step_timeout, args.poll_s)
    if not res["ok"]:
        out["steps"]["generate"] = _step_record(res, 0)
        out["failed_step"] = "generate"
        return finish()
    per_day = {ds: _raw_events(root, ds) for ds in days}
    total_events = sum(per_day.values())
    out["events"] = total_events
    out["events_per_day"] = per_day
    out["raw_parquet_mb"] = round(sum(p.stat().st_size for p in (root / "raw").rglob("*.parquet")) / MB, 1)
    out["steps"]["generate"] = _step_record(res, total_events)
    log(f"  generate: {res['seconds']} s, {total_events:,} events, peak {res['peak_rss_mb']} MB")

    plan = [(step, days[0]) for step in SPARK_STEPS]  # each step once over the whole range
    runs: dict[str, list[dict]] = collections.defaultdict(list)
    for step, ds in plan:
        tag = f"{step}-{ds}"
        ev_dir = logs / "eventlog" / tag
        ev_dir.mkdir(parents=True, exist_ok=True)
        step_env = dict(env)
        if not args.no_event_log:
            step_env["PYSPARK_SUBMIT_ARGS"] = (
                f"--conf spark.eventLog.enabled=true --conf spark.eventLog.dir=file://{ev_dir} "
                "--conf spark.eventLog.compress=false pyspark-shell"
            )
        log(f"  {step} ds={ds} ...")
        cmd = [sys.executable, "-m", f"jobs.{step}", "--ds", ds, "--through", last, "--data-root", str(root)]
        res = run_measured(cmd, step_env, logs / f"{tag}.log", args.step_timeout, args.poll_s)
        res["ds"] = ds
        res["spark"] = parse_event_log(ev_dir)
        runs[step].append(res)
        log(f"  {step} ds={ds}: {'ok' if res['ok'] else 'FAILED'} {res['seconds']} s, "
            f"peak {res['peak_rss_mb']} MB")
        if not res["ok"]:
            out["failed_step"] = f"{step} ds={ds}"
            break
    for step, step_runs in runs.items():
        events = total_events
        merged = {
            "seconds": round(sum(r["seconds"] for r in step_runs), 2),
            "cpu_s": round(sum(r["cpu_s"] for r in step_runs), 1),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in step_runs),
            "peak_jvm_rss_mb": max(r["peak_jvm_rss_mb"] for r in step_runs),
            "ok": all(r["ok"] for r in step_runs),
        }
        rec = _step_record(merged, events)
        rec["runs"] = [
            {k: v for k, v in r.items() if k not in ("stdout_json",)} | {"summary": _summary(step, r)}
            for r in step_runs
        ]
        out["steps"][step] = rec
    if "failed_step" in out:
        return finish()

    # The same three steps in one Spark application started for the run (behavior_etl's default).
    if args.run_server:
        log("  the three steps in one Spark Connect application started for the run ...")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-server-etl", str(root), days[0], last]
        res = run_measured(cmd, env, logs / "run_server.log", args.step_timeout, args.poll_s)
        out["steps"]["run_server"] = {**_step_record(res, total_events), "parts": res["stdout_json"]}
        log(f"  run server: {'ok' if res['ok'] else 'FAILED'} {res['seconds']} s ({res['stdout_json']})")
        if not res["ok"]:
            out["failed_step"] = "run_server"
            return finish()

    # DuckDB on the same raw Parquet, in its own process.
    duck_out = work / "duckdb"
    duck_out.mkdir()
    log("  duckdb (validate row checks, sessionize, history windows) ...")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--duckdb-etl", str(root), str(duck_out),
           str(args.gap_minutes), str(args.history_len), *days]
    cmd += ["--duckdb-threads", str(args.duckdb_threads)] if args.duckdb_threads else []
    res = run_measured(cmd, env, logs / "duckdb.log", args.step_timeout, args.poll_s)
    duck = _step_record(res, total_events)
    duck["result"] = res["stdout_json"]
    out["steps"]["duckdb"] = duck
    log(f"  duckdb: {'ok' if res['ok'] else 'FAILED'} {res['seconds']} s, peak {res['peak_rss_mb']} MB")
    if res["ok"]:
        out["ratios"] = ratios(out["steps"], duck)
        out["ratios"]["check"] = compare_outputs(root, duck_out, days)
    else:
        out["failed_step"] = "duckdb"
    return finish()


def run_server_etl(root: str, ds: str, through: str) -> dict:
    """The three steps as ``behavior_etl`` runs them by default (``spark.application: run``),
    through the DAG's own functions: ``dags.runner.start_run_server`` (the setup task), each step
    by ``spark_step`` as the server's client, ``stop_run_server`` (the teardown); seconds of each
    part and the server's CPU."""
    from dags import runner

    params = {"data_root": root, "through": through}
    t0 = time.perf_counter()
    server = runner.start_run_server(params)
    out: dict = {"server_start_s": round(time.perf_counter() - t0, 2)}
    try:
        for step in SPARK_STEPS:
            t1 = time.perf_counter()
            runner.spark_step(step, ds, params, server)
            out[f"{step}_s"] = round(time.perf_counter() - t1, 2)
        state = json.loads((Path(server["state_dir"]) / "state.json").read_text())
        procs = [psutil.Process(state["pids"]["server"])]
        procs += procs[0].children(recursive=True)
        out["server_cpu_s"] = round(sum(sum(p.cpu_times()[:2]) for p in procs), 1)
        out["server_rss_mb"] = round(sum(p.memory_info().rss for p in procs) / MB, 1)
    finally:
        runner.stop_run_server(server, params)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


#: The Spark write (event-log SQL target) whose time is set against each DuckDB query.
QUERY_TARGETS = {"validate": ("validate", "write clean/behavior_events"),
                 "sessionize": ("sessionize", "write sessions/behavior_sessions")}


def ratios(steps: dict, duck: dict) -> dict:
    """Spark over DuckDB: the whole ETL (every Spark process against the one DuckDB process, which
    does only the steps it can express), each step's process, and the query alone."""
    spark_total = sum(steps[s]["seconds"] for s in SPARK_STEPS)
    query_s = (duck.get("result") or {}).get("query_s") or {}
    out = {"spark_etl_s": round(spark_total, 2), "duckdb_process_s": duck["seconds"],
           "whole_etl_over_duckdb_process": round(spark_total / duck["seconds"], 2),
           "duckdb_query_s": query_s, "steps": {}}
    for step in ("validate", "sessionize"):
        spark_step, target = QUERY_TARGETS[step]
        run = steps[spark_step]["runs"][-1]["spark"]
        write_s = run.get("sql_seconds_by_target", {}).get(target)
        out["steps"][step] = {
            "spark_process_s": steps[spark_step]["seconds"], "duckdb_query_s": query_s.get(step),
            "process_over_duckdb_query": round(steps[spark_step]["seconds"] / query_s[step], 2) if query_s.get(step) else None,
            "spark_write_s": write_s,
            "query_over_query": round(write_s / query_s[step], 2) if write_s and query_s.get(step) else None,
        }
    out["steps"]["history"] = {"spark_build_samples_process_s": steps["build_samples"]["seconds"],
                               "duckdb_query_s": query_s.get("history"),
                               "note": "Spark builds five sample tables on the windows; DuckDB only the windows"}
    if "run_server" in steps:  # its process tree holds the clients; the server's CPU is in its parts
        out["run_server_etl_s"] = steps["run_server"]["seconds"]
        out["run_server_etl_over_duckdb_process"] = round(steps["run_server"]["seconds"] / duck["seconds"], 2)
    out["note"] = ("the DuckDB process runs validate's behaviour-event checks, sessionize's gap sessions and the "
                   "history windows; the Spark processes run the whole ETL (every table)")
    return out


def _summary(step: str, res: dict):
    doc = res.get("stdout_json") or {}
    if step == "validate":
        return {t: {k: v[k] for k in ("rows_in", "rows_out", "rows_quarantined")}
                for t, v in (doc.get("validate") or {}).items()}
    return doc.get("sessionize") or doc.get("samples")


def machine_info() -> dict:
    # lazy: this file is also the measured --duckdb-sessionize child; pyspark would add ~16 MB to its RSS
    import pyspark

    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        java = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_model": _cpu_model(),
        "memory_total_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "memory_available_gb_at_start": round(psutil.virtual_memory().available / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pyspark": pyspark.__version__,
        "duckdb": duckdb.__version__,
        "java": java,
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--days", type=int, default=1, help="days generated; total events ~ size")
    parser.add_argument("--keep", action="store_true", help="keep the data roots and logs")
    parser.add_argument("--events-per-user-day", type=float, default=200.0)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default=None,
                        help="spark driver memory (default: config's for < 5M events, else 6g)")
    parser.add_argument("--gap-minutes", type=int, default=30, help="must match sessionize.gap_minutes")
    parser.add_argument("--duckdb-threads", type=int, default=None, help="default: DuckDB's (all cores)")
    parser.add_argument("--step-timeout", type=float, default=3600.0)
    parser.add_argument("--poll-s", type=float, default=0.2)
    parser.add_argument("--no-event-log", action="store_true", help="do not write/parse Spark event logs")
    parser.add_argument("--work-dir", default=None, help="parent of the temporary data roots (default /tmp)")
    parser.add_argument("--history-len", type=int, default=20, help="must match samples.history_len")
    parser.add_argument("--run-server", action="store_true",
                        help="also run the three steps in one Spark Connect application started for the run "
                        "(behavior_etl's default, spark.application: run), its start counted")
    parser.add_argument("--duckdb-etl", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    parser.add_argument("--run-server-etl", nargs=3, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run_server_etl:
        print(json.dumps(run_server_etl(*args.run_server_etl)))
        return 0

    if args.duckdb_etl:
        root, out, gap, hist, *days = args.duckdb_etl
        print(json.dumps(duckdb_etl(root, out, days, int(gap), int(hist), args.duckdb_threads)))
        return 0

    env = {k: v for k, v in os.environ.items() if k != "SPARK_SUBMITTED" and not k.startswith("PIPELINE__")}
    env.update({
        "PIPELINE_PROFILE": "local",
        "PIPELINE__SPARK__MASTER": args.master,
        "PIPELINE__SESSIONIZE__GAP_MINUTES": str(args.gap_minutes),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    })
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    report: dict = {"bench": "etl", "started": dt.datetime.now().isoformat(timespec="seconds"),
                    "machine": machine_info(), "sizes": []}
    t0 = time.perf_counter()
    for size in args.events:
        work = Path(tempfile.mkdtemp(prefix=f"etl-bench-{size}-", dir=args.work_dir))
        try:
            result = bench_size(size, args, env, work)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        result["kept"] = bool(args.keep)
        report["sizes"].append(result)
        log(f"{size:,} events done in {result['total_s']} s" + (f" (FAILED at {result['failed_step']})"
                                                                 if "failed_step" in result else ""))
    report["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=1))
    return 0 if all("failed_step" not in s for s in report["sizes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
