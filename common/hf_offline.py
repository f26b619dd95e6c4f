"""Offline Hugging Face setup for every entry point that loads a model or tokenizer.

The pipeline's models are local folders; a task must never reach the Hub, start tokenizer thread
pools or print progress bars into task logs.
"""

from __future__ import annotations

import os


def offline_defaults() -> None:
    """Default ``HF_HUB_OFFLINE=1`` and ``TOKENIZERS_PARALLELISM=false`` (an operator's own value
    wins). huggingface_hub reads them once, at import: the model packages (``base_lm``,
    ``karma_model``, ``aigq_model``, ``export``) call this in their ``__init__``, which runs before
    any of their modules imports transformers, so a hand-run entry point is offline too."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet_offline_hf() -> None:
    """Entry points: never reach the Hub, no tokenizer thread pools, no progress bars in task logs."""
    offline_defaults()
    from transformers.utils import logging as hf_logging  # lazy: after the variables, read at import

    hf_logging.disable_progress_bar()
