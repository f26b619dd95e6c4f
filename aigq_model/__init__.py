"""AIGQ: LLM-generated personalised pre-search queries (prompts, targets, parsing, baselines, metrics).

- ``prompts``: compressed / verbose prompts, special tokens and their embedding initialisation.
- ``targets``: Direct / Think / plain-SFT target text and prompt-masked SFT tokenisation.
- ``parsing``: never-raising parsers of generated text, serving-side cleaning and fallback.
- ``baselines``: popularity, co-occurrence, EBR (MiniLM) and own-history baselines, leakage-free.
- ``evaluate``: Query / Category HR@K, semantic similarity, diversity, per user group.
"""

from common.hf_offline import offline_defaults

# Before any module of this package imports transformers (huggingface_hub reads these at import).
offline_defaults()
