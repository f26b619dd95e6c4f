"""Embed the item catalogue with a KARMA item tower and publish the faiss index.

The catalogue is the newest ``item_corpus`` partition at or before ``ds``; every item is encoded
as ``e_i`` (:func:`karma_model.model.embed_items`) and indexed by :func:`karma_model.index.build_index`.
The index goes to ``<root>/indexes/karma/<version>/`` (``index.faiss``, ``item_ids.parquet`` = the
row → item id map, ``_manifest.json`` with the model, data dates and build settings), published
atomically by :func:`karma_model.index.save_index`; ``version`` defaults to the model's.

Index settings come from ``karma_index:`` in conf/pipeline.yaml: ``factory`` (default
``"HNSW32,Flat"``) and, for catalogues of at least ``large_threshold`` items, ``large_factory``
(an IVF-PQ string such as ``"IVF4096,PQ32"``, trained on ``train_size`` sampled vectors); any other
key is an :class:`karma_model.index.IndexParams` field (``ef_search``, ``nprobe``, ...).

Usage: ``python -m karma_model.embed --ds 2026-11-03 --model-dir DIR [--data-root R] [--version V]
[--out DIR] [--factory F]``
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from base_lm.load import read_manifest
from common.config import load_config
from common.hf_offline import quiet_offline_hf
from common.logging_setup import setup_logging
from common.paths import check_ds, latest_published_ds
from common.steps import emit_result
from karma_model.data import ItemCatalog, KarmaEncoder, read_item_corpus
from karma_model.index import IndexParams, build_index, save_index
from karma_model.load import load_karma
from karma_model.model import embed_items

logger = logging.getLogger(__name__)

INDEX_NAME = "karma"
DEFAULT_FACTORY = "HNSW32,Flat"
DEFAULT_LARGE_FACTORY = "IVF4096,PQ32"
DEFAULT_LARGE_THRESHOLD = 2_000_000


def index_params_from_config(section: Mapping | None, n_items: int | None = None, factory: str | None = None):
    """:class:`IndexParams` from the ``karma_index`` config section for a catalogue of ``n_items``.

    >>> index_params_from_config({"large_threshold": 10, "large_factory": "IVF4,PQ8"}, 5).factory
    'HNSW32,Flat'
    >>> index_params_from_config({"large_threshold": 10, "large_factory": "IVF4,PQ8"}, 50).factory
    'IVF4,PQ8'
    """
    section = dict(section or {})
    large_factory = section.pop("large_factory", DEFAULT_LARGE_FACTORY)
    threshold = int(section.pop("large_threshold", DEFAULT_LARGE_THRESHOLD))
    fields = {f.name for f in dataclasses.fields(IndexParams)}
    unknown = set(section) - fields
    if unknown:
        raise ValueError(f"unknown karma_index settings: {sorted(unknown)}")
    section.setdefault("factory", DEFAULT_FACTORY)
    if factory:
        section["factory"] = factory
    elif n_items is not None and n_items >= threshold and large_factory:
        section["factory"] = large_factory
    return IndexParams(**section)


def index_dir(data_root: str | Path, version: str) -> Path:
    return Path(data_root) / "indexes" / INDEX_NAME / version


def embed_catalogue(model_dir: str | Path, data_root: str | Path, ds: str, out_dir: str | Path | None = None,
                    version: str | None = None, index_section: Mapping | None = None, factory: str | None = None,
                    batch_size: int = 128) -> dict:
    """Encode the catalogue, build and publish the index; returns the index manifest (+ its path)."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    version = version or manifest.get("version") or manifest.get("ds") or ds
    out_dir = Path(out_dir) if out_dir else index_dir(data_root, version)
    catalog = ItemCatalog.from_table(read_item_corpus(data_root, ds))
    model, tok = load_karma(model_dir)
    encoder = KarmaEncoder(tok, model.config, catalog)
    t0 = time.perf_counter()
    vectors = embed_items(model, encoder, batch_size=batch_size)
    embed_seconds = time.perf_counter() - t0
    logger.info("embedded %d items in %.1fs (%.0f items/s)", len(catalog), embed_seconds,
                len(catalog) / max(embed_seconds, 1e-9))
    params = index_params_from_config(index_section, len(catalog), factory)
    index = build_index(vectors, np.asarray(catalog.item_ids, dtype=object), params)
    extra = {
        "model_dir": str(model_dir),
        "model_name": manifest.get("name"),
        "variant": manifest.get("variant"),
        "ds": ds,
        "item_corpus_ds": latest_published_ds(data_root, "samples", "item_corpus", ds),
        "embed_seconds": round(embed_seconds, 2),
        "proj_dim": model.config.proj_dim,
    }
    save_index(index, out_dir, model_version=version, extra=extra)
    return {**index.manifest, **extra, "model_version": version, "index_dir": str(out_dir)}


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    quiet_offline_hf()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="catalogue date (newest item_corpus at or before it)")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--version", default=None, help="index version (default: the model's)")
    parser.add_argument("--out", default=None, help="index folder (default <root>/indexes/karma/<version>)")
    parser.add_argument("--factory", default=None, help="faiss factory string (overrides the config)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.profile)
    data_root = str(Path(args.data_root).resolve()) if args.data_root else cfg["data_root"]
    info = embed_catalogue(args.model_dir, data_root, check_ds(args.ds), args.out, args.version,
                           cfg.get("karma_index"), args.factory, args.batch_size)
    emit_result({"index_dir": info["index_dir"], "n": info["n"], "factory": info["factory"],
                      "embed_seconds": info["embed_seconds"], "build_seconds": info["build_seconds"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
