"""KarmaConfig: every KARMA model, loss and training setting in one validated dataclass.

The ablation variant decides which regularisers are on; ``gen_weight`` / ``rec_weight`` are their
strengths when on. ``lambda_gen`` / ``lambda_rec`` are the effective weights in
``L = L_act + lambda_gen * L_gen + lambda_rec * (L_rec + img_weight * L_img)``:

>>> KarmaConfig(variant="act+rec", gen_weight=0.5, rec_weight=2.0).loss_weights()
{'lambda_gen': 0.0, 'lambda_rec': 2.0}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

VARIANTS = ("act", "act+gen", "act+rec", "act+gen+rec")
IMAGE_ADAPTERS = ("linear", "mlp")
IMAGE_LOSSES = ("mse", "cosine")
ITEM_TOWERS = ("lm", "text")
CONFIG_FILE = "karma_config.json"


def variant_weights(variant: str, gen_weight: float = 1.0, rec_weight: float = 1.0) -> dict[str, float]:
    """Effective ``lambda_gen`` / ``lambda_rec`` of an ablation variant.

    >>> variant_weights("act+gen+rec", 0.5, 1.0)
    {'lambda_gen': 0.5, 'lambda_rec': 1.0}
    >>> variant_weights("act")
    {'lambda_gen': 0.0, 'lambda_rec': 0.0}
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    terms = set(variant.split("+"))
    return {
        "lambda_gen": gen_weight if "gen" in terms else 0.0,
        "lambda_rec": rec_weight if "rec" in terms else 0.0,
    }


@dataclass
class KarmaConfig:
    """Model, loss and training settings (``karma:`` in conf/pipeline.yaml)."""

    # ablation and loss weights
    variant: str = "act+gen+rec"
    gen_weight: float = 0.5
    rec_weight: float = 0.5
    img_weight: float = 1.0  # image regression from e_u, inside the rec term
    temperature: float = 0.05  # InfoNCE tau, on cosine similarities
    in_batch_negatives: bool = True
    # model
    proj_dim: int = 64
    n_rec_prefix: int = 2  # soft prefix tokens decoded from e_u for L_rec
    use_images: bool = False
    image_dim: int = 16
    image_adapter: str = "linear"
    image_loss: str = "cosine"
    # pretrained text knowledge (MiniLM vectors of item and behaviour texts, karma_model.data)
    text_features: bool = False  # add a shared projection of the MiniLM vectors to e_u and e_i
    text_decay: float = 0.8  # recency decay of the history's mean text vector
    item_tower: str = "lm"  # lm: e_i reads the item text through the LM (+ text term); text: e_i = A t only
    item_id_buckets: int = 0  # > 0: learned item-ID embeddings (crc32(item_id) mod N buckets) added to e_i and,
    # pooled over the history's items, to e_u; 0: off
    # serialisation / truncation (tokens)
    history_len: int = 20  # most recent behaviours kept
    max_text_tokens: int = 24  # per behaviour text
    max_history_tokens: int = 256  # whole history incl. markers and <INTEREST>
    max_item_tokens: int = 48  # item tower text
    max_target_tokens: int = 32  # next item's text for L_gen / L_rec
    max_hard_negatives: int = 5
    # training
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 10
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_steps: int = 200
    epochs: float = 0.0  # > 0: train this many passes over the samples (replaces max_steps)
    early_stopping_patience: int = 0  # > 0: stop after N evaluations without a lower valid L_act; best kept
    eval_steps: int = 100  # steps between the early-stopping evaluations
    logging_steps: int = 10
    save_steps: int = 50
    save_total_limit: int = 2
    eval_batches: int = 8
    days: int = 7  # training samples: the days ending at ds
    seed: int = 0

    def __post_init__(self):
        variant_weights(self.variant)  # raises on unknown variants
        if min(self.gen_weight, self.rec_weight, self.img_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.image_adapter not in IMAGE_ADAPTERS:
            raise ValueError(f"image_adapter must be one of {IMAGE_ADAPTERS}")
        if self.image_loss not in IMAGE_LOSSES:
            raise ValueError(f"image_loss must be one of {IMAGE_LOSSES}")
        positive = (
            "proj_dim",
            "n_rec_prefix",
            "image_dim",
            "history_len",
            "max_text_tokens",
            "max_item_tokens",
            "max_target_tokens",
            "batch_size",
            "gradient_accumulation_steps",
            "max_steps",
            "logging_steps",
            "save_total_limit",
            "days",
        )
        bad = [name for name in positive if getattr(self, name) < 1]
        if bad:
            raise ValueError(f"must be >= 1: {bad}")
        if self.epochs < 0 or self.early_stopping_patience < 0 or self.eval_steps < 1:
            raise ValueError("epochs and early_stopping_patience must be >= 0, eval_steps >= 1")
        if self.item_id_buckets < 0:
            raise ValueError("item_id_buckets must be >= 0")
        if self.max_hard_negatives < 0 or self.save_steps < 0 or self.eval_batches < 0:
            raise ValueError("max_hard_negatives, save_steps and eval_batches must be >= 0")
        if self.max_history_tokens < self.max_text_tokens + 4:
            raise ValueError("max_history_tokens must hold at least one behaviour plus markers")
        if self.item_tower not in ITEM_TOWERS:
            raise ValueError(f"item_tower must be one of {ITEM_TOWERS}, got {self.item_tower!r}")
        if self.item_tower == "text" and not self.text_features:
            raise ValueError("item_tower 'text' needs text_features")
        if not 0 < self.text_decay <= 1:
            raise ValueError("text_decay must be in (0, 1]")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")

    def loss_weights(self) -> dict[str, float]:
        return variant_weights(self.variant, self.gen_weight, self.rec_weight)

    @property
    def lambda_gen(self) -> float:
        return self.loss_weights()["lambda_gen"]

    @property
    def lambda_rec(self) -> float:
        return self.loss_weights()["lambda_rec"]

    def with_variant(self, variant: str, use_images: bool | None = None) -> KarmaConfig:
        """A copy for another ablation (and, optionally, with/without images)."""
        images = self.use_images if use_images is None else use_images
        return dataclasses.replace(self, variant=variant, use_images=images)

    @property
    def slug(self) -> str:
        """File-system name of the ablation, e.g. ``act_gen_rec`` or ``act_img``."""
        return self.variant.replace("+", "_") + ("_img" if self.use_images else "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> KarmaConfig:
        data = dict(data or {})
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown karma settings: {sorted(unknown)}")
        return cls(**data)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> KarmaConfig:
        return cls.from_dict(json.loads((Path(folder) / CONFIG_FILE).read_text()))
