"""Save and load an AIGQ policy folder: an HF causal LM (safetensors) with the pipeline's tokenizer.

IL-SFT (:mod:`aigq_model.train_sft`) and IL-GRPO (:mod:`aigq_model.grpo`) write with
:func:`save_aigq`; evaluation, GRPO and the export read with :func:`load_aigq`. Importing this
module stays light (transformers loads on the first :func:`load_aigq`).
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM

from base_lm.load import make_readable
from base_lm.tokenizer import load_tokenizer, save_tokenizer


def load_aigq(path: str | Path, attn_implementation: str = "sdpa", dtype=None, device=None):
    """``(model in eval mode, tokenizer)`` from a folder written by :func:`save_aigq`."""
    kwargs = {"attn_implementation": attn_implementation, "local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    tokenizer = load_tokenizer(path)
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def save_aigq(model, tokenizer, out_dir: str | Path) -> Path:
    """Weights (safetensors), config and tokenizer into ``out_dir``, readable by other processes."""
    out_dir = Path(out_dir)
    model.config.use_cache = True
    model.save_pretrained(str(out_dir))
    save_tokenizer(tokenizer, out_dir)
    make_readable(out_dir)
    return out_dir
