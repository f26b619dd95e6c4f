"""Byte-level BPE tokenizer trained on the pipeline's own text, saved as a ``PreTrainedTokenizerFast``.

Reload trap (docs/pipeline.md, "Known traps of this stack"): a tokenizer saved next to a Qwen2
``config.json`` reloads through ``AutoTokenizer`` as ``Qwen2Tokenizer``, which may give different
ids without any error. Our folders are therefore always reloaded with :func:`load_tokenizer`
(``PreTrainedTokenizerFast``), which reads ``tokenizer.json`` exactly as it was written.

The tokenizer adds no template tokens (no automatic ``<bos>``/``<eos>``): callers add them
explicitly, so the same code works with checkpoints whose tokenizers have no ``<bos>`` (Qwen).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from base_lm import SPECIAL_TOKENS

logger = logging.getLogger(__name__)

NAMED_SPECIALS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4000,
    min_frequency: int = 2,
    extra_special_tokens: Sequence[str] = (),
):
    """Train a byte-level BPE on ``texts``; returns a ``PreTrainedTokenizerFast``.

    Byte-level means no text is ever out of vocabulary; ``<unk>`` exists only for checkpoints that
    expect one. Special tokens get the first ids (``<pad>`` = 0), in ``SPECIAL_TOKENS`` order, then
    ``extra_special_tokens``.
    """
    # lazy: Airflow tasks import this module (via base_lm.load) and never load transformers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([*SPECIAL_TOKENS, *extra_special_tokens]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    named = set(NAMED_SPECIALS.values())
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **NAMED_SPECIALS,
        extra_special_tokens=[t for t in specials if t not in named],
    )
    logger.info("trained byte-level BPE: %d tokens (%d special)", len(fast), len(specials))
    return fast


def add_special_tokens(tokenizer, tokens: Sequence[str]) -> list[str]:
    """Add ``tokens`` the tokenizer lacks as (extra) special tokens; returns the ones added.

    The model's embedding matrix must then grow: see :func:`base_lm.load.add_tokens_to_model`.
    """
    vocab = tokenizer.get_vocab()
    new = [t for t in dict.fromkeys(tokens) if t not in vocab]
    known = set(tokenizer.extra_special_tokens or [])
    # Tokens already in the vocabulary but not yet marked special still must never be split.
    mark = [t for t in dict.fromkeys(tokens) if t not in known]
    if mark:
        tokenizer.add_special_tokens({"extra_special_tokens": mark}, replace_extra_special_tokens=False)
    if new:
        logger.info("added %d special tokens: %s", len(new), new[:10])
    return new


def save_tokenizer(tokenizer, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def load_tokenizer(path: str | Path):
    """Reload a tokenizer this project saved (``tokenizer.json``), never through ``AutoTokenizer``."""
    # lazy: Airflow tasks import this module (via base_lm.load) and never load transformers
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
