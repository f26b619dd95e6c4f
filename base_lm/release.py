"""Which base LM a day's training starts from: the newest published ``models/base_lm/<version>``
at or before the day, pre-trained first when there is none.

Nothing here imports torch: :func:`ensure_base_model` runs inside both training DAGs' tasks,
around the subprocess that pre-trains.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable
from pathlib import Path

from common.paths import is_published

logger = logging.getLogger(__name__)


def latest_base_model(data_root: str | Path, ds: str) -> Path:
    """The newest published ``models/base_lm/<version>`` with version <= ds (hidden folders such as
    checkpoints skipped); ``FileNotFoundError`` naming the folder when there is none."""
    root = Path(data_root) / "models" / "base_lm"
    versions = (
        sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.name <= ds and is_published(p))
        if root.is_dir()
        else []
    )
    if not versions:
        raise FileNotFoundError(
            f"no published base LM under {root} at or before {ds}: run base_lm.pretrain or pass --base-model"
        )
    return versions[-1]


def ensure_base_model(data_root: str | Path, ds: str, pretrain: Callable[[], object]) -> Path:
    """The newest published base LM at or before ``ds``, after calling ``pretrain()`` when there
    is none. Both training DAGs call this for the same day: an exclusive lock on
    ``models/base_lm/.lock`` makes the second wait and then find the first one's model instead of
    pre-training another."""
    lock_dir = Path(data_root) / "models" / "base_lm"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            try:
                return latest_base_model(data_root, ds)
            except FileNotFoundError:
                logger.info("no base LM at or before %s: pre-training one", ds)
            pretrain()
            try:
                return latest_base_model(data_root, ds)
            except FileNotFoundError:
                raise FileNotFoundError(f"base_lm.pretrain published nothing under {lock_dir} for {ds}") from None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
