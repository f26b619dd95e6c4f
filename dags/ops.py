"""Operational guards shared by the DAGs: retries, timeouts and the failure alert.

Every task gets ``default_args(...)``: a bounded ``execution_timeout`` (the task and its step's
process group are stopped when it runs out), retries with a delay, and
:func:`record_failure` as ``on_failure_callback``. Retries: a failure the step runner classes
as retryable (crash, lost worker, out of memory) is retried ``retries`` times; bad input, bad
config, a refused gate, a missing model and a missing Java fail at once (``AirflowFailException``).

Alerts: every final task failure, and every gate that refuses a model, appends one JSON line to
``<data_root>/alerts/alerts.jsonl``: ``{"kind", "dag_id", "task_id", "run_id", "ds", "try_number",
"log_path", "reason"}``. When ``ops.alert_command`` is set in the config, that shell command is
run with the same JSON on stdin (a Slack/PagerDuty/mail hook); its own failure is logged, never
raised, so an alerting outage cannot fail a pipeline task.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from airflow.configuration import conf
from airflow.sdk.exceptions import AirflowSkipException

from common.registry import day_outcomes, record_day_outcome
from dags.assets import TRAINING_DAGS
from dags.runner import settings

logger = logging.getLogger(__name__)

ALERTS_FILE = Path("alerts") / "alerts.jsonl"
ALERT_COMMAND_TIMEOUT_S = 30


def default_args(retries: int, timeout: dt.timedelta, retry_delay: dt.timedelta = dt.timedelta(minutes=2)) -> dict:
    """The ``default_args`` of a DAG: retries, their delay, the execution timeout, the alert."""
    return {"retries": retries, "retry_delay": retry_delay, "execution_timeout": timeout,
            "on_failure_callback": record_failure}


def alerts_path(data_root: str | Path) -> Path:
    return Path(data_root) / ALERTS_FILE


def record_alert(data_root: str | Path, alert: Mapping, command: str | None = None) -> Path:
    """Append ``alert`` to the alerts file under ``data_root``; pipe it to ``command`` when set."""
    path = alerts_path(data_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(dict(alert), sort_keys=True, default=str)
    with path.open("a") as fh:
        fh.write(line + "\n")
    if command:
        try:
            proc = subprocess.run(command, shell=True, input=line, text=True, capture_output=True,
                                  timeout=ALERT_COMMAND_TIMEOUT_S, check=False)
            if proc.returncode != 0:
                logger.error("alert command %r exited %s: %s", command, proc.returncode, proc.stderr.strip())
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.error("alert command %r failed: %s", command, exc)
    return path


def _alert_settings(params: Mapping) -> tuple[str, str | None]:
    """``(data_root, ops.alert_command)`` of the run (``dags.runner.settings``)."""
    cfg, root = settings(params)
    return root, ((cfg.get("ops") or {}).get("alert_command") or None)


def _log_path(ti) -> str | None:
    """The task attempt's log file under Airflow's ``base_log_folder`` (the default template)."""
    try:
        base = conf.get("logging", "base_log_folder")
    except Exception:  # noqa: BLE001 - the alert goes out without a log path rather than not at all
        return None
    map_part = f"map_index={ti.map_index}/" if getattr(ti, "map_index", -1) >= 0 else ""
    return str(Path(base) / f"dag_id={ti.dag_id}" / f"run_id={ti.run_id}" / f"task_id={ti.task_id}"
               / f"{map_part}attempt={ti.try_number}.log")


def record_failure(context: Mapping) -> None:
    """``on_failure_callback``: the failed task, its date, log and reason, into the alerts file."""
    ti = context.get("ti") or context.get("task_instance")
    params = context.get("params") or {}
    try:
        ds = params.get("ds") or ti.xcom_pull(task_ids="resolve_ds") or context.get("ds")
    except Exception:  # noqa: BLE001
        ds = params.get("ds") or context.get("ds")
    alert = {"kind": "task_failed", "dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id,
             "map_index": getattr(ti, "map_index", -1), "ds": ds, "try_number": ti.try_number,
             "log_path": _log_path(ti), "reason": f"{type(context.get('exception')).__name__}: "
                                                   f"{context.get('exception')}"}
    try:
        root, command = _alert_settings(params)
    except Exception as exc:  # noqa: BLE001 - a broken config is often the failure itself
        root, command = os.environ.get("PIPELINE__DATA_ROOT") or str(Path(__file__).resolve().parents[1] / "data"), None
        alert["config_error"] = str(exc)
    path = record_alert(root, alert, command)
    logger.error("alert recorded in %s: %s", path, alert)


def record_gate_refusal(params: Mapping, dag_id: str, task_id: str, run_id: str, ds: str, reason: str) -> None:
    """A refused gate is not a task failure (the previous version keeps serving), but an operator
    should hear of it: the same alerts file, ``kind = gate_refused``."""
    root, command = _alert_settings(params)
    record_alert(root, {"kind": "gate_refused", "dag_id": dag_id, "task_id": task_id, "run_id": run_id, "ds": ds,
                        "reason": reason}, command)


def announce_day(params: Mapping, day: str, producer: str, outcome: Mapping, outlet_events, asset) -> dict:
    """The last task of a training DAG: record its outcome for ``day`` and, when it is the last of
    ``TRAINING_DAGS`` to finish the day, emit ``asset`` (``models.ready``) with the day's outcomes;
    otherwise skip (no event), leaving the announcement to the DAG still training."""
    root, _command = _alert_settings(params)
    if not record_day_outcome(root, day, producer, dict(outcome), TRAINING_DAGS):
        missing = [d for d in TRAINING_DAGS if d not in day_outcomes(root, day)]
        raise AirflowSkipException(f"{day}: {producer} recorded; waiting for {missing} to announce the day")
    extra = {"ds": day, "path": str(Path(root) / "models"), "outcomes": day_outcomes(root, day)}
    outlet_events[asset].extra = extra
    return extra
