"""AIGQ micro-benchmarks on one machine, one process: prints one JSON object.

- ``generation``: greedy KV-cached generation of the same prompts batched (``--batch-size``) vs
  one user at a time; users/s of each and the ratio, measured in the same run.
- ``prompt_tokens``: mean prompt length in tokens, compressed (special tokens) vs verbose, and the
  saving ratio, over the same samples.
- ``sft_step``: mean seconds per IL-SFT optimiser step (batch ``--sft-batch-size``).

Samples: ``aigq_direct_sft`` rows of ``--ds`` under ``--data-root`` when given (with the newest
``models/base_lm`` at or before ``--ds``, or ``--base-model``), else synthetic rows and a tiny
random base LM. Usage::

    OMP_NUM_THREADS=1 python bench/aigq.py [--data-root /tmp/aigq_dev --ds 2026-11-03] [--n 64]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aigq_model.generate import Decoding, generate_lists  # noqa: E402
from aigq_model.prompts import build_prompt  # noqa: E402
from aigq_model.targets import encode_prompt  # noqa: E402
from aigq_model.train_sft import SFTConfig, prepare_model, read_sft_rows, train_sft  # noqa: E402
from base_lm.release import latest_base_model  # noqa: E402
from tests.test_aigq_sft import make_rows  # noqa: E402
from tests.test_base_lm import make_tiny_base  # noqa: E402


def _samples_and_base(args, tmp: Path):
    if args.data_root:
        rows = [r for r in read_sft_rows(args.data_root, [args.ds], "direct", None) if r.get("history")]
        base = Path(args.base_model) if args.base_model else latest_base_model(args.data_root, args.ds)
        return rows, base
    return make_rows(max(args.n, 64)), make_tiny_base(tmp / "base", max_position_embeddings=512)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--ds", default="2026-11-03")
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--n", type=int, default=32, help="users to generate for")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--sft-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="aigq-bench-") as tmp:
        rows, base = _samples_and_base(args, Path(tmp))
        gen_rows = rows[: args.n]
        # SFT step time (also gives a model whose outputs have realistic length).
        config = SFTConfig(
            max_steps=args.sft_steps,
            batch_size=args.sft_batch_size,
            warmup_steps=0,
            save_steps=0,
            eval_batches=0,
            learning_rate=3e-3,
        )
        model, tok, _, metrics = train_sft(config, base, rows, Path(tmp) / "ckpt")
        # Prompt tokens, compressed vs verbose (each style with its own tokens added).
        lengths = {}
        for style in ("compressed", "verbose"):
            _, style_tok = prepare_model(base, SFTConfig(style=style))
            lengths[style] = statistics.mean(
                len(encode_prompt(style_tok, build_prompt(r, style))) for r in rows
            )
        # Generation, batched vs one at a time, same prompts, same model, same run.
        dec = Decoding(max_new_tokens=args.max_new_tokens)
        generate_lists(model, tok, gen_rows[:2], batch_size=2, decoding=dec)  # warm-up
        timings = {}
        for name, bs in (("batched", args.batch_size), ("one_at_a_time", 1)):
            t0 = time.perf_counter()
            out = generate_lists(model, tok, gen_rows, batch_size=bs, decoding=dec, cold_start="model")
            timings[name] = time.perf_counter() - t0
            timings[f"{name}_texts"] = [r.raw_text for r in out]
    same = timings.pop("batched_texts") == timings.pop("one_at_a_time_texts")
    result = {
        "device": "cpu",
        "threads": args.threads,
        "data": args.data_root or "synthetic rows + tiny random base LM",
        "base_model": str(base) if args.data_root else "tiny",
        "generation": {
            "users": len(gen_rows),
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "batched_users_per_s": round(len(gen_rows) / timings["batched"], 2),
            "one_at_a_time_users_per_s": round(len(gen_rows) / timings["one_at_a_time"], 2),
            "speedup": round(timings["one_at_a_time"] / timings["batched"], 2),
            "identical_outputs": same,
        },
        "prompt_tokens": {
            "n_samples": len(rows),
            "compressed_mean": round(lengths["compressed"], 1),
            "verbose_mean": round(lengths["verbose"], 1),
            "verbose_over_compressed": round(lengths["verbose"] / lengths["compressed"], 2),
            "saving": round(1 - lengths["compressed"] / lengths["verbose"], 3),
        },
        "sft_step": {
            "steps": metrics["steps"],
            "batch_size": args.sft_batch_size,
            "seconds_per_step": metrics["seconds_per_step"],
        },
    }
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
