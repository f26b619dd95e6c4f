"""
### karma_ranking

KARMA in ranking for one date `ds` (the day scored, T+1): a daily item-CTR model trained on the
result pages of the day before (T, `clean/item_impressions`) and scored on those of `ds`, with and
without KARMA features (`cos(e_u, e_i)` and `e_u`), over `karma_ranking.seeds`
(`python -m karma_model.ranking`). Metrics (AUC, log-loss, mean ± std over seeds, the AUC
difference with its bootstrap interval) go to `reports/karma_ranking/ds=<ds>/metrics.json`;
the analyst report shows them ("KARMA in ranking").

`resolve_ds` → `rank`, which is **skipped** with the reason in its log when T or `ds` has no
impressions (absent or empty partition: the public-dataset sources write none) or when no KARMA
version was registered before T (the model that scores both days must have seen neither; by
default the version serving on T-1, the `model_dir` Param names another).

**Schedule**: on `models.karma`, which `karma_training` emits once per date after its gate
decided, registered or not. By then the date's ETL is published (karma_training runs on its
samples), so `clean/item_impressions` of `ds` is there, and the ranking step does not compete with
that day's KARMA training for the CPUs. **Date**: the `ds` Param, else the event's `ds`, else the
logical date (`dags/runner.py: resolve_ds`).

**Why a DAG of its own** rather than a task of `karma_training`: it is an evaluation, not a step of
serving. Its failure must not fail the training run or hold back `models.ready` and the export,
and it reads a KARMA version older than the one that run trains. It is not among the DAGs `make
demo` unpauses: unpause it (`airflow dags unpause karma_ranking`) or trigger it with `{"ds": …}`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from dags import ops, runner
from dags.assets import KARMA_MODEL, KARMA_RANKING

PARAMS = {
    **runner.run_params("date scored (T+1); empty = the triggering asset events' ds, else the logical date"),
    "model_dir": Param("", type="string",
                       description="KARMA model folder; empty = the version registered as serving on T-1"),
    "omp_threads": Param(1, type="integer", minimum=1, maximum=256, description="OMP_NUM_THREADS of the step"),
}


def ranking_args(day: str, params: dict) -> list[str]:
    """The command line of ``karma_model.ranking`` for ``day``.

    >>> ranking_args("2026-11-03", {"data_root": "/d", "model_dir": ""})
    ['--ds', '2026-11-03', '--data-root', '/d']
    """
    args = ["--ds", day, *runner.common_args(params)]
    if params.get("model_dir"):
        args += ["--model-dir", str(params["model_dir"])]
    return args


@dag(
    dag_id="karma_ranking",
    schedule=KARMA_MODEL,
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["karma", "ranking", "evaluation"],
    default_args=ops.default_args(retries=1, timeout=dt.timedelta(hours=2)),
    doc_md=__doc__,
)
def karma_ranking():
    @task
    def resolve_ds(params=None, logical_date=None, triggering_asset_events=None) -> str:
        return runner.resolve_ds(params, logical_date, triggering_asset_events)

    @task(outlets=[KARMA_RANKING])
    def rank(day: str, params=None, outlet_events=None) -> dict:
        """Train on the day before ``day``, score ``day``; skipped (with the reason) without impressions."""
        result = runner.python_step("karma_model.ranking", ranking_args(day, params), params)
        if result.get("skipped"):
            raise AirflowSkipException(f"karma_ranking {day}: {result.get('reason')}")
        outlet_events[KARMA_RANKING].extra = {"ds": day, "path": result["metrics_path"]}
        return result

    rank(resolve_ds())


karma_ranking()
