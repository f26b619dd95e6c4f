"""KARMA: a causal-LM backbone that emits a next-interest embedding, trained with an action loss
and two train-only knowledge regularisers (docs/method.md, "KARMA").

- ``e_u = normalize(W_u · h(<INTEREST>))`` — the hidden state at the ``<INTEREST>`` token after the
  serialised history (last-token pooling; left or right padding both handled).
- ``e_i = normalize(W_i · h(<ITEM>))`` — the same backbone reads ``[<IMG>] item text <ITEM>``.
- ``L_act``: InfoNCE over {positive} ∪ hard negatives ∪ in-batch items, cosine / ``temperature``.
- ``L_gen``: next-token loss of the next item's text placed after ``<INTEREST>`` in the same
  sequence (causal attention: ``<INTEREST>`` cannot see it), target tokens only.
- ``L_rec``: ``e_u`` → ``n_rec_prefix`` soft tokens → ``<REC>`` → next item's text, teacher-forced,
  next-token loss; with images, ``L_img`` regresses the next item's image vector from ``e_u``.
- ``L = L_act + λ_gen L_gen + λ_rec (L_rec + img_weight · L_img)``.

Under DDP (training, ``world > 1``) ``L_act``'s candidates are every rank's candidates: the item
embeddings are all-gathered with gradient (``torch.distributed.nn.functional.all_gather``), items
present on several ranks count once (by catalogue row, ``candidate_rows``), and each term is
re-weighted to its rank's share of the global mean (users, target tokens, image rows), so the mean
over ranks — what DDP's gradient averaging optimises — equals the single-process loss of the
whole global batch, value and gradient (see :func:`karma_model.losses.gather_candidates`).

Inference (:meth:`KarmaModel.encode_history`, :meth:`KarmaModel.encode_items`) uses only the
backbone, ``W_u``/``W_i`` and the image adapter, so its cost is the same for every variant.
``<IMG>`` tokens are placeholders whose input embeddings are replaced by ``image_adapter(vector)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.utils import ModelOutput

from base_lm.load import load_base_lm
from base_lm.tokenizer import load_tokenizer, save_tokenizer
from common.ddp import distributed_training, global_mean_scale
from common.text_encoder import MINILM_DIM
from karma_model.config import KarmaConfig
from karma_model.data import IGNORE, KARMA_TOKENS, KarmaEncoder, collate_histories, collate_items
from karma_model.losses import (
    gather_candidates,
    image_regression_loss,
    info_nce_loss,
    lm_target_count,
    shifted_lm_loss,
)

BACKBONE_DIR = "backbone"
HEADS_FILE = "heads.safetensors"


@dataclass
class KarmaOutput(ModelOutput):
    """Total loss, each term (None when off), and the embeddings of the batch."""

    loss: torch.Tensor | None = None
    loss_act: torch.Tensor | None = None
    loss_gen: torch.Tensor | None = None
    loss_rec: torch.Tensor | None = None
    loss_img: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (batch, n_candidates): cosine / temperature
    user_emb: torch.Tensor | None = None  # (batch, proj_dim)
    item_emb: torch.Tensor | None = None  # (n_candidates, proj_dim)


# --- pure pieces (pooling, positions, token ids; the losses: karma_model.losses) ----------------
def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each row's last real token, for left- or right-padded batches.

    ``hidden`` (batch, seq, h), ``attention_mask`` (batch, seq) → (batch, h).
    """
    if bool(attention_mask[:, -1].all()):  # left padding (or none): the last column is real
        return hidden[:, -1]
    last = attention_mask.long().sum(dim=1) - 1  # (batch,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over real tokens, so left- and right-padded rows get the same positions."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def token_ids_of(tokenizer) -> dict[str, int]:
    """Ids of the KARMA tokens and of ``<eos>`` (whatever the tokenizer calls it)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in KARMA_TOKENS}
    ids["<eos>"] = tokenizer.eos_token_id
    return ids


# --- model -------------------------------------------------------------------------------------------
class KarmaModel(nn.Module):
    """Backbone causal LM + user/item projections + train-only reconstruction and image heads."""

    def __init__(self, backbone, config: KarmaConfig, token_ids: dict[str, int]):
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.token_ids = dict(token_ids)
        text_cfg = (
            backbone.config.get_text_config()
            if hasattr(backbone.config, "get_text_config")
            else backbone.config
        )
        hidden = text_cfg.hidden_size
        d = config.proj_dim
        self.user_proj = nn.Linear(hidden, d, bias=False)  # W_u
        self.item_proj = nn.Linear(hidden, d, bias=False)  # W_i
        # text_features: e = normalize(W h + A t), A shared by users and items (t: MiniLM vector)
        self.text_proj = nn.Linear(MINILM_DIM, d, bias=False) if config.text_features else None
        # item_id_buckets: e_i += E[bucket(i)], e_u += sum_j w_j E[bucket(h_j)]; zero at start
        self.id_emb = None
        if config.item_id_buckets:
            self.id_emb = nn.Embedding(config.item_id_buckets + 1, d, padding_idx=0)
            nn.init.zeros_(self.id_emb.weight)
        # Train-only heads exist only when their loss is on (an ``act`` checkpoint has none).
        self.rec_proj = nn.Linear(d, config.n_rec_prefix * hidden) if config.lambda_rec > 0 else None
        self.image_adapter = None
        self.image_head = None
        if config.use_images:
            if config.image_adapter == "mlp":
                self.image_adapter = nn.Sequential(
                    nn.Linear(config.image_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden)
                )
            else:
                self.image_adapter = nn.Linear(config.image_dim, hidden)
            if config.lambda_rec > 0:
                self.image_head = nn.Linear(d, config.image_dim)
        dtype = next(backbone.parameters()).dtype
        device = next(backbone.parameters()).device
        for module in (self.user_proj, self.item_proj, self.text_proj, self.id_emb, self.rec_proj,
                       self.image_adapter, self.image_head):
            if module is not None:
                module.to(device=device, dtype=dtype)

    @torch.no_grad()
    def init_text_projection(self, item_vectors: np.ndarray) -> None:
        """Start from the text baseline: ``A`` = the catalogue's first ``proj_dim`` principal
        directions of the MiniLM vectors, ``W_u`` and ``W_i`` zero, so step 0 ranks by (projected)
        text similarity and training learns what the LM adds."""
        if self.text_proj is None:
            raise RuntimeError("text_features is off")
        x = torch.as_tensor(np.asarray(item_vectors, dtype=np.float32))
        _, _, v = torch.linalg.svd(x - x.mean(dim=0), full_matrices=False)  # v: (min(n, 384), 384)
        d = self.text_proj.weight.shape[0]
        weight = torch.zeros_like(self.text_proj.weight)
        weight[: min(d, v.shape[0])] = v[:d].to(weight.dtype)
        self.text_proj.weight.copy_(weight)
        self.user_proj.weight.zero_()
        self.item_proj.weight.zero_()

    def _project(self, out: torch.Tensor | None, text: torch.Tensor | None, id_buckets: torch.Tensor | None,
                 id_weights: torch.Tensor | None = None) -> torch.Tensor:
        """``normalize(out + A t + ID term)``: the LM term ``out`` (None: none) plus the MiniLM text
        and item-ID terms that the config turns on (a batch lacking their inputs is an error)."""
        if self.text_proj is not None:
            if text is None:
                raise ValueError("text_features is on: the batch needs its MiniLM text vectors")
            term = self.text_proj(text.to(self.text_proj.weight.dtype))
            out = term if out is None else out + term
        if self.id_emb is not None:
            if id_buckets is None:
                raise ValueError("item_id_buckets is on: the batch needs its item-ID buckets")
            emb = self.id_emb(id_buckets)  # (N, d) items, (B, H, d) histories
            term = emb if id_weights is None else (emb * id_weights.unsqueeze(-1).to(emb.dtype)).sum(dim=1)
            out = term if out is None else out + term
        return F.normalize(out, dim=-1)

    # --- building and persistence ------------------------------------------------------------------
    @classmethod
    def from_base(
        cls,
        base_path: str | Path,
        config: KarmaConfig,
        attn_implementation: str = "sdpa",
        dtype=None,
        device=None,
    ):
        """``(KarmaModel, tokenizer)`` on top of any local causal-LM checkpoint (KARMA tokens added).

        Seeds torch with ``config.seed`` first, so the new heads start the same on every run.
        """
        torch.manual_seed(config.seed)
        backbone, tokenizer = load_base_lm(
            base_path,
            attn_implementation=attn_implementation,
            dtype=dtype,
            device=device,
            special_tokens=KARMA_TOKENS,
        )
        return cls(backbone, config, token_ids_of(tokenizer)), tokenizer

    def save_pretrained(self, out_dir: str | Path, tokenizer=None) -> Path:
        """``backbone/`` (HF folder), ``heads.safetensors``, ``karma_config.json`` (+ tokenizer)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(str(out_dir / BACKBONE_DIR))
        heads = {
            k: v.detach().contiguous().cpu()
            for k, v in self.state_dict().items()
            if not k.startswith("backbone.")
        }
        save_file(heads, str(out_dir / HEADS_FILE))
        self.config.save(out_dir)
        if tokenizer is not None:
            save_tokenizer(tokenizer, out_dir)
        return out_dir

    @classmethod
    def from_pretrained(cls, path: str | Path, attn_implementation: str = "sdpa", dtype=None, device=None):
        """Reload a folder written by :meth:`save_pretrained`; returns ``(model, tokenizer)``."""
        path = Path(path)
        config = KarmaConfig.load(path)
        tokenizer = load_tokenizer(path)
        kwargs = {"attn_implementation": attn_implementation, "local_files_only": True}
        if dtype is not None:
            kwargs["dtype"] = dtype
        backbone = AutoModelForCausalLM.from_pretrained(str(path / BACKBONE_DIR), **kwargs)
        model = cls(backbone, config, token_ids_of(tokenizer))
        heads = load_file(str(path / HEADS_FILE))
        missing, unexpected = model.load_state_dict(heads, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(f"{path / HEADS_FILE}: missing {missing}, unexpected {unexpected}")
        if device is not None:
            model.to(device)
        return model.eval(), tokenizer

    # --- backbone plumbing -------------------------------------------------------------------------
    def embed_tokens(self, input_ids: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings, ``<IMG>`` slots replaced by the image adapter's soft tokens (row-major)."""
        emb = self.backbone.get_input_embeddings()(input_ids)  # (B, L, h)
        if self.image_adapter is None or images is None:
            return emb
        slots = input_ids == self.token_ids["<IMG>"]  # (B, L)
        n_slots = int(slots.sum())
        if n_slots != images.shape[0]:
            raise ValueError(f"{n_slots} <IMG> slots but {images.shape[0]} image vectors")
        if n_slots == 0:
            return emb
        soft = self.image_adapter(images.to(emb.dtype))  # (n_slots, h)
        return emb.masked_scatter(slots.unsqueeze(-1), soft)

    def hidden_states(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, output_attentions: bool = False
    ):
        """The backbone's decoder stack (no LM head): ``BaseModelOutput`` with ``last_hidden_state``."""
        return self.backbone.base_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            output_attentions=output_attentions,
            use_cache=False,
        )

    @property
    def lm_head(self) -> nn.Module:
        return self.backbone.get_output_embeddings()

    # --- retrieval API -------------------------------------------------------------------------------
    def _history(self, input_ids, attention_mask, images=None, interest_pos=None, text=None, id_buckets=None,
                 id_weights=None):
        hidden = self.hidden_states(
            self.embed_tokens(input_ids, images), attention_mask
        ).last_hidden_state  # (B, L, h)
        if interest_pos is None:
            pooled = last_token_pool(hidden, attention_mask)  # (B, h)
        else:
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), interest_pos]  # (B, h)
        return self._project(self.user_proj(pooled), text, id_buckets, id_weights), hidden  # (B, d), (B, L, h)

    def encode_history(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        images: torch.Tensor | None = None,
        interest_pos: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        id_buckets: torch.Tensor | None = None,
        id_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-interest embeddings ``e_u`` (B, proj_dim), unit norm.

        Without ``interest_pos`` the ``<INTEREST>`` token must be each row's last real token;
        ``text`` (B, 384): the histories' mean MiniLM vectors (``text_features`` only);
        ``id_buckets`` / ``id_weights`` (B, H): the history items' ID buckets and weights
        (``item_id_buckets`` only).
        """
        return self._history(input_ids, attention_mask, images, interest_pos, text, id_buckets, id_weights)[0]

    def encode_items(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor | None = None,
        text: torch.Tensor | None = None, id_buckets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Item embeddings ``e_i`` (N, proj_dim), unit norm; each row ends with ``<ITEM>``;
        ``text`` (N, 384): the items' MiniLM vectors (``text_features`` only); ``id_buckets`` (N,)
        (``item_id_buckets`` only). With ``item_tower: text`` the LM does not read items."""
        if self.config.item_tower == "text":
            return self._project(None, text, id_buckets)
        hidden = self.hidden_states(
            self.embed_tokens(input_ids, images), attention_mask
        ).last_hidden_state  # (N, L, h)
        return self._project(self.item_proj(last_token_pool(hidden, attention_mask)), text, id_buckets)  # (N, d)

    @staticmethod
    def similarity(user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (B, N) of unit-norm embeddings."""
        return user_emb @ item_emb.T

    def history_attentions(self, input_ids, attention_mask, images=None, text=None, id_buckets=None,
                           id_weights=None) -> tuple[torch.Tensor, ...]:
        """Per-layer attention weights (B, heads, L, L) over the history (needs eager attention;
        ``text`` and the ID buckets are accepted, as history batches carry them, and unused)."""
        out = self.hidden_states(self.embed_tokens(input_ids, images), attention_mask, output_attentions=True)
        if out.attentions is None or any(a is None for a in out.attentions):
            raise RuntimeError("no attention weights: load the model with attn_implementation='eager'")
        return out.attentions

    # --- reconstruction (L_rec) --------------------------------------------------------------------
    def _rec_forward(self, user_emb, rec_input_ids, rec_attention_mask, rec_labels):
        if self.rec_proj is None:
            raise RuntimeError(f"variant {self.config.variant!r} has no reconstruction head")
        b, p = user_emb.shape[0], self.config.n_rec_prefix
        prefix = self.rec_proj(user_emb).view(b, p, -1)  # (B, P, h)
        embeds = torch.cat([prefix, self.embed_tokens(rec_input_ids)], dim=1)  # (B, P+T, h)
        ones = torch.ones((b, p), dtype=rec_attention_mask.dtype, device=rec_attention_mask.device)
        mask = torch.cat([ones, rec_attention_mask], dim=1)  # (B, P+T)
        labels = torch.cat(
            [torch.full((b, p), IGNORE, dtype=rec_labels.dtype, device=rec_labels.device), rec_labels], dim=1
        )  # (B, P+T)
        hidden = self.hidden_states(embeds, mask).last_hidden_state  # (B, P+T, h)
        return hidden, labels

    def reconstruction_loss(self, user_emb, rec_input_ids, rec_attention_mask, rec_labels) -> torch.Tensor:
        hidden, labels = self._rec_forward(user_emb, rec_input_ids, rec_attention_mask, rec_labels)
        return shifted_lm_loss(hidden, labels, self.lm_head)

    def reconstruction_logits(self, user_emb, rec_input_ids, rec_attention_mask, rec_labels):
        """Teacher-forced ``(logits (B, P+T, V), labels (B, P+T))`` of the text decoded from ``e_u``."""
        hidden, labels = self._rec_forward(user_emb, rec_input_ids, rec_attention_mask, rec_labels)
        return self.lm_head(hidden), labels

    @torch.no_grad()
    def decode_interest(self, user_emb: torch.Tensor, max_new_tokens: int = 32) -> list[list[int]]:
        """Greedy text (token ids, ``<eos>`` excluded) decoded from ``e_u`` alone via the rec prefix."""
        if self.rec_proj is None:
            raise RuntimeError(f"variant {self.config.variant!r} has no reconstruction head")
        b = user_emb.shape[0]
        eos = self.token_ids["<eos>"]
        prefix = self.rec_proj(user_emb).view(b, self.config.n_rec_prefix, -1)  # (B, P, h)
        rec = torch.full((b, 1), self.token_ids["<REC>"], dtype=torch.long, device=user_emb.device)
        embeds = torch.cat([prefix, self.embed_tokens(rec)], dim=1)
        out = torch.zeros((b, 0), dtype=torch.long, device=user_emb.device)
        done = torch.zeros(b, dtype=torch.bool, device=user_emb.device)
        for _ in range(max_new_tokens):  # no KV cache: short outputs, small models
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            hidden = self.hidden_states(embeds, mask).last_hidden_state[:, -1]  # (B, h)
            nxt = self.lm_head(hidden).argmax(-1)  # (B,)
            done |= nxt == eos
            out = torch.cat([out, torch.where(done, torch.full_like(nxt, -1), nxt)[:, None]], dim=1)
            if bool(done.all()):
                break
            embeds = torch.cat([embeds, self.embed_tokens(nxt[:, None])], dim=1)
        return [[t for t in row if t >= 0] for row in out.tolist()]

    # --- training forward -----------------------------------------------------------------------------
    def forward(
        self,
        history_input_ids: torch.Tensor,
        history_attention_mask: torch.Tensor,
        item_input_ids: torch.Tensor,
        item_attention_mask: torch.Tensor,
        labels: torch.Tensor,
        interest_pos: torch.Tensor | None = None,
        candidate_mask: torch.Tensor | None = None,
        candidate_rows: torch.Tensor | None = None,
        gen_labels: torch.Tensor | None = None,
        rec_input_ids: torch.Tensor | None = None,
        rec_attention_mask: torch.Tensor | None = None,
        rec_labels: torch.Tensor | None = None,
        history_images: torch.Tensor | None = None,
        item_images: torch.Tensor | None = None,
        image_targets: torch.Tensor | None = None,
        image_target_mask: torch.Tensor | None = None,
        history_text: torch.Tensor | None = None,
        item_text: torch.Tensor | None = None,
        history_id_buckets: torch.Tensor | None = None,
        history_id_weights: torch.Tensor | None = None,
        item_id_buckets: torch.Tensor | None = None,
    ) -> KarmaOutput:
        """All losses of one batch (the :class:`karma_model.data.KarmaCollator` layout).

        ``candidate_rows`` (U,): catalogue rows of the candidates, used under DDP only (cross-rank
        deduplication of the gathered candidates).
        """
        cfg = self.config
        ddp = self.training and distributed_training()  # cross-rank negatives and global means
        user_emb, hidden = self._history(
            history_input_ids, history_attention_mask, history_images, interest_pos, history_text,
            history_id_buckets, history_id_weights,
        )
        item_emb = self.encode_items(item_input_ids, item_attention_mask, item_images, item_text,
                                     item_id_buckets)  # (U, d)
        if ddp and candidate_mask is None:  # in-batch negatives: every rank's candidates
            item_emb, labels, candidate_mask = gather_candidates(item_emb, labels, candidate_rows)
        loss_act, logits = info_nce_loss(user_emb, item_emb, labels, cfg.temperature, candidate_mask)
        if ddp:
            loss_act = loss_act * global_mean_scale(labels.shape[0], user_emb.device)
        loss = loss_act
        loss_gen = loss_rec = loss_img = None
        if cfg.lambda_gen > 0 and gen_labels is not None:
            loss_gen = shifted_lm_loss(hidden, gen_labels, self.lm_head)
            if ddp:  # a mean over target tokens: weigh by this rank's share of them
                loss_gen = loss_gen * global_mean_scale(lm_target_count(gen_labels), user_emb.device)
            loss = loss + cfg.lambda_gen * loss_gen
        if cfg.lambda_rec > 0 and rec_input_ids is not None:
            loss_rec = self.reconstruction_loss(user_emb, rec_input_ids, rec_attention_mask, rec_labels)
            if ddp:  # the rec labels are preceded by the prefix, all IGNORE: every label counts
                n_rec = int((rec_labels != IGNORE).sum()) if cfg.n_rec_prefix else lm_target_count(rec_labels)
                loss_rec = loss_rec * global_mean_scale(n_rec, user_emb.device)
            loss = loss + cfg.lambda_rec * loss_rec
            if self.image_head is not None and image_targets is not None and image_target_mask is not None:
                pred = self.image_head(user_emb)  # (B, image_dim)
                loss_img = image_regression_loss(
                    pred, image_targets, image_target_mask.bool(), cfg.image_loss
                )
                if ddp:
                    loss_img = loss_img * global_mean_scale(int(image_target_mask.sum()), user_emb.device)
                loss = loss + cfg.lambda_rec * cfg.img_weight * loss_img
        return KarmaOutput(
            loss=loss,
            loss_act=loss_act,
            loss_gen=loss_gen,
            loss_rec=loss_rec,
            loss_img=loss_img,
            logits=logits,
            user_emb=user_emb,
            item_emb=item_emb,
        )


# --- batch inference helpers (evaluation, catalogue embedding, nightly export) -----------------------
def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_items(
    model: KarmaModel, encoder: KarmaEncoder, rows: Sequence[int] | None = None, batch_size: int = 128
) -> np.ndarray:
    """``e_i`` of catalogue rows (default: all, in ``encoder.catalog.item_ids`` order), float32 (N, d)."""
    model.eval()
    rows = list(range(len(encoder.catalog))) if rows is None else list(rows)
    out = np.zeros((len(rows), model.config.proj_dim), dtype=np.float32)
    for start in range(0, len(rows), batch_size):
        batch = {
            k: v.to(_device(model))
            for k, v in collate_items(encoder, rows[start : start + batch_size]).items()
        }
        out[start : start + batch_size] = model.encode_items(**batch).float().cpu().numpy()
    return out


@torch.no_grad()
def embed_histories(
    model: KarmaModel, encoder: KarmaEncoder, histories: Sequence[Sequence[dict]], batch_size: int = 64
) -> np.ndarray:
    """``e_u`` of histories (each a list of ``karma_samples.history`` structs), float32 (n, d)."""
    model.eval()
    out = np.zeros((len(histories), model.config.proj_dim), dtype=np.float32)
    for start in range(0, len(histories), batch_size):
        batch = collate_histories(encoder, histories[start : start + batch_size])
        batch = {k: v.to(_device(model)) for k, v in batch.items()}
        out[start : start + batch_size] = model.encode_history(**batch).float().cpu().numpy()
    return out
