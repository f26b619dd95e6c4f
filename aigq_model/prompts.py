"""AIGQ prompts: user profile + behaviour sequence, compressed with special tokens or verbose.

Compressed (the trained format)::

    <gender_female><age_25-29><level_high> city: Shanghai
    <1><2_3d_ago><search> red shoe
    <2><lt_1h><click> Nike air running shoe
    Recommend the next 10 queries.

Verbose (ablation: the same information in plain words, a longer instruction)::

    User profile: gender female | age 25-29 | purchase level high | city Shanghai
    Behaviour history, oldest first (index | time | action | content):
    1 | 2 to 3 days ago | search | red shoe
    ...

Behaviours are the last ``max_history`` of the sample's history (oldest first, as stored),
numbered 1..n inside that window; the Think target's trigger indices use the same numbering
(``history_window`` / ``display_index``). Small-vocabulary fields (index, time bucket,
behaviour type, gender, age bucket, purchase level) become special tokens; values outside the
known vocabulary are written as plain text, so any data set renders. A new token's embedding
starts as the mean of the sub-word embeddings of its readable name (``token_init_text``), the
words the verbose prompt uses for the same field.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import torch
from tokenizers import AddedToken

from aigq_model.parsing import TARGET_MARKERS

logger = logging.getLogger(__name__)

TIME_BUCKETS = ("lt_1h", "lt_1d", "1d_ago", "2_3d_ago", "4_7d_ago", "gt_7d_ago")
TIME_BUCKET_WORDS = {
    "lt_1h": "less than 1 hour ago",
    "lt_1d": "less than 1 day ago",
    "1d_ago": "1 day ago",
    "2_3d_ago": "2 to 3 days ago",
    "4_7d_ago": "4 to 7 days ago",
    "gt_7d_ago": "more than 7 days ago",
}
BEHAVIOUR_TYPES = ("search", "click", "cart", "buy")
BEHAVIOUR_WORDS = {"search": "search", "click": "click", "cart": "add to cart", "buy": "buy"}
#: Profile fields with a small vocabulary -> (token prefix, readable name, known values).
PROFILE_VOCAB: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "gender": ("gender", "gender", ("female", "male")),
    "age_bucket": ("age", "age", ("18-24", "25-29", "30-34", "35-39", "40-49", "50+")),
    "purchase_level": ("level", "purchase level", ("low", "medium", "high", "premium")),
}
TARGET_TOKEN_WORDS = {"<q>": "query", "<think>": "think", "</think>": "end think"}
DEFAULT_MAX_HISTORY = 20
DEFAULT_N_QUERIES = 10
MAX_TEXT_WORDS = 12
MAX_TEXT_CHARS = 80

_WS_RE = re.compile(r"\s+")


def instruction(n_queries: int = DEFAULT_N_QUERIES, style: str = "compressed") -> str:
    if style == "compressed":
        return f"Recommend the next {n_queries} queries."
    return (
        f"Based on the user's profile and behaviour history above, recommend the next {n_queries} search "
        "queries this user is most likely to issue, the strongest interest first, without duplicates."
    )


def _profile_token(field: str, value: str) -> str:
    return f"<{PROFILE_VOCAB[field][0]}_{value}>"


def compressed_special_tokens(max_history: int = DEFAULT_MAX_HISTORY) -> list[str]:
    """Every special token a compressed prompt can contain (indices ``<1>..<max_history>``)."""
    tokens = [f"<{i}>" for i in range(1, max_history + 1)]
    tokens += [f"<{b}>" for b in TIME_BUCKETS]
    tokens += [f"<{t}>" for t in BEHAVIOUR_TYPES]
    for field, (_, _, values) in PROFILE_VOCAB.items():
        tokens += [_profile_token(field, v) for v in values]
    return tokens


def all_special_tokens(max_history: int = DEFAULT_MAX_HISTORY) -> list[str]:
    """Prompt tokens plus the output markers ``<q>``, ``<think>``, ``</think>``."""
    return compressed_special_tokens(max_history) + list(TARGET_MARKERS)


def token_init_text(token: str) -> str:
    """The readable name whose sub-word embeddings initialise ``token``.

    >>> token_init_text("<1d_ago>"), token_init_text("<age_25-29>"), token_init_text("<7>")
    ('1 day ago', 'age 25-29', '7')
    """
    name = token.strip("<>")
    if token in TARGET_TOKEN_WORDS:
        return TARGET_TOKEN_WORDS[token]
    if name in TIME_BUCKET_WORDS:
        return TIME_BUCKET_WORDS[name]
    if name in BEHAVIOUR_WORDS:
        return BEHAVIOUR_WORDS[name]
    for prefix, words, _ in PROFILE_VOCAB.values():
        if name.startswith(prefix + "_"):
            return f"{words} {name[len(prefix) + 1:]}"
    return name.replace("_", " ")


def add_prompt_tokens(tokenizer, model=None, tokens: Sequence[str] | None = None) -> dict[str, int]:
    """Add ``tokens`` (default ``all_special_tokens()``) to a fast tokenizer and, when ``model``
    is given, grow its input (and untied output) embeddings; each new row is the mean of the rows
    of the sub-words of ``token_init_text(token)``, tokenised before the token is added.

    Tokens are added as ordinary (non-special) added tokens: they are matched atomically, and
    ``decode(skip_special_tokens=True)`` keeps the output markers the parser needs. Returns
    ``{token: id}`` for the tokens that were new.
    """
    tokens = list(all_special_tokens() if tokens is None else tokens)
    vocab = tokenizer.get_vocab()
    new = [t for t in dict.fromkeys(tokens) if t not in vocab]
    if not new:
        return {}
    sub_ids = {t: tokenizer(token_init_text(t), add_special_tokens=False)["input_ids"] for t in new}
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in new])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in new}
    if model is None:
        return ids
    inp = model.get_input_embeddings()
    # Some checkpoints pad the embedding matrix beyond the tokenizer: never shrink it.
    if max(ids.values()) >= inp.weight.shape[0]:
        model.resize_token_embeddings(max(len(tokenizer), inp.weight.shape[0]), mean_resizing=False)
        inp = model.get_input_embeddings()
    out = model.get_output_embeddings()
    untied = out is not None and out.weight.data_ptr() != inp.weight.data_ptr()
    with torch.no_grad():
        for t, new_id in ids.items():
            src = [i for i in sub_ids[t] if i < inp.weight.shape[0]]
            if not src:
                logger.warning("token %s: name has no sub-words; using the mean of all embeddings", t)
                src = list(range(min(ids.values())))
            inp.weight[new_id] = inp.weight[src].mean(dim=0)
            if untied:
                out.weight[new_id] = out.weight[src].mean(dim=0)
                if getattr(out, "bias", None) is not None:
                    out.bias[new_id] = out.bias[src].mean()
    logger.info("added %d prompt tokens (vocab now %d, untied head: %s)", len(ids), len(tokenizer), untied)
    return ids


# --- rendering ----------------------------------------------------------------------------
def clean_text(text: object, max_words: int = MAX_TEXT_WORDS, max_chars: int = MAX_TEXT_CHARS) -> str:
    """A behaviour's text shortened to one line; ``<``/``>`` removed so data cannot forge tokens."""
    if text is None:
        return ""
    s = _WS_RE.sub(" ", str(text).replace("<", " ").replace(">", " ")).strip()
    s = " ".join(s.split(" ")[:max_words])
    return s[:max_chars].rstrip()


def history_window(history: Sequence[Mapping] | None, max_history: int) -> tuple[list[Mapping], int]:
    """The behaviours shown in the prompt (the last ``max_history``) and the schema index of the
    first one, so that schema index ``i`` is shown as ``i - offset + 1``."""
    history = list(history or [])
    offset = max(0, len(history) - max_history)
    return history[offset:], offset


def display_index(schema_index: int, offset: int, n_shown: int) -> int | None:
    """1-based prompt index of a schema history index, or None when it is outside the window."""
    i = int(schema_index) - offset
    return i + 1 if 0 <= i < n_shown else None


def sample_field(sample, key):
    """A field of a sample given as a dict (a pyarrow row) or as an object with attributes."""
    return sample.get(key) if isinstance(sample, Mapping) else getattr(sample, key, None)


def _profile_line(sample, style: str) -> str:
    if style == "compressed":
        parts = []
        for field, (prefix, _, values) in PROFILE_VOCAB.items():
            v = sample_field(sample, field)
            if v is None or v == "":
                continue
            parts.append(_profile_token(field, v) if v in values else f"{prefix}: {clean_text(v)} ")
        line = "".join(parts).rstrip()
        city = clean_text(sample_field(sample, "city"))
        return (line + (f" city: {city}" if city else "")).strip()
    parts = []
    for field, (_, words, _) in PROFILE_VOCAB.items():
        v = clean_text(sample_field(sample, field))
        if v:
            parts.append(f"{words} {v}")
    city = clean_text(sample_field(sample, "city"))
    if city:
        parts.append(f"city {city}")
    return "User profile: " + (" | ".join(parts) if parts else "unknown")


def _behaviour_line(i: int, b: Mapping, style: str) -> str:
    bucket, etype = b.get("time_bucket") or "", b.get("event_type") or ""
    text = clean_text(b.get("text"))
    if style == "compressed":
        tb = f"<{bucket}>" if bucket in TIME_BUCKETS else f"{clean_text(bucket)} "
        et = f"<{etype}>" if etype in BEHAVIOUR_TYPES else f"{clean_text(etype)} "
        return _WS_RE.sub(" ", f"<{i}>{tb}{et} {text}").strip()
    when = TIME_BUCKET_WORDS.get(bucket, clean_text(bucket).replace("_", " "))
    action = BEHAVIOUR_WORDS.get(etype, clean_text(etype))
    return f"{i} | {when} | {action} | {text}"


def build_prompt(
    sample,
    style: str = "compressed",
    max_history: int = DEFAULT_MAX_HISTORY,
    n_queries: int = DEFAULT_N_QUERIES,
) -> str:
    """The prompt text for one AIGQ sample (a row of ``aigq_direct_sft``/``aigq_think_sft`` as a
    dict); it ends with a newline, and the target follows it directly.

    >>> build_prompt({"gender": "male", "history": [
    ...     {"time_bucket": "lt_1h", "event_type": "search", "text": "red shoe"}]})
    '<gender_male>\\n<1><lt_1h><search> red shoe\\nRecommend the next 10 queries.\\n'
    """
    if style not in ("compressed", "verbose"):
        raise ValueError(f"style must be 'compressed' or 'verbose', got {style!r}")
    shown, _ = history_window(sample_field(sample, "history"), max_history)
    lines = []
    profile = _profile_line(sample, style)
    if profile:
        lines.append(profile)
    if style == "verbose":
        lines.append(
            "Behaviour history, oldest first (index | time | action | content):" if shown
            else "Behaviour history: none."
        )
    lines += [_behaviour_line(i, b, style) for i, b in enumerate(shown, start=1)]
    lines.append(instruction(n_queries, style))
    return "\n".join(lines) + "\n"
