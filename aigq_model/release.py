"""Release steps of the ``aigq_training`` DAG: the gates of a policy and its registration.

Nothing here imports torch: these run inside Airflow tasks, around the subprocesses that train
and evaluate. Two gates, both reading the ``metrics.json`` that :mod:`aigq_model.run_eval`
writes into a version folder:

- :func:`sft_gate` (an IL-SFT policy ``aigq_<kind>``): the candidate's gate metric (Query HR@30
  by default) must be >= the popularity baseline's minus a tolerance and >= the registered
  version's minus a tolerance.
- :func:`policy_gate` (a policy update ``aigq_<kind>_grpo``): the candidate's metric must be >=
  the policy it started from, scored on the same samples (``sft_reference_metrics.json``), minus
  a tolerance.

:func:`register_policy` and :func:`register_update` apply them with the tolerances of the
config (``aigq.gate``) unless a run overrides them, and move ``CURRENT`` through
:func:`common.registry.register`, which records the verdict either way
(``models/<name>/decisions/<version>.json``); a refusal raises
:class:`common.registry.GateRejected` and leaves the previous version serving.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path

from common.registry import model_dir, register

METRICS_FILE = "metrics.json"
REFERENCE_METRICS_FILE = "sft_reference_metrics.json"
DEFAULT_GATE = {"metric": "query_hr@30", "popularity_tolerance": 0.02, "regression_tolerance": 0.02,
                "grpo_tolerance": 0.02}


def model_name(kind: str, mode: str) -> str:
    """Registry name of a policy update: ``aigq_<kind>_grpo`` (IL-GRPO) or ``aigq_<kind>_seqgrpo``
    (plain GRPO); :mod:`aigq_model.train_grpo` writes it, the DAG's tasks look it up."""
    return f"aigq_{kind}_{'grpo' if mode == 'il' else 'seqgrpo'}"


def read_metrics(model_dir: str | Path) -> dict:
    file = Path(model_dir) / METRICS_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def _metric(metrics: Mapping, method: str | None, metric: str) -> float | None:
    method = method or metrics.get("model")
    v = metrics.get("results", {}).get(method, {}).get("all", {}).get(metric)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def sft_gate(
    root: str | Path,
    metric: str = "query_hr@30",
    popularity_tolerance: float = 0.02,
    regression_tolerance: float = 0.02,
    area: str = "models",
) -> Callable[[dict, dict | None], list[str]]:
    """A ``common.registry.register`` gate: the candidate's ``metric`` (from its ``metrics.json``)
    must be >= the popularity baseline's minus ``popularity_tolerance`` and >= the current
    version's minus ``regression_tolerance``. Returns the list of failures."""

    def gate(candidate: dict, current: dict | None) -> list[str]:
        cand = read_metrics(model_dir(root, candidate["name"], candidate["version"], area))
        value, pop = _metric(cand, None, metric), _metric(cand, "popularity", metric)
        if value is None:
            return [f"candidate has no {metric} (run aigq_model.run_eval first)"]
        failures = []
        if pop is not None and value < pop - popularity_tolerance:
            failures.append(f"{metric} {value:.4f} < popularity {pop:.4f} - {popularity_tolerance}")
        if current is not None:
            old = _metric(
                read_metrics(model_dir(root, current["name"], current["version"], area)), None, metric
            )
            if old is not None and value < old - regression_tolerance:
                failures.append(
                    f"{metric} {value:.4f} < current {current['version']} {old:.4f} - {regression_tolerance}"
                )
        return failures

    return gate


def policy_gate(
    reference_metrics: str | Path, metric: str = "query_hr@30", tolerance: float = 0.02, area: str = "models"
) -> Callable[[dict, dict | None], list[str]]:
    """A ``register`` gate for a policy update (IL-GRPO): the candidate's ``metric`` must be >=
    the reference policy's (the SFT policy scored on the same samples, ``reference_metrics``)
    minus ``tolerance``. Returns the list of failures."""

    def gate(candidate: dict, current: dict | None) -> list[str]:
        root = Path(reference_metrics).resolve().parents[3]  # <root>/models/<name>/<version>/<file>
        cand = read_metrics(model_dir(root, candidate["name"], candidate["version"], area))
        ref_file = Path(reference_metrics)
        ref = json.loads(ref_file.read_text()) if ref_file.is_file() else {}
        value, base = _metric(cand, None, metric), _metric(ref, None, metric)
        if value is None:
            return [f"candidate has no {metric} (run aigq_model.run_eval first)"]
        if base is None:
            return [f"reference policy metrics {ref_file} have no {metric}"]
        if value < base - tolerance:
            return [f"{metric} {value:.4f} < SFT policy {base:.4f} - {tolerance}"]
        return []

    return gate


def gate_settings(cfg: Mapping, **overrides: float | None) -> dict:
    """``aigq.gate`` of the config over :data:`DEFAULT_GATE`; an override that is not None (or
    negative, the DAG Params' "use the config" value) replaces the configured figure.

    >>> gate_settings({"aigq": {"gate": {"popularity_tolerance": 0.05}}}, regression_tolerance=-1.0)["popularity_tolerance"]
    0.05
    >>> gate_settings({}, grpo_tolerance=0.1)["grpo_tolerance"]
    0.1
    """
    settings = {**DEFAULT_GATE, **dict((cfg.get("aigq") or {}).get("gate") or {})}
    for key, value in overrides.items():
        if value is not None and value >= 0:
            settings[key] = float(value)
    return settings


def _version_of(metrics_path: str | Path) -> tuple[Path, str, str]:
    """``(root, name, version)`` of ``<root>/models/<name>/<version>/metrics.json``."""
    version_dir = Path(metrics_path).resolve().parent
    return version_dir.parents[2], version_dir.parent.name, version_dir.name


def register_policy(metrics_path: str | Path, cfg: Mapping, popularity_tolerance: float | None = None,
                    regression_tolerance: float | None = None) -> Path:
    """Register the IL-SFT version whose metrics are ``metrics_path`` through :func:`sft_gate`;
    returns its folder. Raises ``GateRejected`` when refused."""
    root, name, version = _version_of(metrics_path)
    settings = gate_settings(cfg, popularity_tolerance=popularity_tolerance,
                             regression_tolerance=regression_tolerance)
    gate = sft_gate(root, metric=settings["metric"], popularity_tolerance=settings["popularity_tolerance"],
                    regression_tolerance=settings["regression_tolerance"])
    register(root, name, version, gate=gate)
    return model_dir(root, name, version)


def register_update(metrics_path: str | Path, cfg: Mapping, tolerance: float | None = None) -> Path:
    """Register the policy update whose metrics are ``metrics_path`` through :func:`policy_gate`
    against the reference scored beside it; returns its folder. Raises ``GateRejected`` when refused."""
    root, name, version = _version_of(metrics_path)
    settings = gate_settings(cfg, grpo_tolerance=tolerance)
    gate = policy_gate(model_dir(root, name, version) / REFERENCE_METRICS_FILE, metric=settings["metric"],
                       tolerance=settings["grpo_tolerance"])
    register(root, name, version, gate=gate)
    return model_dir(root, name, version)
