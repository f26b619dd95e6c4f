"""The synthetic log generator: contract, determinism, invariants and the signals it plants."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import schemas
from common.paths import MANIFEST, SUCCESS, partition_path
from sources import synthetic

START = "2026-11-01"
DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
DEFAULTS = dict(start_ds=START, days=3, n_users=400, n_items=1500, events_per_user_day=12.0, seed=7)
DAY_TABLES = ("behavior_events", "hintq_exposures", "query_impressions", "item_impressions", "true_interests")
SMALL = dict(start_ds=START, days=2, n_users=120, n_items=400, events_per_user_day=20.0)


def read(root: Path, table: str, ds: str) -> pd.DataFrame:
    # one partition folder, read as it is (no ds column is added from the folder name)
    return pq.read_table(partition_path(root, "raw", table, ds), partitioning=None).to_pandas()


def read_all(root: Path, table: str, days=DAYS) -> pd.DataFrame:
    return pd.concat([read(root, table, ds) for ds in days], ignore_index=True)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    t0 = time.perf_counter()
    counts = synthetic.generate(root, **DEFAULTS)
    return root, counts, time.perf_counter() - t0


@pytest.fixture(scope="module")
def items(generated):
    return read(generated[0], "items", START)


def test_config_defaults_run_fast_and_hit_the_event_target(generated):
    root, counts, seconds = generated
    assert seconds < 10, f"3 days at the config defaults took {seconds:.1f}s"
    total = sum(counts["behavior_events"].values())
    target = DEFAULTS["n_users"] * DEFAULTS["events_per_user_day"] * 3
    assert 0.85 * target < total < 1.15 * target
    assert set(counts) == set(DAY_TABLES) | {"items", "users"}
    assert counts["items"] == {START: 1500}
    assert counts["users"] == {START: 400}


@pytest.mark.parametrize("table", [*schemas.RAW_TABLES, "true_interests"])
def test_files_carry_the_contract_schema(generated, table):
    root = generated[0]
    days = DAYS if table in DAY_TABLES else [START]
    for ds in days:
        files = sorted(partition_path(root, "raw", table, ds).glob("*.parquet"))
        assert files
        for f in files:
            assert pq.read_schema(f).equals(schemas.arrow_schema(table), check_metadata=False), f


def test_partitions_are_published_with_manifests_and_times_inside_the_day(generated):
    root, counts, _ = generated
    for table in DAY_TABLES:
        for ds in DAYS:
            part = partition_path(root, "raw", table, ds)
            assert (part / SUCCESS).is_file()
            manifest = json.loads((part / MANIFEST).read_text())
            assert manifest["rows"] == counts[table][ds] == len(read(root, table, ds)) > 0
            assert manifest["params"]["seed"] == 7
            assert manifest["params"]["n_users"] == 400
            if table == "true_interests":
                continue
            times = read(root, table, ds)["event_time"]
            day_start = pd.Timestamp(ds, tz="UTC")
            assert times.min() > day_start, (table, ds)
            assert times.max() < day_start + pd.Timedelta(days=1), (table, ds)
    assert not [p for p in (root / "raw").rglob(".*")], "temporary folders left behind"


def test_same_seed_same_content_other_seed_differs(tmp_path):
    a, b, c, d = (tmp_path / x for x in "abcd")
    synthetic.generate(a, seed=3, **SMALL)
    synthetic.generate(b, seed=3, **SMALL)
    synthetic.generate(c, seed=4, **SMALL)
    synthetic.generate(d, seed=3, chunk_rows=200, **SMALL)      # streamed in many row groups and files
    for table in DAY_TABLES:
        for ds in DAYS[:2]:
            for f in partition_path(a, "raw", table, ds).glob("*.parquet"):
                assert f.read_bytes() == (partition_path(b, "raw", table, ds) / f.name).read_bytes()
            pd.testing.assert_frame_equal(read(a, table, ds), read(d, table, ds))
    assert len(list(partition_path(d, "raw", "behavior_events", DAYS[0]).glob("*.parquet"))) > 1
    assert not read(a, "behavior_events", DAYS[0]).equals(read(c, "behavior_events", DAYS[0]))
    assert not read(a, "items", START).equals(read(c, "items", START))


def test_a_single_day_regenerates_identically(tmp_path):
    full, single = tmp_path / "full", tmp_path / "single"
    synthetic.generate(full, seed=5, **SMALL)
    counts = synthetic.generate(single, seed=5, only_ds=[DAYS[1]], **SMALL)
    assert counts["behavior_events"].keys() == {DAYS[1]}
    assert not partition_path(single, "raw", "behavior_events", DAYS[0]).exists()
    for table in DAY_TABLES:
        pd.testing.assert_frame_equal(read(full, table, DAYS[1]), read(single, table, DAYS[1]))
    with pytest.raises(ValueError):
        synthetic.generate(single, seed=5, only_ds=["2026-12-25"], **SMALL)


def test_event_rows_obey_the_contract(generated, items):
    root = generated[0]
    ev = read_all(root, "behavior_events")
    users = read(root, "users", START)
    assert set(ev.event_type) == set(schemas.EVENT_TYPES)
    assert set(ev.scene) == set(schemas.SCENES)
    is_search = ev.event_type == "search"
    is_item = ev.event_type.isin(schemas.ITEM_EVENT_TYPES)
    assert (ev["query"].notna() == is_search).all()
    assert (ev.item_id.notna() == is_item).all()
    assert ev.item_id[is_item].isin(items.item_id).all()
    assert ev.user_id.isin(users.user_id).all()
    assert ev["query"][is_search].isin(list(synthetic.query_vocabulary())).all()
    assert ev.request_id[ev.scene.isin(["search", "hintq"])].notna().all()
    assert ev.request_id[ev.event_type == "exit"].isna().all()
    assert (ev.scene[ev.event_type == "exit"] == "other").all()
    assert not ev.duplicated().any()
    # every request's views/clicks belong to the same user and follow its search
    searches = ev[is_search].set_index("request_id")
    assert searches.index.is_unique
    reqs = ev[ev.request_id.notna() & ~is_search]
    assert (reqs.event_time.values > searches.event_time.reindex(reqs.request_id).values).all()
    assert (reqs.user_id.values == searches.user_id.reindex(reqs.request_id).values).all()


def test_sessions_are_separated_by_more_than_30_minutes_and_end_with_exit(generated):
    ev = read_all(generated[0], "behavior_events").sort_values(["user_id", "event_time"], kind="stable")
    ev["day"] = ev.event_time.dt.strftime("%Y-%m-%d")
    gap = ev.groupby(["user_id", "day"]).event_time.diff()
    new_session = gap.isna() | (gap > pd.Timedelta(minutes=30))
    assert not ((gap > pd.Timedelta(minutes=10)) & (gap <= pd.Timedelta(minutes=30))).any()
    assert new_session.sum() == (ev.event_type == "exit").sum()
    last_of_session = new_session.shift(-1, fill_value=True)
    assert (ev.event_type[last_of_session] == "exit").all()


def test_hintq_exposures_impressions_and_searches_agree(generated):
    root = generated[0]
    exp = read_all(root, "hintq_exposures")
    imp = read_all(root, "query_impressions")
    ev = read_all(root, "behavior_events")
    assert exp.request_id.is_unique
    assert (exp.shown_queries.map(len) == 3).all()
    assert (exp.shown_queries.map(lambda q: len(set(q))) == 3).all()
    assert (exp.ranker_scores.map(lambda s: len(s) == 3 and s[0] >= s[1] >= s[2])).all()
    clicked = exp[exp.clicked_query.notna()]
    assert 0.1 < len(clicked) / len(exp) < 0.9
    assert all(q in shown for q, shown in zip(clicked.clicked_query, clicked.shown_queries, strict=True))
    # impressions: the 3 shown queries at positions 0..2, clicked exactly where the exposure was
    assert len(imp) == 3 * len(exp)
    assert set(imp.position) == {0, 1, 2}
    assert imp.clicked.sum() == len(clicked)
    flat = exp.explode("shown_queries")
    assert list(imp["query"]) == list(flat.shown_queries)
    # each clicked exposure has exactly one 'hintq' search with its query, after it; nothing else
    hs = ev[(ev.event_type == "search") & (ev.scene == "hintq")].set_index("request_id")
    assert hs.index.is_unique
    assert set(hs.index) == set(clicked.request_id)
    c = clicked.set_index("request_id").loc[hs.index]
    assert (hs["query"] == c.clicked_query).all()
    assert (hs.user_id == c.user_id).all()
    assert (hs.event_time > c.event_time).all()
    assert ev.request_id.dropna().str[0].isin(["h", "s"]).all()


def _top_interests(root: Path, ds: str, k: int) -> set[tuple[str, str]]:
    ti = read(root, "true_interests", ds).sort_values(["user_id", "weight"], ascending=[True, False])
    top = ti.groupby("user_id").head(k)
    return set(zip(top.user_id, top.category, strict=True))


def test_clicks_concentrate_on_true_interest_leaves(generated, items):
    root = generated[0]
    ds = DAYS[1]
    ev = read(root, "behavior_events", ds)
    clicks = ev[ev.event_type == "click"].merge(items[["item_id", "leaf_category"]], on="item_id")
    top = _top_interests(root, ds, 3)
    share = np.mean([(u, c) in top for u, c in zip(clicks.user_id, clicks.leaf_category, strict=True)])
    shuffled_users = np.random.default_rng(0).permutation(clicks.user_id.values)
    chance = np.mean([(u, c) in top for u, c in zip(shuffled_users, clicks.leaf_category, strict=True)])
    assert len(clicks) > 500
    assert share > 0.6, share
    assert share > 5 * chance, (share, chance)
    # and beyond what was shown: views of interest leaves are clicked far more often
    interests = read(root, "true_interests", ds)
    interest_pairs = set(zip(interests.user_id, interests.category, strict=True))
    views = ev[ev.event_type == "view"].merge(items[["item_id", "leaf_category"]], on="item_id")
    views["match"] = [(u, c) in interest_pairs for u, c in zip(views.user_id, views.leaf_category, strict=True)]
    clicked = set(zip(clicks.request_id, clicks.item_id, strict=True))
    views["clicked"] = [(r, i) in clicked for r, i in zip(views.request_id, views.item_id, strict=True)]
    ctr = views.groupby("match").clicked.mean()
    assert ctr[True] > 3 * ctr[False], ctr.to_dict()


def test_query_impression_ctr_follows_interest(generated):
    root = generated[0]
    leaf_of = synthetic.query_vocabulary()
    rates = []
    for ds in DAYS:
        imp = read(root, "query_impressions", ds)
        ti = read(root, "true_interests", ds)
        interests = set(zip(ti.user_id, ti.category, strict=True))
        imp["match"] = [(u, leaf_of[q]) in interests for u, q in zip(imp.user_id, imp["query"], strict=True)]
        rates.append(imp)
    imp = pd.concat(rates)
    ctr = imp.groupby("match").clicked.mean()
    assert imp.match.mean() > 0.2
    assert (~imp.match).mean() > 0.2
    assert ctr[True] > 3 * ctr[False], ctr.to_dict()


def test_interests_drift_but_stay_correlated(generated):
    root = generated[0]
    first = read(root, "true_interests", DAYS[0]).pivot(index="user_id", columns="category", values="weight")
    last = read(root, "true_interests", DAYS[2]).pivot(index="user_id", columns="category", values="weight")
    first, last = first.align(last, join="outer", fill_value=0.0)
    first, last = first.fillna(0.0).to_numpy(), last.fillna(0.0).to_numpy()
    assert np.allclose(first.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(last.sum(axis=1), 1.0, atol=1e-5)
    changed = np.abs(first - last).sum(axis=1) > 1e-3
    assert changed.mean() > 0.9
    cos = (first * last).sum(axis=1) / np.linalg.norm(first, axis=1) / np.linalg.norm(last, axis=1)
    other = np.roll(last, 1, axis=0)
    cos_other = (first * other).sum(axis=1) / np.linalg.norm(first, axis=1) / np.linalg.norm(other, axis=1)
    assert cos.mean() > 0.6, (cos.mean(), cos_other.mean())
    assert cos.mean() > cos_other.mean() + 0.4, (cos.mean(), cos_other.mean())
    counts = (first > 0).sum(axis=1)
    assert counts.min() >= 2
    assert counts.max() <= 5


def test_items_look_like_a_catalogue(items):
    emb = np.stack(items.image_embedding.map(np.asarray).values)
    assert emb.shape == (1500, 16)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    leaf = items.leaf_category.values
    same = leaf[:, None] == leaf[None, :]
    sim = emb @ emb.T
    assert sim[same & ~np.eye(len(leaf), dtype=bool)].mean() > sim[~same].mean() + 0.3
    assert items.item_id.is_unique
    assert items.item_id.str.fullmatch(r"i\d{6}").all()
    assert (items.category_path.str.split(" > ").str[-1] == items.leaf_category).all()
    assert items.leaf_category.nunique() == 160
    assert all(b in t for b, t in zip(items.brand, items.title, strict=True))
    assert (items.price > 0).all()
    assert (items.tags.map(len) >= 1).all()


def test_cli_uses_config_defaults_and_overrides(tmp_path):
    counts = synthetic.main(["--data-root", str(tmp_path), "--days", "1", "--users", "50", "--seed", "11"])
    assert set(counts["behavior_events"]) == {START}
    assert counts["users"] == {START: 50}
    assert counts["items"] == {START: 1500}
    manifest = json.loads((partition_path(tmp_path, "raw", "behavior_events", START) / MANIFEST).read_text())
    assert manifest["params"]["seed"] == 11
    assert manifest["params"]["events_per_user_day"] == 12.0


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synthetic.generate(tmp_path, "2026-11-31", 1, 10, 10, 5.0, 1)
    with pytest.raises(ValueError):
        synthetic.generate(tmp_path, START, 0, 10, 10, 5.0, 1)


def test_session_plan_matches_the_event_target():
    for target in (1.0, 12.0, 200.0):
        rate, extra = synthetic.session_plan(target)
        sessions = synthetic.expected_capped_sessions(rate)
        per_session = synthetic.EVENTS_OUTSIDE_SEARCHES + synthetic.EVENTS_PER_SEARCH * (1.0 + extra)
        assert sessions <= synthetic.TARGET_SESSIONS + 1e-9
        assert abs(sessions * per_session - target) < 1e-6 * target


def test_injected_bad_rows_are_deterministic_and_typed(tmp_path):
    from sources.synthetic import BAD_ROW_KINDS, inject_bad_rows

    clean = synthetic.generate(tmp_path / "a", START, 1, 30, 100, 12.0, seed=5)
    dirty = synthetic.generate(tmp_path / "b", START, 1, 30, 100, 12.0, seed=5, bad_row_rate=0.05)
    n_clean, n_dirty = clean["behavior_events"][START], dirty["behavior_events"][START]
    events = pq.read_table(partition_path(tmp_path / "b", "raw", "behavior_events", START)).to_pandas()
    assert events.user_id.isna().sum() > 0
    assert (events.event_type == "teleport").sum() > 0
    assert n_dirty - n_clean == events.duplicated().sum() > 0  # only duplicates add rows
    again = synthetic.generate(tmp_path / "c", START, 1, 30, 100, 12.0, seed=5, bad_row_rate=0.05)
    assert again == dirty
    assert len(BAD_ROW_KINDS) == 5
    assert inject_bad_rows(pa.table({"x": [1]}), 0.0, np.random.default_rng(0)).num_rows == 1
