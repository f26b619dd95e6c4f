"""IL-GRPO with partial credit for the right category (issue 20; lost, so not in the library).

The hindsight query term of ``aigq_model.rewards`` plus ``w_cate`` when the slot's query has the
leaf category of one of the user's later searches (the query -> category map of
``aigq_model.evaluate.build_query_category_map`` over the prompt days' train part and the clean
items)::

    R_query(q_j) = max_t (w_exact [q_j == t] + w_cate [cat(q_j) == cat(t), both known]) + CTR + length

With ``w_rouge = w_sem = 0`` (the config's) that equals the library's reward plus
``w_cate * [cat(q_j) in cat(T)]``, which is what this driver adds to each slot before
``aigq_model.train_grpo`` trains (a query equal to a later search has its category). Results:
docs/experiments.md, "AIGQ: the daily update on held-out samples".

    python scripts/experiments/aigq_category_credit.py --w-cate 0.3 <aigq_model.train_grpo arguments>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aigq_model import train_grpo  # noqa: E402
from aigq_model.evaluate import build_query_category_map  # noqa: E402
from aigq_model.grpo_trainer import LATER  # noqa: E402
from aigq_model.parsing import normalize_query  # noqa: E402
from aigq_model.run_eval import read_events, read_items  # noqa: E402
from common.config import load_config  # noqa: E402
from common.paths import previous_ds  # noqa: E402


def category_map(data_root: str, ds: str, days: int, samples_section) -> dict[str, str]:
    """Normalised query -> leaf category over the train part of the prompt days' clean log."""
    day_list = [*previous_ds(ds, days - 1), ds] if days > 1 else [ds]
    items = read_items(data_root, ds)
    if items is None:
        raise FileNotFoundError(f"no clean items published by {ds} under {data_root}")
    log = train_grpo.train_part(read_events(data_root, day_list), samples_section)
    return {normalize_query(q): c for q, c in build_query_category_map(log, items).items()}


def with_category_credit(make_reward_fn, cats: dict[str, str], w_cate: float):
    """``make_reward_fn`` whose query rewards gain ``w_cate`` per slot of a later search's category."""

    def make(*args, **kwargs):
        base = make_reward_fn(*args, **kwargs)

        def reward_fn(sample, parsed):
            qr, sr, tr = base(sample, parsed)
            later = {cats.get(normalize_query(q)) for q in sample[LATER] or []} - {None}
            qr = [[r + w_cate * float(cats.get(normalize_query(q)) in later) for r, q in zip(row, p.queries, strict=True)]
                  for row, p in zip(qr, parsed, strict=True)]
            return qr, sr, tr

        return reward_fn

    return make


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--w-cate", type=float, required=True)
    parser.add_argument("--ds", required=True)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--config", default=None)
    parser.add_argument("--profile", default=None)
    args, _rest = parser.parse_known_args(argv)
    cfg = load_config(args.config, args.profile)
    data_root = str(Path(args.data_root).resolve()) if args.data_root else cfg["data_root"]
    cats = category_map(data_root, args.ds, args.days, cfg.get("samples"))
    print(f"category credit: {len(cats)} queries with a leaf category", file=sys.stderr)
    train_grpo.make_reward_fn = with_category_credit(train_grpo.make_reward_fn, cats, args.w_cate)
    rest = [a for i, a in enumerate(argv) if a != "--w-cate" and (i == 0 or argv[i - 1] != "--w-cate")]
    return train_grpo.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
