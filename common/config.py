"""Configuration: one YAML file with named profiles, plus environment overrides.

``load_config()`` merges the ``local`` profile (the base every other profile extends) with the
chosen profile, then applies ``PIPELINE__A__B=value`` environment variables (``a.b = value``;
values are parsed as YAML scalars, so ``3`` is an int and ``true`` a bool). The profile comes
from the argument, else ``PIPELINE_PROFILE``, else ``local``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "conf" / "pipeline.yaml"
BASE_PROFILE = "local"
ENV_PREFIX = "PIPELINE__"


class ConfigError(ValueError):
    """A config file, profile or override is invalid."""


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _apply_env(cfg: dict, environ: dict[str, str]) -> dict:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
        if not keys:
            continue
        node = cfg
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"env override {name}: '{key}' is not a section")
        node[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return cfg


def load_config(
    path: str | os.PathLike | None = None,
    profile: str | None = None,
    environ: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Return the merged config dict for ``profile`` with env overrides applied."""
    environ = dict(os.environ if environ is None else environ)
    path = Path(path or environ.get("PIPELINE_CONFIG") or DEFAULT_CONFIG)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    profiles = doc.get("profiles")
    if not isinstance(profiles, dict) or BASE_PROFILE not in profiles:
        raise ConfigError(f"{path}: needs a 'profiles' mapping with a '{BASE_PROFILE}' profile")
    profile = profile or environ.get("PIPELINE_PROFILE") or BASE_PROFILE
    if profile not in profiles:
        raise ConfigError(f"{path}: unknown profile '{profile}' (have: {sorted(profiles)})")
    cfg = copy.deepcopy(profiles[BASE_PROFILE])
    if profile != BASE_PROFILE:
        cfg = _deep_merge(cfg, profiles[profile] or {})
    cfg = _apply_env(cfg, environ)
    cfg["profile"] = profile
    cfg["config_path"] = str(path)
    root = Path(str(cfg.get("data_root", "data")))
    if "://" not in str(cfg.get("data_root", "")) and not root.is_absolute():
        root = REPO_ROOT / root
    cfg["data_root"] = str(root)
    return cfg
