"""AIGQ targets <-> parser round trips, fuzzing, normalisation, block-list and fallback."""

from __future__ import annotations

import random

import pytest

from aigq_model import parsing
from aigq_model.parsing import (
    Blocklist,
    ThinkPoint,
    normalize_query,
    parse_direct,
    parse_think,
    postprocess,
    with_fallback,
)
from aigq_model.targets import (
    direct_target,
    explode_plain_sft,
    serialize_think,
    sft_text_pair,
    template_rationale,
    think_points,
    think_target,
)

HISTORY = [
    {"event_type": "search", "text": "old query"},
    {"event_type": "search", "text": "red shoe"},
    {"event_type": "click", "text": "Nike running shoe"},
    {"event_type": "search", "text": "running shoe"},
    {"event_type": "buy", "text": "Garden hose [50m]"},
]
THINK_SAMPLE = {
    "history": HISTORY,
    "targets": [
        {"query": "Running  Shoe", "source": "hint_click", "triggers": [1, 2, 3]},
        {"query": "garden hose", "source": "search", "triggers": [4]},
        {"query": "red shoe", "source": "search", "triggers": [3, 1, 2]},
        {"query": "umbrella", "source": "ranker", "triggers": []},
        {"query": "old thing", "source": "ranker", "triggers": [0]},  # outside a 4-window
        {"query": "running shoe", "source": "ranker", "triggers": [3]},  # duplicate after normalising
    ],
}


def test_think_points_grouping_and_window():
    points = think_points(THINK_SAMPLE, max_history=4)
    assert points == [
        ThinkPoint((1, 2, 3), "clicked Nike running shoe; searched running shoe", ("running shoe", "red shoe")),
        ThinkPoint((4,), "bought Garden hose 50m", ("garden hose",)),
        ThinkPoint((), "new interest", ("umbrella", "old thing")),
    ]
    assert think_target(THINK_SAMPLE, max_history=4).startswith(
        "<think>[1,2,3] clicked Nike running shoe; searched running shoe</think>"
        "<q> running shoe<q> red shoe<think>[4] "
    )


def test_template_rationale_is_short():
    # one phrase per distinct text, with the strongest action on it; the newest two texts
    seen = [{"event_type": "click", "text": "Nike shoe"}, {"event_type": "search", "text": "socks"},
            {"event_type": "cart", "text": "Nike shoe"}, {"event_type": "click", "text": "Nike shoe"}]
    assert template_rationale(seen) == "searched socks; carted Nike shoe"
    assert template_rationale(seen, max_items=1) == "carted Nike shoe"
    assert template_rationale([]) == "new interest"


def test_think_round_trip():
    for max_history in (2, 4, 20):
        points = think_points(THINK_SAMPLE, max_history=max_history)
        parsed = parse_think(serialize_think(points))
        assert not parsed.malformed
        assert parsed.points == points
        assert parsed.queries == [q for p in points for q in p.queries]
    rng = random.Random(3)
    words = ["red", "shoe", "garden", "hose", "nike", "c++", "t-shirt", "50%", "café", "iphone17", "耳机"]
    for _ in range(300):
        points = []
        for _ in range(rng.randint(1, 4)):
            trig = tuple(sorted(rng.sample(range(1, 21), rng.randint(0, 3))))
            queries = tuple(dict.fromkeys(
                normalize_query(" ".join(rng.sample(words, rng.randint(1, 3)))) for _ in range(3)
            ))
            points.append(ThinkPoint(trig, "searched " + " ".join(rng.sample(words, 2)), queries))
        text = serialize_think(points)
        parsed = parse_think(text + "<|endoftext|><|endoftext|>")
        assert not parsed.malformed, text
        assert parsed.points == points, text
        for q, (a, b) in zip(parsed.queries, parsed.spans, strict=True):
            assert normalize_query(text[a:b]) == q
        for p, (a, b) in zip(parsed.points, parsed.trigger_spans, strict=True):
            assert text[a:b] == "[" + ",".join(map(str, p.triggers)) + "]"


def test_direct_round_trip_and_plain_sft():
    target = direct_target(["Running Shoe", "red shoe!", "running shoe", "", "<q>umbrella"])
    assert target == "<q> running shoe<q> red shoe<q> q umbrella"
    parsed = parse_direct(target + "<|im_end|> trailing junk <q> x")
    assert parsed.queries == ["running shoe", "red shoe", "q umbrella"]
    assert not parsed.malformed
    rows = explode_plain_sft({"sample_id": "s", "target_queries": ["a", "B", "a"], "user_id": "u"})
    assert [(r["sample_id"], r["target_queries"]) for r in rows] == [("s#0", ["a"]), ("s#1", ["b"])]
    assert rows[0]["user_id"] == "u"
    prompt, target = sft_text_pair(rows[1], kind="plain")
    assert prompt == "Recommend the next 10 queries.\n"
    assert target == "<q> b"
    assert sft_text_pair(THINK_SAMPLE, kind="think", max_history=4)[1] == think_target(THINK_SAMPLE, max_history=4)
    with pytest.raises(ValueError):
        sft_text_pair(THINK_SAMPLE, kind="cot")


@pytest.mark.parametrize(
    ("text", "queries", "malformed"),
    [
        ("<q> a<q> b", ["a", "b"], False),
        ("  <q>A  B <q>\tc ", ["a b", "c"], False),
        ("", [], True),
        ("<q>", [], True),
        ("<q> a<q>", ["a"], True),
        ("<q> a<q><q> b", ["a", "b"], True),
        ("junk <q> a", ["a"], True),
        ("<q> a <search> b", ["a b"], True),
        ("a\nb\n\n", ["a", "b"], True),
        ("<think>[1] x</think><q> a", ["a"], True),
    ],
)
def test_parse_direct_cases(text, queries, malformed):
    parsed = parse_direct(text)
    assert (parsed.queries, parsed.malformed) == (queries, malformed)


def test_truncated_generation_drops_the_cut_query():
    assert parse_direct("<q> red shoe<q> runn", complete=False).queries == ["red shoe"]
    assert parse_direct("<q> red shoe<q> runn", complete=False).malformed
    p = parse_think("<think>[1] a</think><q> red shoe<q> runn", complete=False)
    assert p.queries == ["red shoe"]
    assert p.malformed


@pytest.mark.parametrize(
    ("text", "n_points", "queries"),
    [
        ("<think>[1] r</think>", 0, []),  # point without queries
        ("<think>[1] r<q> a", 1, ["a"]),  # unclosed block
        ("<q> a<think>[] r</think><q> b", 2, ["a", "b"]),  # queries before any block
        ("<think>[1,x] r</think><q> a", 1, ["a"]),  # bad trigger
        ("<think>no brackets</think><q> a", 1, ["a"]),
        ("<think>[1] r</think>junk<q> a", 1, ["a"]),
        ("</think><q> a", 1, ["a"]),
        ("<think>[1] r</think><q> a<think>[2] s", 1, ["a"]),  # truncated in the second header
    ],
)
def test_parse_think_malformed_cases(text, n_points, queries):
    parsed = parse_think(text)
    assert parsed.malformed
    assert len(parsed.points) == n_points
    assert parsed.queries == queries


def _fuzz_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pieces = ["<q>", "<think>", "</think>", "[", "]", ",", "1", "12", "<1>", "<lt_1h>", "<|endoftext|>", "</s>",
              "<", ">", "<q", "think>", "\n", " ", "red shoe", "\u200b", "\ud800", "\x00", "ｒｅｄ", "，", "…"]
    valid = [
        serialize_think(think_points(THINK_SAMPLE, max_history=4)),
        direct_target(["red shoe", "running shoe", "garden hose"]),
    ]
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # random unicode, including surrogates and controls
            out.append("".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 40))))
        elif kind == 1:  # marker soup
            out.append("".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))))
        elif kind == 2:  # truncated valid output
            v = rng.choice(valid)
            out.append(v[: rng.randint(0, len(v))])
        else:  # valid output with random edits
            chars = list(rng.choice(valid))
            for _ in range(rng.randint(1, 5)):
                pos = rng.randrange(len(chars))
                if rng.random() < 0.5:
                    del chars[pos]
                else:
                    chars.insert(pos, rng.choice(pieces))
            out.append("".join(chars))
    return out


def test_parsers_survive_fuzz():
    for text in _fuzz_strings(4000):
        for complete in (True, False):
            # The private functions: the public wrappers would hide a crash behind a log line.
            d = parsing._parse_direct(text, complete)
            t = parsing._parse_think(text, complete)
            for parsed in (d, t):
                assert isinstance(parsed.malformed, bool)
                assert all(q and normalize_query(q) == q for q in parsed.queries)
                assert len(parsed.spans) == len(parsed.queries)
                assert all(0 <= a <= b <= len(text) for a, b in parsed.spans)
            assert [q for p in t.points for q in p.queries] == t.queries
            assert all(isinstance(i, int) for p in t.points for i in p.triggers)
            if not d.queries:
                assert d.malformed
    assert parse_direct(None).malformed
    assert parse_think(12345).malformed  # type: ignore[arg-type]


def test_normalize_query():
    assert normalize_query("  ＲＥＤ\u3000Shoe!! ") == "red shoe"
    assert normalize_query("\u200bc++\x00 ") == "c++"
    assert normalize_query("«t-shirt»,") == "t-shirt"
    assert normalize_query("...") == ""
    assert normalize_query(None) == ""
    assert normalize_query("50%") == "50%"
    assert normalize_query("c#.") == "c#"


def test_blocklist_and_postprocess():
    block = Blocklist(phrases=["Fake ID"], substrings=["GUN"], patterns=[r"^\d+$", r"\bxxx\b"])
    queries = ["fake id", "FAKE  ID!", "fake id card", "shotgun case", "12345", "123 abc", "XXX video",
               "xxxl shirt", "red shoe", "Red Shoe", "", "a " * 9, "y" * 41, "ok"]
    assert postprocess(queries, block) == ["fake id card", "123 abc", "xxxl shirt", "red shoe", "ok"]
    assert [q for q in queries if block.blocks(q)] == ["fake id", "FAKE  ID!", "shotgun case", "12345", "XXX video"]
    assert postprocess(queries, None, max_queries=3) == ["fake id", "fake id card", "shotgun case"]
    from_lines = Blocklist.from_lines(["# comment", "fake id", "substring:gun", r"regex:^\d+$", ""])
    assert postprocess(queries, from_lines) == ["fake id card", "123 abc", "xxx video", "xxxl shirt", "red shoe", "ok"]
    assert not Blocklist()
    assert from_lines


def test_with_fallback():
    popular = ["Red Shoe", "umbrella", "boots", "hat"]
    assert with_fallback([], popular, 3) == ["red shoe", "umbrella", "boots"]
    assert with_fallback(["red shoe", "x"], popular, 4) == ["red shoe", "x", "umbrella", "boots"]
    assert with_fallback(["a", "b", "c"], popular, 2) == ["a", "b"]
