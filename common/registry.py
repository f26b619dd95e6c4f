"""Model and index registry on the data root.

Layout: ``<root>/models/<name>/<version>/`` (any files + ``manifest.json``) and
``<root>/models/<name>/CURRENT`` (a JSON pointer to the registered version). Versions are named
by the caller, normally after the logical date (``2026-11-03``), so a rerun of a date replaces
its version whole. ``register`` moves the pointer only through a gate; the previous version
stays on disk, so a rollback is ``set_current(name, old_version)``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from common.paths import SUCCESS
from common.steps import write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
DECISIONS_DIR = "decisions"


class RegistryError(RuntimeError):
    """A version is missing, incomplete or corrupt."""


class GateRejected(RuntimeError):
    """The gate refused to register a version; the message says which check failed."""


def model_dir(root: str | Path, name: str, version: str | None = None, area: str = "models") -> Path:
    base = Path(root) / area / name
    return base / version if version else base


def registry_target(data_root: str | Path, name: str, version: str, out: str | Path | None = None
                    ) -> tuple[str, str, str, str]:
    """``(root, area, name, version)`` for :func:`stage_version` / :func:`commit_version`: the
    version ``<data_root>/models/<name>/<version>``, or the folder ``out`` when a run names one
    (its grandparent becomes the root, with no area).

    >>> registry_target("/d", "aigq_direct", "2026-11-03")
    ('/d', 'models', 'aigq_direct', '2026-11-03')
    """
    if out is None:
        return str(data_root), "models", name, version
    out_path = Path(out).resolve()
    return str(out_path.parent.parent), "", out_path.parent.name, out_path.name


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
    write_json_atomic(tmp / MANIFEST_FILE, {"name": name, "version": version, **manifest})
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
    write_json_atomic(model_dir(root, name, area=area) / CURRENT_FILE, {"version": version})


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
        record_decision(root, name, version, registered=False, failures=failures, serving=current_v, area=area)
        raise GateRejected(f"{name}/{version} not registered: " + "; ".join(failures))
    set_current(root, name, version, area)
    record_decision(root, name, version, registered=True, failures=[], serving=version, area=area)
    logger.info("registered %s/%s", name, version)
    return candidate


def record_decision(root, name: str, version: str, registered: bool, failures: list[str], serving: str | None,
                    area: str = "models") -> Path:
    """Write the gate's verdict on ``version`` to ``models/<name>/decisions/<version>.json``:
    ``{"name", "version", "registered", "failures", "serving"}`` (``serving`` = the version
    ``CURRENT`` points at afterwards, None when none is registered). The export reads it to say
    which version served a day and why."""
    payload = {"name": name, "version": version, "registered": registered, "failures": list(failures),
               "serving": serving}
    return write_json_atomic(model_dir(root, name, area=area) / DECISIONS_DIR / f"{version}.json", payload)


def read_decision(root, name: str, version: str, area: str = "models") -> dict | None:
    """The gate decision recorded for ``version`` (:func:`record_decision`), or None."""
    path = model_dir(root, name, area=area) / DECISIONS_DIR / f"{version}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def serving_version(root, name: str, ds: str | None = None, area: str = "models") -> str | None:
    """The version of ``name`` that serves on ``ds``: ``CURRENT`` when it is not newer than
    ``ds`` (a manual rollback with :func:`set_current` is respected); when ``CURRENT`` is newer
    (a backfill, or a demo whose later days trained before an earlier day exported), the newest
    version at or before ``ds`` that its gate registered, so that a day is never served by a model
    of a later day; ``CURRENT`` when there is none. ``ds=None``: ``CURRENT``."""
    current = current_version(root, name, area)
    if ds is None or current is None or current <= ds:
        return current
    folder = model_dir(root, name, area=area) / DECISIONS_DIR
    registered = sorted(p.stem for p in folder.glob("*.json")
                        if p.stem <= ds and json.loads(p.read_text()).get("registered")) if folder.is_dir() else []
    return registered[-1] if registered else current


def serving_status(root, name: str, ds: str, area: str = "models") -> dict:
    """Which version of ``name`` serves on ``ds`` and why: ``{"version", "reason", "decision"}``.

    ``reason`` is ``registered <ds>`` when the day's candidate passed its gate, ``gate refused
    <ds>: ...; serving <v>`` when it was refused (the previous version keeps serving), ``no
    candidate gated for <ds>; serving <v>`` when none was gated that day, ``none registered`` else.

    >>> import tempfile
    >>> serving_status(tempfile.mkdtemp(), "karma", "2026-11-01")["reason"]
    'none registered'
    """
    version = serving_version(root, name, ds, area)
    decision = read_decision(root, name, ds, area)
    if decision is not None and decision.get("registered") and version == ds:
        reason = f"registered {ds}"
    elif decision is not None and not decision.get("registered"):
        reason = f"gate refused {ds}: {'; '.join(decision.get('failures') or [])}; serving {version or 'nothing'}"
    elif version is not None:
        reason = f"no candidate gated for {ds}; serving {version}"
    else:
        reason = "none registered"
    return {"name": name, "version": version, "reason": reason, "decision": decision}


READY_DIR = "_ready"


def record_day_outcome(root, ds: str, producer: str, outcome: dict, required: tuple[str, ...]) -> bool:
    """Record that ``producer`` (a training DAG) finished ``ds`` with ``outcome`` (registered or
    refused); return True when this record completes ``required`` for ``ds``, i.e. the caller is
    the last of the producers to finish that day and should announce it.

    The check runs under an exclusive lock on ``models/_ready/.lock``, so when two producers
    finish together exactly one of them announces. A producer that reruns a finished day
    announces it again (its outcome may have changed, so the day's export should rerun).

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> record_day_outcome(root, "2026-11-01", "karma_training", {}, ("karma_training", "aigq_training"))
    False
    >>> record_day_outcome(root, "2026-11-01", "aigq_training", {}, ("karma_training", "aigq_training"))
    True
    """
    base = Path(root) / "models" / READY_DIR
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            write_json_atomic(base / ds / f"{producer}.json", {"ds": ds, "producer": producer, **outcome})
            return all((base / ds / f"{name}.json").is_file() for name in required)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def day_outcomes(root, ds: str) -> dict[str, dict]:
    """The outcomes recorded for ``ds`` by :func:`record_day_outcome`, by producer."""
    folder = Path(root) / "models" / READY_DIR / ds
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def reset_day_outcomes(root, ds: str) -> None:
    """Forget the training outcomes of ``ds`` (new samples start a new training cycle for the day)."""
    base = Path(root) / "models" / READY_DIR
    if not (base / ds).is_dir():
        return
    with open(base / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            shutil.rmtree(base / ds, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
