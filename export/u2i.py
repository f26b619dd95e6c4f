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

Histories are encoded and searched in fixed-shape blocks (``min(EMBED_BLOCK, batch_users)`` rows
of ``max_history_tokens`` tokens, :func:`embed_users`): with shapes that follow the batch, a
user's ``e_u`` moved by up to 1e-7 with the users sharing its batch, so a sharded run would not
repeat an unsharded one bit for bit; with fixed shapes it does (tested).

Shards (``nightly_export`` maps one task per shard): ``--shard I --num-shards N --stage-only``
writes both tables' rows of shard I's active users (``crc32(user_id) mod N``) into its part under
``exports/_staging/u2i/ds=<ds>/<run>/``; ``--publish-parts --num-shards N`` merges the N parts,
runs the gates above on the whole tables and publishes both (or neither), as an unsharded run.

Usage::

    python -m export.u2i --ds 2026-11-03 [--data-root R] [--config F] [--profile P] [--run-id ID]
        [--batch-users N] [--min-coverage X]
        [--shard I --num-shards N --stage-only | --publish-parts --num-shards N]
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common.device import resolve
from common.publish import staged_partitions
from common.schemas import UNIQUE_KEYS
from export import gates, models
from export.data import (
    ExportConfig,
    ExportInputError,
    anchor_time,
    check_shard,
    chunks,
    load_inputs,
    users_digest,
)
from export.publish import (
    add_shard_args,
    apply_retention,
    arg_parser,
    content_hash,
    fault_hook,
    run_main,
    settings,
    shard_fault_hook,
    shard_mode,
)
from export.staging import StagedTable, merged_parts, remove_staging, shard_summary, staged_part, sum_counts
from karma_model.data import ItemCatalog, KarmaEncoder, collate_histories, read_item_corpus
from karma_model.index import IndexLoadError, load_index
from karma_model.load import load_karma

logger = logging.getLogger(__name__)

TABLE = "u2i"
EMBEDDING_TABLE = "user_interest_embedding"
MODEL = "karma"
KEYS = list(UNIQUE_KEYS[TABLE])  # user_id, rank
_SCORE_EPS = 1e-3
#: Rows of every embedding / search block, at most (``min(EMBED_BLOCK, batch_users)``; the last
#: block of a batch is topped up with copies of its last row).
EMBED_BLOCK = 64


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


def load_karma_release(root: str, ds: str | None = None):
    """``(Registered, model, tokenizer, ItemIndex, index version)``; :class:`ExportInputError`
    naming the path when the model or its index is missing or unreadable."""
    reg = models.require_registered(root, (MODEL,), "KARMA model", ds)
    index_dir = reg.manifest.get("index_dir") or str(Path(root) / "indexes" / MODEL / reg.version)
    try:
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


def embed_users(model, encoder, histories, block: int = EMBED_BLOCK) -> np.ndarray:
    """``e_u`` (n, proj_dim) float32 of ``histories``, computed in blocks of exactly ``block`` rows
    (the last one topped up with copies of its last history) left-padded to the model's
    ``max_history_tokens``: every forward pass has the same shapes, so a user's vector depends on
    their own history (and ``block``) only, not on the users sharing the batch (shards)."""
    model.eval()
    width = int(model.config.max_history_tokens)
    device = next(model.parameters()).device
    out = np.zeros((len(histories), int(model.config.proj_dim)), dtype=np.float32)
    for start in range(0, len(histories), block):
        chunk = list(histories[start : start + block])
        n = len(chunk)
        chunk += [chunk[-1]] * (block - n)
        batch = collate_histories(encoder, chunk)
        ids, mask = batch["input_ids"], batch["attention_mask"]  # (block, L) each, left-padded
        if ids.shape[1] < width:
            fill = width - ids.shape[1]
            ids = torch.cat([torch.full((block, fill), encoder.pad_id, dtype=ids.dtype), ids], dim=1)
            mask = torch.cat([torch.zeros((block, fill), dtype=mask.dtype), mask], dim=1)
        batch.update(input_ids=ids, attention_mask=mask)
        with torch.no_grad():
            vectors = model.encode_history(**{k: v.to(device) for k, v in batch.items()})  # (block, d)
        out[start : start + n] = vectors[:n].float().cpu().numpy()
    return out


def search_users(index, vectors: np.ndarray, k: int, block: int = EMBED_BLOCK):
    """``index.search`` in blocks of exactly ``block`` query rows (as :func:`embed_users`), so the
    neighbours and scores of a user do not depend on the other queries of the batch."""
    scores, found = [], []
    for start in range(0, len(vectors), block):
        chunk = vectors[start : start + block]
        n = len(chunk)
        if n < block:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], block - n, axis=0)])
        s, f = index.search(chunk, k)
        scores.append(s[:n])
        found.append(f[:n])
    if not scores:
        return np.zeros((0, k), np.float32), np.empty((0, k), object)
    return np.concatenate(scores), np.concatenate(found)


class _Retrieval:
    """The KARMA release, encoder and inputs of one run (or one shard of it), and the loop that
    writes the u2i rows and embeddings of the run's active users batch by batch."""

    def __init__(self, root: str, ds: str, run_id: str, ex, shard: tuple[int, int] | None = None):
        self.ds, self.ex = ds, ex
        self.reg, self.model, tok, self.index, index_version = load_karma_release(root, ds)
        reg, index, config = self.reg, self.index, self.model.config
        if config.use_images:
            catalog = ItemCatalog.from_table(read_item_corpus(root, ds))
        else:  # the encoder reads the catalogue for image slots only
            catalog = ItemCatalog([str(i) for i in index.item_ids], [""] * len(index))
        self.encoder = KarmaEncoder(tok, config, catalog)
        self.inputs = inputs = load_inputs(root, ds, ex, shard=shard)
        self.anchor = anchor_time(ds)
        self.history_len = max(int(config.history_len), 1)
        self.search_k = min(ex.u2i_k + self.history_len, len(index))
        if index.params.ef_search < 2 * self.search_k:
            index.set_search_params(ef_search=2 * self.search_k)
        self.dim = int(config.proj_dim)
        self.meta = {"run_id": run_id, "model_name": reg.name, "model_version": reg.version,
                     "index_version": index_version, "generated_at": self.anchor}
        self.manifest = {"run_id": run_id, "model": {"name": reg.name, "version": reg.version, "path": str(reg.path)},
                         "index": {"version": index_version, "n": len(index), "factory": index.manifest.get("factory")},
                         "k": ex.u2i_k, "history_len": self.history_len, "event_days": inputs.event_days}
        self.emb_manifest = {"run_id": run_id, "model": self.manifest["model"], "dim": self.dim}
        self.counts = {"active_users": len(inputs.active), "empty_history_users": 0, "filtered_history_items": 0}

    def run(self, write_u2i, write_emb, after_batch=None) -> dict:
        """Encode, search and filter every active user; ``write_u2i(rows)`` and ``write_emb(rows)``
        per batch; returns the counts."""
        ex, inputs, counts, reg = self.ex, self.inputs, self.counts, self.reg
        n_batches = (len(inputs.active) + ex.batch_users - 1) // ex.batch_users
        block = min(EMBED_BLOCK, ex.batch_users)  # the same in every shard
        t0 = time.perf_counter()
        for i, users in enumerate(chunks(inputs.active, ex.batch_users)):
            histories = [inputs.log.history(u, self.anchor, self.history_len) for u in users]
            vectors = embed_users(self.model, self.encoder, histories, block)  # (n, proj_dim)
            scores, found = search_users(self.index, vectors, self.search_k, block)  # (n, search_k) each
            rows = []
            for u, hist, f, s in zip(users, histories, found, scores, strict=True):
                exclude = {b["item_id"] for b in hist if b.get("item_id")}
                counts["empty_history_users"] += not hist
                counts["filtered_history_items"] += sum(1 for x in f if x in exclude)
                items, item_scores = top_items(list(f), list(s), exclude, ex.u2i_k)
                rows += [{"user_id": u, "rank": r + 1, "item_id": it, "score": sc, **self.meta}
                         for r, (it, sc) in enumerate(zip(items, item_scores, strict=True))]
            write_u2i(rows)
            write_emb([{"user_id": u, "model_version": reg.version,
                        "embedding": v.astype(np.float32).tolist()} for u, v in zip(users, vectors, strict=True)])
            done = min((i + 1) * ex.batch_users, len(inputs.active))
            logger.info("u2i batch %d/%d: %d users (%d/%d, %.1f users/s)", i + 1, n_batches, len(users), done,
                        len(inputs.active), done / max(time.perf_counter() - t0, 1e-9))
            fault_hook(i)
            if after_batch is not None:
                after_batch(i)
        return counts


def _gate_both(u2i_table, emb_table, active, ex, dim: int, manifest: dict, emb_manifest: dict, counts: dict,
               t0: float) -> None:
    """Run the gates of both tables, complete both manifests, raise ``GateFailed`` on a failure."""
    results = gate_u2i(u2i_table, emb_table, active, ex, dim)
    manifest.update(counts=counts, rows=u2i_table.num_rows, gates=results[TABLE],
                    content_hash=content_hash(u2i_table, KEYS), seconds=round(time.perf_counter() - t0, 2))
    emb_manifest.update(rows=emb_table.num_rows, gates=results[EMBEDDING_TABLE],
                        content_hash=content_hash(emb_table, ["user_id"]))
    gates.enforce(TABLE, results[TABLE])
    gates.enforce(EMBEDDING_TABLE, results[EMBEDDING_TABLE])


def _result(u2i, emb, u2i_table, emb_table, manifest: dict, deleted, **extra) -> dict:
    model = manifest["model"]
    return {"table": TABLE, "path": str(u2i.final), "embedding_path": str(emb.final), "rows": u2i_table.num_rows,
            "embeddings": emb_table.num_rows, "model": f"{model['name']}/{model['version']}",
            "index_version": manifest["index"]["version"], "counts": manifest["counts"],
            "retention_deleted": deleted, "content_hash": manifest["content_hash"], **extra}


def export_u2i(cfg: dict, root: str, ds: str, run_id: str, batch_users: int | None = None,
               min_coverage: float | None = None) -> dict:
    """Embed, retrieve, gate and publish ``exports/u2i`` and ``exports/user_interest_embedding``."""
    ex = ExportConfig.from_config(cfg, batch_users=batch_users, min_coverage=min_coverage)
    ret = _Retrieval(root, ds, run_id, ex)
    manifest, emb_manifest = ret.manifest, ret.emb_manifest
    t0 = time.perf_counter()
    with staged_partitions() as batch:
        u2i = StagedTable(batch, root, TABLE, ds, manifest)
        emb = StagedTable(batch, root, EMBEDDING_TABLE, ds, emb_manifest)
        counts = ret.run(u2i.write, emb.write)
        u2i_table, emb_table = u2i.read(), emb.read()
        _gate_both(u2i_table, emb_table, ret.inputs.active, ex, ret.dim, manifest, emb_manifest, counts, t0)
    deleted = {t: apply_retention(root, t, ex.keep_partitions, protect=ds) for t in (TABLE, EMBEDDING_TABLE)}
    return _result(u2i, emb, u2i_table, emb_table, manifest, deleted)


def stage_u2i_shard(cfg: dict, root: str, ds: str, run_id: str, shard: int, num_shards: int,
                    batch_users: int | None = None) -> dict:
    """Retrieve and embed shard ``shard`` of ``num_shards``'s active users into its staging part
    (both tables; no gates, nothing published); returns the part's summary."""
    shard, num_shards = check_shard(shard, num_shards)
    ex = ExportConfig.from_config(cfg, batch_users=batch_users)
    ret = _Retrieval(root, ds, run_id, ex, shard=(shard, num_shards))
    manifest = {**ret.manifest, "dim": ret.dim, "users": len(ret.inputs.active),
                "users_sha256": users_digest(ret.inputs.active), "active_total": ret.inputs.active_total}
    t0 = time.perf_counter()
    with staged_part(root, TABLE, ds, run_id, shard, num_shards, manifest) as part:
        counts = ret.run(lambda rows: part.write(TABLE, rows), lambda rows: part.write(EMBEDDING_TABLE, rows),
                         after_batch=lambda i: shard_fault_hook(TABLE, shard) if i == 0 else None)
        manifest.update(counts=counts, generation_seconds=round(time.perf_counter() - t0, 2))
    return {"table": TABLE, "part": str(part.final), "shard": shard, "num_shards": num_shards,
            "users": manifest["users"], "rows": part.rows.get(TABLE, 0),
            "embeddings": part.rows.get(EMBEDDING_TABLE, 0), "counts": counts,
            "model": f"{ret.reg.name}/{ret.reg.version}"}


#: Part manifest keys every part of a run must share (same model, index and inputs).
PART_SAME = ("model", "index", "k", "history_len", "event_days", "dim", "active_total")


def publish_u2i_parts(cfg: dict, root: str, ds: str, run_id: str, num_shards: int,
                      min_coverage: float | None = None) -> dict:
    """Merge the run's ``num_shards`` complete parts, run the gates of :func:`export_u2i` on the
    whole tables and publish ``exports/u2i`` and ``exports/user_interest_embedding`` together (all
    parts or nothing); then remove the run's staging folder. Loads no model."""
    t0 = time.perf_counter()
    ex, parts, active, first = merged_parts(cfg, root, TABLE, ds, run_id, num_shards, PART_SAME, min_coverage)
    shards = shard_summary(parts)
    manifest = {"run_id": run_id, **{k: first.get(k) for k in ("model", "index", "k", "history_len", "event_days")},
                "shards": shards}
    emb_manifest = {"run_id": run_id, "model": first.get("model"), "dim": first.get("dim"), "shards": shards}
    counts = sum_counts(parts)
    with staged_partitions() as batch:
        u2i = StagedTable(batch, root, TABLE, ds, manifest)
        emb = StagedTable(batch, root, EMBEDDING_TABLE, ds, emb_manifest)
        for part in parts:
            u2i.write(part.read(TABLE))
            emb.write(part.read(EMBEDDING_TABLE))
        u2i_table, emb_table = u2i.read(), emb.read()
        _gate_both(u2i_table, emb_table, active, ex, int(first["dim"]), manifest, emb_manifest, counts, t0)
        manifest["generation_seconds"] = round(sum(p.manifest.get("generation_seconds") or 0 for p in parts), 2)
    deleted = {t: apply_retention(root, t, ex.keep_partitions, protect=ds) for t in (TABLE, EMBEDDING_TABLE)}
    remove_staging(root, TABLE, ds, run_id)
    logger.info("published %s and %s from %d parts (%d rows)", u2i.final, emb.final, len(parts), u2i_table.num_rows)
    return _result(u2i, emb, u2i_table, emb_table, manifest, deleted, shards=len(parts))


def main(argv: list[str] | None = None) -> int:
    parser = add_shard_args(arg_parser(__doc__.splitlines()[0]))

    def body(args):
        mode = shard_mode(args, parser)
        cfg, root, ds, run_id = settings(args)
        if mode == "stage":
            return stage_u2i_shard(cfg, root, ds, run_id, args.shard, args.num_shards, args.batch_users)
        if mode == "publish":
            return publish_u2i_parts(cfg, root, ds, run_id, args.num_shards, args.min_coverage)
        return export_u2i(cfg, root, ds, run_id, args.batch_users, args.min_coverage)

    return run_main("u2i", body, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
