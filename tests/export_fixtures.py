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


#: Fusion weights of the tiny fixtures (fitted ones come from karma_model.evaluate).
TINY_WITH = {"karma": 0.4, "cooccurrence": 0.3, "text": 0.2, "popularity": 0.1}
TINY_WITHOUT = {"karma": 0.0, "cooccurrence": 0.5, "text": 0.3, "popularity": 0.2}


def fit_tiny_channels(root: Path, ds: str, out: Path, valid_with: float = 0.5, valid_without: float = 0.4) -> Path:
    """The heuristic channels fitted on ``root``'s clean events up to ``ds`` and a fusion file with
    the fixed :data:`TINY_WITH` / :data:`TINY_WITHOUT` weights, as ``out/retrieval/`` (what
    ``karma_model.evaluate`` writes into a model folder)."""
    from common.arrow_io import read_partition
    from common.paths import published_ds
    from common.steps import write_json_atomic
    from common.text_encoder import encode_texts
    from karma_model.baselines import CooccurrenceBaseline, PopularityBaseline, TextEmbeddingBaseline
    from karma_model.channels import FUSION_FILE, RETRIEVAL_DIR, HeuristicChannels
    from karma_model.data import read_item_corpus
    from karma_model.fusion import FusionFit

    corpus = read_item_corpus(root, ds).to_pylist()  # the newest snapshot at or before ds
    item_ids = [r["item_id"] for r in corpus]
    row_of = {item: i for i, item in enumerate(item_ids)}
    sequences: dict[str, list[int]] = {}
    for day in published_ds(root, "clean", "behavior_events"):
        if day > ds:
            continue
        events = read_partition(root, "clean", "behavior_events", day).sort_by("event_time").to_pylist()
        for e in events:
            if e["item_id"] in row_of:
                sequences.setdefault(e["user_id"], []).append(row_of[e["item_id"]])
    seqs = list(sequences.values())
    n = len(item_ids)
    channels = HeuristicChannels(item_ids, CooccurrenceBaseline(n).fit(seqs), TextEmbeddingBaseline(
        item_embeddings=encode_texts([r["text"] for r in corpus])).fit(), PopularityBaseline(n).fit(seqs))
    folder = channels.save(out / RETRIEVAL_DIR)
    fusion = {"depth": 100, "k": 50,
              "with": {"fit": FusionFit(TINY_WITH, 20.0, "hr@50", valid_with).to_dict(),
                       "metrics": {"valid": {"hr@50": valid_with}}},
              "without": {"fit": FusionFit(TINY_WITHOUT, 20.0, "hr@50", valid_without).to_dict(),
                          "metrics": {"valid": {"hr@50": valid_without}}}}
    write_json_atomic(folder / FUSION_FILE, fusion)
    return folder


def register_tiny_karma(root: Path, base_dir: Path, work: Path, ds: str) -> Path:
    """An untrained tiny KARMA model with fitted heuristic channels, its catalogue index, and the
    registration."""
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
    fit_tiny_channels(root, ds, src)
    return register_folder(root, "karma", ds, src, {"ds": ds, "index_dir": info["index_dir"], "metrics": {}})
