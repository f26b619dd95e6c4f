"""
### nightly_export

What search serving reads every morning, for one date `ds` (`export/`).

**Schedule**: on `models.ready`, which the training DAG that finishes a day last
(`karma_training` or `aigq_training`) emits once both have settled that day's models — whether
their gates registered the day's versions or refused them. **Date**: the `ds` Param, else the
`ds` of the triggering event, else the logical date (`dags/runner.py: resolve_ds`). **Rule for a refused gate**: the export still runs
that day with the versions registered before; every published manifest carries `serving`
(`{model name: {"version", "reason"}}`, e.g. `gate refused 2026-11-02: ...; serving 2026-11-01`)
and the report shows it. Each publishing task emits its `exports.<table>` Asset with
`{"ds", "path"}`; `report` emits `reports.report`.

- `u2q`: the query list of every user active in the window: the registered AIGQ-Direct policy's
  (`aigq_direct_grpo`, else `aigq_direct`; cold-start users get the popularity list) merged with
  the user's own searches, or, when no policy is registered (none beat the best heuristic), the
  best heuristic list (manifest `lists.mode`); the table keeps each user's most recent
  `export.u2q_keep_runs` runs.
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

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dags import ops, runner
from dags.assets import EXPORT_ASSETS, MODELS_READY, REPORT

logger = logging.getLogger(__name__)
MAX_SHARDS = 1024

PARAMS = {
    **runner.run_params("date to export; empty = the triggering asset events' ds, else the logical date"),
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
    args = ["--ds", ds, "--run-id", run_id, *runner.common_args(params)]
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
        cfg, _root = runner.settings(params)
        n = int((cfg.get("runtime") or {}).get("export_shards") or 1)
    if not 1 <= n <= MAX_SHARDS:
        raise ValueError(f"export shards must be in [1, {MAX_SHARDS}], got {n}")
    return n


def run_export(table: str, params: dict, ds: str, run_id: str, extra: list[str] | tuple = ()) -> dict:
    """``export.<table> … *extra`` through the step runner; gate and model failures fail the task
    without retry (exit 3 / 4)."""
    return runner.python_step(f"export.{table}", [*_args(params, ds, run_id, table), *extra], params)


def _emit(outlet_events, table: str, ds: str, path: str | None) -> None:
    """The Asset event's extra; ``path`` None: nothing was published for ``ds`` (the embeddings of a
    day with no KARMA version ever registered), ``"published": false`` says so to consumers."""
    outlet_events[EXPORT_ASSETS[table]].extra = {"ds": ds, "path": path, "published": path is not None}


@dag(
    dag_id="nightly_export",
    schedule=MODELS_READY,
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["export", "serving", "nightly"],
    default_args=ops.default_args(retries=1, timeout=dt.timedelta(hours=4), retry_delay=dt.timedelta(minutes=5)),
    doc_md=__doc__,
)
def nightly_export():
    @task
    def resolve_ds(params=None, logical_date=None, triggering_asset_events=None) -> str:
        return runner.resolve_ds(params, logical_date, triggering_asset_events)

    @task
    def export_shards(params=None) -> list[dict]:
        """The shard list ``[{"shard": i, "num_shards": N}, …]`` the u2q / u2i tasks are mapped over."""
        n = shard_count(params)
        logger.info("u2q / u2i in %d shard(s)", n)
        return [{"shard": i, "num_shards": n} for i in range(n)]

    def _stage(table: str, part: dict, params: dict, ds: str, run_id: str) -> dict:
        shard, n = int(part["shard"]), int(part["num_shards"])
        get_current_context()["shard_label"] = f"{table} shard {shard + 1} of {n}"
        return run_export(table, params, ds, run_id, ["--shard", str(shard), "--num-shards", str(n), "--stage-only"])

    @task(map_index_template="{{ shard_label }}")
    def u2q(part: dict, day: str, params=None, run_id=None) -> str:
        """One shard's AIGQ-Direct lists → its staging part; returns the part path."""
        return _stage("u2q", part, params, day, run_id)["part"]

    @task(outlets=[EXPORT_ASSETS["u2q"]])
    def publish_u2q(parts: list[dict], day: str, params=None, run_id=None, outlet_events=None) -> str:
        """The N parts → previous runs carried → gates → ``exports/u2q/ds=<ds>``; returns its path."""
        path = run_export("u2q", params, day, run_id, ["--publish-parts", "--num-shards", str(len(parts))])["path"]
        _emit(outlet_events, "u2q", day, path)
        return path

    @task(outlets=[EXPORT_ASSETS["x2q"]])
    def x2q(day: str, params=None, run_id=None, outlet_events=None) -> str:
        """AIGQ-Think trigger → queries → gates → ``exports/x2q/ds=<ds>``; skipped without a Think policy."""
        result = run_export("x2q", params, day, run_id)
        if result.get("skipped"):
            raise AirflowSkipException(result.get("reason", "no Think policy registered"))
        _emit(outlet_events, "x2q", day, result["path"])
        return result["path"]

    @task(map_index_template="{{ shard_label }}")
    def u2i(part: dict, day: str, params=None, run_id=None) -> str:
        """One shard's KARMA retrieval + embeddings → its staging part; returns the part path."""
        return _stage("u2i", part, params, day, run_id)["part"]

    @task(outlets=[EXPORT_ASSETS["u2i"], EXPORT_ASSETS["user_interest_embedding"]])
    def publish_u2i(parts: list[dict], day: str, params=None, run_id=None, outlet_events=None) -> dict:
        """The N parts → gates → ``exports/u2i`` and ``exports/user_interest_embedding`` together."""
        result = run_export("u2i", params, day, run_id, ["--publish-parts", "--num-shards", str(len(parts))])
        _emit(outlet_events, "u2i", day, result["path"])
        _emit(outlet_events, "user_interest_embedding", day, result["embedding_path"])
        return {"u2i": result["path"], "user_interest_embedding": result["embedding_path"]}

    @task(trigger_rule="all_done", outlets=[REPORT])
    def report(day: str, params=None, outlet_events=None) -> str:
        """The analyst report ``reports/ds=<ds>/index.html`` (ETL, quarantine, model metrics, which
        versions served and why, export samples) — also after a skipped or failed export."""
        path = runner.python_step("export.report", ["--ds", day, *runner.common_args(params)], params)["path"]
        outlet_events[REPORT].extra = {"ds": day, "path": path}
        return path

    @task(trigger_rule="one_failed", retries=0)
    def watcher() -> None:
        """Fails the run when any task failed (skipped otherwise): ``report`` runs last whatever
        happened (all_done) and would make a run with a failed export look successful."""
        raise AirflowFailException("a nightly_export task failed (see the failed tasks); the tables whose "
                                   "publish did not run kept their earlier partitions")

    day = resolve_ds()
    shards = export_shards()
    u2q_parts = u2q.partial(day=day).expand(part=shards)
    u2i_parts = u2i.partial(day=day).expand(part=shards)
    published_u2q, published_u2i = publish_u2q(shards, day), publish_u2i(shards, day)
    u2q_parts >> published_u2q
    u2i_parts >> published_u2i
    x2q_list = x2q(day)
    the_report = report(day)
    [published_u2q, x2q_list, published_u2i] >> the_report
    [day, shards, u2q_parts, u2i_parts, published_u2q, x2q_list, published_u2i, the_report] >> watcher()


nightly_export()
