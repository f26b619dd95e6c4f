"""KARMA in ranking, other ways to use the model: feature variants of the daily item-CTR ranker.

Same rows, base features, ranker and training as :func:`karma_model.ranking.run_ranking` (day T's
result pages, scored on T+1 at the top slot), with KARMA entering as one of these column groups
(``--sets``; ``base`` is the ranker without KARMA):

- ``cos``: ``cos(e_u, e_i)``; ``cos_eu``: the cosine and ``e_u`` (the library's ``with_karma``);
- ``item_logp``: the item's log-probability under the model's own retrieval softmax over the whole
  catalogue, ``cos(e_u, e_i) / tau - logsumexp_j cos(e_u, e_j) / tau`` (``tau`` = the model's InfoNCE
  temperature): the model's estimate of ``log P(next item = i | history)``;
- ``leaf_logp``: the same mass summed over the item's leaf category (``log P(next item in leaf)``),
  ``leaf_rank``: ``log1p`` of that leaf's rank among all leaves by this mass;
- ``leaf_cos`` (cosine with the normalised mean ``e_i`` of the leaf), ``leaf_max`` (the best
  cosine in the leaf), ``top200`` (item in the user's top-200 retrieval list), ``page_rank`` (the
  item's rank by cosine among its page's items, divided by the page size); ``A+B`` joins groups.

``--inits K`` averages the click probabilities of K rankers trained from different initialisations
(seeds ``1000 * seed + k``) per seed: the ranker's own noise, not KARMA's, dominates a single run.
``--truth`` (synthetic roots only) also fits a logistic regression of each set's columns to day T's
*true* interest mixture (is the item's leaf in it: the only user-side cause of a click there) and
scores T+1: its AUC for the mixture and for the clicks shows how much information a feature set
holds, apart from how well a click-trained ranker learns to use it.
``--split valid`` leaves day T+1 alone: rankers train on 70% of T's users and are scored on the
other 30% (for choosing variants; report the T -> T+1 figures). One KARMA model per seed
(``--model-dirs``), as in ``scripts/experiments/karma_ranking.py``; mean ± sample std over seeds,
per-seed AUC difference to ``base`` and its 95% bootstrap interval over requests. Prints a Markdown
table and writes it (and the JSON) to ``--out`` when given.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/experiments/karma_ranking_variants.py --data-root R \\
        --ds 2026-11-04 --seeds 0 1 --model-dirs R/models/karma_rank/seed0 R/models/karma_rank/seed1 \\
        --sets base cos cos_eu item_logp leaf_logp --inits 10 [--split valid] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

GROUPS = {"cos": ["cos"], "cos_eu": ["cos", "eu"], "item_logp": ["item_logp"], "leaf_logp": ["leaf_logp"],
          "leaf_rank": ["leaf_rank"], "leaf_cos": ["leaf_cos"], "leaf_max": ["leaf_max"], "top200": ["top200"],
          "page_rank": ["page_rank"]}


def karma_columns(users: np.ndarray, items: np.ndarray, tau: float, item_row: np.ndarray, item_leaf: np.ndarray,
                  row_leaf: np.ndarray, request_row: np.ndarray, request_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Every KARMA column of the impression rows. ``users`` (requests, d) and ``items`` (catalogue,
    d) are unit vectors; ``item_row`` / ``row_leaf`` are each row's catalogue row / leaf index
    (-1 when unknown), ``item_leaf`` each catalogue item's leaf index."""
    n_leaves = int(item_leaf.max()) + 1
    sims = users @ items.T                                                    # (requests, catalogue)
    logits = sims / tau
    lse = np.logaddexp.reduce(logits, axis=1)
    leaf_lse = np.stack([np.logaddexp.reduce(logits[:, item_leaf == k], axis=1) if (item_leaf == k).any()
                         else np.full(len(users), -np.inf) for k in range(n_leaves)], axis=1)
    leaf_logp = leaf_lse - lse[:, None]
    centroids = np.zeros((n_leaves, items.shape[1]))
    np.add.at(centroids, item_leaf[item_leaf >= 0], items[item_leaf >= 0])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-9)
    leaf_max = np.stack([sims[:, item_leaf == k].max(axis=1) if (item_leaf == k).any() else np.full(len(users), -1.0)
                         for k in range(n_leaves)], axis=1)
    item_rank = (-sims).argsort(axis=1).argsort(axis=1)
    leaf_rank = (-leaf_logp).argsort(axis=1).argsort(axis=1)

    def pick(matrix, col, fill):
        out = np.full(len(request_row), fill, dtype=np.float64)
        ok = col >= 0
        out[ok] = matrix[request_row[ok], col[ok]]
        return out

    cols = {"cos": pick(sims, item_row, 0.0), "item_logp": pick(logits - lse[:, None], item_row, -np.log(len(items))),
            "leaf_logp": pick(leaf_logp, row_leaf, -20.0), "leaf_rank": np.log1p(pick(leaf_rank, row_leaf, n_leaves)),
            "leaf_cos": pick(users @ centroids.T, row_leaf, 0.0), "leaf_max": pick(leaf_max, row_leaf, 0.0),
            "top200": (pick(item_rank, item_row, len(items)) < 200).astype(np.float64), "eu": users[request_row]}
    page = pd.DataFrame({"r": request_ids, "c": cols["cos"]}).groupby("r")["c"]
    cols["page_rank"] = (page.rank(ascending=False, method="average") / page.transform("size")).to_numpy()
    return cols


def day_columns(featurizer, frame, requests, histories, leaf_of: dict, leaf_index: dict) -> dict[str, np.ndarray]:
    items = featurizer.item_vectors(featurizer.catalog.item_ids)
    users = featurizer.user_vectors(histories)
    row_of = {r: i for i, r in enumerate(requests["request_id"])}
    item_leaf = np.array([leaf_index.get(leaf_of.get(i), -1) for i in featurizer.catalog.item_ids])
    return karma_columns(users, items, float(featurizer.model.config.temperature),
                         np.array([featurizer.catalog.row.get(i, -1) for i in frame["item_id"]]), item_leaf,
                         np.array([leaf_index.get(leaf_of.get(i), -1) for i in frame["item_id"]]),
                         np.array([row_of[r] for r in frame["request_id"]]), frame["request_id"].to_numpy())


def matrix(base: np.ndarray, cols: dict, name: str) -> np.ndarray:
    parts = [base] + [cols[c].reshape(len(base), -1) for g in name.split("+") if g != "base" for c in GROUPS[g]]
    return np.concatenate(parts, axis=1).astype(np.float32)


def fit_score(x_fit, frame_fit, x_score, frame_score, config, seed: int, inits: int) -> np.ndarray:
    """Top-slot click probabilities of ``x_score``, averaged over ``inits`` rankers (one when 1)."""
    from karma_model.ranking import _split_by_time, predict, train_ranker

    tr, va = _split_by_time(frame_fit, config.valid_fraction)
    y, pos = frame_fit["clicked"].to_numpy(), frame_fit["position"].to_numpy()
    scores = []
    for k in range(inits):
        model, scale, _ = train_ranker(x_fit[tr], pos[tr], y[tr], x_fit[va], pos[va], y[va], config,
                                       seed if inits == 1 else 1000 * seed + k)
        scores.append(predict(model, scale(x_score)))
    return np.mean(scores, axis=0)


def in_mixture(root: Path, ds: str, frame, leaf_of: dict) -> np.ndarray:
    """1.0 where the row's item leaf is in its user's true mixture of ``ds`` (``raw/true_interests``)."""
    from common.arrow_io import read_partition

    truth = read_partition(root, "raw", "true_interests", ds)
    mixture = set(zip(truth["user_id"].to_pylist(), truth["category"].to_pylist(), strict=True))
    return np.array([(u, leaf_of.get(i)) in mixture for u, i in zip(frame["user_id"], frame["item_id"], strict=True)],
                    dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--ds", required=True, help="the day scored (T+1)")
    parser.add_argument("--train-ds", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--model-dirs", nargs="+", required=True, help="KARMA folder per seed (or one for all)")
    parser.add_argument("--sets", nargs="+", default=["base", "cos", "cos_eu", "item_logp", "leaf_logp"])
    parser.add_argument("--inits", type=int, default=1, help="rankers averaged per seed")
    parser.add_argument("--split", choices=("test", "valid"), default="test")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--truth", action="store_true", help="also fit the true mixture (synthetic, test split)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import torch

    from aigq_model.ctr_eval import auc
    from common.config import load_config
    from common.hf_offline import quiet_offline_hf
    from common.paths import previous_ds
    from karma_model import ranking_features as rf
    from karma_model.ranking import RankingConfig, bootstrap_auc_difference, mean_std

    torch.set_num_threads(1)
    quiet_offline_hf()
    for name in args.sets:
        if any(g != "base" and g not in GROUPS for g in name.split("+")):
            parser.error(f"unknown set {name!r} (groups: base, {', '.join(GROUPS)})")
    root, ds = Path(args.data_root), args.ds
    train_ds = args.train_ds or previous_ds(ds, 1)[0]
    cfg = load_config()
    config = RankingConfig.from_dict(cfg.get("karma_ranking"))
    dirs = args.model_dirs * len(args.seeds) if len(args.model_dirs) == 1 else args.model_dirs
    if len(dirs) != len(args.seeds):
        parser.error("--model-dirs: give one folder, or one per seed")
    ctx = rf.load_context(root, train_ds, ds, int((cfg.get("samples") or {}).get("lookback_days", 7)))
    frames = {"train": rf.read_impressions(root, train_ds), "eval": rf.read_impressions(root, ds)}
    prev = rf.Priors.from_frame(rf.read_impressions(root, previous_ds(train_ds, 1)[0]), ctx.items)
    day = rf.Priors.from_frame(frames["train"], ctx.items)
    leaf_index = {lf: k for k, lf in enumerate(sorted({v for v in ctx.items.leaf.values() if v is not None}))}
    base, hist = {}, {}
    for name, priors, loo in (("train", prev or day, prev is None), ("eval", day, False)):
        hist[name] = rf.request_histories(frames[name], ctx.log, config.max_history)
        base[name] = rf.base_features(frames[name], *hist[name], ctx, priors, config.prior_strength, config.recent, loo)
    if args.split == "valid":  # day T only: 30% of its users scored, the rest trains
        users = np.array(sorted(set(frames["train"]["user_id"])))
        held = set(np.random.default_rng(123).choice(users, int(0.3 * len(users)), replace=False))
        score_mask = frames["train"]["user_id"].isin(held).to_numpy()
        fit_frame, score_frame = (frames["train"][m].reset_index(drop=True) for m in (~score_mask, score_mask))
    else:
        fit_frame, score_frame = frames["train"], frames["eval"]
    y, groups = score_frame["clicked"].to_numpy(), score_frame["request_id"].to_numpy()
    scores: dict[str, list] = {s: [] for s in args.sets}
    truth: dict[str, list] = {s: [] for s in args.sets}
    if args.truth:
        if args.split != "test":
            parser.error("--truth needs --split test")
        mix = {n: in_mixture(root, d, frames[n], ctx.items.leaf) for n, d in (("train", train_ds), ("eval", ds))}
        linear = dataclasses.replace(config, hidden=0)
    for seed, model_dir in zip(args.seeds, dirs, strict=True):
        featurizer = rf.KarmaFeaturizer(model_dir, root, ds, config.embed_batch_size)
        cols = {n: day_columns(featurizer, frames[n], *hist[n], ctx.items.leaf, leaf_index) for n in frames}
        seed_config = dataclasses.replace(config, seeds=[seed])
        for name in args.sets:
            x_train = matrix(base["train"], cols["train"], name)
            if args.split == "valid":
                x_fit, x_score = x_train[~score_mask], x_train[score_mask]
            else:
                x_fit, x_score = x_train, matrix(base["eval"], cols["eval"], name)
            scores[name].append(fit_score(x_fit, fit_frame, x_score, score_frame, seed_config, seed, args.inits))
            if args.truth:
                labelled = {"train": fit_frame.assign(clicked=mix["train"], position=0)}
                p = fit_score(x_fit, labelled["train"], x_score, score_frame, linear, seed, 1)
                truth[name].append((auc(mix["eval"], p), auc(y, p)))
    summary = {}
    for name in args.sets:
        aucs = [auc(y, s) for s in scores[name]]
        row = {"auc_per_seed": aucs, "auc": mean_std(aucs)}
        if name != "base" and "base" in scores:
            diffs = [a - b for a, b in zip(aucs, summary["base"]["auc_per_seed"], strict=True)]
            spread = row["auc"][1] + summary["base"]["auc"][1]
            row |= {"delta": round(float(np.mean(diffs)), 6), "delta_per_seed": diffs, "seed_spread": round(spread, 6),
                    "beyond_seed_spread": bool(np.mean(diffs) > spread),
                    "bootstrap_95": [bootstrap_auc_difference(y, s, b, groups, args.bootstrap)
                                     for s, b in zip(scores[name], scores["base"], strict=True)]}
        if truth[name]:
            row["truth_fit"] = {"mixture_auc": mean_std([t[0] for t in truth[name]]),
                                "click_auc": mean_std([t[1] for t in truth[name]])}
        summary[name] = row
    lines = [f"KARMA ranking variants on {root} ({args.split}: train {train_ds}, score "
             f"{train_ds + ' held-out users' if args.split == 'valid' else ds}), seeds {args.seeds}, {args.inits} "
             "ranker init(s) per seed", "", "| set | AUC | ΔAUC | spread | beyond | per-seed Δ | bootstrap 95% per seed |",
             "|---|---|---|---|---|---|---|"]
    for name, row in summary.items():
        auc_cell = f"{row['auc'][0]:.4f} ± {row['auc'][1]:.4f}"
        if "delta" not in row:
            lines.append(f"| {name} | {auc_cell} | – | – | – | – | – |")
            continue
        boots = " ".join(f"[{b['low']:+.4f}, {b['high']:+.4f}]" for b in row["bootstrap_95"] if b) or "–"
        lines.append(f"| {name} | {auc_cell} | {row['delta']:+.4f} | {row['seed_spread']:.4f} | "
                     f"{'yes' if row['beyond_seed_spread'] else 'no'} | "
                     f"{' '.join(f'{d:+.4f}' for d in row['delta_per_seed'])} | {boots} |")
    if args.truth:
        lines += ["", "Logistic regression fitted to the true mixture of the training day, scored on the scored day: "
                  "AUC for the mixture / for the clicks (mean ± std over seeds); ceiling (the mixture itself): "
                  f"click AUC {auc(y, in_mixture(root, ds, score_frame, ctx.items.leaf)):.4f}", ""]
        lines += [f"- {n}: {r['truth_fit']['mixture_auc'][0]:.4f} ± {r['truth_fit']['mixture_auc'][1]:.4f} / "
                  f"{r['truth_fit']['click_auc'][0]:.4f} ± {r['truth_fit']['click_auc'][1]:.4f}" for n, r in summary.items()]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "variants.md").write_text(table)
        (out / "variants.json").write_text(json.dumps({"args": vars(args), "summary": summary}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
