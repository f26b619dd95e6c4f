"""u2i: top-K items per active user from the fused retrieval channels, and the user interest embeddings.

The list fuses four channels (:mod:`karma_model.fusion`): KARMA (the registered model encodes the
user's history, the model's ``history_len`` last behaviours before the end of ``ds``, built as in
:mod:`export.data`, into ``e_u``; its faiss index returns the nearest items), co-occurrence,
MiniLM text and popularity (fitted, tuned and saved by ``karma_model.evaluate`` in the model
version's ``retrieval/``), by the weights fitted on the valid split. Items of the user's history
are filtered out of every channel; the ``export.u2i_k`` best fused items are kept, each with the
``channel`` that contributed most to it.

Which fusion serves (:func:`retrieval_plan`): when KARMA's gate refused the day's version, the day's
fused list *without* KARMA (its channels and weights), and the manifest says why; otherwise the
list *with* the registered KARMA version serving on ``ds``. ``user_interest_embedding`` holds
``e_u`` of the registered KARMA version as the model outputs it (not normalised), one row per active
user; with no KARMA registered at all it is not published (the u2i manifest says so).

Both tables are staged together and published together (one ``PartitionBatch``): both or
neither. Gates: coverage of the active users, null rates, duplicate (user, rank) and
(user, item), scores in [0, 1], list lengths in [``min_list_len``, ``u2i_k``]; for the
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

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.device import resolve
from common.publish import staged_partitions
from common.registry import DECISIONS_DIR, model_dir, read_decision
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
from export.models import Registered
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
from karma_model.channels import FUSION_FILE, RETRIEVAL_DIR, HeuristicChannels
from karma_model.data import ItemCatalog, KarmaEncoder, collate_histories, read_item_corpus
from karma_model.fusion import CHANNELS, CandidatePool, FusionFit
from karma_model.index import IndexLoadError, load_index
from karma_model.load import load_karma

logger = logging.getLogger(__name__)

TABLE = "u2i"
EMBEDDING_TABLE = "user_interest_embedding"
MODEL = "karma"
HEURISTICS = "heuristics"  # u2i.model_name when the fused list serves without KARMA
KEYS = list(UNIQUE_KEYS[TABLE])  # user_id, rank
_SCORE_EPS = 1e-3
#: Rows of every embedding / search block, at most (``min(EMBED_BLOCK, batch_users)``; the last
#: block of a batch is topped up with copies of its last row).
EMBED_BLOCK = 64


@dataclass
class RetrievalPlan:
    """What serves a day's u2i: the version whose channels and fusion weights serve
    (``channels_version``), the fit (``with`` or ``without`` KARMA), the registered KARMA version
    whose model fills the KARMA channel (``with`` only) and the embeddings (None: none registered)."""

    mode: str  # with | without
    channels_version: str
    channels_dir: Path
    fit: FusionFit
    karma: Registered | None
    reason: str
    fusion: dict

    @property
    def serving(self) -> str:
        return f"fused_{self.mode}_karma"


def _read_fusion(root: str, version: str) -> tuple[Path, dict]:
    folder = model_dir(root, MODEL, version) / RETRIEVAL_DIR
    path = folder / FUSION_FILE
    try:
        return folder, json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ExportInputError(f"{path}: KARMA version {version} has no fitted retrieval channels "
                               "(karma_model.evaluate writes them with the three baselines)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportInputError(f"{path}: unreadable fusion: {exc}") from exc


def _gated_versions(root: str, ds: str) -> list[str]:
    """KARMA versions at or before ``ds`` that went through the gate (registered or refused)."""
    folder = model_dir(root, MODEL) / DECISIONS_DIR
    return sorted(p.stem for p in folder.glob("*.json") if p.stem <= ds) if folder.is_dir() else []


def retrieval_plan(root: str, ds: str) -> RetrievalPlan:
    """The fusion that serves ``ds``: *without* KARMA when the newest gated version at or before
    ``ds`` was refused (its fitted channels and weights), else *with* the KARMA version serving on
    ``ds`` (:func:`export.models.resolve_registered`). :class:`ExportInputError` naming the path
    when no version has fitted channels."""
    reg = models.resolve_registered(root, (MODEL,), ds)
    gated = _gated_versions(root, ds)
    newest = read_decision(root, MODEL, gated[-1]) if gated else None
    if newest is not None and not newest.get("registered"):
        version = gated[-1]
        folder, fusion = _read_fusion(root, version)
        if "without" not in fusion:
            raise ExportInputError(f"{folder / FUSION_FILE}: no fit without KARMA")
        reason = (f"KARMA {version} refused by its gate ({'; '.join(newest.get('failures') or [])}): "
                  "serving the fused list without KARMA")
        return RetrievalPlan("without", version, folder, FusionFit.from_dict(fusion["without"]["fit"]), reg, reason,
                             fusion)
    if reg is None:
        raise ExportInputError(f"no KARMA version gated at or before {ds} under {model_dir(root, MODEL)}: "
                               "nothing has fitted the retrieval channels")
    folder, fusion = _read_fusion(root, reg.version)
    if "with" not in fusion:
        raise ExportInputError(f"{folder / FUSION_FILE}: no fit with KARMA")
    reason = f"KARMA {reg.version} registered: serving the fused list with KARMA"
    return RetrievalPlan("with", reg.version, folder, FusionFit.from_dict(fusion["with"]["fit"]), reg, reason, fusion)


def load_karma_model(reg: Registered):
    """``(model, tokenizer)`` of a registered KARMA version; :class:`ExportInputError` naming the path."""
    try:
        return load_karma(reg.path, device=resolve())
    except Exception as exc:
        raise ExportInputError(f"cannot load KARMA model {MODEL}/{reg.version} at {reg.path}: "
                               f"{type(exc).__name__}: {exc}") from exc


def load_karma_index(reg: Registered, model, root: str):
    """``(ItemIndex, index version)`` of a registered KARMA version, checked against the model."""
    index_dir = reg.manifest.get("index_dir") or str(Path(root) / "indexes" / MODEL / reg.version)
    try:
        index = load_index(index_dir)
    except IndexLoadError as exc:
        raise ExportInputError(f"KARMA index of {MODEL}/{reg.version}: {exc}") from exc
    if index.dim != model.config.proj_dim:
        raise ExportInputError(f"index {index_dir} has dim {index.dim} but {MODEL}/{reg.version} embeds "
                               f"{model.config.proj_dim}")
    return index, str(index.manifest.get("model_version") or Path(index_dir).name)


def gate_u2i(u2i, emb, active, ex, dim: int | None, with_karma: bool = True) -> dict[str, dict]:
    """The gates of u2i and, when ``emb`` is not None, of the embeddings; ``index_version`` is null
    (allowed) when the fused list serves without KARMA."""
    nullable = ex.max_null_rate if with_karma else {"*": ex.max_null_rate, "index_version": 1.0}
    out = {
        TABLE: gates.run_gates({
            "coverage": gates.check_coverage(u2i, active, ex.min_coverage),
            "null_rates": gates.check_null_rates(u2i, nullable),
            "duplicate_keys": gates.check_duplicates(u2i, KEYS) + gates.check_duplicates(u2i, ["user_id", "item_id"]),
            "score_range": gates.check_range(u2i, "score", 0.0, 1.0 + _SCORE_EPS),
            "channels": gates.check_values(u2i, "channel", CHANNELS),
            "list_lengths": gates.check_list_lengths(u2i, ["user_id"], ex.min_list_len, ex.u2i_k),
        }),
    }
    if emb is not None:
        out[EMBEDDING_TABLE] = gates.run_gates({
            "coverage": gates.check_coverage(emb, active, ex.min_coverage),
            "null_rates": gates.check_null_rates(emb, ex.max_null_rate),
            "duplicate_keys": gates.check_duplicates(emb, ["user_id"]),
            "dimension": gates.check_value_lengths(emb, "embedding", dim, dim),
            "finite": gates.check_finite_lists(emb, "embedding"),
        })
    return out


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


def baseline_history(history: Sequence[dict], row_of: dict[str, int]) -> list:
    """A history for the heuristic channels: catalogue rows, query text for behaviours without one."""
    return [row_of[b["item_id"]] if b.get("item_id") in row_of else (b.get("text") or None) for b in history]


class _Retrieval:
    """The serving plan, channels, KARMA release and inputs of one run (or one shard of it), and the
    loop that writes the u2i rows and embeddings of the run's active users batch by batch."""

    def __init__(self, root: str, ds: str, run_id: str, ex, shard: tuple[int, int] | None = None):
        self.ds, self.ex = ds, ex
        self.plan = plan = retrieval_plan(root, ds)
        try:
            self.channels = HeuristicChannels.load(plan.channels_dir)
        except (OSError, ValueError) as exc:
            raise ExportInputError(f"retrieval channels of {MODEL}/{plan.channels_version}: {exc}") from exc
        self.row_of = {item: r for r, item in enumerate(self.channels.item_ids)}
        self.depth = int(plan.fusion.get("depth") or 400)
        self.model = self.index = self.encoder = None
        index_version = None
        self.history_len = max(int(self.channels.history_len), 1)
        if plan.karma is not None:  # the registered model: the embeddings, and the KARMA channel when it serves
            self.model, tok = load_karma_model(plan.karma)
            config = self.model.config
            self.history_len = max(int(config.history_len), 1)
            if config.use_images:
                catalog = ItemCatalog.from_table(read_item_corpus(root, ds))
            else:  # the encoder reads the catalogue for image slots only
                catalog = ItemCatalog(list(self.channels.item_ids), [""] * len(self.channels.item_ids))
            self.encoder = KarmaEncoder(tok, config, catalog)
            if plan.mode == "with":
                self.index, index_version = load_karma_index(plan.karma, self.model, root)
                self.search_k = min(self.depth + self.history_len, len(self.index))
                if self.index.params.ef_search < 2 * self.search_k:
                    self.index.set_search_params(ef_search=2 * self.search_k)
        self.inputs = inputs = load_inputs(root, ds, ex, shard=shard)
        self.anchor = anchor_time(ds)
        self.dim = int(self.model.config.proj_dim) if self.model is not None else None
        karma = plan.karma
        model = ({"name": karma.name, "version": karma.version, "path": str(karma.path)} if karma is not None
                 else None)
        self.meta = {"run_id": run_id, "model_name": MODEL if plan.mode == "with" else HEURISTICS,
                     "model_version": plan.channels_version, "index_version": index_version,
                     "generated_at": self.anchor}
        self.manifest = {"run_id": run_id, "model": model or {"name": MODEL, "version": None, "path": None},
                         "retrieval": {"serving": plan.serving, "reason": plan.reason,
                                       "channels_version": plan.channels_version, "fit": plan.fit.to_dict(),
                                       "depth": self.depth,
                                       "valid": {v: (plan.fusion.get(v) or {}).get("metrics", {}).get("valid")
                                                 for v in ("with", "without")}},
                         "index": ({"version": index_version, "n": len(self.index),
                                    "factory": self.index.manifest.get("factory")} if self.index is not None else None),
                         "k": ex.u2i_k, "history_len": self.history_len, "event_days": inputs.event_days}
        if model is None:
            self.manifest["user_interest_embedding"] = "not published: no KARMA version is registered"
        self.emb_manifest = {"run_id": run_id, "model": model, "dim": self.dim}
        self.counts = {"active_users": len(inputs.active), "empty_history_users": 0, "filtered_history_items": 0,
                       **{f"channel_{c}": 0 for c in CHANNELS}}

    def karma_channel(self, histories, vectors, block: int) -> np.ndarray:
        """``(n, depth)`` catalogue rows of the KARMA ANN neighbours, history items filtered."""
        scores, found = search_users(self.index, vectors, self.search_k, block)  # (n, search_k) each
        out = np.full((len(histories), self.depth), -1, dtype=np.int64)
        for r, (hist, f) in enumerate(zip(histories, found, strict=True)):
            exclude = {b["item_id"] for b in hist if b.get("item_id")}
            self.counts["filtered_history_items"] += sum(1 for x in f if x in exclude)
            rows = [self.row_of[x] for x in f if x is not None and x in self.row_of and x not in exclude]
            rows = list(dict.fromkeys(rows))[: self.depth]
            out[r, : len(rows)] = rows
        return out

    def run(self, write_u2i, write_emb, after_batch=None) -> dict:
        """Encode, retrieve, fuse and filter every active user; ``write_u2i(rows)`` and
        ``write_emb(rows)`` per batch (``write_emb`` unused without a registered KARMA); returns the counts."""
        ex, inputs, counts, plan = self.ex, self.inputs, self.counts, self.plan
        n_batches = (len(inputs.active) + ex.batch_users - 1) // ex.batch_users
        block = min(EMBED_BLOCK, ex.batch_users)  # the same in every shard
        item_ids = self.channels.item_ids
        t0 = time.perf_counter()
        for i, users in enumerate(chunks(inputs.active, ex.batch_users)):
            histories = [inputs.log.history(u, self.anchor, self.history_len) for u in users]
            lists = self.channels.lists([baseline_history(h, self.row_of) for h in histories], self.depth)
            vectors = None
            if self.model is not None:
                vectors = embed_users(self.model, self.encoder, histories, block)  # (n, proj_dim)
                if plan.mode == "with":
                    lists = {"karma": self.karma_channel(histories, vectors, block), **lists}
            fused = CandidatePool(lists).top(plan.fit.weights, plan.fit.k0, ex.u2i_k)
            rows = []
            for r, (u, hist) in enumerate(zip(users, histories, strict=True)):
                counts["empty_history_users"] += not hist
                for rank, (item, score, channel) in enumerate(zip(fused.items[r], fused.scores[r], fused.channel[r],
                                                                  strict=True)):
                    if item < 0:
                        break
                    name = fused.channels[channel]
                    counts[f"channel_{name}"] += 1
                    rows.append({"user_id": u, "rank": rank + 1, "item_id": item_ids[item], "score": float(score),
                                 "channel": name, **self.meta})
            write_u2i(rows)
            if vectors is not None:
                write_emb([{"user_id": u, "model_version": plan.karma.version,
                            "embedding": v.astype(np.float32).tolist()} for u, v in zip(users, vectors, strict=True)])
            done = min((i + 1) * ex.batch_users, len(inputs.active))
            logger.info("u2i batch %d/%d: %d users (%d/%d, %.1f users/s)", i + 1, n_batches, len(users), done,
                        len(inputs.active), done / max(time.perf_counter() - t0, 1e-9))
            fault_hook(i)
            if after_batch is not None:
                after_batch(i)
        return counts


def _gate_both(u2i_table, emb_table, active, ex, dim: int | None, manifest: dict, emb_manifest: dict | None,
               counts: dict, t0: float) -> None:
    """Run the gates of both tables (u2i alone without embeddings), complete the manifests, raise
    ``GateFailed`` on a failure."""
    with_karma = (manifest.get("retrieval") or {}).get("serving") == "fused_with_karma"
    results = gate_u2i(u2i_table, emb_table, active, ex, dim, with_karma)
    manifest.update(counts=counts, rows=u2i_table.num_rows, gates=results[TABLE],
                    content_hash=content_hash(u2i_table, KEYS), seconds=round(time.perf_counter() - t0, 2))
    gates.enforce(TABLE, results[TABLE])
    if emb_table is not None:
        emb_manifest.update(rows=emb_table.num_rows, gates=results[EMBEDDING_TABLE],
                            content_hash=content_hash(emb_table, ["user_id"]))
        gates.enforce(EMBEDDING_TABLE, results[EMBEDDING_TABLE])


def _result(u2i, emb, u2i_table, emb_table, manifest: dict, deleted, **extra) -> dict:
    model = manifest["model"]
    return {"table": TABLE, "path": str(u2i.final), "embedding_path": str(emb.final) if emb is not None else None,
            "rows": u2i_table.num_rows, "embeddings": emb_table.num_rows if emb_table is not None else 0,
            "model": f"{model['name']}/{model['version']}", "serving": manifest["retrieval"]["serving"],
            "index_version": (manifest.get("index") or {}).get("version"), "counts": manifest["counts"],
            "retention_deleted": deleted, "content_hash": manifest["content_hash"], **extra}


def export_u2i(cfg: dict, root: str, ds: str, run_id: str, batch_users: int | None = None,
               min_coverage: float | None = None) -> dict:
    """Retrieve, fuse, embed, gate and publish ``exports/u2i`` and ``exports/user_interest_embedding``."""
    ex = ExportConfig.from_config(cfg, batch_users=batch_users, min_coverage=min_coverage)
    ret = _Retrieval(root, ds, run_id, ex)
    manifest, emb_manifest = ret.manifest, ret.emb_manifest
    t0 = time.perf_counter()
    with staged_partitions() as batch:
        u2i = StagedTable(batch, root, TABLE, ds, manifest)
        emb = StagedTable(batch, root, EMBEDDING_TABLE, ds, emb_manifest) if ret.model is not None else None
        counts = ret.run(u2i.write, emb.write if emb is not None else None)
        u2i_table, emb_table = u2i.read(), (emb.read() if emb is not None else None)
        _gate_both(u2i_table, emb_table, ret.inputs.active, ex, ret.dim, manifest, emb_manifest, counts, t0)
    tables = (TABLE, EMBEDDING_TABLE) if emb is not None else (TABLE,)
    deleted = {t: apply_retention(root, t, ex.keep_partitions, protect=ds) for t in tables}
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
            "model": f"{ret.manifest['model']['name']}/{ret.manifest['model']['version']}"}


#: Part manifest keys every part of a run must share (same model, index and inputs).
PART_SAME = ("model", "retrieval", "index", "k", "history_len", "event_days", "dim", "active_total")


def publish_u2i_parts(cfg: dict, root: str, ds: str, run_id: str, num_shards: int,
                      min_coverage: float | None = None) -> dict:
    """Merge the run's ``num_shards`` complete parts, run the gates of :func:`export_u2i` on the
    whole tables and publish ``exports/u2i`` and ``exports/user_interest_embedding`` together (all
    parts or nothing); then remove the run's staging folder. Loads no model."""
    t0 = time.perf_counter()
    ex, parts, active, first = merged_parts(cfg, root, TABLE, ds, run_id, num_shards, PART_SAME, min_coverage)
    shards = shard_summary(parts)
    keys = ("model", "retrieval", "index", "k", "history_len", "event_days", "user_interest_embedding")
    manifest = {"run_id": run_id, **{k: first[k] for k in keys if k in first}, "shards": shards}
    dim = first.get("dim")
    emb_manifest = {"run_id": run_id, "model": first.get("model"), "dim": dim, "shards": shards}
    counts = sum_counts(parts)
    with staged_partitions() as batch:
        u2i = StagedTable(batch, root, TABLE, ds, manifest)
        emb = StagedTable(batch, root, EMBEDDING_TABLE, ds, emb_manifest) if dim is not None else None
        for part in parts:
            u2i.write(part.read(TABLE))
            if emb is not None:
                emb.write(part.read(EMBEDDING_TABLE))
        u2i_table, emb_table = u2i.read(), (emb.read() if emb is not None else None)
        _gate_both(u2i_table, emb_table, active, ex, dim, manifest, emb_manifest, counts, t0)
        manifest["generation_seconds"] = round(sum(p.manifest.get("generation_seconds") or 0 for p in parts), 2)
    tables = (TABLE, EMBEDDING_TABLE) if emb is not None else (TABLE,)
    deleted = {t: apply_retention(root, t, ex.keep_partitions, protect=ds) for t in tables}
    remove_staging(root, TABLE, ds, run_id)
    logger.info("published %s (%s) from %d parts (%d rows)", u2i.final, manifest["retrieval"]["serving"], len(parts),
                u2i_table.num_rows)
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
