"""Tiny inputs for the export tests without Spark: synthetic raw data copied to ``clean/`` (the
generator writes no bad rows by default, so validate would pass everything through), an
``item_corpus`` built like ``sql/item_corpus.sql``, and tiny untrained models registered the way
the training DAGs register theirs."""

from __future__ import annotations

import shutil
from pathlib import Path

D1, D2 = "2026-11-01", "2026-11-02"


def make_clean_root(root: Path, start_ds: str = D1, days: int = 2, n_users: int = 40, n_items: int = 200) -> Path:
    from common import schemas
    from common.arrow_io import read_partition, write_partition
    from common.paths import published_ds
    from sources.synthetic import generate

    generate(root, start_ds, days, n_users=n_users, n_items=n_items, events_per_user_day=12.0, seed=3)
    for table in schemas.RAW_TABLES:
        for ds in published_ds(root, "raw", table):
            write_partition(root, "clean", table, ds, read_partition(root, "raw", table, ds))
    for ds in published_ds(root, "clean", "items"):
        items = read_partition(root, "clean", "items", ds).to_pylist()
        corpus = [
            {"item_id": r["item_id"],
             "text": " | ".join(x for x in (r["title"], r["category_path"], r["brand"],
                                            " ".join(r["tags"] or []) or None) if x),
             "title": r["title"], "leaf_category": r["leaf_category"], "brand": r["brand"],
             "image_embedding": r["image_embedding"]}
            for r in items if r["item_id"] is not None
        ]
        write_partition(root, "samples", "item_corpus", ds, corpus)
    return root


def register_folder(root: Path, name: str, version: str, src: Path, manifest: dict) -> Path:
    """Copy ``src`` to ``models/<name>/<version>`` and point ``CURRENT`` at it (no gate)."""
    from common.registry import commit_version, set_current, stage_version

    tmp = stage_version(root, name, version)
    shutil.copytree(src, tmp, dirs_exist_ok=True)
    for stale in ("_SUCCESS", "_manifest.json", "manifest.json"):
        (tmp / stale).unlink(missing_ok=True)
    final = commit_version(tmp, root, name, version, manifest)
    set_current(root, name, version)
    return final


def tiny_base(out: Path) -> Path:
    from tests.test_base_lm import make_tiny_base

    return make_tiny_base(out, max_position_embeddings=512)


def register_tiny_policy(root: Path, base_dir: Path, work: Path, name: str, kind: str, version: str) -> Path:
    """An untrained AIGQ policy (prompt tokens added) registered as ``name``."""
    from aigq_model.load import save_aigq
    from aigq_model.train_sft import SFTConfig, prepare_model

    model, tok = prepare_model(base_dir, SFTConfig(kind=kind))
    src = save_aigq(model, tok, work / f"{name}-{version}")
    return register_folder(root, name, version, src,
                           {"format": "aigq", "kind": kind, "style": "compressed", "ds": version,
                            "config": {"max_history": 20, "kind": kind}})


def register_tiny_karma(root: Path, base_dir: Path, work: Path, ds: str) -> Path:
    """An untrained tiny KARMA model, its catalogue index, and the registration."""
    from karma_model.config import KarmaConfig
    from karma_model.embed import embed_catalogue
    from karma_model.load import save_karma
    from karma_model.model import KarmaModel

    config = KarmaConfig(proj_dim=16, n_rec_prefix=2, max_history_tokens=96, max_item_tokens=24,
                         max_target_tokens=12, max_text_tokens=12, batch_size=4, warmup_steps=0, save_steps=0)
    model, tok = KarmaModel.from_base(base_dir, config)
    src = save_karma(model, tok, work / f"karma-{ds}", {"name": "karma_tiny", "version": ds, "ds": ds,
                                                         "config": config.to_dict()})
    info = embed_catalogue(src, root, ds, version=ds)
    return register_folder(root, "karma", ds, src, {"ds": ds, "index_dir": info["index_dir"], "metrics": {}})
