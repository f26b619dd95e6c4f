"""Public-dataset adapters (sources.amazon_scientific, sources.bestbuy, sources.esci).

Tests on the real extracts read ``../shared/datasets`` (or ``$SHARED_DATASETS``) and skip when
it is absent; the tiny Best Buy-shaped case and the text parser need nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from common import schemas
from common.paths import MANIFEST, SUCCESS
from sources import amazon_scientific, bestbuy, esci

SHARED = Path(
    os.environ.get("SHARED_DATASETS") or Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
)
UTC = dt.UTC


def dataset_dir(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(
            f"../shared/datasets/{name} not found (looked in {path}): "
            "public-data adapter tests need it (see DEVELOPERS/README)"
        )
    return path


def read_events(root: Path) -> pd.DataFrame:
    base = root / "raw" / "behavior_events"
    frames = []
    for part in sorted(base.iterdir()):
        df = pq.read_table(part / "part-00000.parquet").to_pandas()
        df["ds"] = part.name[3:]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def read_snapshot(root: Path, table: str) -> pd.DataFrame:
    (part,) = sorted((root / "raw" / table).iterdir())
    return pq.read_table(part / "part-00000.parquet").to_pandas()


@pytest.fixture(scope="module")
def amazon(tmp_path_factory):
    src = dataset_dir("amazon_scientific")
    root = tmp_path_factory.mktemp("amazon")
    return src, root, amazon_scientific.convert(src, root, start_ds="2026-11-01", days=3)


@pytest.fixture(scope="module")
def best_buy(tmp_path_factory):
    src = dataset_dir("bestbuy_search")
    root = tmp_path_factory.mktemp("bestbuy")
    return src, root, bestbuy.convert(src, root)


@pytest.fixture(scope="module")
def esci_out(tmp_path_factory):
    src = dataset_dir("esci_sample")
    root = tmp_path_factory.mktemp("esci")
    return src, root, esci.convert(src, root, ds="2026-11-01")


def check_layout(root: Path, counts: dict) -> None:
    """Exact contract schemas, _SUCCESS everywhere, counts = rows on disk, no empty tables."""
    written = {p.name for p in (root / "raw").iterdir()}
    assert written == {t for t, c in counts.items() if c}
    assert written <= {"behavior_events", "items", "users"}
    for table in written:
        parts = sorted((root / "raw" / table).iterdir())
        assert {p.name[3:] for p in parts} == set(counts[table])
        if table in schemas.SNAPSHOT_TABLES:
            assert len(parts) == 1
            assert parts[0].name[3:] == min(counts["behavior_events"])
        for part in parts:
            assert (part / SUCCESS).is_file(), part
            files = [f for f in part.iterdir() if not f.name.startswith(("_", "."))]
            assert [f.name for f in files] == ["part-00000.parquet"]
            assert pq.read_schema(files[0]).equals(schemas.arrow_schema(table)), (table, part)
            rows = pq.read_metadata(files[0]).num_rows
            assert rows == counts[table][part.name[3:]] == json.loads((part / MANIFEST).read_text())["rows"]
            assert rows > 0
            # jobs.validate's default text limits: no row here should be quarantined for length.
            table_data = pq.read_table(files[0])
            for field in schemas.arrow_schema(table):
                if field.type == pa.string():
                    limit = 1024 if field.name in ("title", "category_path") else 256
                    lengths = pc.utf8_length(table_data.column(field.name)).drop_null()
                    assert len(lengths) == 0 or pc.max(lengths).as_py() <= limit, (table, field.name)
            if table == "behavior_events":
                times = pq.read_table(files[0], columns=["event_time"]).column(0).drop_null().to_pylist()
                start = dt.datetime.fromisoformat(part.name[3:]).replace(tzinfo=UTC)
                assert all(start <= t < start + dt.timedelta(days=1) for t in times)


# --- Amazon Scientific ------------------------------------------------------------------------


def test_amazon_layout(amazon):
    _src, root, counts = amazon
    check_layout(root, counts)
    assert sum(counts["behavior_events"].values()) == 59427
    assert sum(counts["items"].values()) == 4385
    assert sum(counts["users"].values()) == 8442
    events = read_events(root)
    assert set(events["event_type"]) == {"click"}
    assert set(events["scene"]) == {"home"}
    assert events["query"].isna().all()
    assert events["request_id"].isna().all()


def test_amazon_times_follow_split_rule(amazon):
    src, root, _counts = amazon
    ev = read_events(root).sort_values(["user_id", "event_time"], ignore_index=True)
    user_index = pd.read_csv(src / "Scientific.user2index", sep="\t", header=None, dtype=str)
    index_of = dict(zip(user_index[0], user_index[1].astype(int), strict=True))
    dates = ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert (ev["ds"] == ev["user_id"].map(lambda u: dates[index_of[u] % 3])).all()
    by_user = ev.groupby("user_id")
    assert by_user["event_time"].is_monotonic_increasing.all()
    assert not ev.duplicated(["user_id", "event_time"]).any()
    from_end = by_user.cumcount(ascending=False)
    tod = ev["event_time"] - ev["event_time"].dt.floor("D")
    offset = (tod[from_end == 0] - pd.Timedelta(hours=23)).set_axis(ev.loc[from_end == 0, "user_id"])
    assert ((offset >= pd.Timedelta(0)) & (offset < pd.Timedelta(minutes=30))).all()
    valid = tod[from_end == 1].set_axis(ev.loc[from_end == 1, "user_id"])
    assert (valid == pd.Timedelta(hours=21) + offset.loc[valid.index]).all()
    train = from_end >= 2
    assert (tod[train] < pd.Timedelta(hours=19)).all()
    gaps = by_user["event_time"].diff()[train & (by_user.cumcount() > 0)]
    assert ((gaps >= pd.Timedelta(minutes=1)) & (gaps < pd.Timedelta(minutes=30))).all()
    # The ETL's time-of-day split: [0, 80%) train, [80%, 90%) valid, [90%, 100%) test.
    day = pd.Timedelta(days=1)
    assert (tod[train] < 0.8 * day).all()
    assert ((tod[from_end == 1] >= 0.8 * day) & (tod[from_end == 1] < 0.9 * day)).all()
    assert ((tod[from_end == 0] >= 0.9 * day) & (tod[from_end == 0] < day)).all()


def test_amazon_sequences_match_split_files(amazon):
    src, root, _counts = amazon
    events = read_events(root).sort_values(["user_id", "event_time"])
    items = pd.read_csv(src / "Scientific.item2index", sep="\t", header=None, dtype=str)
    asin = dict(zip(items[1], items[0], strict=True))
    users = pd.read_csv(src / "Scientific.user2index", sep="\t", header=None, dtype=str)
    raw_user = dict(zip(users[1], users[0], strict=True))
    test = pd.read_csv(src / "Scientific.test.inter", sep="\t", dtype=str)
    valid = pd.read_csv(src / "Scientific.valid.inter", sep="\t", dtype=str)
    test.columns = valid.columns = ["user", "hist", "target"]
    valid_target = dict(zip(valid["user"], valid["target"], strict=True))
    lengths = test["hist"].str.split().map(len)
    sample = pd.concat([test.iloc[::40], test[lengths >= 50]])  # every 40th user + the truncated ones
    seq_of = {u: g["item_id"].tolist() for u, g in events.groupby("user_id")}
    for row in sample.itertuples(index=False):
        seq = seq_of[raw_user[row.user]]
        hist = [asin[i] for i in row.hist.split()]
        assert seq[-1] == asin[row.target]
        assert seq[-2] == asin[valid_target[row.user]]
        assert seq[:-1][-len(hist) :] == hist
        if len(hist) < 50:  # untruncated: the test row holds the whole history
            assert seq[:-1] == hist
    assert (lengths >= 50).any()
    assert len(sample) > 200


def test_amazon_parse_text():
    title, cats, brand = amazon_scientific.parse_text(
        "Gorilla Glue, 8 oz. Bottle. Industrial & Scientific Tapes, Adhesives & Sealants Glues. Gorilla. "
    )
    assert (title, cats, brand) == (
        "Gorilla Glue, 8 oz. Bottle",
        "Industrial & Scientific Tapes, Adhesives & Sealants Glues",
        "Gorilla",
    )
    assert amazon_scientific.parse_text("WD-40 Spray, 12 oz. . WD-40. ") == (
        "WD-40 Spray, 12 oz",
        None,
        "WD-40",
    )
    levels = amazon_scientific.category_levels(
        {"Industrial & Scientific Fasteners", "Industrial & Scientific Fasteners Screws Wood Screws"}
    )
    assert levels["Industrial & Scientific Fasteners Screws Wood Screws"] == [
        "Industrial & Scientific",
        "Fasteners",
        "Screws Wood Screws",
    ]


# --- Best Buy ---------------------------------------------------------------------------------


def test_bestbuy_real(best_buy):
    src, root, counts = best_buy
    check_layout(root, counts)
    clicks = pd.read_csv(src / "clicks.csv", dtype=str, keep_default_na=False)
    no_click = pd.read_csv(src / "queries_without_click.csv", dtype=str, keep_default_na=False)
    keys = pd.concat([clicks, no_click])[["user", "query_time", "query"]]
    keys["query"] = keys["query"].str.strip()
    events = read_events(root)
    searches = events[events["event_type"] == "search"]
    clicked = events[events["event_type"] == "click"]
    assert len(searches) == len(keys.drop_duplicates())
    assert len(clicked) == len(clicks)
    assert len(events) == len(searches) + len(clicked)
    assert searches["request_id"].is_unique
    assert set(events["scene"]) == {"search"}
    joined = clicked.merge(searches, on="request_id", suffixes=("", "_search"), how="left")
    assert joined["user_id_search"].notna().all()
    assert (joined["user_id"] == joined["user_id_search"]).all()
    assert (joined["event_time_search"] <= joined["event_time"]).all()
    items = read_snapshot(root, "items")
    assert items["item_id"].is_unique
    assert set(clicks["sku"]) <= set(items["item_id"])
    assert len(read_snapshot(root, "users")) == len(set(clicks["user"]) | set(no_click["user"]))


CLICKS_CSV = """user,sku,category,query,click_time,query_time
u1,100,abcat0701002, halo ,2011-08-11 10:00:05.500,2011-08-11 10:00:00.000
u1,200,abcat0701002,halo,2011-08-11 10:01:00.000,2011-08-11 10:00:00.000
u2,300,abcat0701002,Gears of war,not a time,2011-08-12 09:00:00
"""
NO_CLICK_CSV = """user,category,query,click_time,query_time
u1,abcat0701002,halo,2011-08-11 10:02:00.000,2011-08-11 10:00:00.000
u3,abcat0701002,fifa,2011-08-12 23:59:59.000,2011-08-12 23:59:58.123
u4,abcat0701002,cod,2011-08-12 12:00:00.000,2011-13-01 00:00:00.000
"""
PRODUCTS_CSV = """sku,productId,name,format,shortDescription,manufacturer,genre,active,customerReviewAverage
100,1,360 halo reach xbox,dvdrom,,Microsoft,Shooters,true,4.0
100,1,360 halo reach xbox,dvdrom,,Microsoft,Shooters,true,4.0
300,2,360 gears war xbox,dvdrom,,Microsoft,,true,4.0
"""


def test_bestbuy_tiny_exact(tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    (src / "clicks.csv").write_text(CLICKS_CSV, encoding="utf-8")
    (src / "queries_without_click.csv").write_text(NO_CLICK_CSV, encoding="utf-8")
    (src / "products.csv").write_text(PRODUCTS_CSV, encoding="utf-8")
    root = tmp_path / "data"
    with caplog.at_level(logging.WARNING, logger="sources.bestbuy"):
        counts = bestbuy.convert(src, root)
    assert counts == {
        "behavior_events": {"2011-08-11": 3, "2011-08-12": 4},
        "items": {"2011-08-11": 3},
        "users": {"2011-08-11": 4},
    }
    check_layout(root, counts)
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "1 unparseable click_time" in warnings
    assert "1 unparseable query_time" in warnings
    assert "2 events written with a null event_time" in warnings

    def ts(s):
        return pd.Timestamp(s, tz="UTC")

    events = read_events(root)
    rid = {r: f"R{i}" for i, r in enumerate(dict.fromkeys(events["request_id"]))}
    got = [
        (
            e.ds,
            e.user_id,
            None if pd.isna(e.event_time) else e.event_time,
            e.event_type,
            e.query,
            e.item_id,
            e.scene,
            rid[e.request_id],
        )
        for e in events.itertuples(index=False)
    ]
    assert got == [
        ("2011-08-11", "u1", ts("2011-08-11 10:00:00"), "search", "halo", None, "search", "R0"),
        ("2011-08-11", "u1", ts("2011-08-11 10:00:05.5"), "click", None, "100", "search", "R0"),
        ("2011-08-11", "u1", ts("2011-08-11 10:01:00"), "click", None, "200", "search", "R0"),
        ("2011-08-12", "u2", ts("2011-08-12 09:00:00"), "search", "Gears of war", None, "search", "R1"),
        ("2011-08-12", "u2", None, "click", None, "300", "search", "R1"),
        ("2011-08-12", "u3", ts("2011-08-12 23:59:58.123"), "search", "fifa", None, "search", "R2"),
        ("2011-08-12", "u4", None, "search", "cod", None, "search", "R3"),
    ]
    assert all(r.startswith("bb-") for r in rid)
    items = read_snapshot(root, "items").set_index("item_id")
    assert items.loc["100", ["title", "brand", "leaf_category", "category_path"]].tolist() == [
        "360 halo reach xbox",
        "Microsoft",
        "Shooters",
        "Xbox 360 > Shooters",
    ]
    assert items.loc["300", ["leaf_category", "category_path"]].tolist() == ["Xbox 360", "Xbox 360"]
    assert items.loc["200", "title"] is None
    assert items["price"].isna().all()
    assert sorted(read_snapshot(root, "users")["user_id"]) == ["u1", "u2", "u3", "u4"]


# --- ESCI -------------------------------------------------------------------------------------


def test_esci(esci_out):
    src, root, counts = esci_out
    check_layout(root, counts)
    a = pd.read_csv(src / "esci_sample_50queries_485exact.csv", dtype=str, keep_default_na=False)
    b = pd.read_csv(src / "esci_exact_matches_sample100.csv", dtype=str, keep_default_na=False)
    items = read_snapshot(root, "items")
    assert len(items) == len(set(a["product_id"]) | set(b["product_id"]))
    assert items["item_id"].is_unique
    n_queries = a["query_id"].nunique() + b["query"].str.strip().nunique()
    events = read_events(root)
    assert len(read_snapshot(root, "users")) == n_queries
    assert (events["event_type"] == "search").sum() == n_queries
    assert (events["event_type"] == "click").sum() == len(a) + len(b)
    for _user, ev in events.groupby("user_id", sort=False):
        ev = ev.sort_values("event_time")
        assert ev["event_type"].iloc[0] == "search"
        assert (ev["event_type"].iloc[1:] == "click").all()
        assert (ev["event_time"].diff().dropna() == pd.Timedelta(minutes=1)).all()
        assert ev["request_id"].nunique() == 1


def test_esci_cli(tmp_path):
    src = dataset_dir("esci_sample")
    assert esci.main(["--src", str(src), "--data-root", str(tmp_path / "d"), "--ds", "2026-12-01"]) == 0
    assert (tmp_path / "d" / "raw" / "behavior_events" / "ds=2026-12-01" / SUCCESS).is_file()
