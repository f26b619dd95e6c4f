"""Model and index registry on the data root.

Layout: ``<root>/models/<name>/<version>/`` (any files + ``manifest.json``) and
``<root>/models/<name>/CURRENT`` (a JSON pointer to the registered version). Versions are named
by the caller, normally after the logical date (``2026-11-03``), so a rerun of a date replaces
its version whole. ``register`` moves the pointer only through a gate; the previous version
stays on disk, so a rollback is ``set_current(name, old_version)``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from common.paths import SUCCESS

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"


class RegistryError(RuntimeError):
    """A version is missing, incomplete or corrupt."""


class GateRejected(RuntimeError):
    """The gate refused to register a version; the message says which check failed."""


def model_dir(root: str | Path, name: str, version: str | None = None, area: str = "models") -> Path:
    base = Path(root) / area / name
    return base / version if version else base


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def stage_version(root, name: str, version: str, area: str = "models") -> Path:
    """A hidden temporary folder beside the version; pass it to ``commit_version`` when full."""
    final = model_dir(root, name, version, area)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{version}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    return tmp


def commit_version(tmp: str | Path, root, name: str, version: str, manifest: dict, area: str = "models") -> Path:
    """Write the manifest into ``tmp`` and swap it into place as ``version``."""
    tmp = Path(tmp)
    final = model_dir(root, name, version, area)
    _write_json_atomic(tmp / MANIFEST_FILE, {"name": name, "version": version, **manifest})
    (tmp / SUCCESS).touch()
    old = None
    if final.exists():
        old = final.parent / f".old-{version}-{uuid.uuid4().hex[:12]}"
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved %s/%s at %s", name, version, final)
    return final


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    manifest = path / MANIFEST_FILE
    if not (path / SUCCESS).is_file() or not manifest.is_file():
        raise RegistryError(f"{path}: not a complete model/index version (no {SUCCESS} or {MANIFEST_FILE})")
    try:
        return json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{manifest}: corrupt manifest: {exc}") from exc


def current_version(root, name: str, area: str = "models") -> str | None:
    pointer = model_dir(root, name, area=area) / CURRENT_FILE
    if not pointer.is_file():
        return None
    return json.loads(pointer.read_text())["version"]


def current_path(root, name: str, area: str = "models") -> Path:
    """Folder of the registered version; a clear error when none is registered or it is broken."""
    version = current_version(root, name, area)
    if version is None:
        raise RegistryError(f"no registered version of '{name}' under {model_dir(root, name, area=area)}")
    path = model_dir(root, name, version, area)
    read_manifest(path)
    return path


def set_current(root, name: str, version: str, area: str = "models") -> None:
    read_manifest(model_dir(root, name, version, area))
    _write_json_atomic(model_dir(root, name, area=area) / CURRENT_FILE, {"version": version})


def register(
    root,
    name: str,
    version: str,
    gate: Callable[[dict, dict | None], list[str]] | None = None,
    area: str = "models",
) -> dict:
    """Point ``CURRENT`` at ``version`` if ``gate(candidate_manifest, current_manifest)`` returns
    no failures; otherwise raise ``GateRejected`` listing them. Returns the candidate manifest."""
    candidate = read_manifest(model_dir(root, name, version, area))
    current_v = current_version(root, name, area)
    current = None
    if current_v is not None and current_v != version:
        try:
            current = read_manifest(model_dir(root, name, current_v, area))
        except RegistryError:
            logger.warning("current version %s of %s is unreadable; gating against nothing", current_v, name)
    failures = gate(candidate, current) if gate else []
    if failures:
        raise GateRejected(f"{name}/{version} not registered: " + "; ".join(failures))
    set_current(root, name, version, area)
    logger.info("registered %s/%s", name, version)
    return candidate
