"""Save and load a trained KARMA model folder: ``backbone/`` (HF causal LM, safetensors),
``heads.safetensors``, ``karma_config.json``, the tokenizer and ``manifest.json``.

Training (:mod:`karma_model.train`) writes with :func:`save_karma`; evaluation, embedding and the
export read with :func:`load_karma`.
"""

from __future__ import annotations

from pathlib import Path

from base_lm.load import make_readable, write_manifest
from karma_model.model import KarmaModel


def save_karma(model: KarmaModel, tokenizer, out_dir: str | Path, manifest: dict) -> Path:
    """Weights, heads, config, tokenizer and ``manifest.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, tokenizer)
    write_manifest(out_dir, {"format": "karma", **manifest})
    make_readable(out_dir)
    return out_dir


def load_karma(path: str | Path, attn_implementation: str = "sdpa", dtype=None, device=None):
    """``(KarmaModel in eval mode, tokenizer)`` from a folder written by :func:`save_karma`.

    ``attn_implementation="eager"`` for attention diagnostics.
    """
    return KarmaModel.from_pretrained(
        path, attn_implementation=attn_implementation, dtype=dtype, device=device
    )
