"""Benchmark the nightly export (u2q, x2q, u2i) on synthetic users with tiny untrained models.

For each ``--users`` size: synthetic logs of ``--days`` days copied to ``clean/`` and an item
corpus (``tests/export_fixtures.make_clean_root``: no Spark), a tiny random base LM, untrained
AIGQ-Direct and -Think policies and an untrained KARMA model with its faiss index, registered
the way the export tests register them. Then, in one process, each export entry point publishes
the last day exactly as the DAG's subprocesses do (``export_u2q`` → ``export_x2q`` →
``export_u2i``, gates and atomic publish included), and the benchmark reports:

- ``u2q``: active users per second of the whole entry point and of its generation loop
  (``generation_seconds`` of the manifest); ``x2q`` the same;
- ``u2i``: users (retrieval queries) per second of the entry point (history encoding + faiss
  search + filtering + writing) and the raw faiss search rate on random unit vectors;
- ``end_to_end``: u2q + x2q + u2i wall seconds, and per 1,000 active users;
- ``batched_vs_single``: ``generate_lists`` on the same ``--single-users`` users with the
  configured generation batch vs ``batch_size=1``; users/s of each and the ratio.

An untrained policy rarely closes its list early, so every prompt decodes ``--max-new-tokens``
tokens: the u2q/x2q rates are for that budget (the production default is 96). Output: one JSON
object on stdout; logs on stderr. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/export.py --users 1000 2000 [--max-new-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aigq_model.generate import generate_lists  # noqa: E402
from common.config import load_config  # noqa: E402
from common.hf_offline import quiet_offline_hf  # noqa: E402
from common.logging_setup import setup_logging  # noqa: E402
from common.paths import ds_range, partition_path  # noqa: E402
from common.publish import read_manifest  # noqa: E402
from export import models  # noqa: E402
from export.data import ExportConfig, build_samples, load_inputs  # noqa: E402
from export.u2i import MODEL, export_u2i, load_karma_index, load_karma_model  # noqa: E402
from export.u2q import POLICIES, export_u2q  # noqa: E402
from export.x2q import export_x2q  # noqa: E402
from tests.export_fixtures import make_clean_root, register_tiny_karma, register_tiny_policy, tiny_base  # noqa: E402

logger = logging.getLogger("bench.export")
START_DS = "2026-11-01"


def build_root(work: Path, n_users: int, n_items: int, days: int) -> tuple[Path, str, dict]:
    """The data root, the export date and set-up seconds by step."""
    timings = {}
    t0 = time.perf_counter()
    root = make_clean_root(work / "data", START_DS, days, n_users=n_users, n_items=n_items)
    timings["data_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    base = tiny_base(work / "base")
    register_tiny_policy(root, base, work, "aigq_direct", "direct", START_DS)
    register_tiny_policy(root, base, work, "aigq_think", "think", START_DS)
    timings["policies_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    register_tiny_karma(root, base, work, START_DS)
    timings["karma_index_s"] = round(time.perf_counter() - t0, 2)
    return root, ds_range(START_DS, days)[-1], timings


def export_config(root: Path, batch_users: int, max_new_tokens: int) -> dict:
    cfg = load_config(environ={})
    cfg["data_root"] = str(root)
    cfg["export"] = {**cfg["export"], "batch_users": batch_users}
    cfg["export"]["generate"] = {**cfg["export"]["generate"], "max_new_tokens": max_new_tokens}
    return cfg


def batched_vs_single(cfg: dict, root: Path, ds: str, n: int) -> dict:
    """The same users' Direct lists with the configured generation batch vs one at a time."""
    ex = ExportConfig.from_config(cfg)
    reg = models.require_registered(root, POLICIES, "AIGQ-Direct policy")
    style, max_history = models.policy_settings(reg)
    model, tok = models.load_policy(reg)
    decoding, gen_batch = models.decoding(cfg, ex.generate)
    inputs = load_inputs(root, ds, ex)
    samples = [s for s in build_samples(inputs.log, inputs.active, inputs.profile, ds, ex.max_history)
               if s["history"]][:n]  # users with a history: the model is called for each
    out = {"users": len(samples), "generation_batch": gen_batch}
    for label, batch in (("batched", gen_batch), ("single", 1)):
        t0 = time.perf_counter()
        generate_lists(model, tok, samples, kind="direct", k=ex.u2q_k, batch_size=batch, decoding=decoding,
                       fallback=[], style=style, max_history=max_history)
        seconds = time.perf_counter() - t0
        out[f"{label}_s"] = round(seconds, 2)
        out[f"{label}_users_per_s"] = round(len(samples) / seconds, 2)
    out["batched_over_single"] = round(out["batched_users_per_s"] / out["single_users_per_s"], 2)
    return out


def faiss_search_rate(root: Path, k: int, n: int = 2048) -> dict:
    """faiss search alone: random unit vectors of the model's dimension, one call of ``n``."""
    reg = models.require_registered(str(root), (MODEL,), "KARMA model")
    model, _tok = load_karma_model(reg)
    index, _v = load_karma_index(reg, model, str(root))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, model.config.proj_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    k = min(k, len(index))
    index.search(vectors[:16], k)  # warm-up
    t0 = time.perf_counter()
    index.search(vectors, k)
    seconds = time.perf_counter() - t0
    return {"queries": n, "k": k, "items": len(index), "seconds": round(seconds, 4),
            "queries_per_s": round(n / seconds, 1)}


def run_size(n_users: int, args, work: Path) -> dict:
    root, ds, setup = build_root(work, n_users, args.items, args.days)
    cfg = export_config(root, args.batch_users, args.max_new_tokens)
    out: dict = {"users_generated": n_users, "items": args.items, "ds": ds, "setup_s": setup}
    manifests = {}
    for name, fn in (("u2q", export_u2q), ("x2q", export_x2q), ("u2i", export_u2i)):
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        result = fn(cfg, str(root), ds, "bench")
        seconds = time.perf_counter() - t0
        manifests[name] = read_manifest(partition_path(root, "exports", name, ds))
        active = manifests[name]["counts"]["active_users"]
        entry = {"seconds": round(seconds, 2), "active_users": active, "rows": result["rows"],
                 "counts": manifests[name].get("counts"),
                 "users_per_s": round(active / seconds, 2), "loadavg_1m_before": round(load, 2)}
        gen_s = manifests[name].get("generation_seconds") or manifests[name].get("seconds")
        if gen_s:
            entry["loop_seconds"] = gen_s
            entry["loop_users_per_s"] = round(active / gen_s, 2)
        out[name] = entry
        logger.info("%s: %s", name, entry)
    active = out["u2q"]["active_users"]
    out["active_users"] = active
    out["cold_start_users"] = manifests["u2q"]["counts"]["cold_start_users"]
    total = sum(out[t]["seconds"] for t in ("u2q", "x2q", "u2i"))
    out["end_to_end"] = {"seconds": round(total, 2), "seconds_per_1k_users": round(1000 * total / active, 2)}
    out["u2i"]["faiss_search"] = faiss_search_rate(root, args.u2i_search_k)
    if args.single_users:
        out["batched_vs_single"] = batched_vs_single(cfg, root, ds, args.single_users)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", nargs="+", type=int, default=[10_000], help="synthetic users per run")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--days", type=int, default=2, help="days of logs; the export runs on the last")
    parser.add_argument("--batch-users", type=int, default=256, help="export.batch_users")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--single-users", type=int, default=64, help="users for batched vs one-at-a-time (0: skip)")
    parser.add_argument("--u2i-search-k", type=int, default=70, help="k of the raw faiss search (u2i_k + history)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    setup_logging(os.environ.get("PIPELINE_LOG_LEVEL", "WARNING"))
    logger.setLevel(logging.INFO)
    quiet_offline_hf()
    torch.set_num_threads(args.threads)
    result = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
                          "torch": torch.__version__},
              "settings": {"max_new_tokens": args.max_new_tokens, "batch_users": args.batch_users, "days": args.days,
                           "policy": "untrained tiny Qwen2 (tests/export_fixtures)", "decoding": "greedy"},
              "runs": []}
    for n in args.users:
        work = Path(tempfile.mkdtemp(prefix=f"export-bench-{n}-", dir=args.work_dir))
        try:
            result["runs"].append(run_size(n, args, work))
        finally:
            if args.keep:
                logger.info("kept %s", work)
            else:
                shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
