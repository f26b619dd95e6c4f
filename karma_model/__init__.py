"""KARMA: LLM next-interest embedding for item retrieval (model, training, evaluation, index)."""

from common.hf_offline import offline_defaults

# Before any module of this package imports transformers (huggingface_hub reads these at import).
offline_defaults()
