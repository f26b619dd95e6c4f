"""AIGQ supervision targets as text, and tokenisation with the prompt masked out of the loss.

Formats (parsed back by ``aigq_model.parsing``; eos is appended as a token id, never as text):

- **Direct** (IL-SFT): the ordered query list, each query after a ``<q>`` marker:
  ``<q> red shoe<q> running shoe<q> trainers``. List order = interest strength.
- **Think**: interest points in order of their strongest query; each is a block with the
  trigger indices (1-based, as numbered in the prompt window) and a rationale, then its queries:
  ``<think>[1,3] searched red shoe; clicked nike trainers</think><q> red shoe<q> trainers``.
  Targets are grouped by identical trigger sets; queries without triggers (inside the window)
  form the ``[]`` "new interest" point. The rationale comes from ``template_rationale`` unless a
  teacher is plugged in through ``rationale_fn(trigger_behaviours, queries) -> str``.
- **Plain SFT** (ablation): ``explode_plain_sft`` turns one sample into one sample per query
  (order no longer supervised); its target is the Direct format of a single query.

Target queries are normalised with ``parsing.normalize_query`` and de-duplicated, so the
parser's output equals the target exactly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence

from aigq_model.parsing import Q_MARK, THINK_CLOSE, THINK_OPEN, ThinkPoint, normalize_query
from aigq_model.prompts import (
    DEFAULT_MAX_HISTORY,
    build_prompt,
    clean_text,
    display_index,
    history_window,
    sample_field,
)

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
EVENT_VERBS = {"search": "searched", "click": "clicked", "cart": "carted", "buy": "bought"}
_STRENGTH = {"search": 0, "click": 1, "cart": 2, "buy": 3}
NEW_INTEREST = "new interest"
_UNSAFE_RE = re.compile(r"[<>\[\]]")
_WS = re.compile(r"\s+")

RationaleFn = Callable[[Sequence[Mapping], Sequence[str]], str]


def clean_target_query(query: object) -> str:
    """A target query in output form (normalised, no ``<``/``>`` that could forge a marker)."""
    return normalize_query(_UNSAFE_RE.sub(" ", query)) if isinstance(query, str) else ""


def _unique_queries(queries: Sequence[object], max_queries: int | None = None) -> list[str]:
    out = list(dict.fromkeys(q for q in (clean_target_query(x) for x in queries or []) if q))
    return out if max_queries is None else out[:max_queries]


def direct_target(queries: Sequence[str], max_queries: int | None = None) -> str:
    """``<q> a<q> b``: the ordered, normalised, de-duplicated query list.

    >>> direct_target(["Red Shoe", "red shoe", "trainers"])
    '<q> red shoe<q> trainers'
    """
    return "".join(f"{Q_MARK} {q}" for q in _unique_queries(queries, max_queries))


def template_rationale(behaviours: Sequence[Mapping], queries: Sequence[str] = (), max_items: int = 2) -> str:
    """Template rationale from the trigger behaviours' text: one phrase per distinct text, with
    the strongest action on it (bought > carted > clicked > searched), newest ``max_items``
    texts, oldest first. Short on purpose: the policy generates it before every query group.

    >>> template_rationale([{"event_type": "search", "text": "Red shoe"}, {"event_type": "click", "text": "Nike"}])
    'searched Red shoe; clicked Nike'
    >>> template_rationale([{"event_type": "click", "text": "Nike"}, {"event_type": "buy", "text": "Nike"}])
    'bought Nike'
    """
    if not behaviours:
        return NEW_INTEREST
    strongest: dict[str, tuple[int, int, str]] = {}  # text -> (strength, newest position, verb)
    for pos, b in enumerate(behaviours):
        text = clean_text(_UNSAFE_RE.sub(" ", str(b.get("text") or "")), max_words=5, max_chars=40)
        etype = b.get("event_type") or ""
        strength = _STRENGTH.get(etype, -1)
        verb = EVENT_VERBS.get(etype, "viewed")
        old = strongest.get(text)
        if old is not None and old[0] > strength:
            strength, verb = old[0], old[2]
        strongest[text] = (strength, pos, verb)
    newest = sorted(strongest.items(), key=lambda kv: kv[1][1])[-max_items:]
    return "; ".join(f"{verb} {text}".strip() for text, (_s, _p, verb) in newest)


def think_points(
    sample,
    max_history: int = DEFAULT_MAX_HISTORY,
    rationale_fn: RationaleFn = template_rationale,
    max_queries: int | None = None,
) -> list[ThinkPoint]:
    """Interest points of an ``aigq_think_sft`` row: targets grouped by identical trigger sets
    (schema indices mapped into the prompt window; triggers outside it are dropped)."""
    shown, offset = history_window(sample_field(sample, "history"), max_history)
    groups: dict[tuple[int, ...], list[str]] = {}
    seen: set[str] = set()
    for t in sample_field(sample, "targets") or []:
        q = clean_target_query(t.get("query"))
        if not q or q in seen:
            continue
        seen.add(q)
        idx = (display_index(i, offset, len(shown)) for i in (t.get("triggers") or []) if i is not None)
        key = tuple(sorted({i for i in idx if i is not None}))
        groups.setdefault(key, []).append(q)
        if max_queries is not None and len(seen) >= max_queries:
            break
    points = []
    for key, queries in groups.items():
        rationale = _WS.sub(" ", _UNSAFE_RE.sub(" ", rationale_fn([shown[i - 1] for i in key], queries))).strip()
        points.append(ThinkPoint(key, rationale or NEW_INTEREST, tuple(queries)))
    return points



def serialize_think(points: Sequence[ThinkPoint]) -> str:
    """``<think>[1,3] rationale</think><q> a<q> b`` for each point, concatenated."""
    return "".join(
        f"{THINK_OPEN}[{','.join(str(i) for i in p.triggers)}] {p.rationale}{THINK_CLOSE}"
        + "".join(f"{Q_MARK} {q}" for q in p.queries)
        for p in points
    )


def think_target(
    sample,
    max_history: int = DEFAULT_MAX_HISTORY,
    rationale_fn: RationaleFn = template_rationale,
    max_queries: int | None = None,
) -> str:
    return serialize_think(think_points(sample, max_history, rationale_fn, max_queries))


def explode_plain_sft(sample: Mapping) -> list[dict]:
    """One copy of a Direct sample per target query (``sample_id`` suffixed ``#j``)."""
    out = []
    for j, q in enumerate(_unique_queries(sample.get("target_queries"))):
        row = dict(sample)
        row["sample_id"] = f"{sample.get('sample_id')}#{j}"
        row["target_queries"] = [q]
        out.append(row)
    return out


TARGET_KINDS = ("direct", "think", "plain")


def sft_text_pair(
    sample,
    kind: str = "direct",
    style: str = "compressed",
    max_history: int = DEFAULT_MAX_HISTORY,
    max_queries: int | None = None,
) -> tuple[str, str]:
    """``(prompt, target)`` of one sample: ``direct`` and ``plain`` read ``target_queries``
    (``plain`` rows come from ``explode_plain_sft``), ``think`` reads ``targets``."""
    if kind not in TARGET_KINDS:
        raise ValueError(f"kind must be one of {TARGET_KINDS}, got {kind!r}")
    prompt = build_prompt(sample, style=style, max_history=max_history)
    if kind == "think":
        return prompt, think_target(sample, max_history, max_queries=max_queries)
    queries = sample_field(sample, "target_queries") or []
    return prompt, direct_target(queries[:1] if kind == "plain" else queries, max_queries)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt ids exactly as training saw them: ``tokenizer(prompt)`` (its own template tokens)
    with ``bos_token_id`` put first when the tokenizer has one and did not add it (tokenizers
    like ``base_lm``'s add no template; pretraining texts started with ``<bos>``). Generation
    must encode prompts with this function too."""
    ids = list(tokenizer(prompt)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


def tokenize_sft_example(tokenizer, prompt: str, target: str, max_len: int) -> dict[str, list[int]]:
    """``input_ids`` = prompt + target + eos, ``labels`` = -100 on the prompt positions.

    The prompt is encoded by ``encode_prompt``, the target without special tokens, then
    ``eos_token_id``. When too long, the target keeps at most
    ``max_len - min(len(prompt), max_len // 2)`` tokens and the prompt is cut from the left
    (oldest behaviours go first; a cut prompt loses its bos).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; set one before building SFT examples")
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    p = encode_prompt(tokenizer, prompt)
    t = list(tokenizer(target, add_special_tokens=False)["input_ids"]) + [eos]
    if len(p) + len(t) > max_len:
        logger.debug("truncating example: prompt %d + target %d > %d", len(p), len(t), max_len)
        t = t[: max_len - min(len(p), max_len // 2)]
        p = p[len(p) - (max_len - len(t)) :] if max_len > len(t) else []
    return {
        "input_ids": p + t,
        "attention_mask": [1] * (len(p) + len(t)),
        "labels": [IGNORE_INDEX] * len(p) + t,
    }
