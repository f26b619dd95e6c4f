"""faiss index of item embeddings: build from a factory string, publish atomically, load, search.

A published index folder holds ``index.faiss`` (``faiss.write_index``), ``item_ids.parquet``
(row ``i`` of the index is ``item_ids[i]``) and ``_manifest.json`` (factory, dim, n, metric,
build seconds, model version, search parameters), written through
:func:`common.publish.atomic_partition`, so readers never see a half-written index.

Vectors are L2-normalised and searched by inner product (= cosine). ``"HNSW32,Flat"`` suits
up to a few million items; ``"IVF1024,PQ32"`` (trained on a sample) trades recall for memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.paths import MANIFEST, is_published
from common.publish import atomic_partition, read_manifest
from karma_model.metrics import DEFAULT_KS, ranks_from_topk

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IDS_FILE = "item_ids.parquet"
METRICS = ("ip", "l2")


class IndexLoadError(RuntimeError):
    """A published index folder is missing, incomplete or unreadable."""


@dataclass
class IndexParams:
    """How to build and search the index (``ef_search`` for HNSW, ``nprobe`` for IVF)."""

    factory: str = "HNSW32,Flat"
    metric: str = "ip"
    normalize: bool = True
    ef_construction: int = 40
    ef_search: int = 256
    nprobe: int = 32
    train_size: int = 100_000
    seed: int = 0

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        for name in ("ef_construction", "ef_search", "nprobe", "train_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


def _faiss():
    return faiss


def _prepare(vectors, normalize: bool) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"vectors must be (n, dim), got shape {x.shape}")
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.ascontiguousarray(x / np.maximum(norms, 1e-12))
    return x


def set_search_params(index, ef_search: int | None = None, nprobe: int | None = None) -> None:
    """Set ``efSearch`` / ``nprobe`` where the index has them (silently skipped otherwise)."""
    faiss = _faiss()
    space = faiss.ParameterSpace()
    for name, value in (("efSearch", ef_search), ("nprobe", nprobe)):
        if value is None:
            continue
        try:
            space.set_index_parameter(index, name, int(value))
        except RuntimeError:
            logger.debug("index %s has no parameter %s", type(index).__name__, name)


class ItemIndex:
    """A faiss index plus the item id of each row; ``search`` returns item ids, not rows."""

    def __init__(self, index, item_ids: Sequence, params: IndexParams, manifest: dict | None = None):
        ids = np.asarray(item_ids)
        if ids.dtype.kind in "US":
            ids = ids.astype(object)
        if index.ntotal != len(ids):
            raise ValueError(f"index has {index.ntotal} vectors but {len(ids)} item ids")
        self.index = index
        self.item_ids = ids
        self.params = params
        self.manifest = manifest or {}
        self._missing = None if ids.dtype == object else -1
        self.set_search_params(params.ef_search, params.nprobe)

    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    def set_search_params(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        set_search_params(self.index, ef_search, nprobe)
        self.params.ef_search = ef_search or self.params.ef_search
        self.params.nprobe = nprobe or self.params.nprobe

    def search_rows(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)``, each ``(n_queries, k)``, best first; missing results have row -1."""
        x = _prepare(queries, self.params.normalize)
        if x.shape[1] != self.dim:
            raise ValueError(f"queries have dim {x.shape[1]}, index has dim {self.dim}")
        return self.index.search(x, k)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, item_ids)``, each ``(n_queries, k)``; missing results are ``None`` (or -1)."""
        scores, rows = self.search_rows(queries, k)
        ids = self.item_ids[np.clip(rows, 0, None)] if len(self.item_ids) else np.empty(rows.shape, object)
        if (rows < 0).any():
            ids = ids.copy()
            ids[rows < 0] = self._missing
        return scores, ids


def build_index(vectors, item_ids: Sequence, params: IndexParams | None = None) -> ItemIndex:
    """Build (train on a sample if needed, then add all vectors) an index over ``vectors``."""
    faiss = _faiss()
    params = params or IndexParams()
    x = _prepare(vectors, params.normalize)
    n, dim = x.shape
    if n != len(item_ids):
        raise ValueError(f"{n} vectors but {len(item_ids)} item ids")
    metric = faiss.METRIC_INNER_PRODUCT if params.metric == "ip" else faiss.METRIC_L2
    t0 = time.perf_counter()
    index = faiss.index_factory(dim, params.factory, metric)
    concrete = faiss.downcast_index(index)
    hnsw = getattr(concrete, "hnsw", None)
    if hnsw is not None:
        hnsw.efConstruction = params.ef_construction
    if hasattr(concrete, "do_polysemous_training"):
        # On by default for PQ factories; it only serves Hamming-filtered search and costs minutes.
        concrete.do_polysemous_training = False
    if not index.is_trained:
        rng = np.random.default_rng(params.seed)
        sample = x if n <= params.train_size else x[np.sort(rng.choice(n, params.train_size, replace=False))]
        logger.info("training %s on %d of %d vectors", params.factory, len(sample), n)
        index.train(sample)
    index.add(x)
    build_seconds = time.perf_counter() - t0
    logger.info("built %s over %d x %d in %.1fs", params.factory, n, dim, build_seconds)
    manifest = {
        "factory": params.factory,
        "dim": dim,
        "n": n,
        "metric": params.metric,
        "build_seconds": round(build_seconds, 3),
        "params": asdict(params),
    }
    return ItemIndex(index, item_ids, params, manifest)


def save_index(item_index: ItemIndex, out_dir: str | Path, model_version: str = "", extra: dict | None = None
               ) -> Path:
    """Publish the index to ``out_dir`` atomically (replaces a previous index there)."""
    faiss = _faiss()
    manifest = {**item_index.manifest, "params": asdict(item_index.params), "model_version": model_version,
                "index_file": INDEX_FILE, "ids_file": IDS_FILE, **(extra or {})}
    ids = item_index.item_ids
    column = pa.array(ids.tolist(), type=pa.string()) if ids.dtype == object else pa.array(ids)
    with atomic_partition(out_dir, manifest) as tmp:
        faiss.write_index(item_index.index, str(tmp / INDEX_FILE))
        pq.write_table(pa.table({"item_id": column}), tmp / IDS_FILE)
    return Path(out_dir)


def load_index(path: str | Path, ef_search: int | None = None, nprobe: int | None = None) -> ItemIndex:
    """Load a published index; :class:`IndexLoadError` names the path when anything is wrong."""
    faiss = _faiss()
    path = Path(path)
    if not path.is_dir():
        raise IndexLoadError(f"no index folder at {path}")
    if not is_published(path):
        raise IndexLoadError(f"index folder {path} is not published (no _SUCCESS marker)")
    manifest = read_manifest(path)
    if not manifest:
        raise IndexLoadError(f"index folder {path} has no {MANIFEST}")
    index_file, ids_file = path / manifest.get("index_file", INDEX_FILE), path / manifest.get("ids_file", IDS_FILE)
    for f in (index_file, ids_file):
        if not f.is_file():
            raise IndexLoadError(f"missing index file {f}")
    try:
        index = faiss.read_index(str(index_file))
    except RuntimeError as e:
        raise IndexLoadError(f"cannot read faiss index {index_file}: {str(e).strip().splitlines()[-1]}") from e
    try:
        item_ids = pq.read_table(ids_file).column("item_id").to_numpy(zero_copy_only=False)
    except Exception as e:
        raise IndexLoadError(f"cannot read item ids {ids_file}: {e}") from e
    if index.ntotal != len(item_ids) or index.d != manifest.get("dim", index.d):
        raise IndexLoadError(f"index {index_file} has {index.ntotal} x {index.d} vectors but {ids_file} has "
                             f"{len(item_ids)} ids and the manifest says dim {manifest.get('dim')}")
    params = IndexParams(**{k: v for k, v in manifest.get("params", {}).items()
                            if k in IndexParams.__dataclass_fields__})
    params.ef_search = ef_search or params.ef_search
    params.nprobe = nprobe or params.nprobe
    logger.info("loaded %s (%d items, %s)", path, index.ntotal, manifest.get("factory"))
    return ItemIndex(index, item_ids, params, manifest)


def index_ranks(item_index: ItemIndex, user_emb, target_ids: Sequence, exclude_lists: Sequence[Sequence] | None = None,
                ks: Sequence[int] = DEFAULT_KS, batch: int = 4096) -> np.ndarray:
    """Ranks of each user's target item id through the index (a target beyond the list is a miss).

    Searches ``max(ks) + longest exclusion list`` neighbours so that filtering the history
    still leaves ``max(ks)`` candidates, with ``efSearch`` raised to at least twice that (a lasting
    change to ``item_index``); feed the ranks to :func:`karma_model.metrics.retrieval_metrics`.
    """
    longest = max((len(e) for e in exclude_lists), default=0) if exclude_lists is not None else 0
    k = min(max(ks) + longest, len(item_index))
    if item_index.params.ef_search < 2 * k:  # an HNSW beam narrower than k loses deep neighbours
        item_index.set_search_params(ef_search=2 * k)
    user_emb = np.asarray(user_emb, dtype=np.float32)
    ranks = np.empty(len(user_emb))
    for start in range(0, len(user_emb), batch):
        stop = min(start + batch, len(user_emb))
        _, found = item_index.search(user_emb[start:stop], k)
        excl = None if exclude_lists is None else exclude_lists[start:stop]
        ranks[start:stop] = ranks_from_topk(found, target_ids[start:stop], excl, invalid=item_index._missing)
    return ranks
