"""Release steps of the ``karma_training`` DAG: the gate and registration (the base model a day
starts from is :func:`base_lm.release.ensure_base_model`'s).

Nothing here imports torch: these run inside Airflow tasks, around the subprocesses that train.

Registration copies (hard links when possible) the trained folder to ``<root>/models/karma/<version>``
with a manifest recording data dates, base model, config, headline metrics and the index folder,
then moves ``models/karma/CURRENT`` through :func:`karma_gate` (:func:`common.registry.register`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from base_lm.load import read_manifest as read_model_manifest
from common.registry import commit_version, register, stage_version

logger = logging.getLogger(__name__)

REGISTRY_NAME = "karma"
GATE_METRIC = "hr@200"
MIN_RATIO_TO_CURRENT = 0.9
FUSION_MARGIN = 0.005  # valid HR@200 the fused list must gain from KARMA


def karma_gate(candidate: Mapping, current: Mapping | None, metric: str = GATE_METRIC,
               min_ratio: float = MIN_RATIO_TO_CURRENT, fusion_margin: float = FUSION_MARGIN) -> list[str]:
    """Failures (empty = pass) of a candidate manifest against the registered one.

    Reads ``manifest["metrics"]`` (the flat summary of :mod:`karma_model.evaluate`). KARMA serves as
    one channel of the fused u2i list, so it registers only when the fused list *with* it beats the
    fused list *without* it on the valid split's ``metric`` by ``fusion_margin`` (both fitted on
    valid; the export serves the list without KARMA otherwise); and its own test ``metric`` must be
    >= ``min_ratio`` x the current version's.

    >>> karma_gate({"metrics": {"hr@200": 0.3, "fused_valid_hr@200": 0.40, "fused_without_valid_hr@200": 0.40}}, None)
    ['fused valid hr@200 with KARMA 0.4000 < without KARMA 0.4000 + margin 0.005']
    >>> good = {"metrics": {"hr@200": 0.5, "fused_valid_hr@200": 0.45, "fused_without_valid_hr@200": 0.40}}
    >>> karma_gate(good, {"version": "v", "metrics": {"hr@200": 0.6}})
    ['test hr@200 0.5000 < 0.9 x current v (0.6000)']
    >>> karma_gate(good, {"metrics": {"hr@200": 0.5}})
    []
    """
    metrics = candidate.get("metrics") or {}
    value = metrics.get(metric)
    with_karma = metrics.get(f"fused_valid_{metric}")
    without = metrics.get(f"fused_without_valid_{metric}")
    if value is None or with_karma is None or without is None:
        return [f"candidate metrics lack {metric}, fused_valid_{metric} or fused_without_valid_{metric} "
                "(evaluate with the popularity, cooccurrence and text baselines)"]
    failures = []
    if with_karma < without + fusion_margin:
        failures.append(f"fused valid {metric} with KARMA {with_karma:.4f} < without KARMA {without:.4f} "
                        f"+ margin {fusion_margin:g}")
    if current is not None:
        previous = (current.get("metrics") or {}).get(metric)
        if previous is None:
            logger.warning("current version %s has no %s; skipping the regression check", current.get("version"),
                           metric)
        elif value < min_ratio * previous:
            failures.append(f"test {metric} {value:.4f} < {min_ratio:g} x current {current.get('version')} "
                            f"({previous:.4f})")
    return failures


def gate_settings(cfg: Mapping, min_ratio: float | None = None) -> dict[str, float]:
    """``karma.gate`` of the config as :func:`register_karma`'s keyword arguments; a ``min_ratio``
    override that is not None (or negative, the DAG Param's "use the config" value) replaces the
    configured one.

    >>> gate_settings({"karma": {"gate": {"fusion_margin": 0.01, "min_ratio": 0.9}}}, min_ratio=-1.0)
    {'min_ratio': 0.9, 'fusion_margin': 0.01}
    >>> gate_settings({}, min_ratio=100.0)
    {'min_ratio': 100.0, 'fusion_margin': 0.005}
    """
    gate = (cfg.get("karma") or {}).get("gate") or {}
    unknown = set(gate) - {"min_ratio", "fusion_margin"}
    if unknown:
        raise ValueError(f"karma.gate: unknown keys {sorted(unknown)} (known: fusion_margin, min_ratio)")
    settings = {"min_ratio": float(gate.get("min_ratio", MIN_RATIO_TO_CURRENT)),
                "fusion_margin": float(gate.get("fusion_margin", FUSION_MARGIN))}
    if min_ratio is not None and min_ratio >= 0:
        settings["min_ratio"] = float(min_ratio)
    return settings


def _link_tree(src: Path, dst: Path) -> None:
    """Copy ``src`` into the existing ``dst`` with hard links (plain copies across devices)."""

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


def register_karma(data_root: str | Path, model_dir: str | Path, version: str, index_dir: str | Path | None = None,
                   metrics_path: str | Path | None = None, min_ratio: float = MIN_RATIO_TO_CURRENT,
                   name: str = REGISTRY_NAME, fusion_margin: float = FUSION_MARGIN) -> dict:
    """Stage ``model_dir`` as ``models/<name>/<version>`` and register it through the gate.

    Raises :class:`common.registry.GateRejected` when the gate refuses (the version stays on disk,
    ``CURRENT`` does not move). Returns the registered manifest.
    """
    model_dir = Path(model_dir)
    trained = read_model_manifest(model_dir)
    metrics_path = Path(metrics_path) if metrics_path else model_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    manifest = {
        "ds": trained.get("ds", version),
        "ds_range": trained.get("ds_range"),
        "variant": trained.get("variant"),
        "use_images": trained.get("use_images"),
        "base_model": trained.get("base_model"),
        "config": trained.get("config"),
        "code_version": trained.get("code_version"),
        "train_metrics": trained.get("metrics"),
        "metrics": metrics.get("summary", {}),
        "baseline_params": {k: v.get("params") for k, v in (metrics.get("baselines") or {}).items()},
        "fusion": {v: (metrics.get("fusion") or {}).get(v, {}).get("fit") for v in ("with", "without")},
        "report_dir": metrics.get("report_dir"),
        "source_model_dir": str(model_dir),
        "index_dir": str(index_dir) if index_dir else None,
    }
    tmp = stage_version(data_root, name, version)
    try:
        _link_tree(model_dir, tmp)
        for stale in ("_SUCCESS", "_manifest.json", "manifest.json"):
            (tmp / stale).unlink(missing_ok=True)
        commit_version(tmp, data_root, name, version, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    gate = functools.partial(karma_gate, min_ratio=min_ratio, fusion_margin=fusion_margin)
    return register(data_root, name, version, gate=gate)
