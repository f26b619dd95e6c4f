"""Base language model shared by KARMA and AIGQ: a byte-level BPE tokenizer trained on the data's own
text, a tiny Qwen-architecture causal LM pre-trained on it, a loader for any local HF checkpoint
and the lookup of the newest published one (:mod:`base_lm.release`).

Heavy imports (torch, transformers, tokenizers) happen in the submodules, not here.
"""

from common.hf_offline import offline_defaults

# Before any module of this package imports transformers (huggingface_hub reads these at import).
offline_defaults()

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>", "<INTEREST>", "<ITEM>", "<IMG>", "<REC>")
#: Task tokens (beyond pad/bos/eos/unk) that every base model must know.
TASK_TOKENS = SPECIAL_TOKENS[4:]
