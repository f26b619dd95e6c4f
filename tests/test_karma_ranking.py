"""KARMA in ranking: the synthetic result pages (``item_impressions``), the daily item-CTR model
(it learns; a planted KARMA-like signal helps; days without impressions are skipped), a real tiny
KARMA model as the feature source, the DAG and the report section."""

from __future__ import annotations

import hashlib
import json
import shutil
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.arrow_io import read_partition, write_partition
from common.paths import partition_path
from karma_model import ranking as rk
from karma_model import ranking_features as rf

pytestmark = pytest.mark.usefixtures("torch_one_thread")

D1, D2, D3 = "2026-11-01", "2026-11-02", "2026-11-03"
#: Content digests of every raw table of ``_generate_small`` written by the generator *before*
#: item_impressions existed (commit 20763be): adding the result pages must not change a byte of them.
GOLDEN = {
    "behavior_events/ds=2026-11-01": "de9d95e1549ec378",
    "behavior_events/ds=2026-11-02": "b463c0b297c1b28e",
    "hintq_exposures/ds=2026-11-01": "d20eeb51943dbd99",
    "hintq_exposures/ds=2026-11-02": "2f6552d854c3e228",
    "items/ds=2026-11-01": "7130c77d7768f09e",
    "query_impressions/ds=2026-11-01": "fe8b4dd4d0a79d8e",
    "query_impressions/ds=2026-11-02": "3dc1590dd612aea8",
    "true_interests/ds=2026-11-01": "46c230a992d17c17",
    "true_interests/ds=2026-11-02": "ee53a3397eaa5e70",
    "users/ds=2026-11-01": "082db5413a83f49f",
}


def _generate_small(root: Path, bad_row_rate: float = 0.01) -> dict:
    from sources.synthetic import generate

    return generate(root, D1, 2, n_users=60, n_items=300, events_per_user_day=12.0, seed=11, bad_row_rate=bad_row_rate)


def _digests(root: Path) -> dict[str, str]:
    out = {}
    for part in sorted((root / "raw").glob("*/ds=*")):
        table = pq.read_table(part, partitioning=None)
        out[part.relative_to(root / "raw").as_posix()] = hashlib.sha256(
            json.dumps(table.to_pydict(), default=str, sort_keys=True).encode()).hexdigest()[:16]
    return out


# --- the synthetic source -------------------------------------------------------------------------
def test_synthetic_result_pages_leave_every_other_table_unchanged(tmp_path):
    counts = _generate_small(tmp_path)
    digests = _digests(tmp_path)
    assert {k: v for k, v in digests.items() if not k.startswith("item_impressions/")} == GOLDEN
    assert set(counts["item_impressions"]) == {D1, D2} and min(counts["item_impressions"].values()) > 0


def test_synthetic_result_pages_are_the_searches_views_with_their_clicks(tmp_path):
    from common import schemas

    _generate_small(tmp_path, bad_row_rate=0.0)
    for ds in (D1, D2):
        imp = pq.read_table(partition_path(tmp_path, "raw", "item_impressions", ds), partitioning=None)
        assert imp.schema.equals(schemas.ITEM_IMPRESSIONS, check_metadata=False)
        imp = imp.to_pandas()
        ev = pq.read_table(partition_path(tmp_path, "raw", "behavior_events", ds), partitioning=None).to_pandas()
        views = ev[ev["event_type"] == "view"]
        clicks = ev[(ev["event_type"] == "click") & ev["request_id"].notna()]
        key = ["request_id", "item_id"]
        assert sorted(map(tuple, imp[key].to_numpy())) == sorted(map(tuple, views[key].to_numpy()))
        clicked = {tuple(r) for r in imp[imp["clicked"]][key].to_numpy()}
        assert clicked == {tuple(r) for r in clicks[key].to_numpy()}
        assert not imp.duplicated(["request_id", "position"]).any()  # common.schemas.UNIQUE_KEYS
        searches = ev[ev["event_type"] == "search"].drop_duplicates("request_id").set_index("request_id")
        assert (imp["event_time"] == imp["request_id"].map(searches["event_time"])).all()  # served with the search
        assert (imp["user_id"] == imp["request_id"].map(searches["user_id"])).all()
        pages = imp.groupby("request_id")["position"].agg(["min", "max", "size"])
        assert (pages["min"] == 0).all() and (pages["max"] == pages["size"] - 1).all()
        assert pages["size"].between(4, 8).all()


# --- the ranking model --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clean_root(tmp_path_factory):
    """Three synthetic days (600 users) with raw copied to clean/ and an item corpus (no Spark)."""
    from tests.export_fixtures import make_clean_root

    return make_clean_root(tmp_path_factory.mktemp("ranking") / "data", days=3, n_users=600, n_items=400)


class ZeroKarma:
    """A feature source without any signal (``cos = 0``, ``e_u = 0``)."""

    history_len, dim = 20, 3

    def __init__(self, *args, **kwargs):
        pass

    def features(self, frame, requests, histories):
        return np.zeros((len(frame), 1 + self.dim), dtype=np.float32)


def _affinity(user: str, leaf: str | None) -> float:
    """A hidden user x leaf affinity in [-1, 1] (stable hash), unknown to the baseline features."""
    return zlib.crc32(f"{user}|{leaf}".encode()) / 2**31 - 1.0


class PlantedKarma(ZeroKarma):
    """A KARMA-like source that knows the hidden affinity: ``cos`` = affinity + noise."""

    leaf: dict = {}

    def features(self, frame, requests, histories):
        rng = np.random.default_rng(len(frame))
        aff = np.array([_affinity(u, self.leaf.get(i)) for u, i in zip(frame["user_id"], frame["item_id"], strict=True)])
        e_u = np.array([[zlib.crc32(f"{u}{k}".encode()) / 2**32 for k in range(self.dim)] for u in frame["user_id"]])
        return np.c_[aff + rng.normal(0.0, 0.3, len(aff)), e_u].astype(np.float32)


def test_the_ranking_model_learns_the_next_day_clicks(clean_root, monkeypatch):
    monkeypatch.setattr(rf, "KarmaFeaturizer", ZeroKarma)
    m = rk.run_ranking(clean_root, D3, rk.RankingConfig(bootstrap=20), model_dir=clean_root / "no-model")
    assert not m["skipped"] and (m["train_ds"], m["eval_ds"]) == (D2, D3)
    assert m["rows"]["eval"] > 3000 and m["rows"]["valid"] > 0
    assert m["priors_from"] == D1
    base = m["feature_sets"]["without_karma"]
    assert set(base["seeds"]) == {"0", "1"}
    # the synthetic clicks follow the user's interests and the query's leaf: the baseline ranks them
    # well above chance (its ceiling, the day's true interest mixture, is about 0.63 on this world)
    assert base["mean"]["auc"] > 0.56, base
    assert base["mean"]["logloss"] < m["reference"]["item_ctr_prior"]["logloss"]
    for fs in rk.FEATURE_SETS:
        assert set(m["feature_sets"][fs]["mean"]) == set(rk.METRIC_KEYS)
    assert m["feature_sets"]["with_karma"]["n_features"] == len(rf.BASE_FEATURES) + 1 + ZeroKarma.dim
    json.dumps(m)  # JSON-safe


def test_a_planted_karma_like_signal_raises_the_auc(clean_root, tmp_path, monkeypatch):
    """Clicks of day 2 and 3 redrawn from a hidden user x leaf affinity that only the planted
    feature source sees: with its features the AUC must rise far beyond the seeds' spread."""
    root = tmp_path / "data"
    shutil.copytree(clean_root, root)
    items = rf.ItemInfo.from_items(read_partition(root, "clean", "items", D1))
    rng = np.random.default_rng(0)
    for ds in (D2, D3):
        table = read_partition(root, "clean", "item_impressions", ds)
        aff = np.array([_affinity(u, items.leaf.get(i)) for u, i in zip(table["user_id"].to_pylist(),
                                                                          table["item_id"].to_pylist(), strict=True)])
        clicked = rng.random(len(aff)) < 1.0 / (1.0 + np.exp(-(3.0 * aff - 1.5)))
        write_partition(root, "clean", "item_impressions", ds, table.set_column(5, "clicked", pa.array(clicked)))
    monkeypatch.setattr(PlantedKarma, "leaf", items.leaf)
    monkeypatch.setattr(rf, "KarmaFeaturizer", PlantedKarma)
    m = rk.run_ranking(root, D3, rk.RankingConfig(bootstrap=50), model_dir=root / "no-model")
    without = m["feature_sets"]["without_karma"]["mean"]["auc"]
    for fs in rk.KARMA_SETS:
        diff = m["auc_difference"][fs]
        assert m["feature_sets"][fs]["mean"]["auc"] > without + 0.1, (fs, m["feature_sets"][fs]["mean"], without)
        assert diff["beyond_seed_spread"] and min(diff["per_seed"]) > 0.05, diff
        assert diff["bootstrap_95"]["low"] > 0, diff
        assert m["feature_sets"][fs]["mean"]["logloss"] < m["feature_sets"]["without_karma"]["mean"]["logloss"]


def test_days_without_impressions_and_without_a_model_are_skipped(clean_root, tmp_path):
    no_day = rk.run_ranking(clean_root, "2026-11-04", rk.RankingConfig())  # day 4 was never generated
    assert no_day["skipped"] and "no item impressions on 2026-11-04" in no_day["reason"]
    root = tmp_path / "data"
    shutil.copytree(clean_root, root)
    empty = read_partition(root, "clean", "item_impressions", D2).slice(0, 0)
    write_partition(root, "clean", "item_impressions", D2, empty)  # published, but empty (a public source)
    assert "no item impressions on 2026-11-02" in rk.run_ranking(root, D3, rk.RankingConfig())["reason"]
    no_model = rk.run_ranking(clean_root, D3, rk.RankingConfig())  # nothing under models/karma
    assert no_model["skipped"] and no_model["reason"] == f"no KARMA version registered before {D2}"
    out = tmp_path / "metrics.json"
    assert rk.main(["--ds", D3, "--data-root", str(clean_root), "--out", str(out)]) == 0  # a logged skip
    assert not out.exists()


def test_the_default_model_is_the_version_serving_before_the_training_day(tmp_path):
    from common.registry import commit_version, set_current, stage_version

    for version in (D1, D2):
        tmp = stage_version(tmp_path, "karma", version)
        commit_version(tmp, tmp_path, "karma", version, {"ds": version})
    set_current(tmp_path, "karma", D2)
    assert rk.default_karma_dir(tmp_path, D3).name == D2  # training on D3: the version of D2 served on D2
    # training on D2: CURRENT (D2) is too new and no gate decision names an older registered version
    assert rk.default_karma_dir(tmp_path, D2) is None
    (tmp_path / "models" / "karma" / "decisions").mkdir()
    (tmp_path / "models" / "karma" / "decisions" / f"{D1}.json").write_text(json.dumps({"registered": True}))
    assert rk.default_karma_dir(tmp_path, D2).name == D1


@pytest.mark.slow
def test_a_tiny_karma_model_feeds_the_features_end_to_end(clean_root, tmp_path):
    import torch

    from karma_model.config import KarmaConfig
    from karma_model.load import save_karma
    from karma_model.model import KarmaModel
    from tests.test_base_lm import make_tiny_base

    config = KarmaConfig(proj_dim=8, n_rec_prefix=1, max_history_tokens=64, max_item_tokens=16,
                         max_target_tokens=8, max_text_tokens=8, history_len=6)
    torch.manual_seed(0)
    model, tok = KarmaModel.from_base(make_tiny_base(tmp_path / "base"), config)
    model_dir = save_karma(model, tok, tmp_path / "karma", {"name": "karma_tiny", "version": D1, "ds": D1})

    frame = rf.read_impressions(clean_root, D3).head(300)
    ctx = rf.load_context(clean_root, D2, D3, 7)
    requests, histories = rf.request_histories(frame, ctx.log, 50)
    featurizer = rf.KarmaFeaturizer(model_dir, clean_root, D3, batch_size=16)
    x = featurizer.features(frame, requests, histories)
    assert x.shape == (len(frame), 1 + 8) and np.isfinite(x).all()
    assert np.allclose(np.linalg.norm(x[:, 1:], axis=1), 1.0, atol=1e-4)  # e_u / |e_u|
    assert (np.abs(x[:, 0]) <= 1.0 + 1e-5).all()
    e_i = featurizer.item_vectors(["i000000", "not-an-item"])
    assert np.isclose(np.linalg.norm(e_i[0]), 1.0, atol=1e-4) and not e_i[1].any()
    assert max(len(h) for h in histories) <= 50

    out = tmp_path / "metrics.json"
    assert rk.main(["--ds", D3, "--data-root", str(clean_root), "--model-dir", str(model_dir), "--seeds", "0",
                    "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["karma_model"]["trained_through"] == D1 and m["karma_model"]["proj_dim"] == 8
    assert set(m["feature_sets"]) == set(rk.FEATURE_SETS) and m["seeds"] == [0]


# --- report and experiment driver ---------------------------------------------------------------
def _fake_metrics(ds: str) -> dict:
    def stats(a):
        return {"mean": {"auc": a, "logloss": 0.45}, "std": {"auc": 0.001, "logloss": 0.0}, "seeds": {}}

    diff = {"mean": 0.004, "per_seed": [0.003, 0.005], "seed_spread": 0.002, "beyond_seed_spread": True,
            "bootstrap_95": {"low": -0.001, "high": 0.009, "resamples": 20}}
    return {"ds": ds, "eval_ds": ds, "train_ds": D2, "skipped": False, "seeds": [0, 1],
            "karma_model": {"version": D1}, "rows": {"eval": 100}, "positives": {"eval": 20},
            "feature_sets": {"without_karma": stats(0.60), "with_karma": stats(0.603), "with_karma_cos": stats(0.604)},
            "auc_difference": {"with_karma": {**diff, "mean": 0.003}, "with_karma_cos": diff}}


def test_the_report_shows_karma_in_ranking(tmp_path):
    from common.steps import write_json_atomic
    from export.report_ranking import karma_ranking_section

    body, status = karma_ranking_section(tmp_path, D3)
    assert status == "missing" and "no scored day" in body
    write_json_atomic(rk.metrics_path(tmp_path, D3), _fake_metrics(D3))
    write_json_atomic(rk.metrics_path(tmp_path, "2026-11-09"), _fake_metrics("2026-11-09"))  # after the report's day
    body, status = karma_ranking_section(tmp_path, D3)
    assert status == "ok"
    assert body.count("<tr>") == 1 + 3  # header + one row per feature set of D3 only
    assert "0.6040 ± 0.0010" in body and "+0.0040" in body and "[-0.0010, +0.0090]" in body
    assert "+ KARMA cos only" in body and "2026-11-02 → 2026-11-03" in body and "2026-11-09" not in body


def test_the_experiment_driver_aggregates_and_renders(clean_root, tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "karma_ranking_driver", Path(__file__).resolve().parents[1] / "scripts" / "experiments" / "karma_ranking.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    monkeypatch.setattr(rf, "KarmaFeaturizer", ZeroKarma)
    out = tmp_path / "out"
    assert driver.main(["--data-root", str(clean_root), "--ds", D3, "--model-dirs", str(tmp_path / "m"),
                        "--out", str(out)]) == 0
    table = (out / "ablation.md").read_text()
    payload = json.loads((out / "ablation.json").read_text())
    assert "| without KARMA |" in table and "ceiling: true interest mixture" in table
    assert set(payload["summary"]["auc_difference"]) == set(rk.KARMA_SETS)
    assert set(payload["summary"]["without_karma"]["seeds"]) == {"0", "1"}



def test_the_variant_columns_are_the_models_own_retrieval_probabilities():
    """scripts/experiments/karma_ranking_variants.py: ``item_logp`` is the log-softmax of cos / tau
    over the whole catalogue, ``leaf_logp`` that mass summed over the leaf, unknown items get fills."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "karma_ranking_variants", Path(__file__).resolve().parents[1] / "scripts" / "experiments" /
        "karma_ranking_variants.py")
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    users, items = unit(rng.normal(size=(2, 8))), unit(rng.normal(size=(6, 8)))
    item_leaf = np.array([0, 0, 1, 1, 1, 2])
    # request 0 shows the whole catalogue; request 1 shows item 4 and an item outside the catalogue
    item_row = np.array([0, 1, 2, 3, 4, 5, 4, -1])
    row_leaf = np.array([0, 0, 1, 1, 1, 2, 1, -1])
    cols = variants.karma_columns(users, items, 0.1, item_row, item_leaf, row_leaf, np.array([0] * 6 + [1, 1]),
                                  np.array(["a"] * 6 + ["b", "b"]))
    p = np.exp(cols["item_logp"][:6])
    assert p.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.argmax(p) == np.argmax(users[0] @ items.T)
    leaf_p = [p[item_leaf == k].sum() for k in range(3)]
    assert np.exp(cols["leaf_logp"][[0, 2, 5]]) == pytest.approx(leaf_p, abs=1e-6)
    assert cols["cos"][6] == pytest.approx(float(users[1] @ items[4]), abs=1e-6)
    assert (cols["cos"][7], cols["item_logp"][7], cols["leaf_logp"][7]) == (0.0, pytest.approx(-np.log(6)), -20.0)
    assert cols["page_rank"][np.argmax(cols["cos"][:6])] == pytest.approx(1 / 6)
    assert cols["eu"].shape == (8, 8) and np.allclose(cols["eu"][7], users[1])


# --- the DAG ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ranking_dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags" / "karma_ranking.py"))
    assert bag.import_errors == {}
    return bag.get_dag("karma_ranking")


@pytest.mark.airflow
def test_the_dag_runs_on_models_karma_and_skips_a_day_without_impressions(ranking_dag, monkeypatch):
    from airflow.sdk.exceptions import AirflowSkipException

    from dags import runner
    from dags.assets import KARMA_RANKING

    condition = ranking_dag.timetable.asset_condition
    assert {a.name for a in getattr(condition, "objects", [condition])} == {"models.karma"}
    assert {t.task_id: sorted(t.downstream_task_ids) for t in ranking_dag.tasks} == {"resolve_ds": ["rank"],
                                                                                     "rank": []}
    rank = ranking_dag.get_task("rank")
    assert [a.name for a in rank.outlets] == ["reports.karma_ranking"] and rank.retries >= 1
    calls = []

    def step(module, args, params):
        calls.append((module, args))
        return {"skipped": True, "reason": "no item impressions on 2026-11-02"}

    monkeypatch.setattr(runner, "python_step", step)
    params = {"data_root": "/d", "model_dir": "", "config": "", "profile": ""}
    events = {KARMA_RANKING: SimpleNamespace(extra=None)}
    with pytest.raises(AirflowSkipException, match="no item impressions"):
        rank.python_callable(D3, params=params, outlet_events=events)
    assert calls == [("karma_model.ranking", ["--ds", D3, "--data-root", "/d"])]
    monkeypatch.setattr(runner, "python_step", lambda module, args, params: {"skipped": False, "metrics_path": "/m"})
    rank.python_callable(D3, params=params, outlet_events=events)
    assert events[KARMA_RANKING].extra == {"ds": D3, "path": "/m"}
