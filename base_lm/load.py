"""Load any local Hugging Face causal-LM checkpoint offline, with the task's special tokens.

``load_base_lm(path)`` works for the folders :mod:`base_lm.pretrain` writes and for any other local
checkpoint directory (e.g. a Qwen3 0.6B–32B): ``AutoModelForCausalLM`` plus its tokenizer, nothing
downloaded (``local_files_only``). Tokens the tokenizer lacks (``<INTEREST>``, ``<ITEM>``, ...) are
added, the embedding matrix grows if needed and each new row starts as the mean of the embeddings of
the sub-words of the token's name (``<lt_1h>`` → mean of "lt", " 1h" pieces).
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

from base_lm import TASK_TOKENS
from base_lm.tokenizer import add_special_tokens, load_tokenizer

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
#: ``manifest.json["format"]`` values written by this project; their tokenizers load via ``load_tokenizer``.
OWN_FORMATS = ("base_lm", "karma")


def read_manifest(path: str | Path) -> dict:
    file = Path(path) / MANIFEST_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def is_own_checkpoint(path: str | Path) -> bool:
    return read_manifest(path).get("format") in OWN_FORMATS


def write_manifest(path: str | Path, manifest: dict) -> Path:
    file = Path(path) / MANIFEST_FILE
    file.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return file


def make_readable(folder: str | Path) -> None:
    """safetensors writes its files 0600; models are shared with other processes, so open them up."""
    for file in Path(folder).rglob("*"):
        if file.is_file():
            file.chmod(0o644)


def code_version() -> str:
    """The repository's git commit (``+dirty`` when the tree has changes), or ``unknown``."""
    repo = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def load_base_lm(
    path: str | Path,
    attn_implementation: str = "sdpa",
    dtype=None,
    device=None,
    special_tokens: Sequence[str] = TASK_TOKENS,
):
    """Return ``(model, tokenizer)`` from a local checkpoint folder, offline.

    ``attn_implementation="eager"`` is needed when attention weights are wanted (with sdpa,
    ``outputs.attentions`` is None). ``dtype`` e.g. ``torch.bfloat16`` on GPUs.
    """
    # lazy: Airflow tasks import this module (karma_model.release) and never load transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {path}: not a Hugging Face checkpoint folder")
    if is_own_checkpoint(path):
        tokenizer = load_tokenizer(path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    kwargs = {"attn_implementation": attn_implementation, "local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    ensure_special_tokens(model, tokenizer, special_tokens)
    if device is not None:
        model.to(device)
    logger.info(
        "loaded %s (%s, %d tokens, attn=%s)", path, type(model).__name__, len(tokenizer), attn_implementation
    )
    return model, tokenizer


def ensure_special_tokens(model, tokenizer, tokens: Sequence[str] = TASK_TOKENS) -> list[str]:
    """Give the tokenizer an eos and a pad token and ``tokens``; grow the model to match."""
    wanted = list(tokens)
    if tokenizer.eos_token is None:
        tokenizer.eos_token = "<eos>"
        wanted.append("<eos>")
    if tokenizer.pad_token is None:
        # Padding is always masked by attention_mask, so sharing the eos id is harmless.
        tokenizer.pad_token = tokenizer.eos_token
    return add_tokens_to_model(model, tokenizer, wanted)


def add_tokens_to_model(model, tokenizer, tokens: Sequence[str]) -> list[str]:
    """Add ``tokens`` to the tokenizer and the model (mean-of-sub-words init); returns those added."""
    # lazy: Airflow tasks import this module (karma_model.release) and never load torch
    import torch

    vocab_before = tokenizer.get_vocab()
    added = add_special_tokens(tokenizer, tokens)
    missing = [t for t in dict.fromkeys(tokens) if t in added or t not in vocab_before]
    if not missing:
        return []
    ids = tokenizer.convert_tokens_to_ids(missing)
    in_emb = model.get_input_embeddings()
    if max(ids) >= in_emb.weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        in_emb = model.get_input_embeddings()
    out_emb = model.get_output_embeddings()
    tied = out_emb is None or out_emb.weight.data_ptr() == in_emb.weight.data_ptr()
    special_ids = set(tokenizer.all_special_ids)
    n_old = min(ids)  # every id below the first new one is an old, trained row
    with torch.no_grad():
        for tok, idx in zip(missing, ids, strict=True):
            name = tok.strip("<>[]|").replace("_", " ").strip() or tok
            pieces = [
                i for i in tokenizer(name, add_special_tokens=False)["input_ids"] if i not in special_ids
            ]
            for emb in (in_emb,) if tied else (in_emb, out_emb):
                weight = emb.weight
                base = weight[pieces] if pieces else weight[:n_old]
                weight[idx] = base.mean(dim=0)
    logger.info("model grew by %d tokens (%s)", len(missing), missing[:10])
    return missing
