"""IL-GRPO (or plain sequence-level GRPO) of an IL-SFT AIGQ policy against the day's CTR model.

Reads the policy (``aigq_model.load.load_aigq``; kind and prompt style from its
manifest), the ``train`` split of day ``ds``'s ``aigq_<kind>_sft`` partition with each user's
later searches of the day (the hindsight truth of the query reward, ``with_later_searches``: up
to the end of the day's train part, so the valid and test parts that ``run_eval`` scores on the
same day stay unseen), the CTR scorer
(``aigq_model.ctr_model.load_ctr``; without ``--ctr`` the CTR term is 0), the ``aigq.grpo`` and
``aigq.rewards`` config sections, and trains with :func:`aigq_model.grpo_trainer.train_grpo`.

Output (``--out``, default ``<data_root>/models/aigq_<kind>_grpo/<ds>/``, or
``aigq_<kind>_seqgrpo`` for ``--mode sequence``), written through
``common.registry.stage_version``/``commit_version``, not registered: the HF policy, tokenizer
and ``manifest.json`` (kind, style, base policy, CTR model, mode, configs, history summary).
Prints one JSON line.

Usage::

    python -m aigq_model.train_grpo --ds 2026-11-03 --policy DIR [--ctr DIR] [--data-root R]
        [--config F] [--profile P] [--mode il|sequence] [--max-steps N] [--seed S] [--days N] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa

from aigq_model.ctr_model import load_ctr
from aigq_model.evaluate import window_truth
from aigq_model.grpo import MODES
from aigq_model.grpo_trainer import LATER, GRPOConfig, make_reward_fn, train_grpo
from aigq_model.load import load_aigq
from aigq_model.release import model_name
from aigq_model.run_eval import read_events
from aigq_model.train_sft import FORMAT, SAMPLE_TABLE, publish_aigq, read_sft_rows
from base_lm.load import code_version
from base_lm.load import read_manifest as read_manifest_lenient
from common.ddp import is_main_process
from common.paths import check_ds, previous_ds
from common.registry import read_manifest, registry_target
from common.steps import emit_result
from common.training import cli_overrides, parse_cli

logger = logging.getLogger(__name__)


def train_part(events, samples_section: Mapping | None):
    """The rows of ``events`` (a pyarrow Table) in their day's train part: ``build_samples``
    splits each day by time, its last ``valid_fraction`` + ``test_fraction`` held out
    (``samples`` config section); evaluation scores those parts, so the reward never sees them.

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 11, 3, tzinfo=dt.UTC)
    >>> log = pa.table({"event_time": pa.array([t + dt.timedelta(hours=h) for h in (1, 17.9, 18, 23, 25)],
    ...                                       pa.timestamp("us", tz="UTC"))})
    >>> [e.hour for e in train_part(log, {"valid_fraction": 0.1, "test_fraction": 0.15})["event_time"].to_pylist()]
    [1, 17, 1]
    """
    section = dict(samples_section or {})
    held_out = float(section.get("valid_fraction", 0.1)) + float(section.get("test_fraction", 0.1))
    day = 86_400_000_000
    micros = events["event_time"].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    return events.filter(pa.array(micros % day < round((1.0 - held_out) * day)))


def sft_policy_of(policy: Path, manifest: Mapping) -> Path:
    """The IL-SFT policy a daily chain of updates started from (the KL reference): ``policy``
    itself when it is an SFT version, else the ``sft_policy`` its update manifest records."""
    recorded = manifest.get("sft_policy")
    return Path(recorded) if manifest.get("mode") in MODES and recorded else policy.resolve()


def with_later_searches(samples: Sequence[Mapping], events, samples_section: Mapping | None = None) -> list[dict]:
    """The samples with ``later_queries``: the user's distinct searches from the sample's time to
    the end of its day's train part (``evaluate.window_truth`` of ``train_part`` of the log),
    keeping only the samples whose user searched again (the hindsight reward has nothing to score
    the others against) and has a history (serving gives users without one the fallback list,
    ``generate_lists(cold_start="fallback")``, so no update could reach them)."""
    truths = window_truth(samples, train_part(events, samples_section))
    return [{**s, LATER: t} for s, t in zip(samples, truths, strict=True) if t and s.get("history")]


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
    parser.add_argument("--days", type=int, default=1,
                        help="prompts of this many days ending at --ds (sparse logs); default the day alone")
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
    days = [*previous_ds(ds, args.days - 1), ds] if args.days > 1 else [ds]
    rows = read_sft_rows(data_root, days, sample_kind, "train")
    if not rows:
        raise FileNotFoundError(f"no {SAMPLE_TABLE[sample_kind]} train rows for {days[0]}..{ds} under {data_root}")
    samples = with_later_searches(rows, read_events(data_root, days), cfg.get("samples"))
    logger.info("%d of %d train samples of %s..%s have later searches in the train part", len(samples), len(rows),
                days[0], ds)
    if not samples:
        raise ValueError(f"none of the {len(rows)} train samples of {ds} has a later search: no hindsight reward")
    ctr = None
    if args.ctr:
        ctr = load_ctr(args.ctr)
    reward_section = dict(aigq.get("rewards") or {})
    reward_fn = make_reward_fn(reward_section, ctr, "think" if kind == "think" else "direct", max_history)
    model, tokenizer = load_aigq(policy)
    sft_policy = sft_policy_of(policy, pman)
    ref_model = load_aigq(sft_policy)[0] if config.kl_coef > 0 else None  # the KL anchors the chain to its SFT
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
        "n_train_rows": len(rows),
        "sample_days": days,
        "code_version": code_version(),
        # name/version only (a daily chain of updates must not nest every ancestor's manifest)
        "base_policy": {"path": str(policy.resolve()), "name": pman.get("name"), "version": pman.get("version"),
                        "mode": pman.get("mode", "sft")},
        "sft_policy": str(sft_policy),
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
