"""Benchmark KARMA's cost: training step time (and samples/s) of each variant relative to ``act``
and of KARMA's levers (:data:`ARMS`: MiniLM text features, the text item tower) relative to KARMA,
and inference throughput (histories/s; the regularisers are train-only, so KARMA = ``act``; the
text arms also once with an empty MiniLM cache, every distinct behaviour text encoded in the pass).

All variants are built on the same base model from the same seed and trained on the same batch
(the first ``--batch-size`` train samples of ``--ds``); steps are interleaved across variants
(round-robin) so that load changes on a shared machine hit every variant alike; the ratio uses the
fastest step of each variant after ``--warmup`` rounds (the least disturbed; medians reported too). Inference embeds ``--n-histories`` test/valid/train
histories with the ``act`` and the ``act+gen+rec`` model, interleaved, best of ``--repeats``.
Prints one JSON object. Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/karma_train.py --data-root /tmp/karma_dev --ds 2026-11-03 \\
        [--base-model PATH] [--batch-size 16] [--steps 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from base_lm.release import latest_base_model  # noqa: E402
from common.config import load_config  # noqa: E402
from common.hf_offline import quiet_offline_hf  # noqa: E402
from common.logging_setup import setup_logging  # noqa: E402
from karma_model.config import KarmaConfig  # noqa: E402
from karma_model.data import (  # noqa: E402
    ItemCatalog,
    KarmaCollator,
    KarmaDataset,
    KarmaEncoder,
    read_item_corpus,
    read_samples,
)
from karma_model.model import KarmaModel, embed_histories  # noqa: E402

logger = logging.getLogger("bench.karma_train")

VARIANTS = ("act", "act+gen", "act+rec", "act+gen+rec")
#: Arms timed side by side: the four variants, then KARMA (act+gen+rec) with each throughput /
#: knowledge lever of the ablation (karma_model.config).
ARMS = {v: {"variant": v} for v in VARIANTS} | {
    "karma+text": {"variant": "act+gen+rec", "text_features": True},
    "karma+text, text item tower": {"variant": "act+gen+rec", "text_features": True, "item_tower": "text"},
}


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    quiet_offline_hf()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--ds", required=True)
    parser.add_argument("--base-model", default=None, help="default: newest published base_lm at or before ds")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="timed rounds (one step of every variant each)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--n-histories", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    root = Path(args.data_root)
    try:
        base = Path(args.base_model) if args.base_model else latest_base_model(root, args.ds)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    section = dict(load_config().get("karma") or {})
    section.pop("base_model", None)
    section.pop("gate", None)
    section.pop("fusion", None)
    config = dataclasses.replace(KarmaConfig.from_dict(section), batch_size=args.batch_size)
    catalog = ItemCatalog.from_table(read_item_corpus(root, args.ds))
    samples = read_samples(root, [args.ds])

    models, batches, optims, encoders = {}, {}, {}, {}
    for arm, overrides in ARMS.items():
        cfg = dataclasses.replace(config, **overrides)
        model, tok = KarmaModel.from_base(base, cfg)  # seeded by cfg.seed: identical starting weights
        encoder = encoders[arm] = KarmaEncoder(tok, cfg, catalog)
        dataset = KarmaDataset(samples, encoder)
        batches[arm] = KarmaCollator(encoder)([dataset[i] for i in range(min(args.batch_size, len(dataset)))])
        models[arm] = model.train()
        optims[arm] = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times: dict[str, list[float]] = {v: [] for v in ARMS}
    for step in range(args.warmup + args.steps):
        for variant in ARMS:
            model, opt = models[variant], optims[variant]
            t0 = time.perf_counter()
            out = model(**batches[variant])
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step >= args.warmup:
                times[variant].append(time.perf_counter() - t0)
    median = {v: statistics.median(t) for v, t in times.items()}
    best_step = {v: min(t) for v, t in times.items()}  # least disturbed by other load on a shared machine

    histories = [h for h in samples.column("history").to_pylist() if h][: args.n_histories]
    inference_arms = ("act", "act+gen+rec", "karma+text", "karma+text, text item tower")
    for arm in inference_arms:
        models[arm].eval()
        encoders[arm].prepare_texts(t for h in histories for t in encoders[arm].history_texts(h))
        embed_histories(models[arm], encoders[arm], histories[:8])  # warm-up (and text vectors cached)
    best = dict.fromkeys(inference_arms, 0.0)
    for _ in range(args.repeats):
        for arm in best:
            t0 = time.perf_counter()
            embed_histories(models[arm], encoders[arm], histories)
            best[arm] = max(best[arm], len(histories) / (time.perf_counter() - t0))
    throughput = {v: round(x, 1) for v, x in best.items()}
    cold = {}  # text arms with an empty MiniLM cache: every distinct behaviour text encoded in the pass
    for arm in ("karma+text", "karma+text, text item tower"):
        encoders[arm]._vectors.clear()
        t0 = time.perf_counter()
        embed_histories(models[arm], encoders[arm], histories)
        cold[arm] = round(len(histories) / (time.perf_counter() - t0), 1)
    samples_per_s = {v: round(args.batch_size / s, 1) for v, s in best_step.items()}
    result = {
        "base_model": str(base),
        "batch_size": args.batch_size,
        "timed_steps": args.steps,
        "step_seconds_median": {v: round(s, 4) for v, s in median.items()},
        "step_seconds_min": {v: round(s, 4) for v, s in best_step.items()},
        "step_time_ratio_to_act": {v: round(s / best_step["act"], 3) for v, s in best_step.items()},
        "step_time_ratio_to_act_median": {v: round(s / median["act"], 3) for v, s in median.items()},
        "train_samples_per_s": samples_per_s,
        "train_samples_per_s_ratio_to_karma": {v: round(x / samples_per_s["act+gen+rec"], 3)
                                               for v, x in samples_per_s.items()},
        "inference_histories_per_s": throughput,
        "inference_histories_per_s_cold_text_cache": cold,
        "inference_ratio_karma_to_act": round(throughput["act+gen+rec"] / throughput["act"], 3),
        "n_histories": len(histories),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "machine": platform.machine(),
    }
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
