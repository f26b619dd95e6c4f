"""base_lm: tokenizer round trip, checkpoint round trip, special tokens, pre-training, the training loop."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from base_lm import SPECIAL_TOKENS, TASK_TOKENS
from base_lm.load import load_base_lm
from base_lm.pretrain import BaseLMConfig, build_model, collate_blocks, pack_blocks, pretrain, save_base_lm
from base_lm.tokenizer import load_tokenizer, train_tokenizer
from common.training import LoopArgs, epoch_batches, latest_checkpoint, train_loop

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models: one thread is faster

BRANDS = ["Voltra", "Pixelon", "Harvesta", "Nordwik", "Cumulo"]
ADJ = ["organic", "silver", "wireless", "premium", "dark", "fast charging", "256gb"]
NOUNS = ["chocolate", "phone", "tablet", "headphones", "coffee", "backpack"]
CATS = ["Food > Sweets", "Electronics > Phones", "Electronics > Audio", "Bags > Backpacks"]

TINY = dict(
    vocab_size=400,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
    block_size=32,
    batch_size=8,
    warmup_steps=0,
)


def corpus_texts() -> list[str]:
    """Product titles, category paths and queries built from small word lists (deterministic)."""
    out = []
    for i, (b, a, n) in enumerate(itertools.product(BRANDS, ADJ, NOUNS)):
        out.append(f"{b} {a} {n} | {CATS[i % len(CATS)]} | {b}")
        out.append(f"{a} {n}")
    return out


def make_tiny_base(out_dir: Path, seed: int = 0, **overrides) -> Path:
    """A randomly initialised tiny base LM folder (tokenizer trained on ``corpus_texts``)."""
    cfg = BaseLMConfig(**{**TINY, "seed": seed, **overrides})
    torch.manual_seed(seed)
    tok = train_tokenizer(corpus_texts(), vocab_size=cfg.vocab_size)
    model = build_model(tok, cfg)
    return save_base_lm(model, tok, out_dir, {"name": "tiny"})


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(corpus_texts(), vocab_size=400)


def test_special_tokens_come_first_and_are_never_split(tokenizer):
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == list(range(len(SPECIAL_TOKENS)))
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    encoded = tokenizer("dark chocolate<INTEREST>x<ITEM><IMG><REC>", add_special_tokens=False)["input_ids"]
    assert [i for i in encoded if i < len(SPECIAL_TOKENS)] == ids[4:8]
    assert tokenizer.decode(encoded) == "dark chocolate<INTEREST>x<ITEM><IMG><REC>"


def test_tokenizer_round_trip_next_to_a_qwen_config(tmp_path, tokenizer):
    """The reload trap: next to a Qwen2 config.json, AutoTokenizer builds a Qwen2Tokenizer whose ids
    differ on digits and emoji; our loaders must give back exactly the ids the tokenizer was trained with."""
    # digits and emoji are where a Qwen2Tokenizer rebuilt from vocab/merges splits differently
    texts = corpus_texts()[:50] + [
        "héllo 😀 256GB<INTEREST>",
        "Voltra 256gb phone 12345",
        "  two  spaces\tand tab",
    ]
    expected = tokenizer(texts, add_special_tokens=False)["input_ids"]
    save_base_lm(build_model(tokenizer, BaseLMConfig(**TINY)), tokenizer, tmp_path, {"name": "trap"})
    assert (tmp_path / "config.json").is_file()  # the trap's setting
    reloaded = load_tokenizer(tmp_path)
    assert reloaded(texts, add_special_tokens=False)["input_ids"] == expected
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert (reloaded.pad_token, reloaded.bos_token, reloaded.eos_token) == ("<pad>", "<bos>", "<eos>")
    _, via_loader = load_base_lm(tmp_path)
    assert via_loader(texts, add_special_tokens=False)["input_ids"] == expected


def test_checkpoint_reload_gives_identical_ids_and_logits(tmp_path):
    path = make_tiny_base(tmp_path / "base")
    model, tok = load_base_lm(path)
    model2, tok2 = load_base_lm(path)
    text = ["Voltra silver phone | Electronics > Phones<INTEREST>", "dark chocolate"]
    ids = tok(text, add_special_tokens=False, padding=True, return_tensors="pt")
    assert torch.equal(
        ids["input_ids"], tok2(text, add_special_tokens=False, padding=True, return_tensors="pt")["input_ids"]
    )
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "base_lm"
    with torch.no_grad():
        a = model(**ids).logits
        b = model2(**ids).logits
    assert torch.equal(a, b)
    eager, _ = load_base_lm(path, attn_implementation="eager")
    with torch.no_grad():
        out = eager(**ids, output_attentions=True)
    assert torch.allclose(out.logits, a, atol=1e-5)
    assert len(out.attentions) == 2
    assert out.attentions[0].shape[1] == 4


def test_load_adds_missing_tokens_with_mean_of_subwords(tmp_path):
    path = make_tiny_base(tmp_path / "base")
    base, tok0 = load_base_lm(path)
    n0 = len(tok0)
    model, tok = load_base_lm(path, special_tokens=(*TASK_TOKENS, "<dark_chocolate>"))
    assert len(tok) == n0 + 1
    assert model.get_input_embeddings().weight.shape[0] == n0 + 1
    assert model.config.vocab_size == n0 + 1
    new_id = tok.convert_tokens_to_ids("<dark_chocolate>")
    assert tok("a<dark_chocolate>b", add_special_tokens=False)["input_ids"].count(new_id) == 1
    pieces = tok("dark chocolate", add_special_tokens=False)["input_ids"]
    emb = model.get_input_embeddings().weight
    assert torch.allclose(emb[new_id], base.get_input_embeddings().weight[pieces].mean(0))
    assert torch.equal(emb[:n0], base.get_input_embeddings().weight)
    # tied output embeddings follow
    assert torch.equal(model.get_output_embeddings().weight[new_id], emb[new_id])


def test_foreign_checkpoint_without_manifest_loads_through_auto_classes(tmp_path):
    path = make_tiny_base(tmp_path / "base")
    (path / "manifest.json").unlink()
    model, tok = load_base_lm(path, special_tokens=("<brand_new>",))
    assert "<brand_new>" in tok.get_vocab()
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    assert tok.pad_token is not None
    assert tok.eos_token is not None


def test_pretraining_lowers_the_loss(tmp_path):
    cfg = BaseLMConfig(**TINY, max_steps=40, learning_rate=1e-2, eval_fraction=0.1)
    model, tok, metrics, _state = pretrain(corpus_texts(), cfg, tmp_path / "ckpt")
    assert metrics["steps"] == 40
    assert metrics["eval_loss"] < metrics["eval_loss_before"] - 1.0
    assert metrics["train_loss_last"] < metrics["train_loss_first"] - 1.0


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    tok = train_tokenizer(corpus_texts(), vocab_size=400)
    blocks = pack_blocks(tok, corpus_texts(), 16)
    dataset = [{"input_ids": b} for b in blocks[:16]]
    finals = []
    for bs, accum in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        model = build_model(tok, BaseLMConfig(**TINY))
        args = LoopArgs(
            output_dir=str(tmp_path / f"a{accum}"),
            max_steps=2,
            per_device_batch_size=bs,
            gradient_accumulation_steps=accum,
            learning_rate=1e-2,
            lr_scheduler_type="constant",
        )
        train_loop(model, dataset, collate_blocks, args)
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(finals[0], finals[1], atol=1e-5)


def test_epoch_batches_shard_disjointly_and_evenly():
    shards = [epoch_batches(10, 2, epoch=3, seed=1, rank=r, world=3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # every rank steps the same number of times
    seen = [i for s in shards for b in s for i in b]
    assert set(seen) == set(range(10))
    again = epoch_batches(10, 2, epoch=3, seed=1, rank=0, world=3)
    assert again == shards[0]
    assert epoch_batches(10, 2, epoch=4, seed=1) != epoch_batches(        10, 2, epoch=3, seed=1    )


def test_checkpoints_are_pruned_to_the_limit(tmp_path):
    tok = train_tokenizer(corpus_texts(), vocab_size=400)
    dataset = [{"input_ids": b} for b in pack_blocks(tok, corpus_texts(), 16)[:8]]
    model = build_model(tok, BaseLMConfig(**TINY))
    args = LoopArgs(
        output_dir=str(tmp_path), max_steps=5, per_device_batch_size=4, save_steps=2, save_total_limit=2
    )
    state = train_loop(model, dataset, collate_blocks, args)
    assert state.global_step == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-5"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-5"
    assert json.loads((tmp_path / "checkpoint-5" / "trainer_state.json").read_text())["global_step"] == 5


def test_pretrain_entry_point_publishes_a_loadable_model(tmp_path, monkeypatch):
    from common.arrow_io import write_partition

    root = tmp_path / "data"
    texts = corpus_texts()
    items = [
        {
            "item_id": f"i{i}",
            "text": t,
            "title": t.split(" | ")[0],
            "leaf_category": None,
            "brand": None,
            "image_embedding": None,
        }
        for i, t in enumerate(texts[::2])
    ]
    write_partition(root, "samples", "item_corpus", "2026-11-02", items)
    monkeypatch.setenv("PIPELINE__BASE_LM__HIDDEN_SIZE", "32")
    monkeypatch.setenv("PIPELINE__BASE_LM__INTERMEDIATE_SIZE", "64")
    monkeypatch.setenv("PIPELINE__BASE_LM__VOCAB_SIZE", "400")
    monkeypatch.setenv("PIPELINE__BASE_LM__BLOCK_SIZE", "32")
    monkeypatch.setenv("PIPELINE__BASE_LM__BATCH_SIZE", "8")
    from base_lm.pretrain import main

    assert main(["--ds", "2026-11-03", "--data-root", str(root), "--max-steps", "3"]) == 0
    out = root / "models" / "base_lm" / "2026-11-03"
    assert (out / "_SUCCESS").is_file()
    assert (out / "model.safetensors").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ds_range"] == ["2026-10-28", "2026-11-03"]
    assert manifest["metrics"]["steps"] == 3
    assert manifest["metrics"]["n_texts"] == len(items)
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no checkpoint/tmp left over
    model, tok = load_base_lm(out)
    assert model.config.hidden_size == 32


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from base_lm.pretrain import BaseLMConfig, build_model, collate_blocks, pack_blocks
from base_lm.tokenizer import train_tokenizer
from common.training import LoopArgs, train_loop
from tests.test_base_lm import TINY, corpus_texts

torch.set_num_threads(1)
tok = train_tokenizer(corpus_texts(), vocab_size=400)
data = [{"input_ids": b} for b in pack_blocks(tok, corpus_texts(), 16)[:16]]
torch.manual_seed(0)
model = build_model(tok, BaseLMConfig(**TINY))
state = train_loop(model, data, collate_blocks, LoopArgs(output_dir=sys.argv[1], max_steps=3, per_device_batch_size=4))
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, flat)
assert state.global_step == 3, state.global_step
assert torch.equal(gathered[0], gathered[1]), "ranks diverged"
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes_stay_in_sync(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc-per-node",
            "2",
            "--master-port",
            "29531",
            str(script),
            str(tmp_path / "ckpt"),
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_behaviour_sequences_join_the_corpus_newest_history_per_user(tmp_path):
    """``base_lm.behaviour_sequences``: each user's newest history of the day becomes one text, a
    ``<event_type> <text>`` line per behaviour; without it only single texts are collected."""
    import datetime as dt

    from base_lm.pretrain import collect_texts, sequence_text
    from common.arrow_io import write_partition

    t0 = dt.datetime(2026, 11, 2, 8, tzinfo=dt.UTC)

    def b(minutes, etype, text):
        return {"event_time": t0 + dt.timedelta(minutes=minutes), "event_type": etype, "time_bucket": "lt_1h",
                "text": text, "item_id": None if etype == "search" else "i1", "category": None}

    old = [b(0, "search", "red shoe"), b(1, "click", "Nike red shoe")]
    new = [*old, b(2, "search", "trainers")]
    rows = [
        {"sample_id": sid, "user_id": user, "event_time": t0 + dt.timedelta(minutes=m), "target_item_id": "i1",
         "target_event_type": "click", "history": hist, "hard_negative_ids": [], "split": "train"}
        for sid, user, m, hist in (("a", "u1", 2, old), ("b", "u1", 3, new), ("c", "u2", 3, [b(0, "search", "mug")]))
    ]
    write_partition(tmp_path, "samples", "karma_samples", "2026-11-02", rows)
    plain = collect_texts(tmp_path, ["2026-11-02"])
    assert plain == ["Nike red shoe", "mug", "red shoe", "trainers"]
    with_seq = collect_texts(tmp_path, ["2026-11-02"], sequences=True)
    assert sequence_text(new) == "search red shoe\nclick Nike red shoe\nsearch trainers"
    # u1's newest history only (the older window is a prefix of it); u2's one-behaviour history adds nothing
    assert sorted(set(with_seq) - set(plain)) == [sequence_text(new)]
