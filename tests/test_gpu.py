"""The GPU path (``runtime.device``): KARMA and AIGQ training with bf16 autocast on CUDA, models
saved on the GPU reloading on the CPU, generation on the GPU, eager attention only for the
attention diagnostics. Marked ``gpu``: skipped without CUDA (``make test`` deselects them; run
``pytest -m gpu`` on a machine with a GPU). The CPU side of the device setting is tested in
``test_common.py``.
"""

from __future__ import annotations

import pyarrow.compute as pc
import pytest
import torch

from common import device as devices

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)"),
]


@pytest.fixture(autouse=True)
def on_cuda():
    before = devices.setting()
    devices.configure("cuda")
    yield
    devices.configure(before)


def test_cuda_setting_resolves_to_the_gpu_with_bf16():
    assert devices.resolve() == torch.device("cuda:0")
    assert devices.use_bf16() is torch.cuda.is_bf16_supported()
    from common.ddp import setup_distributed
    from common.training import LoopArgs
    from karma_model.config import KarmaConfig

    assert setup_distributed()[2].type == "cuda"
    assert LoopArgs.from_config(KarmaConfig(), "/tmp/x").bf16 is devices.use_bf16()
    devices.configure("cpu")
    assert devices.resolve().type == "cpu"
    assert not devices.use_bf16()


def test_karma_trains_on_the_gpu_in_bf16_and_reloads_on_the_cpu(tmp_path):
    from common.training import evaluate_loss
    from karma_model.data import KarmaDataset, KarmaEncoder
    from karma_model.load import load_karma, save_karma
    from karma_model.model import embed_histories
    from karma_model.train import train_karma
    from tests.test_karma_model import (
        ITEM_CORPUS,
        KARMA_SAMPLES,
        ItemCatalog,
        build,
        item_rows,
        make_tiny_base,
        pa,
        sample_rows,
        tiny_config,
    )

    base = make_tiny_base(tmp_path / "base")
    cat = ItemCatalog.from_table(pa.Table.from_pylist(item_rows(), schema=ITEM_CORPUS))
    table = pa.Table.from_pylist(sample_rows(), schema=KARMA_SAMPLES)
    train = table.filter(pc.equal(table["split"], "train"))
    config = tiny_config("act+gen+rec", max_steps=20, batch_size=7)
    model, tok, _, collate, ds = build(base, cat, train, config)
    before = evaluate_loss(model, ds, collate, batch_size=7)
    model, tok, state, _ = train_karma(config, base, train, cat, tmp_path / "ckpt")
    assert next(model.parameters()).device.type == "cuda"
    after = evaluate_loss(model, KarmaDataset(train, KarmaEncoder(tok, config, cat)), collate, batch_size=7)
    for term in ("loss", "loss_act", "loss_gen", "loss_rec"):
        assert after[term] < before[term], (term, before[term], after[term])
    histories = [row["history"] for row in train.to_pylist()]
    encoder = KarmaEncoder(tok, config, cat)
    on_gpu = embed_histories(model, encoder, histories)
    save_karma(model, tok, tmp_path / "model", {"name": "karma"})
    cpu_model, cpu_tok = load_karma(tmp_path / "model", device="cpu")
    on_cpu = embed_histories(cpu_model, KarmaEncoder(cpu_tok, config, cat), histories)
    assert torch.allclose(torch.from_numpy(on_gpu), torch.from_numpy(on_cpu), atol=2e-3), abs(on_gpu - on_cpu).max()


def test_aigq_sft_on_the_gpu_then_generation_on_the_gpu_matches_the_cpu_logits(tmp_path):
    from aigq_model.generate import Decoding, generate_lists
    from aigq_model.load import load_aigq, save_aigq
    from aigq_model.train_sft import SFTConfig, train_sft
    from tests.test_aigq_sft import TINY_SFT, make_rows
    from tests.test_base_lm import make_tiny_base

    base = make_tiny_base(tmp_path / "base", max_position_embeddings=512)
    config = SFTConfig(max_steps=150, **TINY_SFT)
    model, tok, _, metrics = train_sft(config, base, make_rows(32), tmp_path / "ckpt", make_rows(8, seed=1))
    assert metrics["train_eval_loss"] < metrics["train_eval_loss_before"] - 0.5
    save_aigq(model, tok, tmp_path / "model")
    gpu_model, gpu_tok = load_aigq(tmp_path / "model", device="cuda")
    cpu_model, _ = load_aigq(tmp_path / "model", device="cpu")
    rows = make_rows(6, seed=3)
    ids = torch.tensor([gpu_tok("<q> organic", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        a = gpu_model(input_ids=ids.cuda()).logits.float().cpu()
        b = cpu_model(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), (a - b).abs().max()
    # bf16 weights on the GPU, as the export loads them: batched generation still parses into lists.
    bf16_model, _ = load_aigq(tmp_path / "model", device="cuda", dtype=torch.bfloat16)
    out = generate_lists(bf16_model, gpu_tok, rows, k=10, batch_size=6, decoding=Decoding(max_new_tokens=24),
                         cold_start="model")
    assert len(out) == 6
    assert any(r.n_model > 0 for r in out)


def test_attention_diagnostics_switch_to_eager_on_the_gpu(tmp_path):
    from karma_model.data import KarmaEncoder, collate_histories
    from karma_model.evaluate import use_eager_attention
    from karma_model.model import KarmaModel
    from tests.test_karma_model import (
        ITEM_CORPUS,
        ItemCatalog,
        item_rows,
        make_tiny_base,
        pa,
        sample_rows,
        tiny_config,
    )

    base = make_tiny_base(tmp_path / "base")
    config = tiny_config()
    model, tok = KarmaModel.from_base(base, config, device="cuda")
    # sdpa for training and retrieval; eager only where attention maps are read
    assert model.backbone.config._attn_implementation == "sdpa"
    cat = ItemCatalog.from_table(pa.Table.from_pylist(item_rows(), schema=ITEM_CORPUS))
    encoder = KarmaEncoder(tok, config, cat)
    batch = {k: v.cuda() for k, v in collate_histories(encoder, [r["history"] for r in sample_rows(2)]).items()}
    use_eager_attention(model)
    assert model.backbone.config._attn_implementation == "eager"
    with torch.no_grad():
        attn = model.history_attentions(**batch)
    assert attn[0].is_cuda
    rows = attn[0].sum(-1)  # (B, heads, L): each real query position's weights sum to 1
    real = batch["attention_mask"].bool()[:, None, :].expand_as(rows)
    assert torch.allclose(rows[real], torch.ones_like(rows[real]), atol=1e-3)
