"""AIGQ decoding benchmark: generation users/s with constrained decoding over the known queries
(``aigq.generate.known_queries``, a prefix trie) vs unconstrained, same policy, same prompts, same
run; prints one JSON object.

For each strategy (``--strategies``, default ``greedy query_beam``) both variants decode the same
samples ``--repeats`` times, alternating (free, constrained, free, ...) so a busy machine's load
drifts into both alike; the figure is the best of the repeats' users/s and the ratio
constrained / free. Also: the vocabulary size, the seconds to build the trie (once per run, not
counted in users/s), and the share of model-written queries that are known in each variant.

Data: ``--model-dir`` (an ``aigq_model.train_sft`` / ``train_grpo`` output) with the
``aigq_direct_sft`` rows of ``--ds`` under ``--data-root`` (the first ``--n`` with a history) and
the searches of the ``--window-days`` log days before them as the vocabulary (as ``run_eval``); without ``--model-dir``, a tiny policy trained
here for 150 steps on synthetic rows (``tests.test_aigq_sft``), its vocabulary the rows' target
queries. Usage::

    OMP_NUM_THREADS=1 python bench/aigq_decode.py [--model-dir M --data-root R --ds D] [--n 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aigq_model.generate import Decoding, generate_lists  # noqa: E402
from aigq_model.load import load_aigq  # noqa: E402
from aigq_model.parsing import normalize_query  # noqa: E402
from aigq_model.run_eval import events_before, read_events  # noqa: E402
from aigq_model.train_sft import SFTConfig, read_sft_rows, train_sft  # noqa: E402
from aigq_model.trie import QueryTrie, searched_queries  # noqa: E402
from common.paths import previous_ds  # noqa: E402
from common.registry import read_manifest  # noqa: E402
from tests.test_aigq_sft import TINY_SFT, make_rows  # noqa: E402
from tests.test_base_lm import make_tiny_base  # noqa: E402


def _policy_and_samples(args, tmp: Path):
    if args.model_dir:
        model, tok = load_aigq(args.model_dir)
        kind = read_manifest(args.model_dir).get("kind", "direct")
        rows = [r for r in read_sft_rows(args.data_root, [args.ds], "direct", None) if r.get("history")][: args.n]
        window = [*previous_ds(args.ds, args.window_days - 1), args.ds]  # run_eval's log window (aigq.eval.days)
        known = searched_queries(events_before(read_events(args.data_root, window), min(r["event_time"] for r in rows)))
        return model, tok, "think" if kind == "think" else "direct", rows, known
    base = make_tiny_base(tmp / "base", max_position_embeddings=512)
    model, tok, _state, _m = train_sft(SFTConfig(max_steps=150, **TINY_SFT), base, make_rows(32), tmp / "ckpt")
    known = sorted({normalize_query(q) for r in make_rows(256, seed=3) for q in r["target_queries"]})
    return model, tok, "direct", make_rows(args.n, seed=11), known


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--ds", default=None)
    parser.add_argument("--n", type=int, default=64, help="users (samples) decoded per repeat")
    parser.add_argument("--strategies", nargs="+", default=["greedy", "query_beam"])
    parser.add_argument("--num-beams", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window-days", type=int, default=7, help="log days ending at --ds the vocabulary reads")
    args = parser.parse_args(argv)
    if args.model_dir and not (args.data_root and args.ds):
        parser.error("--model-dir needs --data-root and --ds")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="aigq-decode-bench-") as tmp:
        model, tok, kind, rows, known = _policy_and_samples(args, Path(tmp))
        t0 = time.perf_counter()
        trie = QueryTrie.build(tok, known)
        trie_s = time.perf_counter() - t0
        known_set = set(known)
        out = {"n_users": len(rows), "kind": kind, "known_queries": len(trie), "trie_build_s": round(trie_s, 3),
               "torch_threads": torch.get_num_threads(), "strategies": {}}
        for strategy in args.strategies:
            free = Decoding(strategy=strategy, num_beams=args.num_beams)
            variants = {"free": (free, None), "constrained": (Decoding(**{**free.__dict__, "known_queries": True}), trie)}
            secs: dict[str, list[float]] = {v: [] for v in variants}
            known_share = {}
            generate_lists(model, tok, rows[:2], kind=kind, decoding=free, cold_start="model")  # warm-up
            for _ in range(args.repeats):
                for name, (dec, vocab) in variants.items():
                    t0 = time.perf_counter()
                    res = generate_lists(model, tok, rows, kind=kind, k=10, batch_size=args.batch_size, decoding=dec,
                                         cold_start="model", known_queries=vocab)
                    secs[name].append(time.perf_counter() - t0)
                    written = [q for r in res for q in r.queries[: r.n_model]]
                    known_share[name] = round(sum(q in known_set for q in written) / max(len(written), 1), 3)
            ups = {v: round(len(rows) / min(s), 2) for v, s in secs.items()}
            out["strategies"][strategy] = {
                "users_per_s": ups, "constrained_over_free": round(ups["constrained"] / ups["free"], 3),
                "seconds": {v: [round(x, 2) for x in s] for v, s in secs.items()},
                "share_of_model_queries_known": known_share,
            }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
