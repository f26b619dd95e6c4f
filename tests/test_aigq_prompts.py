"""AIGQ prompts, special-token initialisation and SFT tokenisation (tiny random Qwen2, CPU)."""

from __future__ import annotations

import pytest

from aigq_model.parsing import parse_direct, parse_think
from aigq_model.prompts import (
    add_prompt_tokens,
    all_special_tokens,
    build_prompt,
    compressed_special_tokens,
    token_init_text,
)
from aigq_model.targets import IGNORE_INDEX, direct_target, encode_prompt, think_target, tokenize_sft_example

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SENTENCES = [
    "red shoe running shoe trainers leather boots",
    "less than 1 hour ago less than 1 day ago 1 day ago 2 to 3 days ago 4 to 7 days ago more than 7 days ago",
    "search click add to cart buy query think end think",
    "gender female male age 18-24 25-29 30-34 35-39 40-49 50+ purchase level low medium high premium",
    "Recommend the next 10 queries. city Shanghai Beijing nike adidas 0 1 2 3 4 5 6 7 8 9",
] * 3

SAMPLE = {
    "sample_id": "s1",
    "gender": "female",
    "age_bucket": "25-29",
    "city": "Shanghai",
    "purchase_level": "high",
    "history": [
        {"time_bucket": "2_3d_ago", "event_type": "search", "text": "red shoe", "item_id": None},
        {"time_bucket": "1d_ago", "event_type": "click", "text": "Nike <air>  running\nshoe", "item_id": "i1"},
        {"time_bucket": "lt_1h", "event_type": "view", "text": "leather boots", "item_id": "i2"},
    ],
    "target_queries": ["running shoe", "Red Shoe", "trainers"],
}


@pytest.fixture(scope="module")
def tokenizer_factory():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES, trainer)
    serialised = tok.to_str()

    def make():
        return PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(serialised), eos_token="<|endoftext|>", pad_token="<|endoftext|>"
        )

    return make


def tiny_qwen(vocab_size: int, tied: bool):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=tied,
    )
    return Qwen2ForCausalLM(cfg).eval()


def test_compressed_prompt_exact():
    assert build_prompt(SAMPLE, max_history=20) == (
        "<gender_female><age_25-29><level_high> city: Shanghai\n"
        "<1><2_3d_ago><search> red shoe\n"
        "<2><1d_ago><click> Nike air running shoe\n"
        "<3><lt_1h>view leather boots\n"
        "Recommend the next 10 queries.\n"
    )


def test_verbose_prompt_and_window():
    prompt = build_prompt(SAMPLE, style="verbose", max_history=2)
    lines = prompt.splitlines()
    assert lines[0] == "User profile: gender female | age 25-29 | purchase level high | city Shanghai"
    assert lines[2:4] == ["1 | 1 day ago | click | Nike air running shoe", "2 | less than 1 hour ago | view | leather boots"]
    assert lines[4].startswith("Based on the user's profile")
    assert len(lines) == 5
    cold = build_prompt({"history": []})
    assert cold == "Recommend the next 10 queries.\n"
    with pytest.raises(ValueError):
        build_prompt(SAMPLE, style="chatty")


def test_special_token_list():
    tokens = compressed_special_tokens(5)
    assert tokens[:5] == ["<1>", "<2>", "<3>", "<4>", "<5>"]
    assert "<1d_ago>" in tokens
    assert "<cart>" in tokens
    assert "<age_50+>" in tokens
    assert len(tokens) == len(set(tokens)) == 5 + 6 + 4 + 2 + 6 + 4
    assert token_init_text("<lt_1h>") == "less than 1 hour ago"
    assert token_init_text("<level_high>") == "purchase level high"


@pytest.mark.parametrize("tied", [False, True])
def test_new_token_embedding_is_subword_mean(tokenizer_factory, tied):
    tokenizer = tokenizer_factory()
    model = tiny_qwen(len(tokenizer), tied)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    tokens = all_special_tokens(max_history=4)
    sub_ids = {t: tokenizer(token_init_text(t), add_special_tokens=False)["input_ids"] for t in tokens}
    n_old = len(tokenizer)

    ids = add_prompt_tokens(tokenizer, model, tokens)

    assert set(ids) == set(tokens)
    assert sorted(ids.values()) == list(range(n_old, n_old + len(tokens)))
    new_in = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    assert new_in.shape[0] == len(tokenizer) == n_old + len(tokens)
    torch.testing.assert_close(new_in[:n_old], old_in, rtol=0, atol=0)
    for t, i in ids.items():
        assert len(sub_ids[t]) >= 1
        torch.testing.assert_close(new_in[i], old_in[sub_ids[t]].mean(dim=0))
        torch.testing.assert_close(new_out[i], old_out[sub_ids[t]].mean(dim=0))
    assert (new_out.data_ptr() == new_in.data_ptr()) == tied
    # Multi-sub-word names really average several rows (the test is not vacuous).
    assert len(sub_ids["<2_3d_ago>"]) > 1
    # Atomic in the prompt, kept by decode, and a second call adds nothing.
    enc = tokenizer("<1><lt_1h><search> red shoe", add_special_tokens=False)["input_ids"]
    assert enc[:3] == [ids["<1>"], ids["<lt_1h>"], ids["<search>"]]
    assert add_prompt_tokens(tokenizer, model, tokens) == {}
    with torch.no_grad():
        out = model(input_ids=torch.tensor([enc]))
    assert out.logits.shape == (1, len(enc), len(tokenizer))


def test_padded_embedding_matrix_is_not_shrunk(tokenizer_factory):
    tokenizer = tokenizer_factory()
    model = tiny_qwen(len(tokenizer) + 64, tied=False)
    before = model.get_input_embeddings().weight.shape[0]
    ids = add_prompt_tokens(tokenizer, model, ["<1>", "<lt_1h>"])
    assert model.get_input_embeddings().weight.shape[0] == before
    sub = tokenizer("less than 1 hour ago", add_special_tokens=False)["input_ids"]
    w = model.get_input_embeddings().weight
    torch.testing.assert_close(w[ids["<lt_1h>"]], w[sub].mean(dim=0))


def test_sft_labels_mask_exactly_the_prompt(tokenizer_factory):
    tokenizer = tokenizer_factory()
    add_prompt_tokens(tokenizer, None, all_special_tokens(20))
    prompt = build_prompt(SAMPLE)
    target = direct_target(SAMPLE["target_queries"])
    n_prompt = len(tokenizer(prompt)["input_ids"])
    assert encode_prompt(tokenizer, prompt) == tokenizer(prompt)["input_ids"]  # no bos token: nothing added
    ex = tokenize_sft_example(tokenizer, prompt, target, max_len=512)
    n = len(ex["input_ids"])
    assert len(ex["labels"]) == len(ex["attention_mask"]) == n
    assert set(ex["attention_mask"]) == {1}
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert IGNORE_INDEX not in ex["labels"][n_prompt:]
    assert ex["input_ids"][-1] == tokenizer.eos_token_id
    # The learned part decodes back to the target, and the parser recovers the list.
    learned = tokenizer.decode(ex["input_ids"][n_prompt:-1], skip_special_tokens=True)
    assert learned == target
    assert parse_direct(learned).queries == ["running shoe", "red shoe", "trainers"]

    short = tokenize_sft_example(tokenizer, prompt, target, max_len=24)
    assert len(short["input_ids"]) == 24
    n_masked = short["labels"].count(IGNORE_INDEX)
    assert n_masked == 12
    assert short["labels"][:n_masked] == [IGNORE_INDEX] * n_masked
    assert short["input_ids"][:n_masked] == tokenizer(prompt)["input_ids"][-n_masked:]

    tokenizer.add_special_tokens({"bos_token": "<bos>"})
    with_bos = tokenize_sft_example(tokenizer, prompt, target, max_len=512)
    assert with_bos["input_ids"] == [tokenizer.bos_token_id] + ex["input_ids"]
    assert with_bos["labels"] == [IGNORE_INDEX] + ex["labels"]


def test_think_target_tokenizes_and_parses(tokenizer_factory):
    tokenizer = tokenizer_factory()
    add_prompt_tokens(tokenizer, None, all_special_tokens(20))
    sample = dict(SAMPLE, targets=[
        {"query": "red shoe", "source": "search", "triggers": [0]},
        {"query": "running shoe", "source": "search", "triggers": [0, 1]},
    ])
    target = think_target(sample)
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    parsed = parse_think(decoded)
    assert not parsed.malformed
    assert parsed.queries == ["red shoe", "running shoe"]
    assert [p.triggers for p in parsed.points] == [(1,), (1, 2)]
