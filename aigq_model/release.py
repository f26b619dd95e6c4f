"""Release steps of the ``aigq_training`` DAG: the gates of a policy and its registration.

Nothing here imports torch: these run inside Airflow tasks, around the subprocesses that train
and evaluate. Two gates, both reading the ``metrics.json`` that :mod:`aigq_model.run_eval`
writes into a version folder:

- :func:`sft_gate` (an IL-SFT policy ``aigq_<kind>``): the gate metric (Query HR@10 by default:
  u2q exports 10 queries) of the list the export would serve (``hybrid``: the policy's queries
  merged with the user's own searches, :mod:`aigq_model.hybrid`) must be >= the *best* heuristic
  list's (popularity, co-occurrence, EBR, own history + popularity, and ``heuristic_merge``, the
  same merge without the policy: whichever scored highest on the same samples) plus a margin,
  and >= the registered version's minus a tolerance.
- :func:`policy_gate` (a policy update ``aigq_<kind>_grpo``): the same heuristic check, and the
  candidate's metric must beat the policy it started from (``start_reference_metrics.json``) by
  more than ``aigq.gate.grpo_margin`` (0: strictly better), both scored on the same held-out
  samples: ones the update did not train on (``aigq.eval.update_split``, the test part of the
  day; never its own training prompts). A registered update therefore improved.

A refused policy is not served: with no registered policy, ``export.u2q`` serves the best
heuristic list and says so in its manifest (``mode: heuristic``).

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

from common.paths import previous_ds
from common.registry import model_dir, register

METRICS_FILE = "metrics.json"
REFERENCE_METRICS_FILE = "start_reference_metrics.json"
DEFAULT_GATE = {"metric": "query_hr@10", "heuristic_margin": 0.01, "regression_tolerance": 0.02,
                "grpo_margin": 0.0}
# what both evaluations of an update must share to count as "the same samples" (aigq_model.run_eval)
SAME_SAMPLES = ("ds", "split", "samples", "sample_days", "min_history_queries", "max_samples")
EXPORTED = "hybrid"  # the method of metrics.json that scores the exported list (aigq_model.run_eval)


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


def exported_metric(metrics: Mapping, metric: str) -> float | None:
    """The exported (hybrid) list's ``metric``; the policy's own for metrics written before the
    hybrid list existed."""
    value = _metric(metrics, EXPORTED, metric)
    return value if value is not None else _metric(metrics, None, metric)


def best_heuristic(metrics: Mapping, metric: str) -> tuple[str, float] | None:
    """``(name, value)`` of the heuristic with the highest ``metric`` in ``metrics`` (None when
    none was scored); on a tie a single baseline before ``heuristic_merge``, then by name.

    >>> best_heuristic({"model": "m", "results": {"m": {"all": {"q": 0.5}}, "hybrid": {"all": {"q": 0.6}},
    ...     "popularity": {"all": {"q": 0.3}}, "cooccurrence": {"all": {"q": 0.4}}}}, "q")
    ('cooccurrence', 0.4)
    """
    skip = {metrics.get("model"), EXPORTED}
    scored = [(name, _metric(metrics, name, metric)) for name in metrics.get("results", {}) if name not in skip]
    scored = [(n, v) for n, v in scored if v is not None]
    return max(scored, key=lambda nv: (nv[1], nv[0] != "heuristic_merge", nv[0])) if scored else None


def heuristic_check(metrics: Mapping, metric: str, margin: float) -> list[str]:
    """The exported list's ``metric`` must be >= the best heuristic's + ``margin``; failures.

    >>> m = {"model": "m", "results": {"hybrid": {"all": {"q": 0.40}}, "popularity": {"all": {"q": 0.30}},
    ...      "own_history+popularity": {"all": {"q": 0.395}}}}
    >>> heuristic_check(m, "q", 0.01)
    ['exported list q 0.4000 < best heuristic own_history+popularity 0.3950 + margin 0.01']
    >>> heuristic_check(m, "q", 0.0)
    []
    """
    value = exported_metric(metrics, metric)
    if value is None:
        return [f"candidate has no {metric} (run aigq_model.run_eval first)"]
    best = best_heuristic(metrics, metric)
    if best is None:
        return [f"candidate was scored without heuristic baselines (aigq.eval.baselines): nothing to beat on {metric}"]
    if value < best[1] + margin:
        return [f"exported list {metric} {value:.4f} < best heuristic {best[0]} {best[1]:.4f} + margin {margin}"]
    return []


def sft_gate(
    root: str | Path,
    metric: str = "query_hr@10",
    heuristic_margin: float = 0.01,
    regression_tolerance: float = 0.02,
    area: str = "models",
) -> Callable[[dict, dict | None], list[str]]:
    """A ``common.registry.register`` gate: the exported list's ``metric`` (from the candidate's
    ``metrics.json``) must be >= the best heuristic's + ``heuristic_margin`` and >= the current
    version's minus ``regression_tolerance``. Returns the list of failures."""

    def gate(candidate: dict, current: dict | None) -> list[str]:
        cand = read_metrics(model_dir(root, candidate["name"], candidate["version"], area))
        value = exported_metric(cand, metric)
        if value is None:
            return [f"candidate has no {metric} (run aigq_model.run_eval first)"]
        failures = heuristic_check(cand, metric, heuristic_margin)
        if current is not None:
            old = exported_metric(read_metrics(model_dir(root, current["name"], current["version"], area)), metric)
            if old is not None and value < old - regression_tolerance:
                failures.append(
                    f"{metric} {value:.4f} < current {current['version']} {old:.4f} - {regression_tolerance}"
                )
        return failures

    return gate


def evaluated_days(metrics: Mapping) -> list[str]:
    """The days whose samples ``metrics`` (a run_eval ``metrics.json``) scored: ``sample_days``
    days ending at ``ds``.

    >>> evaluated_days({"ds": "2026-11-03", "sample_days": 2})
    ['2026-11-02', '2026-11-03']
    """
    ds, n = metrics.get("ds"), int(metrics.get("sample_days") or 1)
    return [*previous_ds(ds, n - 1), ds] if ds and n > 1 else ([ds] if ds else [])


def held_out_check(metrics: Mapping, manifest: Mapping) -> list[str]:
    """An update must be scored on samples it did not train on: it trains on the ``train`` rows
    of its manifest's ``sample_days`` (:mod:`aigq_model.train_grpo`), so a ``train`` or ``all``
    split of any of those days is refused. Failures.

    >>> held_out_check({"ds": "2026-11-03", "split": "all"}, {"sample_days": ["2026-11-03"]})
    ["scored on split all of 2026-11-03, which holds the update's own training prompts (2026-11-03)"]
    >>> held_out_check({"ds": "2026-11-03", "split": "test"}, {"sample_days": ["2026-11-03"]})
    []
    """
    if metrics.get("split") not in ("train", "all"):
        return []
    trained = sorted(set(evaluated_days(metrics)) & set(manifest.get("sample_days") or [manifest.get("ds")]))
    if not trained:
        return []
    return [f"scored on split {metrics['split']} of {', '.join(evaluated_days(metrics))}, which holds the "
            f"update's own training prompts ({', '.join(trained)})"]


def improvement_check(cand: Mapping, ref: Mapping, metric: str, margin: float, ref_name: str = "its start policy"
                      ) -> list[str]:
    """The candidate's own ``metric`` must beat the reference's by more than ``margin`` (0:
    strictly better; a negative margin lets a worse one through, for tests only), both scored on
    the same samples (:data:`SAME_SAMPLES`). Failures.

    >>> c = {"ds": "d", "split": "test", "model": "u", "results": {"u": {"all": {"q": 0.32, "n_users": 40.0}}}}
    >>> r = {**c, "model": "s", "results": {"s": {"all": {"q": 0.32, "n_users": 40.0}}}}
    >>> improvement_check(c, r, "q", 0.0)
    ['q 0.3200 does not beat its start policy 0.3200 by more than margin 0.0 (difference +0.0000, 40 samples)']
    >>> improvement_check(c, r, "q", -0.01)
    []
    """
    value, base = _metric(cand, None, metric), _metric(ref, None, metric)
    if value is None:
        return [f"candidate has no {metric} (run aigq_model.run_eval first)"]
    if base is None:
        return [f"{ref_name} was not scored on {metric}"]
    differ = [k for k in SAME_SAMPLES if cand.get(k) != ref.get(k)]
    n_cand, n_ref = (_metric(m, None, "n_users") for m in (cand, ref))
    if n_cand != n_ref:
        differ.append("n_users")
    if differ:
        return [f"candidate and {ref_name} were not scored on the same samples (differ in {', '.join(differ)})"]
    if not value - base > margin + 1e-12:
        return [f"{metric} {value:.4f} does not beat {ref_name} {base:.4f} by more than margin {margin} "
                f"(difference {value - base:+.4f}, {n_cand:.0f} samples)"]
    return []


def policy_gate(
    reference_metrics: str | Path, metric: str = "query_hr@10", margin: float = 0.0, area: str = "models",
    heuristic_margin: float = 0.01,
) -> Callable[[dict, dict | None], list[str]]:
    """A ``register`` gate for a policy update (IL-GRPO): scored on held-out samples
    (:func:`held_out_check`), the candidate's ``metric`` must beat the policy it started from
    (``reference_metrics``, scored on the same samples) by more than ``margin``
    (:func:`improvement_check`), and its exported list must pass :func:`heuristic_check`.
    Returns the list of failures."""

    def gate(candidate: dict, current: dict | None) -> list[str]:
        root = Path(reference_metrics).resolve().parents[3]  # <root>/models/<name>/<version>/<file>
        cand = read_metrics(model_dir(root, candidate["name"], candidate["version"], area))
        ref_file = Path(reference_metrics)
        ref = json.loads(ref_file.read_text()) if ref_file.is_file() else {}
        if not cand:
            return [f"candidate has no {METRICS_FILE} (run aigq_model.run_eval first)"]
        if not ref:
            return [f"no reference metrics {ref_file}: the start policy was not scored beside the update"]
        if cand.get("n_samples") == 0:
            return [f"no held-out samples to score the update on ({cand.get('split')} of "
                    f"{', '.join(evaluated_days(cand))}): nothing shows it improved"]
        failures = held_out_check(cand, candidate)
        failures += improvement_check(cand, ref, metric, margin)
        if _metric(cand, None, metric) is not None:
            failures += heuristic_check(cand, metric, heuristic_margin)
        return failures

    return gate


def gate_settings(cfg: Mapping, **overrides: float | None) -> dict:
    """``aigq.gate`` of the config over :data:`DEFAULT_GATE`; an override that is not None replaces
    the configured figure, except a negative tolerance (the DAG Params' "use the config" value; a
    negative margin is a figure).

    >>> gate_settings({"aigq": {"gate": {"heuristic_margin": 0.05}}}, regression_tolerance=-1.0)["heuristic_margin"]
    0.05
    >>> gate_settings({}, grpo_margin=0.1)["grpo_margin"]
    0.1
    """
    settings = {**DEFAULT_GATE, **dict((cfg.get("aigq") or {}).get("gate") or {})}
    for key, value in overrides.items():
        if value is not None and (value >= 0 or key.endswith("_margin")):
            settings[key] = float(value)
    return settings


def _version_of(metrics_path: str | Path) -> tuple[Path, str, str]:
    """``(root, name, version)`` of ``<root>/models/<name>/<version>/metrics.json``."""
    version_dir = Path(metrics_path).resolve().parent
    return version_dir.parents[2], version_dir.parent.name, version_dir.name


def register_policy(metrics_path: str | Path, cfg: Mapping, heuristic_margin: float | None = None,
                    regression_tolerance: float | None = None) -> Path:
    """Register the IL-SFT version whose metrics are ``metrics_path`` through :func:`sft_gate`;
    returns its folder. Raises ``GateRejected`` when refused."""
    root, name, version = _version_of(metrics_path)
    settings = gate_settings(cfg, heuristic_margin=heuristic_margin, regression_tolerance=regression_tolerance)
    gate = sft_gate(root, metric=settings["metric"], heuristic_margin=settings["heuristic_margin"],
                    regression_tolerance=settings["regression_tolerance"])
    register(root, name, version, gate=gate)
    return model_dir(root, name, version)


def register_update(metrics_path: str | Path, cfg: Mapping, margin: float | None = None,
                    heuristic_margin: float | None = None) -> Path:
    """Register the policy update whose metrics are ``metrics_path`` through :func:`policy_gate`
    against the reference scored beside it; returns its folder. Raises ``GateRejected`` when refused."""
    root, name, version = _version_of(metrics_path)
    settings = gate_settings(cfg, grpo_margin=margin, heuristic_margin=heuristic_margin)
    gate = policy_gate(model_dir(root, name, version) / REFERENCE_METRICS_FILE, metric=settings["metric"],
                       margin=settings["grpo_margin"], heuristic_margin=settings["heuristic_margin"])
    register(root, name, version, gate=gate)
    return model_dir(root, name, version)
