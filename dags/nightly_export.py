"""
### nightly_export

What search serving reads every morning, for the logical date `ds` (`export/`):

- `u2q`: AIGQ-Direct query lists of every user active in the window (registered
  `aigq_direct_grpo`, else `aigq_direct`; cold-start users get the popularity list); the table
  keeps each user's most recent `export.u2q_keep_runs` runs.
- `x2q`: AIGQ-Think trigger → ranked queries (`S = α·S_rel + (1−α)·S_eff`); **skipped** when no
  Think policy is registered (`aigq_think_grpo` / `aigq_think`).
- `u2i`: KARMA top-K items per active user from the registered model's faiss index (history
  items filtered), published together with `user_interest_embedding`.
- `report`: the analyst report `reports/ds=<ds>/index.html` (`export.report`), after the three
  exports whatever their outcome.
- `watcher`: fails the run when any task failed (it runs only then), since `report` (all_done)
  is last and would otherwise let a run with a failed export end as a success.

Each task runs `python -m export.<table>` as a subprocess (no torch in the scheduler), which
generates in batches, runs the validation gates on the staged files and publishes
`exports/<table>/ds=<ds>/` atomically (`_SUCCESS` + `_manifest.json` with model versions,
counts, gate results, run id). A failed gate or a missing/corrupt model or index publishes
nothing and fails the task without retrying; other failures retry once. Reruns of a ds
replace its partitions (same content: greedy decoding, fixed seeds); XCom carries paths only.

**Shards** (u2q and u2i): `export_shards` computes the shard list from the `shards` Param
(0 = `runtime.export_shards`, env `PIPELINE__RUNTIME__EXPORT_SHARDS`, default 1); `u2q` and
`u2i` are mapped over it (`.expand`, one task instance per shard; a user belongs to shard
`crc32(user_id) mod N`). Each runs `python -m export.<table> --shard i --num-shards N
--stage-only`, which writes its part to `exports/_staging/<table>/ds=<ds>/<run>/part-<i>-of-<N>/`
(temp folder + rename: a killed shard leaves no visible part; a retry replaces it). A failed
shard is retried alone (retries count per map index); if it still fails, `publish_<table>`
(default trigger rule) does not run and nothing of that table is published for the ds — the
partition published before stays as it was. `publish_u2q` / `publish_u2i` (`--publish-parts
--num-shards N`) need exactly N complete parts of this run, merge them, carry u2q's earlier
runs, run the same gates as an unsharded run on the whole table, publish atomically and remove
the run's staging folder. With any N the rows (and manifest `content_hash`) are those of an
unsharded run.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path

from airflow.sdk import Param, dag, task

REPO_ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger(__name__)

#: export.publish.EXIT_GATE / EXIT_INPUT, and argparse's 2 (not imported: parsing stays light).
NO_RETRY_EXITS = {2: "bad arguments", 3: "validation gate failed", 4: "model, index or input missing or corrupt"}
MAX_SHARDS = 1024

PARAMS = {
    "config": Param("", type="string", description="config file; empty = conf/pipeline.yaml"),
    "profile": Param("", type="string", description="config profile; empty = PIPELINE_PROFILE or local"),
    "data_root": Param("", type="string", description="data root; empty = the profile's"),
    "batch_users": Param(0, type="integer", minimum=0, maximum=10_000_000,
                         description="users per generation/retrieval batch; 0 = export.batch_users"),
    "min_coverage": Param(-1.0, type="number", minimum=-1.0, maximum=1.0,
                          description="gate: share of active users with a list; -1 = export.min_coverage"),
    "max_new_tokens": Param(0, type="integer", minimum=0, maximum=4096,
                            description="AIGQ decoding budget; 0 = aigq.generate.max_new_tokens"),
    "omp_threads": Param(1, type="integer", minimum=1, maximum=256, description="OMP_NUM_THREADS of each step"),
    "shards": Param(0, type="integer", minimum=0, maximum=MAX_SHARDS,
                    description="u2q / u2i shards (mapped task instances); 0 = runtime.export_shards"),
}


def _args(params: dict, ds: str, run_id: str, table: str) -> list[str]:
    args = ["--ds", ds, "--run-id", run_id]
    for name in ("config", "profile", "data_root"):
        if params.get(name):
            args += [f"--{name.replace('_', '-')}", str(params[name])]
    if params.get("batch_users"):
        args += ["--batch-users", str(params["batch_users"])]
    if table != "x2q" and params.get("min_coverage", -1.0) >= 0:
        args += ["--min-coverage", str(params["min_coverage"])]
    if table in ("u2q", "x2q") and params.get("max_new_tokens"):
        args += ["--max-new-tokens", str(params["max_new_tokens"])]
    return args


def shard_count(params: dict) -> int:
    """The ``shards`` Param, else ``runtime.export_shards`` of the run's config (>= 1)."""
    n = int(params.get("shards") or 0)
    if n == 0:
        from common.config import load_config

        cfg = load_config(params.get("config") or None, params.get("profile") or None)
        n = int((cfg.get("runtime") or {}).get("export_shards") or 1)
    if not 1 <= n <= MAX_SHARDS:
        raise ValueError(f"export shards must be in [1, {MAX_SHARDS}], got {n}")
    return n


def _run_export(table: str, params: dict, ds: str, run_id: str, extra: list[str] | tuple = ()) -> dict:
    """``python -m export.<table> … *extra`` with the step environment; its output goes to the task
    log; returns its last JSON line. Gate and model failures raise ``AirflowFailException`` (no retry)."""
    import json
    import subprocess

    from airflow.sdk.exceptions import AirflowFailException

    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(params.get("omp_threads") or 1),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "-m", f"export.{table}", *_args(params, ds, run_id, table), *extra]
    logger.info("running %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    last = None
    for line in proc.stdout:
        line = line.rstrip("\n")
        logger.info("%s", line)
        if line.startswith("{"):
            try:
                last = json.loads(line)
            except json.JSONDecodeError:
                pass
    code = proc.wait()
    if code in NO_RETRY_EXITS:
        raise AirflowFailException(f"export.{table}: {NO_RETRY_EXITS[code]} (exit {code}): {last}")
    if code != 0:
        raise RuntimeError(f"export.{table} exited with status {code}")
    if last is None:
        raise RuntimeError(f"export.{table} printed no JSON result line")
    return last


@dag(
    dag_id="nightly_export",
    schedule="@daily",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["export", "serving", "nightly"],
    default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=5)},
    doc_md=__doc__,
)
def nightly_export():
    @task
    def export_shards(params=None) -> list[dict]:
        """The shard list ``[{"shard": i, "num_shards": N}, …]`` the u2q / u2i tasks are mapped over."""
        n = shard_count(params)
        logger.info("u2q / u2i in %d shard(s)", n)
        return [{"shard": i, "num_shards": n} for i in range(n)]

    def _stage(table: str, part: dict, params: dict, ds: str, run_id: str) -> dict:
        from airflow.sdk import get_current_context

        shard, n = int(part["shard"]), int(part["num_shards"])
        get_current_context()["shard_label"] = f"{table} shard {shard + 1} of {n}"
        return _run_export(table, params, ds, run_id, ["--shard", str(shard), "--num-shards", str(n), "--stage-only"])

    @task(map_index_template="{{ shard_label }}")
    def u2q(part: dict, params=None, ds=None, run_id=None) -> str:
        """One shard's AIGQ-Direct lists → its staging part; returns the part path."""
        return _stage("u2q", part, params, ds, run_id)["part"]

    @task
    def publish_u2q(parts: list[dict], params=None, ds=None, run_id=None) -> str:
        """The N parts → previous runs carried → gates → ``exports/u2q/ds=<ds>``; returns its path."""
        return _run_export("u2q", params, ds, run_id, ["--publish-parts", "--num-shards", str(len(parts))])["path"]

    @task
    def x2q(params=None, ds=None, run_id=None) -> str:
        """AIGQ-Think trigger → queries → gates → ``exports/x2q/ds=<ds>``; skipped without a Think policy."""
        from airflow.sdk.exceptions import AirflowSkipException

        result = _run_export("x2q", params, ds, run_id)
        if result.get("skipped"):
            raise AirflowSkipException(result.get("reason", "no Think policy registered"))
        return result["path"]

    @task(map_index_template="{{ shard_label }}")
    def u2i(part: dict, params=None, ds=None, run_id=None) -> str:
        """One shard's KARMA retrieval + embeddings → its staging part; returns the part path."""
        return _stage("u2i", part, params, ds, run_id)["part"]

    @task
    def publish_u2i(parts: list[dict], params=None, ds=None, run_id=None) -> dict:
        """The N parts → gates → ``exports/u2i`` and ``exports/user_interest_embedding`` together."""
        result = _run_export("u2i", params, ds, run_id, ["--publish-parts", "--num-shards", str(len(parts))])
        return {"u2i": result["path"], "user_interest_embedding": result["embedding_path"]}

    @task(trigger_rule="all_done")
    def report(params=None, ds=None) -> str:
        """The analyst report ``reports/ds=<ds>/index.html`` (ETL, quarantine, model metrics,
        ablations, export samples) — also after a skipped or failed export, which it shows."""
        import json
        import subprocess

        args = ["--ds", ds]
        for name in ("config", "profile", "data_root"):
            if params.get(name):
                args += [f"--{name.replace('_', '-')}", str(params[name])]
        env = {**os.environ, "OMP_NUM_THREADS": str(params.get("omp_threads") or 1),
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        proc = subprocess.run([sys.executable, "-m", "export.report", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, check=False)
        for line in (proc.stdout + proc.stderr).splitlines():
            logger.info("%s", line)
        if proc.returncode != 0:
            raise RuntimeError(f"export.report exited with status {proc.returncode}")
        return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])["path"]

    @task(trigger_rule="one_failed", retries=0)
    def watcher() -> None:
        """Fails the run when any task failed (skipped otherwise): ``report`` runs last whatever
        happened (all_done) and would make a run with a failed export look successful."""
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException("a nightly_export task failed (see the failed tasks); the tables whose "
                                   "publish did not run kept their earlier partitions")

    shards = export_shards()
    u2q_parts, u2i_parts = u2q.expand(part=shards), u2i.expand(part=shards)
    published_u2q, published_u2i = publish_u2q(shards), publish_u2i(shards)
    u2q_parts >> published_u2q
    u2i_parts >> published_u2i
    x2q_list = x2q()
    the_report = report()
    [published_u2q, x2q_list, published_u2i] >> the_report
    [shards, u2q_parts, u2i_parts, published_u2q, x2q_list, published_u2i, the_report] >> watcher()


nightly_export()
