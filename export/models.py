"""Registered models for the export: resolution with fallbacks, loading with clear errors,
decoding settings, the block-list and the popularity fallback list."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from aigq_model.baselines import PopularityBaseline
from aigq_model.generate import Decoding
from aigq_model.load import load_aigq
from aigq_model.parsing import Blocklist, postprocess
from aigq_model.trie import searched_queries
from common.device import resolve, use_bf16
from common.registry import RegistryError, model_dir, read_manifest, serving_version
from export.data import ExportInputError, anchor_time

logger = logging.getLogger(__name__)


@dataclass
class Registered:
    """A registered model version: which name of the preference list was used, and where."""

    name: str
    version: str
    path: Path
    manifest: dict
    preferred: str  # the first name of the preference list
    fallback_used: bool


def resolve_registered(root: str | Path, names: Sequence[str], ds: str | None = None) -> Registered | None:
    """The first of ``names`` with a registered version serving on ``ds``
    (:func:`common.registry.serving_version`: ``models/<name>/CURRENT``, or the newest version
    registered at or before ``ds`` when ``CURRENT`` is newer), or None when none is registered.
    A registered but broken version raises :class:`ExportInputError` (the export never silently
    falls back past a broken model)."""
    for name in names:
        try:
            version = serving_version(root, name, ds)
        except (json.JSONDecodeError, KeyError, OSError) as exc:
            raise ExportInputError(f"unreadable registry pointer {model_dir(root, name)}/CURRENT: {exc}") from exc
        if version is None:
            logger.info("no registered %s under %s", name, model_dir(root, name))
            continue
        try:
            path = model_dir(root, name, version)
            manifest = read_manifest(path)
        except RegistryError as exc:
            raise ExportInputError(f"registered {name} is broken: {exc}") from exc
        return Registered(name, version, path, manifest, names[0], name != names[0])
    return None


def require_registered(root: str | Path, names: Sequence[str], what: str, ds: str | None = None) -> Registered:
    found = resolve_registered(root, names, ds)
    if found is None:
        where = ", ".join(str(model_dir(root, n)) for n in names)
        raise ExportInputError(f"no registered {what}: none of {list(names)} has a CURRENT version ({where})")
    return found


def load_policy(reg: Registered):
    """``(model, tokenizer)`` of an AIGQ policy; :class:`ExportInputError` naming the path on failure."""
    try:
        device = resolve()  # runtime.device; bf16 weights on a GPU that supports them
        return load_aigq(reg.path, dtype=_bf16() if use_bf16() else None, device=device)
    except Exception as exc:  # corrupt weights, missing tokenizer, bad config ...
        raise ExportInputError(f"cannot load AIGQ policy {reg.name}/{reg.version} at {reg.path}: "
                               f"{type(exc).__name__}: {exc}") from exc


def _bf16():
    return torch.bfloat16


def policy_settings(reg: Registered) -> tuple[str, int]:
    """``(prompt style, max_history)`` the policy was trained with."""
    cfg = reg.manifest.get("config") or {}
    return reg.manifest.get("style", "compressed"), int(cfg.get("max_history", 20))


def decoding(cfg: Mapping, export_section: Mapping | None, max_new_tokens: int | None = None):
    """``(Decoding, batch_size)``: ``aigq.generate`` overridden by ``export.generate``; an explicit
    ``max_new_tokens`` (the DAG's Param) is the budget of Direct and Think outputs alike."""
    export_section = dict(export_section or {})
    if "max_new_tokens" in export_section:  # an export budget caps Think outputs too, unless set apart
        export_section.setdefault("max_new_tokens_think", export_section["max_new_tokens"])
    section = {**((cfg.get("aigq") or {}).get("generate") or {}), **export_section}
    if max_new_tokens:
        section["max_new_tokens"] = section["max_new_tokens_think"] = int(max_new_tokens)
    return Decoding.from_dict(section), int(section.get("batch_size", 16))


def known_queries(decoding, inputs, ds: str, root) -> list[str] | None:
    """The window's searched queries (``trie.searched_queries`` of the loaded events) when
    ``decoding.known_queries`` constrains generation to them, else ``None``; a constrained run
    without the window's events is refused instead of serving unconstrained lists."""
    if not decoding.known_queries:
        return None
    if inputs.events is None or inputs.events.num_rows == 0:
        raise ValueError(f"aigq.generate.known_queries needs the window's behaviour events (none of {ds} under {root})")
    return searched_queries(inputs.events)


def blocklist(cfg: Mapping, extra: Sequence[str] = ()):
    """``aigq.generate.blocklist`` plus ``export.blocklist``."""
    rules = list(((cfg.get("aigq") or {}).get("generate") or {}).get("blocklist") or []) + list(extra or [])
    return Blocklist.from_lines(rules)


def popular_queries(events, ds: str, k: int, blocked=None) -> list[str]:
    """The ``k`` most searched queries of the 7 days before the end of ``ds``, block-list applied
    (the fallback list of cold-start users and the top-up of short model lists)."""
    if events is None or events.num_rows == 0:
        return []
    popularity = PopularityBaseline().fit(events)
    return postprocess(popularity.ranked(anchor_time(ds), 3 * k + 20), blocked, max_queries=k)
