"""Constrained decoding over known queries (``aigq.generate.known_queries``): the prefix trie, and
every strategy on a tiny trained policy writing only known queries, ranked by the policy."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from aigq_model.decode import next_queries
from aigq_model.generate import Decoding, encode_sample_prompt, generate_lists
from aigq_model.parsing import normalize_query
from aigq_model.trie import QueryTrie, TrieConstraint, searched_queries
from tests.test_aigq_sft import TINY_SFT, base_dir, make_rows, think_rows, trained  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_the_trie_holds_each_query_as_a_target_tokenises_it(trained):  # noqa: F811
    _model, tok, _ = trained
    trie = QueryTrie.build(tok, ["Red Shoe", "red shoe", "red", "", "blue hat"])
    assert len(trie) == 3  # normalised, deduplicated, empty dropped
    q_id = tok.convert_tokens_to_ids("<q>")
    red_shoe = tok("<q> red shoe", add_special_tokens=False)["input_ids"]
    assert red_shoe[0] == q_id
    assert trie.is_query(red_shoe[1:])
    red = tok("<q> red", add_special_tokens=False)["input_ids"][1:]
    assert trie.is_query(red) and red_shoe[1:][: len(red)] == red
    constraint = TrieConstraint(trie, tok, prompt_width=0)
    allowed = constraint.allowed([q_id, *red])
    assert red_shoe[1 + len(red)] in allowed and q_id in allowed and tok.eos_token_id in allowed
    assert constraint.allowed([q_id, *red_shoe[1:]]) == sorted(constraint.close_ids)  # a leaf may only close
    assert q_id not in constraint.allowed([q_id])  # no empty query
    assert constraint.allowed([7]) is None  # before any <q>: free


@pytest.mark.parametrize("strategy", ["greedy", "beam", "query_beam"])
def test_every_strategy_writes_only_known_queries(trained, strategy):  # noqa: F811
    """Against a vocabulary of the task's queries without the ones the free policy writes first,
    the constrained lists hold known queries only and still fill slots from the model."""
    model, tok, _ = trained
    rows = make_rows(8, seed=11)
    dec = Decoding(strategy=strategy, num_beams=6, max_new_tokens=24,
                   num_return_sequences=3 if strategy == "beam" else 1)
    free = generate_lists(model, tok, rows, k=10, decoding=dec, cold_start="model")
    firsts = {r.queries[0] for r in free if r.n_model}
    known = sorted({normalize_query(q) for r in make_rows(64, seed=3) for q in r["target_queries"]} - firsts)
    constrained = generate_lists(model, tok, rows, k=10, decoding=Decoding(**{**dec.__dict__, "known_queries": True}),
                                 cold_start="model", known_queries=known)
    assert all(q in known for r in constrained for q in r.queries[: r.n_model])
    assert sum(r.n_model for r in constrained) >= len(rows)
    assert all(r.queries[0] not in firsts for r in constrained)
    with pytest.raises(ValueError, match="known_queries"):
        generate_lists(model, tok, rows, decoding=Decoding(known_queries=True))


def test_constrained_query_beam_ranks_the_known_queries_by_the_policys_probability(trained):  # noqa: F811
    """With the vocabulary = the free beam's (non-empty) candidates, the constrained beam returns
    them all first, with the same joint log-probabilities, best first."""
    model, tok, _ = trained
    model.eval()
    q_id = tok.convert_tokens_to_ids("<q>")
    prompts = [[*encode_sample_prompt(tok, r, "compressed", 20, 384), q_id] for r in make_rows(4, seed=5)]
    dec = Decoding(strategy="query_beam", num_beams=5)
    for free, prompt in zip(next_queries(model, tok, prompts, dec), prompts, strict=True):
        free = [(normalize_query(q), s) for q, s in free if normalize_query(q)]  # the free beam may close at once
        known = [q for q, _ in free]
        assert len(known) >= 3
        (got,) = next_queries(model, tok, [prompt], dec, QueryTrie.build(tok, known))
        # then the same query closed by another marker may fill the beams left over
        got = [(normalize_query(q), s) for q, s in got][: len(known)]
        assert [q for q, _ in got] == known
        assert [s for _, s in got] == pytest.approx([s for _, s in free], abs=1e-4)


def test_think_points_expand_into_known_queries(base_dir, tmp_path):  # noqa: F811
    from aigq_model.train_sft import SFTConfig, train_sft

    config = SFTConfig(kind="think", max_steps=150, **TINY_SFT)
    model, tok, _state, _m = train_sft(config, base_dir, think_rows(32, 0), tmp_path / "ckpt")
    rows = think_rows(6, 21)
    dec = Decoding(strategy="query_beam", num_beams=6, max_new_tokens_think=64)
    free = generate_lists(model, tok, rows, kind="think", decoding=dec, cold_start="model")
    known = sorted({q for r in free for q in r.queries[: r.n_model]})[::2]
    got = generate_lists(model, tok, rows, kind="think", cold_start="model", known_queries=known,
                         decoding=Decoding(**{**dec.__dict__, "known_queries": True}))
    assert sum(r.n_model for r in got) > 0
    assert all(q in known for r in got for q in r.queries[: r.n_model])
    assert any(r.triggers for r in got)  # the points are still written


def test_searched_queries_are_the_logs_distinct_searches_most_searched_first():
    t = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    events = pa.Table.from_pylist([
        {"event_type": "search", "query": "Hat", "event_time": t},
        {"event_type": "search", "query": "shoe", "event_time": t},
        {"event_type": "search", "query": "hat ", "event_time": t},
        {"event_type": "click", "query": "coat", "event_time": t},
        {"event_type": "search", "query": None, "event_time": t},
    ])
    assert searched_queries(events) == ["hat", "shoe"]
