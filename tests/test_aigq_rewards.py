"""IL-GRPO reward functions on hand-computed cases."""

from __future__ import annotations

import pytest

from aigq_model.rewards import (
    RewardConfig,
    format_reward,
    hindsight_match,
    length_reward,
    query_rewards,
    repetition_penalty,
    rouge_l,
    sequence_reward,
    trigger_rouge,
)


def test_rouge_l():
    # LCS("red running shoe", "red shoe") = 2: P = 2/3, R = 1, F = 2 * (2/3) / (5/3) = 0.8
    assert rouge_l("red running shoe", "red shoe") == pytest.approx(0.8)
    assert rouge_l("red shoe", "red running shoe") == pytest.approx(0.8)
    assert rouge_l("  Red SHOE! ", "red shoe") == 1.0  # normalised first
    assert rouge_l("shoe red", "red shoe") == pytest.approx(0.5)  # LCS 1: P = R = 1/2
    # LCS("a b c d", "a x c y d") = 3 (a c d): P = 3/4, R = 3/5, F = 2PR/(P+R) = 2/3
    assert rouge_l("a b c d", "a x c y d") == pytest.approx(2 / 3)
    assert rouge_l("", "red shoe") == 0.0
    assert rouge_l("red", "") == 0.0
    assert rouge_l("hat", "shoe") == 0.0


def test_length_reward():
    assert length_reward("red running shoe") == 0.0
    assert length_reward("") == -1.0
    assert length_reward("   ") == -1.0
    assert length_reward("x") == -0.5  # 1 char < 2: -(2 - 1) / 2
    assert length_reward("a b c d e f g h") == pytest.approx(-2 / 6)  # 8 words > 6
    assert length_reward("x" * 60) == pytest.approx(-0.5)  # 60 chars > 40: -(20 / 40)
    assert length_reward("x" * 200) == -1.0  # capped
    assert length_reward("a b c", max_words=2) == -0.5


def test_format_reward():
    assert format_reward(False, 3) == 1.0
    assert format_reward(True, 3) == -1.0
    assert format_reward(False, 0) == -1.0
    assert format_reward(False, 10, expected=10) == 1.0
    assert format_reward(False, 7, expected=10) == pytest.approx(0.7)
    assert format_reward(False, 40, expected=10) == -1.0  # floored


def test_repetition_penalty():
    assert repetition_penalty(["red shoe", "blue hat", "dress"]) == 0.0
    assert repetition_penalty([]) == 0.0
    assert repetition_penalty(["red shoe", "Red Shoe!", "red shoe", "hat"]) == -0.5  # 2 exact of 4
    # "red shoe" vs "red running shoe": ROUGE-L 0.8 >= 0.8 -> near duplicate, weight 0.5, of 2
    assert repetition_penalty(["red running shoe", "red shoe"]) == -0.25
    assert repetition_penalty(["red running shoe", "red shoe"], near_threshold=0.9) == 0.0
    assert repetition_penalty(["", "", "hat"]) == 0.0  # empties are left to the length reward


def test_trigger_rouge():
    # LCS([1, 3, 5], [1, 5]) = 2: P = 2/3, R = 1 -> 0.8
    assert trigger_rouge([1, 3, 5], [1, 5]) == pytest.approx(0.8)
    assert trigger_rouge([5, 1], [1, 5]) == pytest.approx(0.5)
    assert trigger_rouge([], []) == 1.0
    assert trigger_rouge([], [2]) == 0.0
    assert trigger_rouge([2], []) == 0.0


def test_query_rewards_score_each_slot_against_the_later_searches_and_clip():
    cfg = RewardConfig(w_ctr=2.0, w_exact=1.0, w_rouge=1.0, w_len=0.5, gamma=1.0, beta=0.5)
    queries = ["red running shoe", "Hat", "x"]
    later = ["red shoe", "cap", "hat"]
    rewards = query_rewards(queries, later, [0.3, 0.9, 0.1], cfg)
    # slot 0: best ROUGE-L 0.8 (red shoe) + 2 * 0.3; slot 1: exact "hat" 1 + ROUGE-L 1 + 2 * min(0.9, 0.5);
    # slot 2: no match, 2 * 0.1 + 0.5 * -0.5 (one character)
    assert rewards == pytest.approx([1.4, 3.0, -0.05])
    assert query_rewards(queries, later, None, cfg) == pytest.approx([0.8, 2.0, -0.25])
    # the slot's position does not matter, only whether the user searched it later
    assert query_rewards(["x", "Hat"], later, None, cfg)[1] == pytest.approx(2.0)
    assert query_rewards(queries, [], None, cfg) == pytest.approx([0.0, 0.0, -0.25])  # searched nothing later
    big = RewardConfig(w_exact=50.0, w_len=50.0, reward_clip=10.0)
    assert query_rewards(["red shoe", ""], ["red shoe"], None, big) == [10.0, -10.0]
    assert query_rewards([], [], None, cfg) == []
    with pytest.raises(ValueError, match="CTR"):
        query_rewards(["a", "b"], [], [0.1], cfg)


def test_the_semantic_term_takes_the_best_cosine_and_needs_one_per_later_search():
    cfg = RewardConfig(w_exact=0.0, w_rouge=0.0, w_sem=2.0, w_len=0.0)
    assert hindsight_match("sneakers", ["running shoe", "hat"], cfg, [0.7, 0.1]) == pytest.approx(1.4)
    assert query_rewards(["a", "b"], ["c"], None, cfg, [[0.2], [0.5]]) == pytest.approx([0.4, 1.0])
    with pytest.raises(ValueError, match="cosine"):
        hindsight_match("a", ["b", "c"], cfg, [0.1])


def test_sequence_reward_and_config():
    cfg = RewardConfig()
    assert sequence_reward(["red shoe", "hat"], False, cfg) == 1.0
    assert sequence_reward(["red shoe", "red shoe", "hat", "cap"], False, cfg) == pytest.approx(0.75)
    assert sequence_reward(["red shoe"], True, cfg) == -1.0
    assert sequence_reward(["a", "b"], False, cfg, expected=4) == pytest.approx(0.5)
    assert sequence_reward([], False, RewardConfig(w_fmt=30.0)) == -10.0
    assert RewardConfig.from_dict({"w_ctr": 0.5, "beta": 2.0}) == RewardConfig(w_ctr=0.5, beta=2.0)
    assert RewardConfig.from_dict(None) == RewardConfig()
    with pytest.raises(ValueError, match="w_bogus"):
        RewardConfig.from_dict({"w_bogus": 1})
