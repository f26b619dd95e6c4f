"""Benchmark the item index: faiss build time, batch-search QPS and recall@K against exact search.

Items are ``--n`` random unit vectors of dimension ``--dim`` drawn around ``--clusters``
centres (some structure, as real item embeddings have); queries come from the same mixture.
The exact reference is ``IndexFlatIP`` on ``--exact-queries`` of the queries. Prints one JSON
object. Usage::

    python bench/karma_index.py --n 1000000 --dim 64
    python bench/karma_index.py --n 100000 --factories "HNSW32,Flat" --ef-search 128 256
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from karma_model.index import IndexParams, build_index  # noqa: E402
from karma_model.metrics import topk_recall  # noqa: E402

logger = logging.getLogger("bench.karma_index")


def clustered_unit_vectors(n: int, dim: int, clusters: int, spread: float, rng: np.random.Generator,
                           centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors near random unit centres (cluster sizes Zipf-like), and the centres."""
    if centres is None:
        centres = rng.standard_normal((clusters, dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = 1.0 / np.arange(1, len(centres) + 1) ** 0.5
    assign = rng.choice(len(centres), size=n, p=sizes / sizes.sum())
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 200_000):  # blocks keep float64 temporaries small
        stop = min(start + 200_000, n)
        block = centres[assign[start:stop]] + spread / np.sqrt(dim) * rng.standard_normal((stop - start, dim))
        x[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x, centres


def timed_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    _scores, rows = index.search(queries, k)
    return rows, time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    items, centres = clustered_unit_vectors(args.n, args.dim, args.clusters, args.spread, rng)
    queries, _ = clustered_unit_vectors(args.queries, args.dim, args.clusters, args.spread, rng, centres)
    data_seconds = time.perf_counter() - t0

    exact = faiss.IndexFlatIP(args.dim)
    exact.add(items)
    ref_queries = queries[: args.exact_queries]
    exact_rows, exact_seconds = timed_search(exact, ref_queries, args.k)
    del exact
    logger.info("exact reference: %d queries in %.1fs", len(ref_queries), exact_seconds)

    results = []
    item_ids = np.arange(args.n)
    for factory in args.factories:
        params = IndexParams(factory=factory, ef_construction=args.ef_construction, train_size=args.train_size,
                             seed=args.seed)
        logger.info("building %s", factory)
        built = build_index(items, item_ids, params)
        is_ivf = "IVF" in factory
        for value in (args.nprobe if is_ivf else args.ef_search):
            built.set_search_params(nprobe=value) if is_ivf else built.set_search_params(ef_search=value)
            rows, seconds = timed_search(built.index, queries, args.k)
            results.append({
                "factory": factory,
                "build_seconds": built.manifest["build_seconds"],
                ("nprobe" if is_ivf else "ef_search"): value,
                "qps": round(len(queries) / seconds, 1),
                "search_seconds": round(seconds, 3),
                f"recall@{args.k}": round(topk_recall(rows[: args.exact_queries], exact_rows, args.k), 4),
                "recall@10": round(topk_recall(rows[: args.exact_queries], exact_rows, 10), 4),
            })
            logger.info("%s", results[-1])
        del built
    return {
        "n": args.n,
        "dim": args.dim,
        "clusters": args.clusters,
        "k": args.k,
        "queries": args.queries,
        "exact_queries": len(ref_queries),
        "exact_qps": round(len(ref_queries) / exact_seconds, 1),
        "data_seconds": round(data_seconds, 1),
        "threads": faiss.omp_get_max_threads(),
        "cpus": os.cpu_count(),
        "faiss": faiss.__version__,
        "machine": platform.machine(),
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.6, help="noise norm around a centre")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--exact-queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--factories", nargs="+", default=["HNSW32,Flat", "IVF1024,PQ32"])
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--train-size", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
