"""IL-GRPO: advantages by hand, the IL/plain identity, entropy-adaptive clipping, the k3 KL
estimator, token -> slot mapping against the parser, a few steps on a tiny policy that raise a
verifiable reward, and the entry point publishing a reloadable version."""

from __future__ import annotations

import copy
import datetime as dt
import math

import pytest
import torch

from aigq_model.decode import generate_texts, left_pad
from aigq_model.generate import Decoding, encode_sample_prompt
from aigq_model.grpo import (
    SEP,
    TRIGGER,
    clipped_surrogate,
    difficulty_filter,
    entropy_adaptive_bounds,
    entropy_coef,
    grpo_advantages,
    il_grpo_advantages,
    kl_k3,
    token_advantages,
    token_slots,
    token_texts,
    total_reward,
)
from aigq_model.grpo_trainer import GRPOConfig, make_reward_fn, sequence_logprobs
from aigq_model.load import load_aigq, save_aigq
from aigq_model.parsing import normalize_query, parse_direct
from aigq_model.train_sft import SFTConfig, train_sft
from tests.test_aigq_sft import TINY_SFT, make_rows
from tests.test_base_lm import make_tiny_base

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models: one thread is faster

S6 = math.sqrt(1 / 6)  # population std of (1, 0, 0.5)
S23 = math.sqrt(2 / 3)  # population std of (1, 0, -1)


# --- advantages ---------------------------------------------------------------------------
def test_il_grpo_advantages_by_hand():
    """3 rollouts with 2, 3 and 1 slots. Slot 0 over all three (1, 0, .5): mu .5, var 1/6;
    slot 1 over rollouts 0, 1 (0, 1): mu .5, std .5; slot 2 only in rollout 1: 0.
    Sequence (1, 0, -1): mu 0, var 2/3, times lam = .5."""
    slot, seq = il_grpo_advantages([[1.0, 0.0], [0.0, 1.0, 0.5], [0.5]], [1.0, 0.0, -1.0], lam=0.5, eps=0.0)
    s = 0.5 / S23
    expected = [[0.5 / S6 + s, -1.0 + s], [-0.5 / S6, 1.0, 0.0], [0.0 - s]]
    assert [[round(x, 6) for x in row] for row in slot] == [[round(x, 6) for x in row] for row in expected]
    assert seq == pytest.approx([s, 0.0, -s])
    # eps keeps the statistic finite: all-equal rewards give 0, not nan.
    assert il_grpo_advantages([[1.0], [1.0]], [2.0, 2.0], lam=1.0) == ([[0.0], [0.0]], [0.0, 0.0])


def test_reward_and_advantage_clipping():
    """An outlier 100 is clipped to 10 first: slot 0 = (10, 5, 0) -> z = (1.2247, 0, -1.2247),
    unclipped it would be 1.44 for the outlier; then + lam(=1) * 1.2247 (seq (1, 0, -1)) = 2.449 -> 2."""
    slot, seq = il_grpo_advantages([[100.0], [5.0], [0.0]], [1.0, 0.0, -1.0], lam=1.0, eps=0.0)
    z = 5 / math.sqrt(50 / 3)
    assert [a for (a,) in slot] == pytest.approx([2.0, 0.0, -2.0])  # +-2.449 clipped
    assert seq == pytest.approx([1 / S23, 0.0, -1 / S23])
    slot, _ = il_grpo_advantages([[100.0], [5.0], [0.0]], [0.0] * 3, lam=1.0, eps=0.0)
    assert [a for (a,) in slot] == pytest.approx([z, 0.0, -z])
    unclipped, _ = il_grpo_advantages([[100.0], [5.0], [0.0]], [0.0] * 3, lam=1.0, eps=0.0, reward_clip=1e9)
    assert unclipped[0][0] == pytest.approx(65 / math.sqrt((65**2 + 30**2 + 35**2) / 3))
    # An outlier among 8 normalises to sqrt(7) = 2.65 > 2: clipped.
    assert grpo_advantages([1.0] + [0.0] * 7, eps=0.0)[0] == 2.0
    assert grpo_advantages([1.0] + [0.0] * 7, eps=0.0, adv_clip=5.0)[0] == pytest.approx(math.sqrt(7))


def test_one_slot_and_equal_sequence_rewards_make_il_grpo_equal_plain_grpo():
    """Identity: with one slot per rollout and equal sequence rewards, the sequence term is 0 and
    the plain-GRPO total (mean query reward + lam * equal constant) is the slot reward plus a
    constant, so both normalise to the same advantages, for every lam."""
    q = [[0.2], [0.9], [0.4], [0.0]]
    for lam in (0.0, 0.5, 2.0):
        slot, seq = il_grpo_advantages(q, [0.7] * 4, lam=lam)
        plain = grpo_advantages([total_reward(r, 0.7, lam) for r in q])
        assert [s[0] for s in slot] == pytest.approx(plain)
        assert seq == [0.0] * 4
    # Per token: IL gives a slot's tokens its slot advantage and SEP the sequence term;
    # mode "sequence" gives every token the list scalar.
    assert token_advantages([SEP, 0, 0, SEP], slot[1], seq[1]) == [0.0, slot[1][0], slot[1][0], 0.0]
    assert token_advantages([SEP, 0, 1], [], 0.3, mode="sequence") == [0.3] * 3
    ts = token_slots(["<think>", "[", "1", "]", " r", "</think>", "<q>", " a"], "think")
    assert token_advantages(ts, [0.5], 0.1, trigger_adv_i=[-0.7]) == [0.1, -0.7, -0.7, -0.7, 0.1, 0.1, 0.1, 0.5]
    assert difficulty_filter([0.05, 0.1, 0.5, 0.95, 0.96]) == [False, True, True, True, False]
    assert entropy_coef(0, 50, 0.01) == 0.01
    assert entropy_coef(25, 50, 0.01) == pytest.approx(0.005)


# --- tensor pieces ------------------------------------------------------------------------
def test_entropy_percentile_bounds_pick_eps_high_at_or_above_the_80th_percentile():
    valid = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0], [5.0, 9.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])  # masked 9s do not move the percentile
    eps = entropy_adaptive_bounds(valid, mask, 0.2, 0.28, percentile=80)
    # valid entropies 0..5: the 80th percentile is exactly 4.0 -> 4 and 5 get eps_high
    high = eps == torch.tensor(0.28)
    assert high.tolist() == [[False, False, False, False, True], [True, False, False, False, False]]
    assert (eps[~high] == torch.tensor(0.2)).all()
    noisy = torch.rand(4, 50, generator=torch.Generator().manual_seed(0))
    share = (entropy_adaptive_bounds(noisy, torch.ones(4, 50), 0.2, 0.28) > 0.25).float().mean().item()
    assert share == pytest.approx(0.2, abs=0.01)
    assert (entropy_adaptive_bounds(noisy, torch.zeros(4, 50), 0.2, 0.28) == torch.tensor(0.2)).all()


def test_clipped_surrogate_and_kl_k3_estimator():
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    logp = torch.log(torch.tensor([[1.5, 0.9, 1.5, 0.5]]))
    old = torch.zeros(1, 4)
    # r = 1.5, A = 1 -> min(1.5, 1.2) = 1.2; r = 0.9, A = 1 -> 0.9; r = 1.5, A = -1 -> -1.5;
    # r = .5, A = -1 -> min(-.5, -.8) = -.8; masked mean of the negatives over the first 3 tokens.
    mask = torch.tensor([[1, 1, 1, 0]])
    assert clipped_surrogate(logp, old, adv, 0.2, mask).item() == pytest.approx(-(1.2 + 0.9 - 1.5) / 3)
    assert clipped_surrogate(logp, old, adv, torch.tensor([[0.2, 0.2, 0.2, 0.3]]), torch.ones(1, 4)).item() == (
        pytest.approx(-(1.2 + 0.9 - 1.5 - 0.7) / 4)
    )
    blown = logp.clone()
    blown[0, 3] = 200.0  # exp overflows to inf on a masked (pad) position: still finite
    assert clipped_surrogate(blown, old, adv, 0.2, mask).item() == pytest.approx(-(1.2 + 0.9 - 1.5) / 3)
    # k3 on tokens sampled from p estimates KL(p || q); 400k samples: standard error ~ 1e-3.
    gen = torch.Generator().manual_seed(0)
    for p, q in [([0.5, 0.3, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]), ([0.7, 0.2, 0.1], [0.2, 0.3, 0.5])]:
        p, q = torch.tensor(p), torch.tensor(q)
        x = torch.multinomial(p, 400_000, replacement=True, generator=gen)
        k3 = kl_k3(p.log()[x], q.log()[x])
        exact = float((p * (p / q).log()).sum())
        se = float(k3.std()) / math.sqrt(len(x))
        assert (k3 >= 0).all(), (float(k3.mean()), exact)
        assert abs(float(k3.mean()) - exact) < 4 * se + 1e-4, (float(k3.mean()), exact)


# --- token -> slot ------------------------------------------------------------------------
def _check_against_parser(texts, kind="direct", complete=True):
    """Every slot's tokens spell the parser's j-th query (contain it, where a token merges a
    marker with text); slots are 0..n-1 in order."""
    ts = token_slots(texts, kind, complete)
    merged = any("<" in t and t.strip() not in ("<q>", "<think>", "</think>", "<eos>") for t in texts)
    for j, q in enumerate(ts.parsed.queries):
        spelled = "".join(t for t, s in zip(texts, ts.slot, strict=True) if s == j)
        assert (q in spelled.lower() or not spelled) if merged else normalize_query(spelled) == q
    assert merged or sorted({s for s in ts.slot if s >= 0}) == list(range(len(ts.parsed.queries)))
    return ts


@pytest.mark.parametrize(
    ("texts", "slots", "queries"),
    [
        (["<q>", "<q>", " a", "<q>", " b"], [SEP, SEP, 0, SEP, 1], ["a", "b"]),  # empty slot
        (["<q>", " a", "<q>", "<q>"], [SEP, 0, SEP, SEP], ["a"]),  # extra separators at the end
        (["hello", " ", "<q>", " a"], [SEP, SEP, SEP, 0], ["a"]),  # leading garbage
        (["<q>", " ", "red", " shoe"], [SEP, SEP, 0, 0], ["red shoe"]),  # whitespace token before a query
        (["<q>", " a", "<q>", " a"], [SEP, 0, SEP, 1], ["a", "a"]),  # a duplicate keeps its slot
        (["<q>", " a", "<eos>", "<q>", " b"], [SEP, 0, SEP, SEP, SEP], ["a"]),  # after eos
        (["<q> red", " sh", "oe<q>", " hat"], [0, 0, 0, 1], ["red shoe", "hat"]),  # merged marker + text
        (["<q> a<q> b", "<q>", " c"], [0, SEP, 2], ["a", "b", "c"]),  # a token straddles 2 queries: the first
        ([], [], []),
    ],
)
def test_token_slots_follow_the_direct_parser(texts, slots, queries):
    ts = _check_against_parser(texts)
    assert ts.slot == slots
    assert ts.parsed.queries == queries


def test_token_slots_truncation_and_think_triggers():
    cut = ["<q>", " red", "<q>", " run"]
    assert _check_against_parser(cut).slot == [SEP, 0, SEP, 1]  # complete=True: partial slot kept
    dropped = _check_against_parser(cut, complete=False)
    assert dropped.slot == [SEP, 0, SEP, SEP]
    assert dropped.parsed.queries == ["red"]
    texts = ["<think>", "[", "1", ",", "3", "]", " searched", " x", "</think>", "<q>", " a", "<q>", " b",
             "<think>", "new", "</think>", "<q>", " c", "<think>", "[2", "]", " y", "</think>", "<q>", " d"]
    ts = _check_against_parser(texts, "think")
    assert ts.parsed.queries == ["a", "b", "c", "d"]
    assert len(ts.parsed.points) == 3
    trig = [i for i, s in enumerate(ts.slot) if s == TRIGGER]
    assert [texts[i] for i in trig] == ["[", "1", ",", "3", "]", "[2", "]"]
    assert [ts.point[i] for i in trig] == [0] * 5 + [2] * 2  # the middle point has no bracket
    assert all(ts.slot[i] == SEP for i in (6, 7, 8, 13, 14, 15))  # rationale and markers
    assert [s for s in ts.slot if s >= 0] == [0, 1, 2, 3]


# --- on a tiny policy ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("grpo") / "base", max_position_embeddings=512)


def sft(base_dir, rows, tmp_path, kind="direct", steps=150):
    config = SFTConfig(kind=kind, max_steps=steps, **{**TINY_SFT, "eval_batches": 0})
    model, tok, _, _ = train_sft(config, base_dir, rows, tmp_path / "ckpt")
    return model, tok


@pytest.fixture(scope="module")
def policy(base_dir, tmp_path_factory):
    """A tiny Direct policy after 150 IL-SFT steps."""
    return sft(base_dir, make_rows(32), tmp_path_factory.mktemp("sft"))


def think_rows(n: int, seed: int = 0) -> list[dict]:
    """``make_rows`` with Think targets: the first two queries triggered by the last behaviour
    (schema index), the third a new interest."""
    rows = make_rows(n, seed)
    for r in rows:
        last = len(r["history"]) - 1
        q = r["target_queries"]
        r["targets"] = [{"query": q[0], "triggers": [last]}, {"query": q[1], "triggers": [last]},
                        {"query": q[2], "triggers": []}]
        r["later_queries"] = list(q)  # the hindsight truth train_grpo attaches
    return rows


def target_word_reward(sample, parsed):
    """Verifiable reward: +1 per new query containing the target noun; +1 / -1 for a
    well-formed / malformed list."""
    noun = sample["target_queries"][0]
    qr = [[float(noun in q and q not in p.queries[:j]) for j, q in enumerate(p.queries)] for p in parsed]
    return qr, [-1.0 if p.malformed else 1.0 for p in parsed], None


def mean_reward(model, tok, rows, lam=0.5) -> float:
    """Mean total reward of 8 seeded samples per prompt (rows unseen by GRPO)."""
    ids = [encode_sample_prompt(tok, r, "compressed", 20, 384) for r in rows]
    dec = Decoding(strategy="sample", seed=0, num_return_sequences=8, max_new_tokens=24, top_k=100)
    totals = []
    for row, outs in zip(rows, generate_texts(model, tok, ids, dec), strict=True):
        qr, sr, _ = target_word_reward(row, [parse_direct(t, complete=d) for t, d in outs])
        totals += [total_reward(q, s, lam) for q, s in zip(qr, sr, strict=True)]
    return sum(totals) / len(totals)


def test_logprobs_ignore_left_padding_and_token_texts_rebuild_the_text(policy):
    model, tok = policy
    a = encode_sample_prompt(tok, make_rows(1, seed=3)[0], "compressed", 20, 384) + tok("<q> dark phone", add_special_tokens=False)["input_ids"]
    ids, mask = left_pad([a, a[-9:]], tok.pad_token_id)
    with torch.no_grad():
        padded, _ = sequence_logprobs(model, ids, mask, ids.shape[1] - 5)
        alone, ent = sequence_logprobs(model, ids[1:, -9:], mask[1:, -9:], 4)
    assert torch.allclose(padded[1], alone[0], atol=1e-5)
    assert (ent >= 0).all()
    texts = token_texts(tok, a[-4:])
    assert "".join(texts) == tok.decode(a[-4:])
    assert token_slots(texts).parsed.queries == ["dark phone"]


def test_il_grpo_steps_raise_a_verifiable_reward(policy):
    model, tok = policy
    eval_rows = make_rows(16, seed=7)
    before = mean_reward(model, tok, eval_rows)
    params0 = [p.detach().clone() for p in model.parameters()]
    pol = copy.deepcopy(model)
    # Defaults but a tiny-model learning rate, 8 prompts a step (4 make single runs noisy) and
    # lam = 1; over seeds 0..3 the eval reward went 0.06 -> 0.48..0.80 (lam .5: 0.22..0.47).
    cfg = GRPOConfig(max_steps=15, learning_rate=2e-3, prompts_per_step=8, lam=1.0, max_new_tokens=24)
    hist = train_grpo_quiet(pol, tok, cfg)
    after = mean_reward(pol, tok, eval_rows)
    filtered = sum(h["filtered"] for h in hist) / len(hist)
    print(f"IL-GRPO mean reward {before:.3f} -> {after:.3f}, share of prompts filtered {filtered:.2f}")
    assert after > before + 0.2
    assert any(not torch.equal(p, q) for p, q in zip(params0, pol.parameters(), strict=True))
    assert all(torch.equal(p, q) for p, q in zip(params0, model.parameters(), strict=True))  # a copy trained
    assert len(hist) == 15
    assert all(h["gen_s"] > 0 and h["rollouts_per_s"] > 0 for h in hist)
    assert {"reward", "query_reward", "seq_reward", "filtered", "entropy", "clip_frac", "loss"} <= set(hist[0])


def train_grpo_quiet(model, tok, cfg, **kw):
    from aigq_model.grpo_trainer import train_grpo

    return train_grpo(model, tok, make_rows(32), target_word_reward, cfg, log=lambda e: None, **kw)


def test_sequence_mode_with_kl_minibatches_and_the_difficulty_filter(policy):
    model, tok = policy
    pol, ref = copy.deepcopy(model), copy.deepcopy(model)
    cfg = GRPOConfig(mode="sequence", max_steps=3, learning_rate=3e-3, max_new_tokens=16, kl_coef=0.1,
                     inner_epochs=2, minibatch_size=16, difficulty_low=-1.0, difficulty_high=1.4)
    hist = train_grpo_quiet(pol, tok, cfg, ref_model=ref)
    assert not any(h["skipped"] for h in hist)
    assert hist[-1]["kl"] > 0
    assert any(h["clip_frac"] > 0 for h in hist)  # later minibatches moved off-policy
    with pytest.raises(ValueError, match="ref_model"):
        train_grpo_quiet(pol, tok, cfg)
    # Nothing passes the filter: the update is skipped and logged, the weights stay.
    before = [p.detach().clone() for p in pol.parameters()]
    hist = train_grpo_quiet(pol, tok, GRPOConfig(max_steps=2, max_new_tokens=8, difficulty_low=5.0, difficulty_high=6.0))
    assert all(h["skipped"] and h["filtered"] == 1.0 for h in hist)
    assert all(torch.equal(p, q) for p, q in zip(before, pol.parameters(), strict=True))


def test_make_reward_fn_scores_lists_against_the_users_later_searches():
    """The query term is the user's later searches, not the training target (the hints shown):
    copying the shown list earns nothing the user did not search."""
    fn = make_reward_fn({}, None, "direct")
    sample = {"sample_id": "s", "target_queries": ["shown hint", "other hint"], "later_queries": ["Red shoe", "hat"]}
    qr, sr, tr = fn(sample, [parse_direct("<q> red shoe<q> hat"), parse_direct("<q> cap<q><q> cap"),
                             parse_direct("<q> shown hint<q> other hint")])
    assert tr is None
    assert qr[0][0] > qr[1][0] and qr[0][1] > qr[1][1]
    assert qr[2] == [0.0, 0.0]  # the shown list, never searched
    assert sr[0] > sr[1]
    with pytest.raises(KeyError, match="later_queries"):
        fn({"sample_id": "s9"}, [parse_direct("<q> hat")])

    class FakeCTR:
        def predict(self, contexts, queries):
            import numpy as np

            return np.array([0.5 if q == "cap" else 0.0 for q in queries])

    qr_ctr, _, _ = make_reward_fn({}, FakeCTR(), "direct")(sample, [parse_direct("<q> cap<q> hat")])
    qr_no, _, _ = fn(sample, [parse_direct("<q> cap<q> hat")])
    assert qr_ctr[0][0] == pytest.approx(qr_no[0][0] + 0.5)
    assert qr_ctr[0][1] == pytest.approx(qr_no[0][1])
    # the semantic term: the encoder's cosine to the closest later search, each text encoded once
    import numpy as np

    seen = []

    def encoder(texts):
        seen.extend(texts)
        return np.array([[1.0, 0.0] if "shoe" in t or "sneaker" in t else [0.0, 1.0] for t in texts])

    sem = make_reward_fn({"w_sem": 1.0, "w_exact": 0.0, "w_rouge": 0.0}, None, "direct", encoder=encoder)
    qr_sem, _, _ = sem(sample, [parse_direct("<q> sneakers<q> tent")])
    qr_sem2, _, _ = sem(sample, [parse_direct("<q> sneakers")])
    assert qr_sem == [[1.0, 1.0]] and qr_sem2 == [[1.0]]  # "tent" is near "hat" in this toy space
    assert sorted(seen) == sorted({"sneakers", "tent", "red shoe", "hat"})


# --- entry point --------------------------------------------------------------------------
def test_entry_point_publishes_a_reloadable_version(tmp_path, policy, monkeypatch, capsys):
    pytest.importorskip("aigq_model.rewards")
    import json

    from aigq_model.run_eval import read_events
    from aigq_model.train_grpo import main, with_later_searches
    from common.arrow_io import write_partition
    from common.registry import commit_version, current_version, read_manifest, stage_version

    model, tok = policy
    root = tmp_path / "data"
    write_partition(root, "samples", "aigq_direct_sft", "2026-11-01", make_rows(12) + make_rows(4, 1, "valid"))
    # the hindsight truth: u0..u4 search after their samples (08:00-08:11); u0 also at 20:00, in the
    # day's held-out part (after 80% of the day, 19:12), which the reward must not see; u5, u6 never
    at = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    events = [{"user_id": f"u{u}", "event_type": "search", "query": f"later {u}", "event_time": at + dt.timedelta(hours=10)}
              for u in range(5)]
    events.append({"user_id": "u0", "event_type": "search", "query": "held out", "event_time": at + dt.timedelta(hours=20)})
    write_partition(root, "clean", "behavior_events", "2026-11-01", events)
    kept = with_later_searches(make_rows(12), read_events(root, ["2026-11-01"]))
    assert [(r["user_id"], r["later_queries"]) for r in kept if r["user_id"] == "u0"] == [("u0", ["later 0"])] * 2
    assert len(kept) == 10 and {r["user_id"] for r in kept} == {f"u{u}" for u in range(5)}
    assert with_later_searches([{**make_rows(1)[0], "history": []}], read_events(root, ["2026-11-01"])) == []  # cold start
    staged = stage_version(root, "aigq_direct", "2026-11-01")
    save_aigq(model, tok, staged)
    sft_dir = commit_version(staged, root, "aigq_direct", "2026-11-01",
                             {"kind": "direct", "style": "compressed", "config": {"max_history": 20}})
    for key, value in {"PROMPTS_PER_STEP": "2", "GROUP_SIZE": "4", "MAX_NEW_TOKENS": "12",
                       "DIFFICULTY_FILTER": "false"}.items():
        monkeypatch.setenv(f"PIPELINE__AIGQ__GRPO__{key}", value)
    args = ["--ds", "2026-11-01", "--data-root", str(root), "--policy", str(sft_dir), "--max-steps", "2"]
    assert main([*args, "--mode", "sequence"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = root / "models" / "aigq_direct_seqgrpo" / "2026-11-01"
    assert line["model_dir"] == str(out)
    manifest = read_manifest(out)
    assert manifest["mode"] == "sequence"
    assert manifest["kind"] == "direct"
    assert manifest["ctr_model"] is None
    assert manifest["history"]["steps"] == 2
    assert manifest["base_policy"]["path"] == str(sft_dir.resolve())
    assert manifest["n_samples"] == 10 and manifest["n_train_rows"] == 12
    assert manifest["config"]["max_history"] == 20
    assert current_version(root, "aigq_direct_seqgrpo") is None  # committed, not registered
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())
    reloaded, rtok = load_aigq(out)
    assert "<q>" in rtok.get_vocab()
    assert len(rtok) == len(tok)
    # the next day's update starts from this one; its KL reference is still the SFT policy
    assert manifest["sft_policy"] == str(sft_dir.resolve())
    monkeypatch.setenv("PIPELINE__AIGQ__GRPO__KL_COEF", "0.1")
    nxt = root / "next"
    assert main([*args, "--mode", "il", "--policy", str(out), "--out", str(nxt)]) == 0
    assert read_manifest(nxt)["sft_policy"] == str(sft_dir.resolve())
    assert read_manifest(nxt)["base_policy"]["path"] == str(out.resolve())


def test_think_rewards_and_grpo_steps(base_dir, tmp_path):
    """Trigger rewards per interest point against the reference point holding the query, and
    IL-GRPO steps on a Think policy with the real rewards (triggers get their own advantage)."""
    pytest.importorskip("aigq_model.rewards")
    from aigq_model.grpo_trainer import train_grpo
    from aigq_model.parsing import parse_think

    row = think_rows(1, seed=2)[0]
    n = len(row["history"])
    good = f"<think>[{n}] x</think><q> {row['target_queries'][0]}<think>[] new</think><q> {row['target_queries'][2]}"
    bad = f"<think>[{n}] x</think><q> zzz<think>[1,{n}] y</think><q> {row['target_queries'][2]}"
    fn = make_reward_fn({}, None, "think")
    qr, sr, tr = fn(row, [parse_think(good), parse_think(bad)])
    # bad: "zzz" matches no reference point -> point 0 of the reference ([n]) -> 1.0; its second
    # point holds the new-interest query, reference [] vs [1, n] -> 0.
    assert tr == [[1.0, 1.0], [1.0, 0.0]]
    assert qr[0][0] > qr[1][0]
    model, tok = sft(base_dir, think_rows(32), tmp_path, kind="think", steps=100)
    calls = []

    def spy(sample, parsed):
        out = fn(sample, parsed)
        calls.append(out[2])
        return out

    cfg = GRPOConfig(kind="think", max_steps=2, max_new_tokens=32, learning_rate=1e-3, difficulty_filter=False)
    hist = train_grpo(model, tok, think_rows(8, seed=3), spy, cfg, log=lambda e: None)
    assert len(hist) == 2
    assert not hist[0]["skipped"]
    assert all(t is not None for t in calls)
    assert any(len(row) for t in calls for row in t)  # the policy wrote interest points


# --- the update gate (aigq_model.release) ---------------------------------------------------
def test_update_gate_registers_only_an_update_that_beat_its_start_on_held_out_samples(tmp_path):
    """The real registry and the gate of ``register_update`` on run_eval-shaped metrics: a tie
    (the demo's 0.3182 = 0.3182), a gain under the margin, a score on the update's own training
    prompts, scores on different samples and an exported list under the best heuristic are each
    refused and recorded; a gain over the margin on held-out samples registers."""
    import json

    from aigq_model.release import REFERENCE_METRICS_FILE, register_update
    from common.config import load_config
    from common.registry import GateRejected, commit_version, current_version, read_decision, stage_version

    root, name, cfg = tmp_path / "data", "aigq_direct_grpo", load_config(environ={})
    assert cfg["aigq"]["gate"]["grpo_margin"] == 0.0

    def scored(model, hr, n=44, split="test", days=1, exported=0.5, best=0.4):
        return {"model": model, "ds": "2026-11-02", "split": split, "samples": "direct", "sample_days": days,
                "min_history_queries": 0, "max_samples": None,
                "results": {model: {"all": {"query_hr@10": hr, "n_users": float(n)}},
                            "hybrid": {"all": {"query_hr@10": exported}},
                            "own_history+popularity": {"all": {"query_hr@10": best}}}}

    def update(version, cand, start, **gate):
        path = commit_version(stage_version(root, name, version), root, name, version,
                              {"kind": "direct", "mode": "il", "ds": "2026-11-02", "sample_days": ["2026-11-02"]})
        (path / "metrics.json").write_text(json.dumps(cand))
        (path / REFERENCE_METRICS_FILE).write_text(json.dumps(start))
        return register_update(path / "metrics.json", cfg, **gate)

    refused = {
        "v1": ((scored(name, 0.3182), scored("aigq_direct", 0.3182)), {},
               r"0.3182 does not beat its start policy 0.3182 by more than margin 0.0 \(difference \+0.0000, 44"),
        "v2": ((scored(name, 0.33), scored("aigq_direct", 0.32)), {"margin": 0.02}, "by more than margin 0.02"),
        "v3": ((scored(name, 0.40, split="all", days=2), scored("aigq_direct", 0.30, split="all", days=2)), {},
               r"split all of 2026-11-01, 2026-11-02, which holds the update's own training prompts \(2026-11-02\)"),
        "v4": ((scored(name, 0.40), scored("aigq_direct", 0.30, n=43)), {}, r"not scored on the same samples \(differ in n_users"),
        "v5": ((scored(name, 0.40, exported=0.39), scored("aigq_direct", 0.30)), {},
               r"exported list query_hr@10 0.3900 < best heuristic own_history\+popularity 0.4000"),
    }
    for version, ((cand, start), gate, match) in refused.items():
        with pytest.raises(GateRejected, match=match):
            update(version, cand, start, **gate)
        assert read_decision(root, name, version)["registered"] is False
        assert current_version(root, name) is None
    update("v6", scored(name, 0.3409), scored("aigq_direct", 0.3182))  # one more hit on held-out samples
    assert current_version(root, name) == "v6" and read_decision(root, name, "v6")["failures"] == []
    update("v7", scored(name, 0.33), scored("aigq_direct", 0.32), margin=-0.02)  # a negative margin: tests only
    assert current_version(root, name) == "v7"
