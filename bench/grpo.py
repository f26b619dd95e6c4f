"""IL-GRPO step time split into generation, reward and update; rollouts per second. Prints JSON.

Runs ``--steps`` policy-optimisation steps (``aigq_model.grpo_trainer.train_grpo``) of a trained policy on
day ``--ds``'s Direct train prompts whose user searched again (``train_grpo.with_later_searches``)
with the pipeline's reward (``make_reward_fn``: hindsight match against the user's later searches,
length, format, repetition, and the CTR term when ``--ctr`` is given), in both
modes (IL-GRPO and plain sequence-level GRPO) side by side in one run, and reports per mode the
median seconds per step of each phase, their shares, and rollouts (sampled lists) per second.
Nothing is written to the data root (the updated weights are dropped).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/grpo.py --data-root R --ds D --policy DIR [--ctr DIR] \\
        [--steps 8] [--group-size 8] [--prompts-per-step 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aigq_model.ctr_model import load_ctr  # noqa: E402
from aigq_model.grpo_trainer import GRPOConfig, make_reward_fn, train_grpo  # noqa: E402
from aigq_model.load import load_aigq  # noqa: E402
from aigq_model.run_eval import read_events  # noqa: E402
from aigq_model.train_grpo import with_later_searches  # noqa: E402
from aigq_model.train_sft import read_sft_rows  # noqa: E402
from common.config import load_config  # noqa: E402
from common.hf_offline import quiet_offline_hf  # noqa: E402
from common.registry import read_manifest  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    quiet_offline_hf()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--ds", required=True)
    parser.add_argument("--policy", required=True, help="an aigq_model.train_sft output folder")
    parser.add_argument("--ctr", default=None, help="an aigq_model.ctr output folder")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--modes", nargs="+", default=["il", "sequence"], choices=["il", "sequence"])
    args = parser.parse_args(argv)

    cfg = load_config()
    aigq = dict(cfg.get("aigq") or {})
    manifest = read_manifest(args.policy)
    kind = manifest.get("kind", "direct")
    rows = read_sft_rows(args.data_root, [args.ds], "direct" if kind == "plain" else kind, "train")
    samples = with_later_searches(rows, read_events(args.data_root, [args.ds]), cfg.get("samples"))
    ctr = None
    if args.ctr:
        ctr = load_ctr(args.ctr)
    reward_fn = make_reward_fn(dict(aigq.get("rewards") or {}), ctr, "think" if kind == "think" else "direct")
    out = {"bench": "grpo", "policy": str(Path(args.policy).resolve()), "kind": kind, "n_prompts": len(samples),
           "torch_threads": torch.get_num_threads(), "ctr": bool(ctr), "modes": {}}
    for mode in args.modes:
        model, tokenizer = load_aigq(args.policy)
        config = dataclasses.replace(
            GRPOConfig.from_dict(aigq.get("grpo")), mode=mode, max_steps=args.steps, group_size=args.group_size,
            prompts_per_step=args.prompts_per_step, kind=kind, style=manifest.get("style", "compressed"),
            difficulty_filter=False, save_steps=0,
        )
        history = [h for h in train_grpo(model, tokenizer, samples, reward_fn, config) if not h.get("skipped")]
        history = history[1:] or history  # the first step pays one-off warm-up costs
        phases = {k: statistics.median(h[k] for h in history) for k in ("gen_s", "reward_s", "update_s")}
        step = sum(phases.values())
        out["modes"][mode] = {
            "steps_measured": len(history),
            "median_step_s": round(step, 3),
            **{f"median_{k}": round(v, 3) for k, v in phases.items()},
            **{f"share_{k[:-2]}": round(v / step, 3) for k, v in phases.items()},
            "rollouts_per_s": round(statistics.median(h["rollouts_per_s"] for h in history), 2),
            "rollouts_per_step": args.group_size * args.prompts_per_step,
        }
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
