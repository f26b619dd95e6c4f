"""KARMA: each loss against a hand computation, the causal/padding/gradient properties, training,
checkpoint resume, save/load and the entry point, all on a tiny randomly initialised Qwen2."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
import torch.nn.functional as F

from common.schemas import ITEM_CORPUS, KARMA_SAMPLES
from common.training import evaluate_loss, train_loop
from karma_model.config import VARIANTS, KarmaConfig, variant_weights
from karma_model.data import (
    ItemCatalog,
    KarmaCollator,
    KarmaDataset,
    KarmaEncoder,
    collate_histories,
    collate_items,
)
from karma_model.load import load_karma, save_karma
from karma_model.losses import image_regression_loss, info_nce_loss
from karma_model.model import (
    KarmaModel,
    embed_histories,
    embed_items,
    position_ids_from_mask,
)
from karma_model.train import loop_args, train_karma
from tests.test_base_lm import corpus_texts, make_tiny_base

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models: one thread is faster

IMAGE_DIM = 4
N_ITEMS = 12
T0 = dt.datetime(2026, 11, 3, 8, tzinfo=dt.UTC)


def item_rows() -> list[dict]:
    rng = np.random.default_rng(0)
    texts = corpus_texts()[::2][:N_ITEMS]
    return [
        {
            "item_id": f"i{i:02d}",
            "text": t,
            "title": t.split(" | ")[0],
            "leaf_category": None,
            "brand": None,
            # the last item has no image: the image paths must cope with gaps
            "image_embedding": None
            if i == N_ITEMS - 1
            else rng.standard_normal(IMAGE_DIM).astype(float).tolist(),
        }
        for i, t in enumerate(texts)
    ]


def sample_rows(n: int = 8) -> list[dict]:
    items = item_rows()
    out = []
    for s in range(n):
        hist = [
            {
                "event_time": T0,
                "event_type": "search",
                "time_bucket": "1d_ago",
                "text": "organic chocolate",
                "item_id": None,
                "category": None,
            }
        ]
        for k in range(1 + s % 3):
            it = items[(s + k) % N_ITEMS]
            hist.append(
                {
                    "event_time": T0,
                    "event_type": "click",
                    "time_bucket": "lt_1h",
                    "text": it["title"],
                    "item_id": it["item_id"],
                    "category": None,
                }
            )
        target = items[(s * 5 + 3) % N_ITEMS]["item_id"]
        negs = [items[(s * 5 + 4) % N_ITEMS]["item_id"], items[(s * 5 + 7) % N_ITEMS]["item_id"]]
        out.append(
            {
                "sample_id": f"s{s}",
                "user_id": f"u{s}",
                "event_time": T0,
                "target_item_id": target,
                "target_event_type": "click",
                "history": hist,
                "hard_negative_ids": negs,
                "split": "valid" if s == n - 1 else "train",
            }
        )
    return out


def tiny_config(variant: str = "act+gen+rec", use_images: bool = False, **kw) -> KarmaConfig:
    base = dict(
        variant=variant,
        use_images=use_images,
        proj_dim=16,
        n_rec_prefix=2,
        image_dim=IMAGE_DIM,
        max_history_tokens=96,
        max_item_tokens=24,
        max_target_tokens=12,
        max_text_tokens=12,
        batch_size=4,
        learning_rate=5e-3,
        warmup_steps=0,
        save_steps=0,
        temperature=0.1,
        gen_weight=0.7,
        rec_weight=0.3,
        img_weight=2.0,
    )
    return KarmaConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("karma") / "base")


@pytest.fixture(scope="module")
def catalog():
    return ItemCatalog.from_table(pa.Table.from_pylist(item_rows(), schema=ITEM_CORPUS))


@pytest.fixture(scope="module")
def samples():
    return pa.Table.from_pylist(sample_rows(), schema=KARMA_SAMPLES)


def build(base_dir, catalog, samples, config):
    model, tok = KarmaModel.from_base(base_dir, config)
    encoder = KarmaEncoder(tok, config, catalog)
    return model, tok, encoder, KarmaCollator(encoder), KarmaDataset(samples, encoder)


# --- config -----------------------------------------------------------------------------------------
def test_variant_weights_map():
    assert variant_weights("act", 0.5, 2.0) == {"lambda_gen": 0.0, "lambda_rec": 0.0}
    assert variant_weights("act+gen", 0.5, 2.0) == {"lambda_gen": 0.5, "lambda_rec": 0.0}
    assert variant_weights("act+rec", 0.5, 2.0) == {"lambda_gen": 0.0, "lambda_rec": 2.0}
    assert variant_weights("act+gen+rec", 0.5, 2.0) == {"lambda_gen": 0.5, "lambda_rec": 2.0}
    cfg = KarmaConfig(gen_weight=0.5, rec_weight=2.0)
    assert [(c.lambda_gen, c.lambda_rec) for c in map(cfg.with_variant, VARIANTS)] == [
        (0.0, 0.0),
        (0.5, 0.0),
        (0.0, 2.0),
        (0.5, 2.0),
    ]
    assert cfg.with_variant("act+rec", use_images=True).slug == "act_rec_img"
    with pytest.raises(ValueError):
        variant_weights("gen")
    for bad in ({"temperature": 0}, {"image_adapter": "conv"}, {"gen_weight": -1}, {"proj_dim": 0}):
        with pytest.raises(ValueError):
            KarmaConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        KarmaConfig.from_dict({"lamda_gen": 1})


# --- data -------------------------------------------------------------------------------------------
def test_history_serialisation_keeps_recent_whole_behaviours(base_dir, catalog):
    config = tiny_config(use_images=True, max_history_tokens=20, max_text_tokens=6)
    _, tok = KarmaModel.from_base(base_dir, config)
    enc = KarmaEncoder(tok, config, catalog)
    hist = sample_rows()[2]["history"]  # search, click, click, click
    ids, img_rows = enc.history(hist)
    assert ids[0] == tok.bos_token_id
    assert ids[-1] == enc.ids["<INTEREST>"]
    # by hand: <bucket><type>[<IMG>]text[:6] per behaviour; the longest suffix within 20 - <bos> - <INTEREST>
    sizes = [
        2 + (b["item_id"] is not None) + min(6, len(tok(b["text"], add_special_tokens=False)["input_ids"]))
        for b in hist
    ]
    kept = max(k for k in range(len(hist) + 1) if sum(sizes[len(hist) - k :]) <= 18)
    assert 0 < kept < len(hist)
    assert len(ids) == 2 + sum(sizes[len(hist) - kept :])
    assert ids[1] == enc.ids["<lt_1h>"]
    assert ids[2] == enc.ids["<click>"]
    assert ids[3] == enc.ids["<IMG>"]
    assert [catalog.item_ids[r] for r in img_rows] == [b["item_id"] for b in hist[len(hist) - kept :]]
    assert ids.count(enc.ids["<IMG>"]) == len(img_rows)
    assert enc.ids["<search>"] not in ids  # the oldest behaviour (the search) was dropped whole


def test_collator_dedups_candidates_and_masks_without_in_batch_negatives(base_dir, catalog, samples):
    _, _, enc, collate, ds = build(base_dir, catalog, samples, tiny_config())
    examples = [ds[i] for i in range(4)]
    batch = collate(examples)
    n_cand = batch["item_input_ids"].shape[0]
    rows = {ex.target_row for ex in examples} | {n for ex in examples for n in ex.negative_rows}
    assert n_cand == len(rows)
    assert (batch["item_input_ids"][:, -1] == enc.ids["<ITEM>"]).all()  # left-padded
    for b, ex in enumerate(examples):
        first_target = batch["gen_labels"][b, batch["interest_pos"][b] + 1]
        assert first_target == enc.target(ex.target_row)[0]  # <INTEREST> predicts the target's first token
        assert batch["history_input_ids"][b, batch["interest_pos"][b]] == enc.ids["<INTEREST>"]
    # the positive's column holds exactly that item
    for b, ex in enumerate(examples):
        col = batch["labels"][b]
        real = batch["item_input_ids"][col][batch["item_attention_mask"][col] == 1].tolist()
        assert real == enc.item(ex.target_row)[0]
    own = KarmaCollator(KarmaEncoder(enc.tokenizer, tiny_config(in_batch_negatives=False), catalog))(examples)
    assert own["candidate_mask"].sum(1).tolist() == [1 + len(ex.negative_rows) for ex in examples]


# --- losses against hand computations -------------------------------------------------------------
def test_info_nce_matches_the_formula():
    u = F.normalize(torch.tensor([[1.0, 0.0, 0.5], [0.2, 1.0, -0.3]]), dim=-1)
    items = F.normalize(torch.tensor([[1.0, 0.1, 0.4], [0.0, 1.0, 0.0], [-0.5, 0.9, -0.2]]), dim=-1)
    labels = torch.tensor([0, 2])
    tau = 0.1
    sims = (u @ items.T).tolist()

    def nll(row, pos, allowed):
        return -(sims[row][pos] / tau - math.log(sum(math.exp(sims[row][j] / tau) for j in allowed)))

    loss, _ = info_nce_loss(u, items, labels, tau)
    assert loss.item() == pytest.approx((nll(0, 0, [0, 1, 2]) + nll(1, 2, [0, 1, 2])) / 2, rel=1e-5)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    loss, _ = info_nce_loss(u, items, labels, tau, mask)
    assert loss.item() == pytest.approx((nll(0, 0, [0, 1]) + nll(1, 2, [1, 2])) / 2, rel=1e-5)


def test_gen_loss_is_cross_entropy_on_target_positions_only(base_dir, catalog, samples):
    model, _, enc, collate, ds = build(base_dir, catalog, samples, tiny_config("act+gen"))
    batch = collate([ds[i] for i in range(4)])
    with torch.no_grad():
        out = model(**batch)
        mask = batch["history_attention_mask"]
        logits = model.backbone(
            input_ids=batch["history_input_ids"],
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
        ).logits
    terms = []
    for b in range(4):
        pos = int(batch["interest_pos"][b])
        target = enc.target(ds[b].target_row)
        for k, token in enumerate(target):  # position pos + k predicts target[k]
            terms.append(-torch.log_softmax(logits[b, pos + k], -1)[token])
    assert out.loss_gen.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    assert out.loss_rec is None
    assert out.loss.item() == pytest.approx(        out.loss_act.item() + 0.7 * out.loss_gen.item(), rel=1e-6    )


def test_rec_and_image_losses_match_hand_computation(base_dir, catalog, samples):
    config = tiny_config("act+gen+rec", use_images=True, image_loss="cosine")
    model, _, enc, collate, ds = build(base_dir, catalog, samples, config)
    examples = [ds[i] for i in range(4)]
    batch = collate(examples)
    assert batch["history_images"].shape[0] == int((batch["history_input_ids"] == enc.ids["<IMG>"]).sum())
    with torch.no_grad():
        out = model(**batch)
        e_u = out.user_emb
        p = config.n_rec_prefix
        prefix = model.rec_proj(e_u).view(4, p, -1)
        rec_ids, rec_mask = batch["rec_input_ids"], batch["rec_attention_mask"]
        embeds = torch.cat([prefix, model.backbone.get_input_embeddings()(rec_ids)], 1)
        mask = torch.cat([torch.ones(4, p, dtype=torch.long), rec_mask], 1)
        logits = model.backbone(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids_from_mask(mask)
        ).logits
        terms = []
        for b, ex in enumerate(examples):
            seq = [enc.ids["<REC>"], *enc.target(ex.target_row)]
            assert rec_ids[b, : len(seq)].tolist() == seq
            for k in range(
                1, len(seq)
            ):  # prefix + <REC> + teacher-forced text; position p+k-1 predicts seq[k]
                terms.append(-torch.log_softmax(logits[b, p + k - 1], -1)[seq[k]])
        manual_rec = torch.stack(terms).mean().item()
        pred = model.image_head(e_u).numpy()
        manual_img = []
        for b, ex in enumerate(examples):
            if catalog.has_image[ex.target_row]:
                t = catalog.images[ex.target_row]
                manual_img.append(1 - pred[b] @ t / (np.linalg.norm(pred[b]) * np.linalg.norm(t)))
    assert out.loss_rec.item() == pytest.approx(manual_rec, rel=1e-5)
    assert out.loss_img.item() == pytest.approx(float(np.mean(manual_img)), rel=1e-5)
    total = out.loss_act + 0.7 * out.loss_gen + 0.3 * (out.loss_rec + 2.0 * out.loss_img)
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-6)
    # mse flavour, and rows without an image are ignored
    pred = torch.tensor([[1.0, 2.0], [5.0, 5.0]])
    target = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    assert image_regression_loss(pred, target, torch.tensor([True, False]), "mse").item() == pytest.approx(
        0.5
    )


# --- properties ----------------------------------------------------------------------------------------
def test_interest_token_cannot_see_the_generation_target(base_dir, catalog, samples):
    model, tok, _, collate, ds = build(base_dir, catalog, samples, tiny_config("act+gen"))
    batch = collate([ds[i] for i in range(4)])
    changed = {k: v.clone() for k, v in batch.items()}
    after = torch.zeros_like(batch["history_input_ids"], dtype=torch.bool)
    for b in range(4):
        after[b, int(batch["interest_pos"][b]) + 1 :] = True
    after &= batch["history_attention_mask"].bool()
    gen = torch.Generator().manual_seed(0)
    new = torch.randint(20, len(tok), batch["history_input_ids"].shape, generator=gen)
    changed["history_input_ids"][after] = new[after]
    changed["gen_labels"][after] = new[after]
    with torch.no_grad():
        a, b = model(**batch), model(**changed)
    assert torch.allclose(a.user_emb, b.user_emb, atol=1e-6)
    assert abs(a.loss_gen.item() - b.loss_gen.item()) > 1e-3  # the target did change


def test_left_padded_inference_equals_the_training_pass(base_dir, catalog, samples):
    config = tiny_config("act+gen", use_images=True)
    model, _, enc, collate, ds = build(base_dir, catalog, samples, config)
    rows = sample_rows()[:4]
    batch = collate([ds[i] for i in range(4)])
    with torch.no_grad():
        trained = model(**batch).user_emb
        inferred = model.encode_history(**collate_histories(enc, [r["history"] for r in rows]))
    assert torch.allclose(trained, inferred, atol=1e-5)
    assert torch.allclose(inferred.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert np.allclose(
        embed_histories(model, enc, [r["history"] for r in rows], batch_size=3), inferred.numpy(), atol=1e-5
    )


def test_reconstruction_loss_alone_reaches_the_interest_path(base_dir, catalog, samples):
    model, _, enc, collate, ds = build(base_dir, catalog, samples, tiny_config("act+rec"))
    batch = collate([ds[i] for i in range(4)])
    rows = sample_rows()[:4]
    hist = collate_histories(enc, [r["history"] for r in rows])
    rec = {k: batch[k] for k in ("rec_input_ids", "rec_attention_mask", "rec_labels")}
    q_proj = model.backbone.base_model.layers[0].self_attn.q_proj.weight

    def grads(detach: bool):
        model.zero_grad(set_to_none=True)
        e_u = model.encode_history(**hist)
        model.reconstruction_loss(e_u.detach() if detach else e_u, **rec).backward()
        return model.user_proj.weight.grad, q_proj.grad.clone(), model.item_proj.weight.grad

    w_u, q_full, w_i = grads(detach=False)
    assert w_u is not None
    assert w_u.abs().sum() > 0
    assert w_i is None  # the item tower plays no part in L_rec
    w_u_detached, q_detached, _ = grads(detach=True)
    assert w_u_detached is None
    assert not torch.allclose(q_full, q_detached)  # the backbone's history pass gets L_rec's gradient too


def test_image_soft_token_feeds_the_item_tower(base_dir, catalog, samples):
    model, _, enc, _, _ = build(
        base_dir, catalog, samples, tiny_config("act", use_images=True, image_adapter="mlp")
    )
    batch = collate_items(enc, [0, 1, N_ITEMS - 1])
    assert batch["images"].shape == (2, IMAGE_DIM)  # the last item has no image
    e = model.encode_items(**batch)
    swapped = dict(batch, images=batch["images"].flip(0))
    e2 = model.encode_items(**swapped)
    assert not torch.allclose(e[:2], e2[:2], atol=1e-4)
    assert torch.allclose(e[2], e2[2], atol=1e-6)
    e.sum().backward()
    assert model.image_adapter[0].weight.grad.abs().sum() > 0
    assert model.rec_proj is None
    assert model.image_head is None  # ``act`` has no train-only heads


# --- training -----------------------------------------------------------------------------------------
def test_training_lowers_each_loss(base_dir, catalog, samples, tmp_path):
    # full batch (7 train samples): every step sees the same data, so each term should fall steadily
    config = tiny_config("act+gen+rec", use_images=True, max_steps=20, batch_size=7)
    train = samples.filter(pc.equal(samples["split"], "train"))
    model, tok, _, collate, ds = build(base_dir, catalog, train, config)
    before = evaluate_loss(model, ds, collate, batch_size=7)
    model, tok, state, metrics = train_karma(
        config,
        base_dir,
        train,
        catalog,
        tmp_path / "ckpt",
        valid_samples=samples.filter(pc.equal(samples["split"], "valid")),
    )
    after = evaluate_loss(
        model, KarmaDataset(train, KarmaEncoder(tok, config, catalog)), collate, batch_size=7
    )
    assert state.global_step == 20
    assert len(state.log_history) == 20
    assert set(before) == {"loss", "loss_act", "loss_gen", "loss_rec", "loss_img"}
    for term in before:
        assert after[term] < before[term], (term, before[term], after[term])
    assert {"loss_act", "loss_gen", "loss_rec", "loss_img"} <= set(state.log_history[0])
    assert metrics["n_valid"] == 1
    assert "loss_rec" in metrics["valid"]


class CrashAfter:
    """A collator that fails on its ``n``-th call: a training run killed mid-way."""

    def __init__(self, collate, n):
        self.collate, self.n, self.calls = collate, n, 0

    def __call__(self, examples):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("simulated crash")
        return self.collate(examples)


def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(
    base_dir, catalog, samples, tmp_path
):
    config = tiny_config("act+gen+rec", max_steps=4, save_steps=2, batch_size=3)
    model, _, _, collate, ds = build(base_dir, catalog, samples, config)
    full = train_loop(model, ds, collate, loop_args(config, tmp_path / "full"))
    reference = [p.detach().clone() for p in model.parameters()]

    model, _, _, collate, ds = build(base_dir, catalog, samples, config)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_loop(model, ds, CrashAfter(collate, 4), loop_args(config, tmp_path / "run"))  # dies in step 4
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    assert not (tmp_path / "run" / "checkpoint-4").exists()
    model, _, _, collate, ds = build(base_dir, catalog, samples, config)
    resumed = train_loop(model, ds, collate, loop_args(config, tmp_path / "run"), resume_from_checkpoint=True)
    assert resumed.global_step == 4
    assert [e["step"] for e in resumed.log_history] == [1, 2, 3, 4]
    assert [e["loss"] for e in resumed.log_history] == pytest.approx(
        [e["loss"] for e in full.log_history], rel=1e-5
    )
    for p, q in zip(model.parameters(), reference, strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_save_and_load_give_identical_ids_and_embeddings(base_dir, catalog, samples, tmp_path):
    config = tiny_config("act+gen+rec", use_images=True)
    model, tok, enc, _, _ = build(base_dir, catalog, samples, config)
    with torch.no_grad():
        model.user_proj.weight.add_(0.01)  # differ from a fresh init
    save_karma(model, tok, tmp_path / "m", {"name": "test"})
    loaded, tok2 = load_karma(tmp_path / "m")
    assert loaded.config == config
    texts = [r["text"] for r in item_rows()] + ["<INTEREST><lt_1h><click>x"]
    assert (
        tok2(texts, add_special_tokens=False)["input_ids"]
        == tok(texts, add_special_tokens=False)["input_ids"]
    )
    enc2 = KarmaEncoder(tok2, loaded.config, catalog)
    histories = [r["history"] for r in sample_rows()]
    with torch.no_grad():
        assert np.array_equal(
            embed_histories(model, enc, histories), embed_histories(loaded, enc2, histories)
        )
        assert np.array_equal(embed_items(model, enc), embed_items(loaded, enc2))
        decoded = loaded.decode_interest(
            torch.from_numpy(embed_histories(loaded, enc2, histories[:2])), max_new_tokens=5
        )
    assert len(decoded) == 2
    assert all(len(d) <= 5 for d in decoded)
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["format"] == "karma"
    eager, _ = load_karma(tmp_path / "m", attn_implementation="eager")
    att = eager.history_attentions(**collate_histories(enc2, histories[:2]))
    assert len(att) == 2
    assert att[0].shape[:2] == (2, 4)


def test_train_entry_point_publishes_the_variant(base_dir, tmp_path, monkeypatch):
    from common.arrow_io import write_partition

    root = tmp_path / "data"
    write_partition(root, "samples", "item_corpus", "2026-11-03", item_rows())
    write_partition(root, "samples", "karma_samples", "2026-11-03", sample_rows())
    for key, value in {
        "BATCH_SIZE": 4,
        "PROJ_DIM": 16,
        "IMAGE_DIM": IMAGE_DIM,
        "MAX_HISTORY_TOKENS": 96,
        "MAX_ITEM_TOKENS": 24,
        "MAX_TARGET_TOKENS": 12,
        "SAVE_STEPS": 2,
    }.items():
        monkeypatch.setenv(f"PIPELINE__KARMA__{key}", str(value))
    from karma_model.train import main

    args = [
        "--ds",
        "2026-11-03",
        "--data-root",
        str(root),
        "--base-model",
        str(base_dir),
        "--max-steps",
        "3",
        "--variant",
        "act+rec",
        "--images",
    ]
    assert main(args) == 0
    out = root / "models" / "karma_act_rec_img" / "2026-11-03"
    assert (out / "_SUCCESS").is_file()
    assert (out / "backbone" / "model.safetensors").is_file()
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # checkpoints cleaned up
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["variant"] == "act+rec"
    assert manifest["use_images"]
    assert manifest["metrics"]["steps"] == 3
    assert manifest["ds_range"] == ["2026-10-28", "2026-11-03"]
    assert manifest["metrics"]["n_train"] == 7
    model, _ = load_karma(out)
    assert model.config.lambda_gen == 0
    assert model.image_adapter is not None


# --- MiniLM text features ------------------------------------------------------------------------------
def test_text_features_start_as_the_text_baseline_and_survive_save_and_load(base_dir, catalog, samples, tmp_path):
    """With ``text_features`` the PCA-initialised projection ranks items by MiniLM text similarity
    at step 0 (W_u, W_i zero); the text item tower ignores the item tokens; a save/load round trip
    gives the same embeddings."""
    from common.text_encoder import encode_texts

    config = tiny_config("act", text_features=True, text_decay=1.0, proj_dim=8)  # 8 < rank of 12 centred items
    model, tok, enc, collate, ds = build(base_dir, catalog, samples, config)
    model.init_text_projection(enc.item_vectors(range(len(catalog))).numpy())
    items = embed_items(model, enc)
    vectors = encode_texts(catalog.texts)
    centred = vectors - vectors.mean(axis=0)
    # the same geometry as the text vectors projected on their first 8 principal directions
    _, _, v = np.linalg.svd(centred, full_matrices=False)
    v = v[:8]
    expected = vectors @ v.T
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(np.abs(items @ items.T), np.abs(expected @ expected.T), atol=1e-4)
    one = [sample_rows()[0]["history"]]
    user = embed_histories(model, enc, one)[0]
    mean = np.mean([enc.text_vector(b["text"]) for b in one[0]], axis=0)
    projected = v @ mean / np.linalg.norm(v @ mean)
    assert np.allclose(np.abs(user), np.abs(projected), atol=1e-4)  # principal directions: up to sign
    # a training batch carries the vectors and the loss is finite
    batch = collate([ds[i] for i in range(4)])
    assert batch["history_text"].shape == (4, 384)
    assert batch["item_text"].shape[0] == batch["item_input_ids"].shape[0]
    assert torch.isfinite(model(**batch).loss)
    save_karma(model, tok, tmp_path / "m", {"name": "test"})
    loaded, tok2 = load_karma(tmp_path / "m")
    enc2 = KarmaEncoder(tok2, loaded.config, catalog)
    assert np.array_equal(embed_items(loaded, enc2), items)
    tower = tiny_config("act", text_features=True, item_tower="text")
    tmodel, _, tenc, _, _ = build(base_dir, catalog, samples, tower)
    b = collate_items(tenc, [0, 1])
    scrambled = {**b, "input_ids": torch.zeros_like(b["input_ids"])}
    with torch.no_grad():
        assert torch.equal(tmodel.encode_items(**b), tmodel.encode_items(**scrambled))
    with pytest.raises(ValueError, match="needs text_features"):
        tiny_config("act", item_tower="text")


def test_text_features_training_lowers_the_action_loss(base_dir, catalog, samples, tmp_path):
    config = tiny_config("act", text_features=True, max_steps=12)
    train = samples.filter(pc.equal(samples["split"], "train"))
    model, tok, state, metrics = train_karma(config, base_dir, train, catalog, tmp_path / "ckpt")
    first = state.log_history[0]["loss_act"]
    last = np.mean([e["loss_act"] for e in state.log_history[-3:]])
    assert last < first - 0.1, (first, last)


def test_item_id_embeddings_learn_what_the_text_cannot_tell_apart(base_dir, tmp_path):
    """Two items with the same text: only their ID embeddings can separate them. After training on
    histories that always precede one of them, KARMA ranks that one above its twin."""
    items = item_rows()
    twin = dict(items[3], item_id="twin")  # same text as i03, another id
    catalog2 = ItemCatalog.from_table(pa.Table.from_pylist([*items, twin], schema=ITEM_CORPUS))
    rows = sample_rows(24)
    for r in rows:
        r["target_item_id"], r["hard_negative_ids"], r["split"] = "i03", ["twin"], "train"
    train = pa.Table.from_pylist(rows, schema=KARMA_SAMPLES)
    config = tiny_config("act", item_id_buckets=64, max_steps=15, text_features=True)
    model, tok, state, _ = train_karma(config, base_dir, train, catalog2, tmp_path / "ckpt")
    enc = KarmaEncoder(tok, config, catalog2)
    assert enc.id_bucket("i03") != enc.id_bucket("twin")
    assert enc.id_bucket("i03") == KarmaEncoder(tok, config, catalog2).id_bucket("i03")  # stable
    items_emb = embed_items(model, enc)
    users = embed_histories(model, enc, [r["history"] for r in rows[:6]])
    scores = users @ items_emb.T
    row = catalog2.row
    assert (scores[:, row["i03"]] > scores[:, row["twin"]]).all()
    with torch.no_grad():  # without the ID term the two are the same item
        model.id_emb.weight.zero_()
    flat = embed_items(model, enc)
    assert np.allclose(flat[row["i03"]], flat[row["twin"]], atol=1e-6)


def test_early_stopping_keeps_the_best_weights_and_stops_after_the_patience(base_dir, catalog, samples, tmp_path):
    """A valid loss that rises after its second evaluation: training stops two evaluations later,
    before max_steps, with the weights of the best evaluation."""
    from common.training import EarlyStopping

    config = tiny_config("act", max_steps=50)
    model, _tok, enc, collate, ds = build(base_dir, catalog, samples, config)
    values = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    snapshots = {}

    def evaluate():
        snapshots[len(snapshots) + 1] = model.user_proj.weight.detach().clone()
        return next(values)

    stopper = EarlyStopping(evaluate, every=2, patience=2)
    state = train_loop(model, ds, collate, loop_args(config, tmp_path / "ckpt"), early_stopping=stopper)
    assert state.global_step == 8  # evaluations at steps 2, 4 (best), 6, 8: stop
    assert stopper.best_step == 4 and stopper.stopped_at == 8
    assert torch.equal(model.user_proj.weight, snapshots[2])
    assert not torch.equal(model.user_proj.weight, snapshots[4])
    assert [e.get("valid_loss") for e in state.log_history if "valid_loss" in e] == [3.0, 2.0, 2.5, 2.6]


def test_epochs_set_the_steps_and_early_stopping_needs_valid_samples(base_dir, catalog, samples, tmp_path):
    train = samples.filter(pc.equal(samples["split"], "train"))
    _m, _t, state, metrics = train_karma(tiny_config("act", epochs=2.0), base_dir, train, catalog, tmp_path / "a")
    assert metrics["max_steps"] == state.global_step == 2 * 7 // 4 + 1  # ceil(2 x 7 samples / batch 4)
    with pytest.raises(ValueError, match="needs valid samples"):
        train_karma(tiny_config("act", early_stopping_patience=1), base_dir, train, catalog, tmp_path / "b")
    _m, _t, state, metrics = train_karma(tiny_config("act", early_stopping_patience=1, eval_steps=1, max_steps=30),
                                         base_dir, train, catalog, tmp_path / "c", valid_samples=samples)
    assert metrics["early_stopping"]["best_step"] is not None
    assert len(metrics["early_stopping"]["valid_loss_act"]) >= 2
