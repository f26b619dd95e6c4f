"""IL-GRPO (or plain sequence-level GRPO) of an IL-SFT AIGQ policy against the day's CTR model.

Reads the policy (``aigq_model.load.load_aigq``; kind and prompt style from its
manifest), the ``train`` split of day ``ds``'s ``aigq_<kind>_sft`` partition, the CTR scorer
(``aigq_model.ctr_model.load_ctr``; without ``--ctr`` the CTR term is 0), the ``aigq.grpo`` and
``aigq.rewards`` config sections, and trains with :func:`aigq_model.grpo_trainer.train_grpo`.

Output (``--out``, default ``<data_root>/models/aigq_<kind>_grpo/<ds>/``, or
``aigq_<kind>_seqgrpo`` for ``--mode sequence``), written through
``common.registry.stage_version``/``commit_version``, not registered: the HF policy, tokenizer
and ``manifest.json`` (kind, style, base policy, CTR model, mode, configs, history summary).
Prints one JSON line.

Usage::

    python -m aigq_model.train_grpo --ds 2026-11-03 --policy DIR [--ctr DIR] [--data-root R]
        [--config F] [--profile P] [--mode il|sequence] [--max-steps N] [--seed S] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

from aigq_model.ctr_model import load_ctr
from aigq_model.grpo import MODES
from aigq_model.grpo_trainer import GRPOConfig, make_reward_fn, train_grpo
from aigq_model.load import load_aigq
from aigq_model.release import model_name
from aigq_model.train_sft import FORMAT, SAMPLE_TABLE, publish_aigq, read_sft_rows
from base_lm.load import code_version
from base_lm.load import read_manifest as read_manifest_lenient
from common.ddp import is_main_process
from common.paths import check_ds
from common.registry import read_manifest, registry_target
from common.steps import emit_result
from common.training import cli_overrides, parse_cli


def summarise(history: list[dict]) -> dict:
    """Steps, filtered share, mean reward of the first and last 3 steps, seconds by phase."""

    def mean(rows, key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(sum(vals) / len(vals), 4) if vals else None

    return {
        "steps": len(history),
        "skipped_steps": sum(bool(r.get("skipped")) for r in history),
        "reward_first3": mean(history[:3], "reward"),
        "reward_last3": mean(history[-3:], "reward"),
        "query_reward_last3": mean(history[-3:], "query_reward"),
        "seq_reward_last3": mean(history[-3:], "seq_reward"),
        "filtered": mean(history, "filtered"),
        **{k: round(sum(r[k] for r in history), 2) for k in ("gen_s", "reward_s", "update_s")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="day whose train samples are the prompts (YYYY-MM-DD)")
    parser.add_argument("--policy", required=True, help="IL-SFT policy folder (aigq_model.train_sft output)")
    parser.add_argument("--ctr", default=None, help="CTR model folder (aigq_model.ctr); none: CTR term 0")
    parser.add_argument("--config", default=None)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--mode", choices=MODES, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default=None, help="output folder (default <data_root>/models/<name>/<ds>)")
    args, cfg, data_root = parse_cli(parser, argv)
    aigq = dict(cfg.get("aigq") or {})
    ds = check_ds(args.ds)
    policy = Path(args.policy)
    pman = read_manifest(policy)
    kind, style = pman.get("kind", "direct"), pman.get("style", "compressed")
    max_history = int((pman.get("config") or {}).get("max_history", 20))
    config = dataclasses.replace(
        GRPOConfig.from_dict(aigq.get("grpo")),
        kind=kind, style=style, max_history=max_history,
        **cli_overrides(mode=args.mode, max_steps=args.max_steps, seed=args.seed),
    )
    sample_kind = "direct" if kind == "plain" else kind  # plain: full lists, not one query per row
    samples = read_sft_rows(data_root, [ds], sample_kind, "train")
    if not samples:
        raise FileNotFoundError(f"no {SAMPLE_TABLE[sample_kind]} train rows for {ds} under {data_root}")
    ctr = None
    if args.ctr:
        ctr = load_ctr(args.ctr)
    reward_section = dict(aigq.get("rewards") or {})
    reward_fn = make_reward_fn(reward_section, ctr, "think" if kind == "think" else "direct", max_history)
    model, tokenizer = load_aigq(policy)
    ref_model = load_aigq(policy)[0] if config.kl_coef > 0 else None
    name = model_name(kind, config.mode)
    root, area, name, version = registry_target(data_root, name, ds, args.out)
    ckpt_dir = Path(root) / area / name / f".ckpt-{version}"
    history = train_grpo(model, tokenizer, samples, reward_fn, config, ref_model, checkpoint_dir=ckpt_dir)
    if not is_main_process():
        return 0
    summary = summarise(history)
    manifest = {
        "format": FORMAT,
        "kind": kind,
        "style": style,
        "ds": ds,
        "sample_table": SAMPLE_TABLE[sample_kind],
        "n_samples": len(samples),
        "code_version": code_version(),
        # name/version only (a daily chain of updates must not nest every ancestor's manifest)
        "base_policy": {"path": str(policy.resolve()), "name": pman.get("name"), "version": pman.get("version"),
                        "mode": pman.get("mode", "sft")},
        "ctr_model": {"path": str(Path(args.ctr).resolve()), "manifest": read_manifest_lenient(args.ctr)}
        if ctr else None,
        "mode": config.mode,
        "config": {**(pman.get("config") or {}), "grpo": dataclasses.asdict(config)},
        "reward_config": reward_section,
        "history": summary,
    }
    final = publish_aigq(model, tokenizer, root, name, version, manifest, area)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    emit_result({"model_dir": str(final), "name": name, "version": version, "history": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
