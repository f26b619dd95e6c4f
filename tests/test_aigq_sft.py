"""AIGQ IL-SFT and generation on a tiny model: loss drops, batched = one-at-a-time, never crashes,
the entry point publishes a reloadable version, and the registration gate."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest
import torch

from aigq_model.decode import left_pad
from aigq_model.generate import Decoding, GenResult, generate_lists
from aigq_model.load import load_aigq, save_aigq
from aigq_model.parsing import Blocklist
from aigq_model.prompts import all_special_tokens
from aigq_model.train_sft import SFTCollator, SFTConfig, SFTDataset, train_sft
from tests.test_base_lm import ADJ, BRANDS, NOUNS, make_tiny_base

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models: one thread is faster

T0 = dt.datetime(2026, 11, 1, 8, tzinfo=dt.UTC)
BUCKETS = ["lt_1h", "lt_1d", "1d_ago", "2_3d_ago"]


def make_rows(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """Direct-SFT rows whose targets are queries about the user's last searched noun."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        noun = rng.choice(NOUNS)
        hist = []
        for j in range(rng.randint(1, 5)):
            adj, brand = rng.choice(ADJ), rng.choice(BRANDS)
            search = j % 2 == 0
            hist.append(
                {
                    "event_time": T0 - dt.timedelta(hours=5 - j),
                    "event_type": "search" if search else "click",
                    "time_bucket": rng.choice(BUCKETS),
                    "text": f"{adj} {noun}" if search else f"{brand} {adj} {noun}",
                    "item_id": None if search else f"i{j}",
                    "category": None,
                }
            )
        rows.append(
            {
                "sample_id": f"s{seed}-{i}",
                "user_id": f"u{i % 7}",
                "request_id": f"r{i}",
                "event_time": T0 + dt.timedelta(minutes=i),
                "gender": rng.choice(["female", "male"]),
                "age_bucket": "25-29",
                "city": "Shanghai",
                "purchase_level": "high",
                "history": hist,
                "target_queries": [noun, f"{rng.choice(ADJ)} {noun}", f"{rng.choice(BRANDS)} {noun}"],
                "label_source": "hintq",
                "split": split,
            }
        )
    return rows


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("aigq") / "base", max_position_embeddings=512)


TINY_SFT = dict(batch_size=8, learning_rate=3e-3, warmup_steps=0, save_steps=0, eval_batches=4, max_len=256)


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory):
    """A tiny model after 150 IL-SFT steps (~3 s), saved and reloaded."""
    config = SFTConfig(max_steps=150, **TINY_SFT)
    out = tmp_path_factory.mktemp("sft")
    model, tok, state, metrics = train_sft(
        config, base_dir, make_rows(32), out / "ckpt", make_rows(8, seed=1)
    )
    save_aigq(model, tok, out / "model")
    model, tok = load_aigq(out / "model")
    return model, tok, metrics


def test_prompt_tokens_are_masked_and_sft_lowers_the_target_loss(base_dir, trained):
    from aigq_model.train_sft import prepare_model

    model, tok, metrics = trained
    _, base_tok = prepare_model(base_dir, SFTConfig())
    ex = SFTDataset(make_rows(1), base_tok, SFTConfig())[0]
    n_prompt = sum(label == -100 for label in ex["labels"])
    assert 0 < n_prompt < len(ex["labels"])
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    batch = SFTCollator(base_tok.pad_token_id)(
        [ex, SFTDataset(make_rows(2, seed=5), base_tok, SFTConfig())[1]]
    )
    assert batch["labels"].shape == batch["input_ids"].shape  # right-padded with -100 labels
    assert metrics["train_eval_loss"] < metrics["train_eval_loss_before"] - 0.5
    assert metrics["valid_loss"] < metrics["valid_loss_before"]
    # Every prompt token survives save/reload as one atomic token.
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) == 1 for t in all_special_tokens())


def test_batched_left_padded_generation_equals_one_at_a_time(trained):
    model, tok, _ = trained
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    rows = make_rows(6, seed=3)
    dec = Decoding(max_new_tokens=24)
    batched = generate_lists(model, tok, rows, k=10, batch_size=6, decoding=dec, cold_start="model")
    single = generate_lists(model, tok, rows, k=10, batch_size=1, decoding=dec, cold_start="model")
    assert [r.raw_text for r in batched] == [r.raw_text for r in single]
    assert [r.queries for r in batched] == [r.queries for r in single]
    assert any(r.n_model > 0 for r in batched)  # the trained model emits <q> lists
    for strategy in ("sample", "beam"):
        out = generate_lists(
            model,
            tok,
            rows[:2],
            batch_size=2,
            decoding=Decoding(strategy=strategy, seed=0, max_new_tokens=16),
        )
        assert len(out) == 2
        assert all(isinstance(r, GenResult) for r in out)


def test_several_beams_merge_into_one_longer_list(trained):
    """The best beam's first query leads; the merged list holds at least the best beam's queries
    and never repeats one; malformed/raw text come from the best beam alone."""
    model, tok, _ = trained
    rows = make_rows(4, seed=5)
    one = generate_lists(model, tok, rows, k=10, decoding=Decoding(strategy="beam", num_beams=4, max_new_tokens=24),
                         cold_start="model")
    four = generate_lists(model, tok, rows, k=10, cold_start="model", decoding=Decoding(
        strategy="beam", num_beams=4, num_return_sequences=4, max_new_tokens=24))
    for a, b in zip(one, four, strict=True):
        assert a.raw_text == b.raw_text
        assert b.extra["n_sequences"] == 4
        assert b.queries[:1] == a.queries[:1]
        assert set(a.queries[: a.n_model]) <= set(b.queries)
        assert b.n_model >= a.n_model
        assert len(b.queries) == len(set(b.queries))
    assert sum(b.n_model for b in four) > sum(a.n_model for a in one)
    with pytest.raises(ValueError, match="greedy"):
        Decoding(num_return_sequences=2)
    with pytest.raises(ValueError, match="num_beams"):
        Decoding(strategy="beam", num_beams=2, num_return_sequences=3)


def test_no_repeat_query_decoding_never_repeats_a_query(trained):
    """Greedy decoding of the tiny model repeats queries within a list; with ``no_repeat_query``
    no raw output holds the same query twice (before any post-processing)."""
    from aigq_model.parsing import parse_direct

    model, tok, _ = trained
    rows = make_rows(12, seed=11)

    def repeats(results):
        return sum(len(q) - len(set(q)) for q in (parse_direct(r.raw_text).queries for r in results))

    kw = dict(k=10, cold_start="model", batch_size=6)
    plain = generate_lists(model, tok, rows, decoding=Decoding(max_new_tokens=40), **kw)
    guarded = generate_lists(model, tok, rows, decoding=Decoding(max_new_tokens=40, no_repeat_query=True), **kw)
    assert repeats(plain) > 0  # the failure mode exists on this model
    assert repeats(guarded) == 0
    beams = generate_lists(model, tok, rows[:4], **kw, decoding=Decoding(
        strategy="beam", num_beams=3, num_return_sequences=3, max_new_tokens=40, no_repeat_query=True))
    assert all(len(r.queries) == len(set(r.queries)) for r in beams)


def test_generation_never_crashes_and_falls_back_to_popularity(trained):
    model, tok, _ = trained
    popular = ["pop one", "pop two", "pop three"]
    cold = dict(make_rows(1, seed=9)[0], history=[])
    out = generate_lists(model, tok, [cold], k=3, fallback=popular)
    assert out[0].queries == popular
    assert out[0].source == "fallback"
    assert not out[0].model_called
    # The block-list also holds for what the fallback fills in (cold start and top-up).
    blocked = generate_lists(model, tok, [cold, *make_rows(2, seed=12)], k=3, fallback=popular,
                             blocklist=Blocklist(["pop two"]), decoding=Decoding(max_new_tokens=8))
    assert blocked[0].queries == ["pop one", "pop three"]
    assert all("pop two" not in r.queries for r in blocked)

    class Broken:
        training = False

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def parameters(self):
            return iter([torch.zeros(1)])

        def generate(self, **kwargs):
            raise RuntimeError("CUDA out of memory (simulated)")

    rows = make_rows(3, seed=4)
    out = generate_lists(Broken(), tok, rows, k=2, fallback=lambda s: popular)
    assert [r.queries for r in out] == [popular[:2]] * 3
    assert all(r.malformed for r in out)
    # Garbage text: think parser on a direct model, blocked queries, no fallback at all.
    out = generate_lists(
        model,
        tok,
        rows,
        kind="think",
        k=5,
        fallback=None,
        blocklist=Blocklist(["phone"]),
        decoding=Decoding(max_new_tokens=8),
    )
    assert all(isinstance(r.queries, list) and "phone" not in r.queries for r in out)


def test_entry_point_publishes_a_version_through_the_registry(tmp_path, base_dir, monkeypatch):
    from aigq_model.train_sft import main
    from common.arrow_io import write_partition
    from common.registry import current_version, read_manifest

    root = tmp_path / "data"
    write_partition(
        root, "samples", "aigq_direct_sft", "2026-11-01", make_rows(12) + make_rows(4, 1, "valid")
    )
    monkeypatch.setenv("PIPELINE__AIGQ__SFT__BATCH_SIZE", "4")
    monkeypatch.setenv("PIPELINE__AIGQ__SFT__SAVE_STEPS", "2")
    args = ["--ds", "2026-11-02", "--data-root", str(root), "--base-model", str(base_dir), "--max-steps", "3"]
    assert main([*args, "--kind", "plain", "--style", "verbose"]) == 0
    out = root / "models" / "aigq_plain" / "2026-11-02"
    manifest = read_manifest(out)
    assert manifest["kind"] == "plain"
    assert manifest["metrics"]["steps"] == 3
    assert manifest["metrics"]["n_train"] == 36
    assert manifest["data_dates"] == ["2026-11-01"]
    assert manifest["base_model"]["path"] == str(base_dir)
    assert current_version(root, "aigq_plain") is None  # staged and committed, not registered
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # checkpoints cleaned up
    model, tok = load_aigq(out)
    assert "<q>" in tok.get_vocab()
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)


def test_gate_compares_with_the_best_heuristic_and_the_current_version(tmp_path):
    from aigq_model.release import sft_gate
    from common.registry import GateRejected, commit_version, current_version, register, stage_version

    root = tmp_path / "data"

    def version(v: str, hr: float, pop: float, own: float = 0.0) -> None:
        path = commit_version(
            stage_version(root, "aigq_direct", v), root, "aigq_direct", v, {"kind": "direct"}
        )
        results = {"aigq_direct": {"all": {"query_hr@10": 0.0}}, "hybrid": {"all": {"query_hr@10": hr}},
                   "popularity": {"all": {"query_hr@10": pop}}, "own_history+popularity": {"all": {"query_hr@10": own}}}
        (path / "metrics.json").write_text(json.dumps({"model": "aigq_direct", "results": results}))

    gate = sft_gate(root, heuristic_margin=0.01, regression_tolerance=0.02)
    version("2026-11-01", 0.30, 0.28)
    register(root, "aigq_direct", "2026-11-01", gate=gate)
    version("2026-11-02", 0.20, 0.25)  # below popularity + margin and below current - tol
    with pytest.raises(GateRejected, match="best heuristic popularity.*current"):
        register(root, "aigq_direct", "2026-11-02", gate=gate)
    version("2026-11-03", 0.35, 0.20, own=0.345)  # beats popularity, not the best heuristic + margin
    with pytest.raises(GateRejected, match=r"best heuristic own_history\+popularity 0.3450 \+ margin 0.01"):
        register(root, "aigq_direct", "2026-11-03", gate=gate)
    version("2026-11-04", 0.36, 0.20, own=0.345)
    register(root, "aigq_direct", "2026-11-04", gate=gate)
    assert current_version(root, "aigq_direct") == "2026-11-04"
    commit_version(stage_version(root, "aigq_direct", "2026-11-05"), root, "aigq_direct", "2026-11-05", {})
    with pytest.raises(GateRejected, match="no query_hr@10"):
        register(root, "aigq_direct", "2026-11-05", gate=gate)


def test_think_generation_gets_its_own_token_budget(trained):
    """Think outputs (triggers, rationales, queries) are longer than Direct lists: generation of
    ``kind="think"`` uses ``max_new_tokens_think`` when it is the larger budget."""
    model, tok, _ = trained
    rows = make_rows(4, seed=7)
    dec = Decoding(max_new_tokens=3, max_new_tokens_think=20)
    direct = generate_lists(model, tok, rows, kind="direct", decoding=dec, cold_start="model")
    think = generate_lists(model, tok, rows, kind="think", decoding=dec, cold_start="model")

    def n_tokens(r):
        return len(tok(r.raw_text, add_special_tokens=False)["input_ids"])

    assert all(n_tokens(r) <= 3 for r in direct)
    assert max(n_tokens(r) for r in think) > 3
    with pytest.raises(ValueError, match="max_new_tokens"):
        Decoding(max_new_tokens_think=0)


def test_query_beam_ranks_the_next_queries_and_batches_like_one_at_a_time(trained):
    """``query_beam``: the model's most probable first queries, best first, distinct, and at least
    as many of the model's own queries as a greedy list holds (up to 3)."""
    model, tok, _ = trained
    rows = make_rows(8, seed=11)
    dec = Decoding(strategy="query_beam", num_beams=6)
    batched = generate_lists(model, tok, rows, k=10, batch_size=8, decoding=dec, cold_start="model")
    single = generate_lists(model, tok, rows, k=10, batch_size=1, decoding=dec, cold_start="model")
    assert [r.queries for r in batched] == [r.queries for r in single]
    greedy = generate_lists(model, tok, rows, k=10, decoding=Decoding(max_new_tokens=24), cold_start="model")
    for r, g in zip(batched, greedy, strict=True):
        assert len(r.queries[: r.n_model]) == len(set(r.queries[: r.n_model])) > 0
        assert r.n_model >= min(g.n_model, 3)
    # the most probable first query is, for a peaked model, what greedy decoding writes first
    assert sum(r.queries[0] == g.queries[0] for r, g in zip(batched, greedy, strict=True)) >= 6


def test_query_beam_scores_are_the_joint_log_probabilities_of_the_queries(trained):
    """``next_queries`` returns each candidate with the log-probability the model gives its tokens
    and the closing marker after ``prompt <q>`` (teacher-forced forward pass), best first."""
    import torch

    from aigq_model.decode import next_queries
    from aigq_model.generate import encode_sample_prompt

    model, tok, _ = trained
    model.eval()
    prompt = encode_sample_prompt(tok, make_rows(1, seed=5)[0], "compressed", 20, 384)
    q_id = tok.convert_tokens_to_ids("<q>")
    (cands,) = next_queries(model, tok, [[*prompt, q_id]], Decoding(strategy="query_beam", num_beams=5))
    assert len(cands) >= 3
    assert [s for _, s in cands] == sorted((s for _, s in cands), reverse=True)
    stops = {q_id, tok.eos_token_id}
    for text, score in cands[:3]:
        body = tok(text, add_special_tokens=False)["input_ids"]
        best = None
        for stop in stops:  # the query ended with whichever marker the beam chose
            ids = torch.tensor([[*prompt, q_id, *body, stop]])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            n = len(body) + 1
            lp = float(logp[-n:].gather(1, ids[0, -n:, None]).sum())
            best = lp if best is None else max(best, lp)
        assert best == pytest.approx(score, abs=1e-3)


def think_rows(n: int, seed: int) -> list[dict]:
    """Think rows: one interest point triggered by the last search, its queries the Direct target."""
    rows = make_rows(n, seed=seed)
    for r in rows:
        last = max(i for i, h in enumerate(r["history"]) if h["event_type"] == "search")  # 0-based
        r["targets"] = [{"query": q, "source": "search", "triggers": [last]} for q in r.pop("target_queries")]
    return rows


def test_query_beam_expands_each_think_point(base_dir, tmp_path):
    config = SFTConfig(kind="think", max_steps=150, **TINY_SFT)
    model, tok, _state, _m = train_sft(config, base_dir, think_rows(32, 0), tmp_path / "ckpt")
    rows = think_rows(6, 21)
    greedy = generate_lists(model, tok, rows, kind="think", decoding=Decoding(max_new_tokens_think=64),
                            cold_start="model")
    expanded = generate_lists(model, tok, rows, kind="think", cold_start="model",
                              decoding=Decoding(strategy="query_beam", num_beams=6, max_new_tokens_think=64))
    for g, e in zip(greedy, expanded, strict=True):
        assert e.raw_text == g.raw_text
        assert e.triggers == g.triggers  # the greedy pass writes the points
        assert e.n_model >= g.n_model
    assert sum(e.n_model for e in expanded) > sum(g.n_model for g in greedy)
    assert any(e.triggers for e in expanded)
