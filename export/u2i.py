"""u2i (KARMA): top-K items per active user and the user interest embeddings.

The registered KARMA model (``models/karma/CURRENT``) encodes every active user's history (the
model's ``history_len`` last behaviours before the end of ``ds``, built as in
:mod:`export.data`) into ``e_u`` in batches of ``export.batch_users``; the faiss index its
manifest records (``index_dir``, built by ``karma_model.embed``) returns the nearest items, the
items of the user's history are filtered out and the ``export.u2i_k`` best kept (score = the
index's inner product of L2-normalised vectors, i.e. cosine). ``user_interest_embedding``
holds ``e_u`` as the model outputs it (not normalised), one row per active user.

Both tables are staged together and published together (one ``PartitionBatch``): both or
neither. Gates: coverage of the active users, null rates, duplicate (user, rank) and
(user, item), scores in [-1, 1], list lengths in [``min_list_len``, ``u2i_k``]; for the
embeddings coverage, nulls, one row per user, every vector of the model's dimension and finite.

Usage::

    python -m export.u2i --ds 2026-11-03 [--data-root R] [--config F] [--profile P] [--run-id ID]
        [--batch-users N] [--min-coverage X]
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

TABLE = "u2i"
EMBEDDING_TABLE = "user_interest_embedding"
MODEL = "karma"
KEYS = ["user_id", "rank"]
_SCORE_EPS = 1e-3


def top_items(found_ids, scores, exclude, k: int) -> tuple[list[str], list[float]]:
    """The first ``k`` found items not in ``exclude`` (missing results skipped), best first.

    >>> top_items(["a", None, "b", "c"], [0.9, 0.0, 0.8, 0.7], {"b"}, 2)
    (['a', 'c'], [0.9, 0.7])
    """
    items, out_scores = [], []
    for item, s in zip(found_ids, scores, strict=True):
        if item is None or item == -1 or item in exclude or item in items:
            continue
        items.append(item)
        out_scores.append(float(s))
        if len(items) >= k:
            break
    return items, out_scores


def load_karma_release(root: str):
    """``(Registered, model, tokenizer, ItemIndex, index version)``; :class:`ExportInputError`
    naming the path when the model or its index is missing or unreadable."""
    from export import models
    from export.data import ExportInputError
    from karma_model.index import IndexLoadError, load_index
    from karma_model.train import load_karma

    reg = models.require_registered(root, (MODEL,), "KARMA model")
    index_dir = reg.manifest.get("index_dir") or str(Path(root) / "indexes" / MODEL / reg.version)
    try:
        from common.device import resolve

        model, tok = load_karma(reg.path, device=resolve())
    except Exception as exc:
        raise ExportInputError(f"cannot load KARMA model {MODEL}/{reg.version} at {reg.path}: "
                               f"{type(exc).__name__}: {exc}") from exc
    try:
        index = load_index(index_dir)
    except IndexLoadError as exc:
        raise ExportInputError(f"KARMA index of {MODEL}/{reg.version}: {exc}") from exc
    if index.dim != model.config.proj_dim:
        raise ExportInputError(f"index {index_dir} has dim {index.dim} but {MODEL}/{reg.version} embeds "
                               f"{model.config.proj_dim}")
    index_version = str(index.manifest.get("model_version") or Path(index_dir).name)
    return reg, model, tok, index, index_version


def gate_u2i(u2i, emb, active, ex, dim: int) -> dict[str, dict]:
    from export import gates

    return {
        TABLE: gates.run_gates({
            "coverage": gates.check_coverage(u2i, active, ex.min_coverage),
            "null_rates": gates.check_null_rates(u2i, ex.max_null_rate),
            "duplicate_keys": gates.check_duplicates(u2i, KEYS) + gates.check_duplicates(u2i, ["user_id", "item_id"]),
            "score_range": gates.check_range(u2i, "score", -1.0 - _SCORE_EPS, 1.0 + _SCORE_EPS),
            "list_lengths": gates.check_list_lengths(u2i, ["user_id"], ex.min_list_len, ex.u2i_k),
        }),
        EMBEDDING_TABLE: gates.run_gates({
            "coverage": gates.check_coverage(emb, active, ex.min_coverage),
            "null_rates": gates.check_null_rates(emb, ex.max_null_rate),
            "duplicate_keys": gates.check_duplicates(emb, ["user_id"]),
            "dimension": gates.check_value_lengths(emb, "embedding", dim, dim),
            "finite": gates.check_finite_lists(emb, "embedding"),
        }),
    }


def export_u2i(cfg: dict, root: str, ds: str, run_id: str, batch_users: int | None = None,
               min_coverage: float | None = None) -> dict:
    """Embed, retrieve, gate and publish ``exports/u2i`` and ``exports/user_interest_embedding``."""
    from common.publish import staged_partitions
    from export import gates
    from export.data import ExportConfig, anchor_time, chunks, load_inputs
    from export.publish import StagedTable, apply_retention, content_hash, fault_hook
    from karma_model.data import ItemCatalog, KarmaEncoder, read_item_corpus
    from karma_model.model import embed_histories

    ex = ExportConfig.from_config(cfg, batch_users=batch_users, min_coverage=min_coverage)
    reg, model, tok, index, index_version = load_karma_release(root)
    config = model.config
    if config.use_images:
        catalog = ItemCatalog.from_table(read_item_corpus(root, ds))
    else:  # the encoder reads the catalogue for image slots only
        catalog = ItemCatalog([str(i) for i in index.item_ids], [""] * len(index))
    encoder = KarmaEncoder(tok, config, catalog)
    inputs = load_inputs(root, ds, ex)
    anchor = anchor_time(ds)
    history_len = max(int(config.history_len), 1)
    search_k = min(ex.u2i_k + history_len, len(index))
    if index.params.ef_search < 2 * search_k:
        index.set_search_params(ef_search=2 * search_k)
    meta = {"ds": ds, "run_id": run_id, "model_name": reg.name, "model_version": reg.version,
            "index_version": index_version, "generated_at": anchor}
    manifest = {"run_id": run_id, "model": {"name": reg.name, "version": reg.version, "path": str(reg.path)},
                "index": {"version": index_version, "n": len(index), "factory": index.manifest.get("factory")},
                "k": ex.u2i_k, "history_len": history_len, "event_days": inputs.event_days}
    emb_manifest = {"run_id": run_id, "model": manifest["model"], "dim": int(config.proj_dim)}
    counts = {"active_users": len(inputs.active), "empty_history_users": 0, "filtered_history_items": 0}
    n_batches = (len(inputs.active) + ex.batch_users - 1) // ex.batch_users
    t0 = time.perf_counter()
    with staged_partitions() as batch:
        u2i = StagedTable(batch, root, TABLE, ds, manifest)
        emb = StagedTable(batch, root, EMBEDDING_TABLE, ds, emb_manifest)
        for i, users in enumerate(chunks(inputs.active, ex.batch_users)):
            histories = [inputs.log.history(u, anchor, history_len) for u in users]
            vectors = embed_histories(model, encoder, histories)  # (n, proj_dim)
            scores, found = index.search(vectors, search_k)  # (n, search_k) each
            rows = []
            for u, hist, f, s in zip(users, histories, found, scores, strict=True):
                exclude = {b["item_id"] for b in hist if b.get("item_id")}
                counts["empty_history_users"] += not hist
                counts["filtered_history_items"] += sum(1 for x in f if x in exclude)
                items, item_scores = top_items(list(f), list(s), exclude, ex.u2i_k)
                rows += [{"user_id": u, "rank": r + 1, "item_id": it, "score": sc, **meta}
                         for r, (it, sc) in enumerate(zip(items, item_scores, strict=True))]
            u2i.write(rows)
            emb.write([{"user_id": u, "ds": ds, "model_version": reg.version,
                        "embedding": v.astype(np.float32).tolist()} for u, v in zip(users, vectors, strict=True)])
            done = min((i + 1) * ex.batch_users, len(inputs.active))
            logger.info("u2i batch %d/%d: %d users (%d/%d, %.1f users/s)", i + 1, n_batches, len(users), done,
                        len(inputs.active), done / max(time.perf_counter() - t0, 1e-9))
            fault_hook(i)
        u2i_table, emb_table = u2i.read(), emb.read()
        results = gate_u2i(u2i_table, emb_table, inputs.active, ex, int(config.proj_dim))
        manifest.update(counts=counts, rows=u2i_table.num_rows, gates=results[TABLE],
                        content_hash=content_hash(u2i_table, KEYS), seconds=round(time.perf_counter() - t0, 2))
        emb_manifest.update(rows=emb_table.num_rows, gates=results[EMBEDDING_TABLE],
                            content_hash=content_hash(emb_table, ["user_id"]))
        gates.enforce(TABLE, results[TABLE])
        gates.enforce(EMBEDDING_TABLE, results[EMBEDDING_TABLE])
    deleted = {t: apply_retention(root, t, ex.keep_partitions, protect=ds) for t in (TABLE, EMBEDDING_TABLE)}
    return {"table": TABLE, "path": str(u2i.final), "embedding_path": str(emb.final), "rows": u2i_table.num_rows,
            "embeddings": emb_table.num_rows, "model": f"{reg.name}/{reg.version}", "index_version": index_version,
            "counts": counts, "retention_deleted": deleted, "content_hash": manifest["content_hash"]}


def main(argv: list[str] | None = None) -> int:
    from export.publish import arg_parser, run_main, settings

    parser = arg_parser(__doc__.splitlines()[0])

    def body(args):
        cfg, root, ds, run_id = settings(args)
        return export_u2i(cfg, root, ds, run_id, args.batch_users, args.min_coverage)

    return run_main("u2i", body, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
