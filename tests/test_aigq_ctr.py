"""AIGQ CTR reward model: learns a planted signal and beats the query-CTR baseline, reloads to
identical predictions, reward clipping, the tie-aware AUC, and the daily entry point."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import random
import re

import numpy as np
import pytest

from aigq_model.ctr_eval import QueryCTRBaseline, auc, evaluate_ctr, logloss, score_metrics
from aigq_model.ctr_model import CTRConfig, context_from_sample, ctr_reward, load_ctr, save_ctr
from aigq_model.ctr_train import train_ctr

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models: one thread is faster

NOUNS = ["shoe", "dress", "phone", "lamp", "mug", "tent", "watch", "scarf", "kettle", "drill", "rug", "ball"]
ADJS = ["red", "cheap", "mini", "leather", "smart", "vintage", "blue", "kids", "large", "wool", "steel", "pro"]
T0 = dt.datetime(2026, 11, 1, 9, tzinfo=dt.UTC)
POS_FACTOR = (1.0, 0.8, 0.6)
FAST = dict(n_buckets=2**14, epochs=12, patience=3, batch_size=64)


def make_ctr_rows(n: int, seed: int = 0, split: str = "train", day: int = 0) -> list[dict]:
    """Impressions whose click probability is high (0.6) when the query shares a word with a
    recent search, low (0.02) otherwise, times a position factor. Every query string is shown
    in matching and non-matching contexts alike, so its own CTR carries little signal."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        mine = rng.sample(NOUNS, 2)
        recent = [f"{rng.choice(ADJS)} {rng.choice(mine)}" for _ in range(rng.randint(1, 4))]
        matched = rng.random() < 0.5
        noun = rng.choice(mine) if matched else rng.choice([x for x in NOUNS if x not in mine])
        position = rng.randint(0, 2)
        query = f"{rng.choice(ADJS)} {noun}"
        shares = bool(set(query.split()) & {w for r in recent for w in r.split()})
        p = (0.6 if shares else 0.02) * POS_FACTOR[position]
        rows.append(
            {
                "user_id": f"u{i % 50}",
                "event_time": T0 + dt.timedelta(days=day, seconds=i),
                "query": query,
                "position": position,
                "label": int(rng.random() < p),
                "gender": rng.choice(["female", "male", None]),
                "age_bucket": rng.choice(["18-24", "25-29", "30-34"]),
                "city": rng.choice(["Shanghai", "Hangzhou"]),
                "purchase_level": rng.choice(["low", "high", None]),
                "recent_queries": recent,
                "split": split,
            }
        )
    return rows


@pytest.fixture(scope="module")
def trained():
    train, valid = make_ctr_rows(2000, seed=1), make_ctr_rows(500, seed=2, split="valid")
    model, history = train_ctr(train, valid, CTRConfig(**FAST))
    return model, history, train, valid


def test_learns_the_planted_signal_and_beats_query_ctr(trained):
    model, history, train, valid = trained
    epochs = history["epochs"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert min(e["valid_logloss"] for e in epochs) < epochs[0]["valid_logloss"]
    m = evaluate_ctr(model, valid)
    assert m["n"] == 500
    assert m["positives"] == sum(r["label"] for r in valid)
    labels = [r["label"] for r in valid]
    base = score_metrics(labels, QueryCTRBaseline(train).predict_rows(valid))
    assert m["auc"] > 0.75
    assert m["auc"] > base["auc"] + 0.1
    with_pos = evaluate_ctr(model, valid, use_position=True)
    assert with_pos["logloss"] < base["logloss"]
    # Same seed, same model.
    again, _ = train_ctr(train[:300], valid[:100], CTRConfig(**{**FAST, "epochs": 2}))
    twice, _ = train_ctr(train[:300], valid[:100], CTRConfig(**{**FAST, "epochs": 2}))
    ctx, q = valid[:20], [r["query"] for r in valid[:20]]
    from aigq_model.ctr_model import CTRScorer

    assert np.array_equal(CTRScorer(again).predict(ctx, q), CTRScorer(twice).predict(ctx, q))


def test_save_load_gives_identical_predictions_and_scores_contexts(trained, tmp_path):
    model, _, _, valid = trained
    save_ctr(model, model.config, tmp_path / "ctr")
    scorer = load_ctr(tmp_path / "ctr")
    assert scorer.config == model.config
    before, after = evaluate_ctr(model, valid), evaluate_ctr(scorer, valid)
    assert before == after
    contexts = [{**r, "position": 2} for r in valid[:1500]] * 3  # > one predict batch; position ignored
    queries = [r["query"] for r in contexts]
    from aigq_model.ctr_model import CTRScorer

    p_model, p_loaded = CTRScorer(model).predict(contexts, queries), scorer.predict(contexts, queries)
    assert p_loaded.shape == (len(queries),)
    assert np.array_equal(p_model, p_loaded)
    assert np.all((p_loaded > 0) & (p_loaded < 1))
    # A context built from an SFT sample: searches only, oldest first, the last max_recent.
    sample = {
        "gender": "female",
        "age_bucket": "25-29",
        "city": "Shanghai",
        "purchase_level": None,
        "history": [
            {"event_type": "search", "text": "red shoe"},
            {"event_type": "click", "text": "Nike red running shoe"},
            {"event_type": "search", "text": "leather shoe"},
            {"event_type": "search", "text": "smart watch"},
        ],
    }
    ctx = context_from_sample(sample, max_recent=2)
    assert ctx == {
        "gender": "female",
        "age_bucket": "25-29",
        "city": "Shanghai",
        "purchase_level": None,
        "recent_queries": ["leather shoe", "smart watch"],
    }
    p = scorer.predict([ctx, ctx], ["vintage shoe", "cheap kettle"])
    assert p[0] > p[1]  # the query matching a recent search scores higher
    assert np.allclose(scorer.reward([ctx], ["vintage shoe"]), ctr_reward(p[:1]))
    with pytest.raises(ValueError, match="contexts"):
        scorer.predict([ctx], ["a", "b"])
    with pytest.raises(FileNotFoundError, match="ctr_model"):
        load_ctr(tmp_path)


def test_ctr_reward_clips():
    assert ctr_reward([-0.1, 0.0, 0.25, 0.6, 1.0], gamma=2.0, beta=1.0).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert ctr_reward(np.array([0.2, 0.9]), gamma=1.0, beta=0.5).tolist() == [0.2, 0.5]
    assert float(ctr_reward(0.4)) == 0.4


def _brute_auc(labels, scores) -> float:
    pos = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    neg = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_with_ties_and_logloss():
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == 0.875  # (0.5 + 1 + 1 + 1) / 4
    assert auc([1, 0, 1, 0], [0.3, 0.3, 0.3, 0.3]) == 0.5
    assert auc([1, 1, 0], [0.9, 0.1, 0.5]) == 0.5
    assert auc([0, 0, 1], [0.9, 0.8, 0.1]) == 0.0
    assert math.isnan(auc([1, 1], [0.2, 0.3]))
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 200), rng.integers(0, 7, 200) / 6  # many ties
    assert auc(y, s) == pytest.approx(_brute_auc(y.tolist(), s.tolist()), abs=1e-12)
    assert logloss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert score_metrics([1, 1], [0.2, 0.3]) == {
        "auc": None,
        "logloss": round(-math.log(0.2) / 2 - math.log(0.3) / 2, 6),
        "n": 2,
        "positives": 2,
    }


def test_entry_point_registers_a_version(tmp_path, monkeypatch, capsys):
    from aigq_model.ctr import main
    from common.arrow_io import write_partition
    from common.registry import current_version, read_manifest

    root = tmp_path / "data"
    for day, ds in enumerate(["2026-11-01", "2026-11-02"]):
        rows = make_ctr_rows(300, day * 10) + make_ctr_rows(60, day * 10 + 1, "valid", day)
        write_partition(root, "samples", "ctr_samples", ds, rows + make_ctr_rows(60, day * 10 + 2, "test", day))
    monkeypatch.setenv("PIPELINE__AIGQ__CTR__EPOCHS", "2")
    monkeypatch.setenv("PIPELINE__AIGQ__CTR__N_BUCKETS", "4096")
    assert main(["--ds", "2026-11-01", "--data-root", str(root), "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    path = root / "models" / "aigq_ctr" / "2026-11-01"
    assert out["model_dir"] == str(path)
    assert out["version"] == "2026-11-01"
    assert current_version(root, "aigq_ctr") == "2026-11-01"
    manifest = read_manifest(path)
    metrics = manifest["metrics"]
    assert metrics["eval_on"] == "next_day"
    assert metrics["eval_ds"] == "2026-11-02"
    assert metrics["model"]["n"] == 420
    assert metrics["baseline_query_ctr"]["n"] == 420
    assert manifest["config"]["seed"] == 3
    assert manifest["config"]["epochs"] == 2
    assert manifest["n_rows"] == {"train": 300, "valid": 60, "eval": 420}
    assert json.loads((path / "metrics.json").read_text()) == metrics
    assert load_ctr(path).config.n_buckets == 4096
    # The last day has no next day: evaluated on its own test split.
    assert main(["--ds", "2026-11-02", "--data-root", str(root)]) == 0
    metrics = read_manifest(root / "models" / "aigq_ctr" / "2026-11-02")["metrics"]
    assert metrics["eval_on"] == "test_split"
    assert metrics["model"]["n"] == 60
    assert current_version(root, "aigq_ctr") == "2026-11-02"
    missing = root / "samples" / "ctr_samples" / "ds=2026-11-05"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        main(["--ds", "2026-11-05", "--data-root", str(root)])
    write_partition(root, "samples", "ctr_samples", "2026-11-06", make_ctr_rows(5, 9, "test"))
    with pytest.raises(ValueError, match="ds=2026-11-06"):
        main(["--ds", "2026-11-06", "--data-root", str(root)])
    monkeypatch.setenv("PIPELINE__AIGQ__CTR__BOGUS", "1")
    with pytest.raises(ValueError, match="bogus"):
        main(["--ds", "2026-11-01", "--data-root", str(root)])
