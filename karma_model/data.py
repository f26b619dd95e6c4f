"""KARMA data: read samples and the item corpus, serialise histories and items into token ids, collate.

Serialisation (token level, no chat template):

- history: ``<bos>`` then, for each of the last ``history_len`` behaviours (oldest first),
  ``<time_bucket><event_type>[<IMG>] text``, then ``<INTEREST>``; when over ``max_history_tokens``
  the oldest behaviours are dropped whole. Time buckets and event types are special tokens
  (``MARKER_TOKENS``); an unknown value falls back to plain text.
- item: ``<bos>[<IMG>] text <ITEM>`` (the corpus ``text``: title | category path | brand | tags).
- generation / reconstruction target: the next item's text followed by ``<eos>``.

``<IMG>`` is a placeholder whose input embedding the model replaces by the image adapter's output
(one soft token); it is only inserted when ``use_images`` is on and the item has a vector.

With ``text_features`` the batches also carry MiniLM text vectors (the only pretrained weights
available offline, :mod:`common.text_encoder`): an item's is the vector of its corpus text, a
history's the recency-weighted mean (``text_decay``) of its behaviours' text vectors (item text or
query), as the text baseline builds it; the model adds their shared projection to ``e_u`` / ``e_i``.
With ``item_id_buckets`` they carry each item's ID bucket (``crc32(item_id) mod N``, 0 = none) and,
for a history, its items' buckets with recency weights.
``<bos>`` is omitted for tokenizers without one (Qwen).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from base_lm import TASK_TOKENS
from common.arrow_io import read_partition
from common.paths import is_published, latest_published_ds, partition_path
from common.schemas import ITEM_CORPUS, KARMA_SAMPLES
from common.text_encoder import MINILM_DIM, encode_texts
from karma_model.config import KarmaConfig

logger = logging.getLogger(__name__)

TIME_BUCKETS = ("lt_1h", "lt_1d", "1d_ago", "2_3d_ago", "4_7d_ago", "gt_7d_ago")
BEHAVIOUR_TYPES = ("search", "click", "cart", "buy")
MARKER_TOKENS = tuple(f"<{b}>" for b in TIME_BUCKETS) + tuple(f"<{t}>" for t in BEHAVIOUR_TYPES)
#: Every token a KARMA tokenizer must have (added to foreign checkpoints on load).
KARMA_TOKENS = TASK_TOKENS + MARKER_TOKENS
IGNORE = -100


# --- reading ------------------------------------------------------------------------------------
def read_samples(data_root: str | Path, ds_list: Sequence[str], split: str | None = None) -> pa.Table:
    """``karma_samples`` rows of the published partitions in ``ds_list`` (optionally one split)."""
    tables = [
        read_partition(data_root, "samples", "karma_samples", ds, schema=KARMA_SAMPLES)
        for ds in ds_list
        if is_published(partition_path(data_root, "samples", "karma_samples", ds))
    ]
    table = pa.concat_tables(tables) if tables else KARMA_SAMPLES.empty_table()
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    return table


def read_item_corpus(data_root: str | Path, ds: str) -> pa.Table:
    """The newest published ``item_corpus`` at or before ``ds``."""
    corpus_ds = latest_published_ds(data_root, "samples", "item_corpus", ds)
    if corpus_ds is None:
        raise FileNotFoundError(f"no item_corpus partition at or before {ds} under {data_root}")
    return read_partition(data_root, "samples", "item_corpus", corpus_ds, schema=ITEM_CORPUS)


class ItemCatalog:
    """Item ids, texts and optional image vectors, addressed by row (= index position)."""

    def __init__(
        self,
        item_ids: Sequence[str],
        texts: Sequence[str],
        images: np.ndarray | None = None,
        has_image: np.ndarray | None = None,
    ):
        self.item_ids = list(item_ids)
        self.texts = [t or "" for t in texts]
        self.row = {item: i for i, item in enumerate(self.item_ids)}
        if len(self.row) != len(self.item_ids):
            raise ValueError("duplicate item ids in the catalogue")
        self.images = images  # (n_items, image_dim) float32, zero rows where has_image is False
        self.has_image = has_image if has_image is not None else np.zeros(len(self.item_ids), dtype=bool)

    @classmethod
    def from_table(cls, table: pa.Table) -> ItemCatalog:
        ids = table.column("item_id").to_pylist()
        texts = table.column("text").to_pylist()
        vectors = (
            table.column("image_embedding").to_pylist() if "image_embedding" in table.column_names else []
        )
        dims = {len(v) for v in vectors if v}
        if len(dims) > 1:
            raise ValueError(f"image vectors of several sizes: {sorted(dims)}")
        images = has = None
        if dims:
            dim = dims.pop()
            has = np.array([bool(v) for v in vectors])
            images = np.zeros((len(ids), dim), dtype=np.float32)
            images[has] = np.asarray([v for v in vectors if v], dtype=np.float32)
        return cls(ids, texts, images, has)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def image_dim(self) -> int | None:
        return None if self.images is None else self.images.shape[1]


# --- serialisation ------------------------------------------------------------------------------
class KarmaEncoder:
    """Turns histories and catalogue rows into token ids (+ image vectors) for one tokenizer."""

    def __init__(self, tokenizer, config: KarmaConfig, catalog: ItemCatalog):
        self.tokenizer = tokenizer
        self.config = config
        self.catalog = catalog
        vocab = tokenizer.get_vocab()
        missing = [t for t in KARMA_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks {missing}: load the backbone with KarmaModel.from_base")
        self.ids = {t: vocab[t] for t in KARMA_TOKENS}
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id
        self.use_images = config.use_images and catalog.images is not None
        if config.use_images and catalog.images is None:
            logger.warning("use_images is on but the item corpus has no image vectors: text only")
        if self.use_images and catalog.image_dim != config.image_dim:
            raise ValueError(
                f"catalogue images have dim {catalog.image_dim}, config.image_dim={config.image_dim}"
            )
        self._text_cache: dict[str, list[int]] = {}
        self.use_text = bool(config.text_features)
        self.id_buckets = int(config.item_id_buckets)
        self._vectors: dict[str, np.ndarray] = {}  # MiniLM vector per text (text_features)

    # --- item-ID buckets (item_id_buckets) ---------------------------------------------------------
    def id_bucket(self, item_id: str | None) -> int:
        """1 + crc32(item_id) mod ``item_id_buckets`` (stable across processes); 0 = no item."""
        return 1 + zlib.crc32(item_id.encode()) % self.id_buckets if item_id else 0

    def history_id_buckets(self, histories: Sequence[Sequence[dict]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(buckets (B, H), weights (B, H))`` of the last ``history_len`` behaviours' items,
        recency-weighted (``text_decay``) and normalised to sum 1 over the items of each row."""
        rows = [[self.id_bucket(b.get("item_id")) for b in list(h)[-self.config.history_len :]] for h in histories]
        width = max([len(r) for r in rows] + [1])
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        weights = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, r in enumerate(rows):
            if not r:
                continue
            w = self.config.text_decay ** np.arange(len(r) - 1, -1, -1, dtype=np.float64) * (np.asarray(r) > 0)
            ids[i, : len(r)] = torch.tensor(r)
            if w.sum() > 0:
                weights[i, : len(r)] = torch.from_numpy((w / w.sum()).astype(np.float32))
        return ids, weights

    def item_id_buckets(self, rows: Sequence[int]) -> torch.Tensor:
        return torch.tensor([self.id_bucket(self.catalog.item_ids[r]) for r in rows], dtype=torch.long)

    # --- MiniLM text vectors (text_features) ------------------------------------------------------
    def prepare_texts(self, texts) -> None:
        """Encode (in one batch) the texts not yet cached."""
        new = sorted({t or "" for t in texts} - self._vectors.keys())
        if new:
            self._vectors.update(zip(new, encode_texts(new), strict=True))

    def text_vector(self, text: str | None) -> np.ndarray:
        text = text or ""
        if text not in self._vectors:
            self.prepare_texts([text])
        return self._vectors[text]

    def history_texts(self, behaviours: Sequence[dict]) -> list[str]:
        return [b.get("text") or "" for b in list(behaviours)[-self.config.history_len :]]

    def history_vector(self, behaviours: Sequence[dict]) -> np.ndarray:
        """Recency-weighted mean of the last ``history_len`` behaviours' text vectors (not normalised)."""
        texts = self.history_texts(behaviours)
        if not texts:
            return np.zeros(MINILM_DIM, dtype=np.float32)
        weights = self.config.text_decay ** np.arange(len(texts) - 1, -1, -1, dtype=np.float64)
        vectors = np.stack([self.text_vector(t) for t in texts])
        return (weights @ vectors / weights.sum()).astype(np.float32)

    def history_vectors(self, histories: Sequence[Sequence[dict]]) -> torch.Tensor:
        self.prepare_texts(t for h in histories for t in self.history_texts(h))
        return torch.from_numpy(np.stack([self.history_vector(h) for h in histories]))  # (B, 384)

    def item_vectors(self, rows: Sequence[int]) -> torch.Tensor:
        texts = [self.catalog.texts[r] for r in rows]
        self.prepare_texts(texts)
        return torch.from_numpy(np.stack([self._vectors[t] for t in texts]))  # (N, 384)

    def text_ids(self, text: str) -> list[int]:
        ids = self._text_cache.get(text)
        if ids is None:
            ids = self.tokenizer(text or "", add_special_tokens=False)["input_ids"]
            if len(self._text_cache) < 1_000_000:
                self._text_cache[text] = ids
        return ids

    def _marker(self, value: str | None) -> list[int]:
        token = f"<{value}>"
        if token in self.ids:
            return [self.ids[token]]
        return self.text_ids(f"{value} ") if value else []

    def _image_row(self, item_id: str | None) -> int | None:
        if not self.use_images or item_id is None:
            return None
        row = self.catalog.row.get(item_id)
        return row if row is not None and self.catalog.has_image[row] else None

    def history(self, behaviours: Sequence[dict]) -> tuple[list[int], list[int]]:
        """``(token ids ending with <INTEREST>, catalogue rows of the <IMG> slots in order)``."""
        cfg = self.config
        budget = cfg.max_history_tokens - len(self.bos) - 1
        pieces: list[tuple[list[int], int | None]] = []
        for b in reversed(list(behaviours)[-cfg.history_len :]):
            img = self._image_row(b.get("item_id"))
            ids = self._marker(b.get("time_bucket")) + self._marker(b.get("event_type"))
            ids += ([self.ids["<IMG>"]] if img is not None else []) + self.text_ids(b.get("text") or "")[
                : cfg.max_text_tokens
            ]
            if len(ids) > budget:
                break
            budget -= len(ids)
            pieces.append((ids, img))
        pieces.reverse()  # oldest first
        ids = self.bos + [t for p, _ in pieces for t in p] + [self.ids["<INTEREST>"]]
        return ids, [img for _, img in pieces if img is not None]

    def item(self, row: int) -> tuple[list[int], list[int]]:
        """``(<bos>[<IMG>] text <ITEM>, [row] if the item's image is used else [])``."""
        img = self._image_row(self.catalog.item_ids[row])
        text = self.text_ids(self.catalog.texts[row])[: self.config.max_item_tokens]
        slot = [self.ids["<IMG>"]] if img is not None else []
        return self.bos + slot + text + [self.ids["<ITEM>"]], ([img] if img is not None else [])

    def target(self, row: int) -> list[int]:
        """The next item's text tokens then ``<eos>`` (for L_gen and L_rec)."""
        return self.text_ids(self.catalog.texts[row])[: self.config.max_target_tokens] + [self.eos_id]

    def images(self, rows: Sequence[int], dim: int | None = None) -> torch.Tensor:
        dim = dim or self.catalog.image_dim or self.config.image_dim
        if not rows:
            return torch.zeros(0, dim)
        return torch.from_numpy(self.catalog.images[list(rows)])  # (n_slots, image_dim)


# --- datasets -----------------------------------------------------------------------------------
@dataclass
class KarmaExample:
    sample_id: str
    history_ids: list[int]
    history_image_rows: list[int]
    target_row: int
    negative_rows: list[int]
    history_vector: np.ndarray | None = None  # (384,) with text_features
    history: list[dict] | None = None  # the behaviours, with item_id_buckets


class KarmaDataset:
    """Samples whose target is in the catalogue, serialised lazily (history ids cached per index)."""

    def __init__(self, samples: pa.Table, encoder: KarmaEncoder):
        self.encoder = encoder
        rows = samples.select(["sample_id", "history", "target_item_id", "hard_negative_ids"]).to_pylist()
        catalog = encoder.catalog
        self.rows = [r for r in rows if r["target_item_id"] in catalog.row and r["history"]]
        if len(self.rows) < len(rows):
            logger.warning(
                "dropped %d of %d samples (empty history or target not in the corpus)",
                len(rows) - len(self.rows),
                len(rows),
            )
        self._cache: dict[int, KarmaExample] = {}
        if encoder.use_text:  # one batch for every text the epochs will need
            encoder.prepare_texts([b.get("text") or "" for r in self.rows for b in r["history"]]
                                  + [encoder.catalog.texts[catalog.row[r["target_item_id"]]] for r in self.rows])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> KarmaExample:
        ex = self._cache.get(i)
        if ex is None:
            r = self.rows[i]
            row = self.encoder.catalog.row
            ids, imgs = self.encoder.history(r["history"])
            target = row[r["target_item_id"]]
            negs = [row[n] for n in (r["hard_negative_ids"] or []) if n in row and row[n] != target]
            ex = KarmaExample(
                r["sample_id"],
                ids,
                imgs,
                target,
                list(dict.fromkeys(negs))[: self.encoder.config.max_hard_negatives],
                self.encoder.history_vector(r["history"]) if self.encoder.use_text else None,
                list(r["history"]) if self.encoder.id_buckets else None,
            )
            self._cache[i] = ex
        return ex


# --- collation ----------------------------------------------------------------------------------
def pad(seqs: Sequence[Sequence[int]], value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` padded to the longest sequence, on the left or the right."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, sl] = torch.tensor(list(s), dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask  # (batch, width) each


class KarmaCollator:
    """Builds the training batch for :meth:`KarmaModel.forward` from :class:`KarmaExample` s.

    Candidates for InfoNCE are the batch's positives and hard negatives, deduplicated by item, so a
    user's positive that is another user's negative appears once; ``labels[b]`` is the column of
    user ``b``'s positive. Without in-batch negatives, ``candidate_mask`` keeps only the user's own
    positive and hard negatives. The gen target is appended after ``<INTEREST>`` only when L_gen is
    on, the rec inputs only when L_rec is on (the cheaper variants pay for nothing they do not use).
    """

    def __init__(self, encoder: KarmaEncoder):
        self.encoder = encoder
        self.config = encoder.config
        self.with_gen = self.config.lambda_gen > 0
        self.with_rec = self.config.lambda_rec > 0

    def __call__(self, examples: Sequence[KarmaExample]) -> dict[str, torch.Tensor]:
        enc = self.encoder
        batch: dict[str, torch.Tensor] = {}
        targets = [enc.target(ex.target_row) for ex in examples]
        # history (+ gen target), right-padded; <INTEREST> position given explicitly
        seqs, labels = [], []
        for ex, tgt in zip(examples, targets, strict=True):
            extra = tgt if self.with_gen else []
            seqs.append(ex.history_ids + extra)
            labels.append([IGNORE] * len(ex.history_ids) + extra)
        batch["history_input_ids"], batch["history_attention_mask"] = pad(seqs, enc.pad_id)
        batch["interest_pos"] = torch.tensor([len(ex.history_ids) - 1 for ex in examples])  # (batch,)
        if self.with_gen:
            batch["gen_labels"], _ = pad(labels, IGNORE)  # (batch, seq)
        history_rows = [r for ex in examples for r in ex.history_image_rows]
        if enc.use_images:
            batch["history_images"] = enc.images(history_rows)
        # candidates: positives first, then hard negatives, deduplicated
        candidates = list(
            dict.fromkeys(
                [ex.target_row for ex in examples] + [n for ex in examples for n in ex.negative_rows]
            )
        )
        column = {row: j for j, row in enumerate(candidates)}
        batch["labels"] = torch.tensor([column[ex.target_row] for ex in examples])  # (batch,)
        if not self.config.in_batch_negatives:
            mask = torch.zeros((len(examples), len(candidates)), dtype=torch.bool)
            for b, ex in enumerate(examples):
                mask[b, [column[r] for r in [ex.target_row, *ex.negative_rows]]] = True
            batch["candidate_mask"] = mask  # (batch, n_candidates)
        items = [enc.item(row) for row in candidates]
        batch["item_input_ids"], batch["item_attention_mask"] = pad(
            [ids for ids, _ in items], enc.pad_id, left=True
        )
        if enc.use_images:
            batch["item_images"] = enc.images([r for _, rows in items for r in rows])
        if enc.use_text:
            batch["history_text"] = torch.from_numpy(np.stack([ex.history_vector for ex in examples]))  # (B, 384)
            batch["item_text"] = enc.item_vectors(candidates)  # (n_candidates, 384)
        if enc.id_buckets:
            batch["history_id_buckets"], batch["history_id_weights"] = enc.history_id_buckets(
                [ex.history for ex in examples])  # (B, H) each
            batch["item_id_buckets"] = enc.item_id_buckets(candidates)  # (n_candidates,)
        if self.with_rec:
            rec = [[enc.ids["<REC>"]] + tgt for tgt in targets]
            batch["rec_input_ids"], batch["rec_attention_mask"] = pad(rec, enc.pad_id)
            batch["rec_labels"], _ = pad([[IGNORE] + tgt for tgt in targets], IGNORE)
            if enc.use_images:
                rows = [ex.target_row for ex in examples]
                batch["image_targets"] = enc.images(rows)  # (batch, image_dim)
                batch["image_target_mask"] = torch.from_numpy(enc.catalog.has_image[rows].copy())
        return batch


def collate_histories(encoder: KarmaEncoder, histories: Sequence[Sequence[dict]]) -> dict[str, torch.Tensor]:
    """Inference batch for :meth:`KarmaModel.encode_history` (left-padded: <INTEREST> is last)."""
    encoded = [encoder.history(h) for h in histories]
    ids, mask = pad([ids for ids, _ in encoded], encoder.pad_id, left=True)
    batch = {"input_ids": ids, "attention_mask": mask}
    if encoder.use_images:
        batch["images"] = encoder.images([r for _, rows in encoded for r in rows])
    if encoder.use_text:
        batch["text"] = encoder.history_vectors(histories)
    if encoder.id_buckets:
        batch["id_buckets"], batch["id_weights"] = encoder.history_id_buckets(histories)
    return batch


def collate_items(encoder: KarmaEncoder, rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """Inference batch for :meth:`KarmaModel.encode_items` (left-padded: <ITEM> is last)."""
    encoded = [encoder.item(r) for r in rows]
    ids, mask = pad([ids for ids, _ in encoded], encoder.pad_id, left=True)
    batch = {"input_ids": ids, "attention_mask": mask}
    if encoder.use_images:
        batch["images"] = encoder.images([r for _, img in encoded for r in img])
    if encoder.use_text:
        batch["text"] = encoder.item_vectors(rows)
    if encoder.id_buckets:
        batch["id_buckets"] = encoder.item_id_buckets(rows)
    return batch
