"""KARMA: LLM next-interest embedding for item retrieval (model, training, evaluation, index)."""
