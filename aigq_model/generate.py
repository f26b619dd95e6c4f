"""Batched AIGQ generation: prompts -> ranked query lists, never failing on bad output.

``generate_lists(model, tok, samples, kind, k, batch_size, decoding)`` encodes each sample's
prompt exactly as training did (``targets.encode_prompt``), left-pads a batch, and calls
``model.generate`` with the KV cache on (greedy, sampling with temperature/top-k, or beam
search). Each output is decoded, parsed (``parse_direct``/``parse_think``, ``complete`` = the
sequence reached eos), cleaned (``postprocess``: normalisation, dedupe, length limits,
block-list) and topped up to ``k`` with the fallback (popularity) list. Cold-start users (no
history) get the fallback list without a model call unless ``cold_start="model"``.

One decoder with one switch of its own: ``Decoding.known_queries`` constrains every generated
query to the window's known queries (a prefix trie, :mod:`aigq_model.trie`), under any strategy;
off, the policy may write queries nobody searched yet. The model calls are in
:mod:`aigq_model.decode` (``generate_texts``, and ``next_queries`` of ``query_beam`` decoding).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aigq_model.decode import generate_texts, next_queries, token_id
from aigq_model.interests import merge_lists
from aigq_model.parsing import (
    Q_MARK,
    THINK_CLOSE,
    Blocklist,
    parse_direct,
    parse_think,
    postprocess,
    with_fallback,
)
from aigq_model.prompts import DEFAULT_MAX_HISTORY, build_prompt, sample_field
from aigq_model.targets import encode_prompt
from aigq_model.trie import QueryTrie

logger = logging.getLogger(__name__)

STRATEGIES = ("greedy", "sample", "beam", "query_beam")
#: A fallback: a fixed list, or ``sample -> list`` (e.g. popularity before the sample's time).
Fallback = Sequence[str] | Callable[[Mapping], Sequence[str]] | None


@dataclass
class Decoding:
    """Decoding settings (``aigq.generate`` in conf/pipeline.yaml, less batch size and block-list)."""

    strategy: str = "greedy"
    temperature: float = 1.0
    top_k: int = 50
    num_beams: int = 4
    max_new_tokens: int = 96
    #: Think outputs carry trigger lists and rationales (a third of the synthetic targets are
    #: over 96 tokens): their budget, used when it is larger than ``max_new_tokens``.
    max_new_tokens_think: int = 224
    max_prompt_tokens: int = 384
    seed: int | None = None
    #: Lists decoded per prompt (beams best first, or samples) and merged by ``merge_lists``:
    #: a model trained on short lists still fills K slots with its own queries.
    num_return_sequences: int = 1
    #: ``query_beam``: the longest query (tokens) a query-level beam may decode, and how many
    #: Think interest points are expanded.
    query_max_tokens: int = 16
    think_points: int = 4
    #: Forbid closing a query (``<q>`` or eos) that repeats an earlier query of the same sequence:
    #: small policies otherwise loop on their first query (``<q> a<q> a<q> a``).
    no_repeat_query: bool = False
    #: Constrained decoding (GENRE / TIGER style): every generated query is one of the window's
    #: known queries (a prefix trie of the log's searches before the samples, ``known_queries`` of
    #: ``generate_lists``); ``query_beam`` then ranks known queries by the policy's probability.
    #: False: the policy may also write queries nobody has searched (new wording, cold start).
    known_queries: bool = False

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.temperature <= 0 or self.top_k < 0 or self.num_beams < 1 or min(self.max_new_tokens, self.max_new_tokens_think) < 1:
            raise ValueError(
                "temperature must be > 0, top_k >= 0, num_beams >= 1, max_new_tokens(_think) >= 1"
            )
        if self.num_return_sequences < 1:
            raise ValueError("num_return_sequences must be >= 1")
        if min(self.query_max_tokens, self.think_points) < 1:
            raise ValueError("query_max_tokens and think_points must be >= 1")
        if self.strategy == "greedy" and self.num_return_sequences > 1:
            raise ValueError("greedy decoding returns one sequence; use beam or sample for several")
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences {self.num_return_sequences} > num_beams {self.num_beams}")

    @classmethod
    def from_dict(cls, section: Mapping | None) -> Decoding:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(section or {}).items() if k in names})

    def generate_kwargs(self) -> dict:
        """Every decoding argument of ``model.generate`` set explicitly, so a checkpoint's own
        ``generation_config`` (e.g. Qwen's sampling defaults) cannot change the strategy."""
        kw = {"do_sample": False, "num_beams": 1, "temperature": None, "top_k": None, "top_p": None}
        if self.strategy == "sample":
            kw.update(do_sample=True, temperature=self.temperature, top_k=self.top_k or None, top_p=1.0)
        elif self.strategy == "beam":
            kw.update(num_beams=self.num_beams, early_stopping=True, length_penalty=1.0)
        return kw


@dataclass
class GenResult:
    """One sample's list: cleaned queries (model first, then fallback), the raw decoded text,
    whether the output was malformed, how many queries came from the model, and the Think
    output's trigger sets (one per interest point; ``None`` for Direct)."""

    queries: list[str]
    raw_text: str = ""
    malformed: bool = False
    n_model: int = 0
    source: str = "model"  # model | model+fallback | fallback
    model_called: bool = True  # False for cold-start users served the fallback directly
    triggers: list[tuple[int, ...]] | None = None
    extra: dict = field(default_factory=dict)


def blocklist_from_config(section: Mapping | None) -> Blocklist:
    """The ``aigq.generate.blocklist`` rules (``phrase``, ``substring:x``, ``regex:p``)."""
    return Blocklist.from_lines((section or {}).get("blocklist") or [])


def _fallback_for(fallback: Fallback, sample: Mapping) -> list[str]:
    if fallback is None:
        return []
    try:
        return list(fallback(sample) if callable(fallback) else fallback)
    except Exception:  # a broken fallback must not cost the batch
        logger.exception("fallback failed for sample %s", sample_field(sample, "sample_id"))
        return []


def encode_sample_prompt(tokenizer, sample, style: str, max_history: int, max_prompt_tokens: int) -> list[int]:
    """Token ids of ``sample``'s prompt, cut to its newest ``max_prompt_tokens``."""
    ids = encode_prompt(tokenizer, build_prompt(sample, style=style, max_history=max_history))
    return ids[-max_prompt_tokens:]  # the oldest behaviours go first, as in training


def generate_lists(
    model,
    tokenizer,
    samples: Sequence[Mapping],
    kind: str = "direct",
    k: int = 10,
    batch_size: int = 16,
    decoding: Decoding | None = None,
    fallback: Fallback = None,
    blocklist: Blocklist | None = None,
    style: str = "compressed",
    max_history: int = DEFAULT_MAX_HISTORY,
    cold_start: str = "fallback",
    known_queries: Iterable[str] | QueryTrie | None = None,
) -> list[GenResult]:
    """Ranked lists of at most ``k`` queries for ``samples`` (rows of ``aigq_*_sft`` as dicts).

    Model queries come first (cleaned by ``postprocess``), then the fallback tops the list up
    to ``k``. Generation errors of a batch are logged and the batch falls back, never raising.
    ``known_queries`` (queries searched before the samples, or their ``QueryTrie``) is required
    by ``decoding.known_queries`` and ignored otherwise.
    """
    decoding = decoding or Decoding()
    if kind not in ("direct", "plain", "think"):
        raise ValueError(f"kind must be direct, plain or think, got {kind!r}")
    if kind == "think" and decoding.max_new_tokens_think > decoding.max_new_tokens:
        decoding = dataclasses.replace(decoding, max_new_tokens=decoding.max_new_tokens_think)
    if cold_start not in ("fallback", "model"):
        raise ValueError("cold_start must be 'fallback' or 'model'")
    trie = None
    if decoding.known_queries:
        if known_queries is None:
            raise ValueError("aigq.generate.known_queries needs the known queries (the log's searches before the samples)")
        trie = known_queries if isinstance(known_queries, QueryTrie) else QueryTrie.build(tokenizer, known_queries)
        if not len(trie):
            raise ValueError("aigq.generate.known_queries: the log before the samples holds no query")
    was_training = model.training
    model.eval()
    results: list[GenResult | None] = [None] * len(samples)
    todo = []
    for i, s in enumerate(samples):
        if cold_start == "fallback" and not sample_field(s, "history"):
            results[i] = GenResult(
                with_fallback([], _fallback_for(fallback, s), k, blocklist), source="fallback", model_called=False
            )
        else:
            todo.append(i)
    # Sorting by prompt length keeps batches tight (less padding); results keep the input order.
    encoded = {
        i: encode_sample_prompt(tokenizer, samples[i], style, max_history, decoding.max_prompt_tokens) for i in todo
    }
    todo.sort(key=lambda i: len(encoded[i]))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        if decoding.strategy == "query_beam":
            try:
                done = query_beam_results(model, tokenizer, [encoded[i] for i in chunk], kind, k, decoding,
                                          [_fallback_for(fallback, samples[i]) for i in chunk], blocklist, trie)
            except Exception:
                logger.exception("generation failed for a batch of %d; using the fallback", len(chunk))
                done = [_to_result([("", False)], kind, k, _fallback_for(fallback, samples[i]), blocklist)
                        for i in chunk]
            for i, r in zip(chunk, done, strict=True):
                results[i] = r
            continue
        try:
            texts = generate_texts(model, tokenizer, [encoded[i] for i in chunk], decoding, trie)
        except Exception:
            logger.exception("generation failed for a batch of %d; using the fallback", len(chunk))
            texts = [[("", False)]] * len(chunk)
        for i, outs in zip(chunk, texts, strict=True):
            results[i] = _to_result(outs, kind, k, _fallback_for(fallback, samples[i]), blocklist)
    model.train(was_training)
    n_bad = sum(r.malformed for r in results)
    if n_bad:
        logger.info("%d of %d generations malformed", n_bad, len(results))
    return results


def _to_result(
    outs: Sequence[tuple[str, bool]], kind: str, k: int, popular: Sequence[str], blocklist
) -> GenResult:
    """Parse every decoded sequence of one prompt; the first (best) one decides ``malformed``,
    ``raw_text`` and the Think triggers; the queries of all are merged by ``merge_lists``."""
    parsed_all = []
    for text, done in outs:
        parsed = parse_think(text, complete=done) if kind == "think" else parse_direct(text, complete=done)
        parsed_all.append(parsed)
    best = parsed_all[0]
    triggers = [p.triggers for p in best.points] if kind == "think" else None
    merged = merge_lists([postprocess(p.queries, blocklist, max_queries=k) for p in parsed_all])
    own = postprocess(merged, blocklist, max_queries=k)
    extra = {"n_sequences": len(outs)} if len(outs) > 1 else {}
    return _finish(own, outs[0][0], best.malformed, triggers, k, popular, blocklist, extra)


# --- query-level beam search --------------------------------------------------------------------
def query_beam_results(
    model, tokenizer, prompts: Sequence[Sequence[int]], kind: str, k: int, decoding: Decoding,
    fallbacks: Sequence[Sequence[str]], blocklist, trie: QueryTrie | None = None,
) -> list[GenResult]:
    """``query_beam`` decoding of one batch. Direct / plain: the ``num_beams`` most probable first
    queries of the list (``next_queries`` after ``prompt <q>``), which is the model's ranking of
    the user's interests: IL-SFT puts the strongest first. Think: a greedy pass writes the interest
    points (triggers, rationale); each of the first ``think_points`` complete points is then
    expanded with its most probable queries (``next_queries`` after ``... </think><q>``) and the
    points' lists are interleaved, strongest point first. ``trie`` keeps every query known."""
    q_id = token_id(tokenizer, Q_MARK)
    if q_id is None:
        raise ValueError(f"the tokenizer has no {Q_MARK} token; query_beam needs a trained AIGQ policy")
    if kind != "think":
        lists = next_queries(model, tokenizer, [[*p, q_id] for p in prompts], decoding, trie)
        out = []
        for cands, popular in zip(lists, fallbacks, strict=True):
            own = postprocess([q for q, _ in cands], blocklist, max_queries=k)
            out.append(_finish(own, "", False, None, k, popular, blocklist, {"n_sequences": len(cands)}))
        return out
    greedy = generate_texts(model, tokenizer, prompts,
                            dataclasses.replace(decoding, strategy="greedy", num_return_sequences=1), trie)
    prefixes, owner = [], []
    parsed_all = []
    for b, (prompt, ((text, done),)) in enumerate(zip(prompts, greedy, strict=True)):
        parsed = parse_think(text, complete=done)
        parsed_all.append(parsed)
        cut = 0
        for _ in range(decoding.think_points):
            at = text.find(THINK_CLOSE, cut)
            if at < 0:
                break
            cut = at + len(THINK_CLOSE)
            head = tokenizer(text[:cut], add_special_tokens=False)["input_ids"]
            prefixes.append([*prompt, *head, q_id])
            owner.append(b)
    per_sample: list[list[list[str]]] = [[] for _ in prompts]
    expanded = next_queries(model, tokenizer, prefixes, decoding, trie) if prefixes else []
    for b, cands in zip(owner, expanded, strict=True):
        per_sample[b].append([q for q, _ in cands])
    out = []
    for b, parsed in enumerate(parsed_all):
        lists = per_sample[b] or [parsed.queries]
        own = postprocess(merge_lists(lists), blocklist, max_queries=k)
        triggers = [p.triggers for p in parsed.points]
        out.append(_finish(own, greedy[b][0][0], parsed.malformed, triggers, k, fallbacks[b], blocklist,
                           {"n_sequences": len(lists)}))
    return out


def _finish(own, raw, malformed, triggers, k, popular, blocklist, extra) -> GenResult:
    """The model's cleaned queries ``own`` topped up to ``k`` by the fallback, as a result."""
    queries = with_fallback(own, popular, k, blocklist)
    source = "model" if len(queries) == len(own) else ("model+fallback" if own else "fallback")
    return GenResult(queries, raw, malformed, n_model=len(own), source=source, triggers=triggers, extra=extra)
