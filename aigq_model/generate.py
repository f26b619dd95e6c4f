"""Batched AIGQ generation: prompts -> ranked query lists, never failing on bad output.

``generate_lists(model, tok, samples, kind, k, batch_size, decoding)`` encodes each sample's
prompt exactly as training did (``targets.encode_prompt``), left-pads a batch, and calls
``model.generate`` with the KV cache on (greedy, sampling with temperature/top-k, or beam
search). Each output is decoded, parsed (``parse_direct``/``parse_think``, ``complete`` = the
sequence reached eos), cleaned (``postprocess``: normalisation, dedupe, length limits,
block-list) and topped up to ``k`` with the fallback (popularity) list. Cold-start users (no
history) get the fallback list without a model call unless ``cold_start="model"``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from aigq_model.parsing import (
    Q_MARK,
    Blocklist,
    normalize_query,
    parse_direct,
    parse_think,
    postprocess,
    with_fallback,
)
from aigq_model.prompts import DEFAULT_MAX_HISTORY, build_prompt, history_window, sample_field
from aigq_model.targets import encode_prompt

logger = logging.getLogger(__name__)

STRATEGIES = ("greedy", "sample", "beam", "query_beam")
WORDINGS = ("model", "log")
THINK_INTERESTS = ("points", "triggers")
#: A fallback: a fixed list, or ``sample -> list`` (e.g. popularity before the sample's time).
Fallback = Sequence[str] | Callable[[Mapping], Sequence[str]] | None
#: query -> category (a mapping or a function; ``None`` = unknown), for ``Decoding.group_queries``.
CategoryOf = Mapping[str, str] | Callable[[str], str | None]


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
    #: ``query_beam`` list assembly (ours). 0: Direct / plain lists rank candidates by probability
    #: alone and Think interleaves its interest points one query at a time. N > 0: interest-grouped
    #: lists: candidates are grouped by interest (Think: its interest point; Direct / plain: the
    #: query's category from the click log, ``category_of`` of ``generate_lists``), groups ordered
    #: by their best candidate, and each round takes up to N queries of every group in turn, so a
    #: strong interest keeps several slots instead of sharing them with weak ones.
    group_queries: int = 0
    #: ``query_beam`` wording (ours). ``model``: the lists hold the model's own candidate queries.
    #: ``log``: interest-marginal lists (``log_worded``): the model's probability of each
    #: interest (summed over its candidates of that category) times each query's share of the
    #: category's searches in the click log before the samples, so the model picks the
    #: interests and the log the words (needs a ``QueryVocabulary`` as ``category_of``).
    wording: str = "model"
    #: Think ``query_beam`` interests under log wording (ours). ``points``: the greedy pass's
    #: interest points, each expanded by ``next_queries``, log-worded and interleaved.
    #: ``triggers``: the policy's exact distribution of where its first interest point's trigger
    #: list starts (``trigger_masses``: P(``<think>[i,`` or ``<think>[i]``) for every behaviour
    #: index i of the prompt), collected by the behaviours' interests (``behaviour_interests``)
    #: and worded by the log (``interest_worded``), the way Direct's first-query distribution is.
    think_interests: str = "points"

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
        if self.group_queries < 0:
            raise ValueError("group_queries must be >= 0")
        if self.wording not in WORDINGS:
            raise ValueError(f"wording must be one of {WORDINGS}, got {self.wording!r}")
        if self.think_interests not in THINK_INTERESTS:
            raise ValueError(f"think_interests must be one of {THINK_INTERESTS}, got {self.think_interests!r}")
        if self.think_interests == "triggers" and self.wording != "log":
            raise ValueError("think_interests 'triggers' needs wording 'log' (the log words the interests)")
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


def left_pad(rows: Sequence[Sequence[int]], pad_id: int):
    """``(input_ids, attention_mask)`` tensors, padded on the left to the longest row."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (batch, width)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


class NoRepeatQueryProcessor:
    """A ``LogitsProcessor``: where the query being generated (the tokens since the last ``<q>``)
    already equals an earlier complete query of the same sequence, the tokens that would close it
    (``<q>``, eos) are forbidden, so a list never repeats a query exactly; the model must extend
    or change it. Rows are the generated part only (``prompt_width`` tokens are skipped)."""

    def __init__(self, q_id: int, close_ids: Sequence[int], prompt_width: int):
        self.q_id, self.close_ids, self.prompt_width = q_id, list(close_ids), prompt_width

    def banned(self, generated: Sequence[int]) -> bool:
        """Whether closing now would repeat an earlier query of ``generated``.

        >>> p = NoRepeatQueryProcessor(q_id=1, close_ids=[1, 0], prompt_width=0)
        >>> p.banned([1, 5, 6, 1, 5, 6]), p.banned([1, 5, 6, 1, 5]), p.banned([1, 5, 6])
        (True, False, False)
        """
        marks = [i for i, t in enumerate(generated) if t == self.q_id]
        if len(marks) < 2:
            return False
        current = tuple(generated[marks[-1] + 1 :])
        if not current:
            return False
        bounds = [*marks, len(generated)]
        return any(tuple(generated[a + 1 : b]) == current for a, b in zip(bounds[:-2], bounds[1:-1], strict=True))

    def __call__(self, input_ids, scores):
        rows = input_ids[:, self.prompt_width :].tolist()
        for b, row in enumerate(rows):
            if self.banned(row):
                scores[b, self.close_ids] = float("-inf")
        return scores


def generate_texts(
    model, tokenizer, prompt_ids: Sequence[Sequence[int]], decoding: Decoding
) -> list[list[tuple[str, bool]]]:
    """One batch: per prompt, ``num_return_sequences`` pairs ``(decoded continuation, reached
    eos)`` (beams best first), from one KV-cached ``generate`` call."""
    import torch

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    ids, mask = left_pad(prompt_ids, pad)
    device = next(model.parameters()).device
    if decoding.seed is not None:
        torch.manual_seed(decoding.seed)
    extra = {}
    if decoding.no_repeat_query:
        from transformers import LogitsProcessorList

        q_id = tokenizer.convert_tokens_to_ids(Q_MARK)
        if q_id is not None and q_id != tokenizer.unk_token_id:
            extra["logits_processor"] = LogitsProcessorList(
                [NoRepeatQueryProcessor(q_id, sorted({q_id, eos}), ids.shape[1])]
            )
    with torch.no_grad():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=decoding.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            use_cache=True,
            num_return_sequences=decoding.num_return_sequences,
            **decoding.generate_kwargs(),
            **extra,
        )  # (batch * n, width + new), the n sequences of a prompt adjacent
    new = out[:, ids.shape[1] :].tolist()
    texts = []
    for row in new:
        done = eos in row
        row = row[: row.index(eos)] if done else row
        texts.append((tokenizer.decode(row, skip_special_tokens=False), done))
    n = decoding.num_return_sequences
    return [texts[i : i + n] for i in range(0, len(texts), n)]


def merge_lists(lists: Sequence[Sequence[str]], per_round: int = 1) -> list[str]:
    """Interleave ranked lists by position (rank 1 of every list in list order, then rank 2, ...),
    keeping the first occurrence of each query: the head of every decoded list outranks any
    list's tail, so the strongest interests of all sequences come first. ``per_round`` > 1 takes
    that many queries of each list per round.

    >>> merge_lists([["a", "b", "c"], ["a", "d"], ["e"]])
    ['a', 'e', 'b', 'd', 'c']
    >>> merge_lists([["a", "b", "c"], ["d", "e"]], per_round=2)
    ['a', 'b', 'd', 'e', 'c']
    """
    if per_round < 1:
        raise ValueError("per_round must be >= 1")
    out: dict[str, None] = {}
    for pos in range(0, max((len(x) for x in lists), default=0), per_round):
        for lst in lists:
            for q in lst[pos : pos + per_round]:
                out.setdefault(q, None)
    return list(out)


def group_by_category(queries: Sequence[str], category_of: CategoryOf | None, per_round: int) -> list[str]:
    """``queries`` (best first) regrouped by category: categories in the order of their best query,
    ``per_round`` queries of each per round (``merge_lists``); a query of unknown category is a
    group of its own, so it keeps its rank among the groups. Without a map, or with
    ``per_round`` 0, the order is unchanged.

    >>> group_by_category(["a1", "b1", "x", "a2", "b2", "a3"], {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B"}, 10)
    ['a1', 'a2', 'a3', 'b1', 'b2', 'x']
    """
    if not per_round or category_of is None:
        return list(queries)
    lookup = category_of.get if isinstance(category_of, Mapping) else category_of
    groups: dict[object, list[str]] = {}
    for i, q in enumerate(queries):
        cat = lookup(q)
        groups.setdefault(("?", i) if cat is None else cat, []).append(q)
    return merge_lists(list(groups.values()), per_round)


class QueryVocabulary:
    """The click log's query vocabulary: each query's category (``evaluate.build_query_category_map``)
    and how often it was searched, built from the log before the samples it serves. Called with a
    query it gives the query's category (a ``CategoryOf``); ``members(category)`` are the
    category's queries with their share of its searches (add-one smoothed), most searched first.

    >>> v = QueryVocabulary({"a": "A", "b": "A", "c": "C"}, {"a": 3, "b": 1})
    >>> v("b"), [(q, round(p, 3)) for q, p in v.members("A")], v.members("?")
    ('A', [('a', 0.667), ('b', 0.333)], [])
    """

    def __init__(self, category: Mapping[str, str], counts: Mapping[str, int]):
        self.category = dict(category)
        self.counts = {q: int(counts.get(q, 0)) for q in self.category}
        by_cat: dict[str, list[str]] = {}
        for q, cat in self.category.items():
            by_cat.setdefault(cat, []).append(q)
        self._members = {}
        for cat, qs in by_cat.items():
            total = sum(self.counts[q] for q in qs) + len(qs)
            ranked = sorted(qs, key=lambda q: (-self.counts[q], q))
            self._members[cat] = [(q, (self.counts[q] + 1) / total) for q in ranked]

    def __call__(self, query: str) -> str | None:
        return self.category.get(query)

    def __len__(self) -> int:
        return len(self.category)

    def members(self, category: str) -> list[tuple[str, float]]:
        return list(self._members.get(category, ()))


def log_worded(candidates: Sequence[tuple[str, float]], vocabulary: QueryVocabulary) -> list[str]:
    """Interest-marginal ranking (``Decoding.wording`` ``log``, ours) of the model's candidate
    queries with their log-probabilities: an interest's mass is the model's probability summed over
    its candidates of one category, and every query of that category in the log scores mass x its
    share of the category's searches (``QueryVocabulary.members``); a candidate the log does not
    know keeps its own probability. Best first, ties by text.

    >>> v = QueryVocabulary({"a1": "A", "a2": "A", "b1": "B"}, {"a1": 1, "a2": 5, "b1": 2})
    >>> log_worded([("b1", math.log(0.5)), ("a1", math.log(0.3)), ("a2", math.log(0.2)), ("new", math.log(0.1))], v)
    ['b1', 'a2', 'a1', 'new']
    """
    mass: dict[object, float] = {}
    for text, logp in candidates:
        q = normalize_query(text)
        if not q:
            continue
        cat = vocabulary(q)
        key = ("?", q) if cat is None else cat
        mass[key] = mass.get(key, 0.0) + math.exp(logp)
    return interest_worded(mass, vocabulary)


def interest_worded(mass: Mapping[object, float], vocabulary: QueryVocabulary) -> list[str]:
    """Queries ranked by interest mass x share: ``mass`` maps a category to its weight (every
    query of the category in the log scores weight x ``QueryVocabulary.members`` share) or
    ``("?", query)`` to the weight of a query the log does not know. Best first, ties by text.

    >>> v = QueryVocabulary({"a1": "A", "a2": "A", "b1": "B"}, {"a1": 1, "a2": 5, "b1": 2})
    >>> interest_worded({"A": 0.5, "B": 0.2, ("?", "new"): 0.1}, v)  # a2: 0.5 x 6/8, b1: 0.2, a1: 0.5 x 2/8
    ['a2', 'b1', 'a1', 'new']
    """
    scored: dict[str, float] = {}
    for key, m in mass.items():
        members = [(key[1], 1.0)] if isinstance(key, tuple) else vocabulary.members(key)
        for q, share in members:
            scored[q] = max(scored.get(q, 0.0), m * share)
    return sorted(scored, key=lambda q: (-scored[q], q))


def behaviour_interests(sample, vocabulary: QueryVocabulary, max_history: int = DEFAULT_MAX_HISTORY) -> list:
    """The interest of every behaviour of the prompt's window, in the prompt's numbering (index
    i is element i - 1): a search's query category in the log (``("?", query)`` when the log does
    not know the query), an item behaviour's leaf ``category``; ``None`` when neither is known.

    >>> v = QueryVocabulary({"red shoe": "shoes"}, {"red shoe": 4})
    >>> behaviour_interests({"history": [{"event_type": "search", "text": "Red  Shoe"},
    ...     {"event_type": "click", "text": "Nike", "category": "shoes"},
    ...     {"event_type": "search", "text": "tent"}, {"event_type": "buy", "text": "x"}]}, v)
    ['shoes', 'shoes', ('?', 'tent'), None]
    """
    shown, _ = history_window(sample_field(sample, "history"), max_history)
    out: list = []
    for b in shown:
        if b.get("event_type") == "search":
            q = normalize_query(b.get("text"))
            out.append((vocabulary(q) or ("?", q)) if q else None)
        else:
            out.append(b.get("category") or None)
    return out


def trigger_masses(
    model, tokenizer, prompts: Sequence[Sequence[int]], interests: Sequence[Sequence], batch_rows: int = 64
) -> list[dict]:
    """For each prompt, ``{interest: mass}``: the policy's probability that its Think output opens
    with an interest point whose trigger list starts at a behaviour of that interest, i.e. the sum
    over the window's behaviour indices i of P(``<think>[i,``) + P(``<think>[i]``) (teacher-forced,
    exact; the point's later triggers and the ``[]`` new-interest point are not counted).
    ``interests[b][i - 1]`` is behaviour i's interest (``behaviour_interests``); ``None`` skips it.
    Rows are scored ``batch_rows`` at a time, left-padded, with explicit position ids."""
    import inspect

    import torch

    from aigq_model.parsing import THINK_OPEN

    if len(interests) != len(prompts):
        raise ValueError(f"{len(interests)} interest lists for {len(prompts)} prompts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows: list[tuple[int, object, list[int]]] = []  # (prompt index, interest, continuation ids)
    for b, keys in enumerate(interests):
        for i, key in enumerate(keys, start=1):
            if key is None:
                continue
            for end in (",", "]"):
                cont = tokenizer(f"{THINK_OPEN}[{i}{end}", add_special_tokens=False)["input_ids"]
                rows.append((b, key, list(cont)))
    keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
    device = next(model.parameters()).device
    out: list[dict] = [{} for _ in prompts]
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        ids, mask = left_pad([[*prompts[b], *c] for b, _k, c in chunk], pad)
        keep = max(len(c) for *_, c in chunk) + 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            kw = {"logits_to_keep": keep} if keep_arg else {}
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=pos.to(device), use_cache=False, **kw).logits
        logp = torch.log_softmax(logits[:, -keep:].float(), dim=-1).cpu()  # (rows, keep, vocab)
        for r, (b, key, cont) in enumerate(chunk):
            # the continuation fills the row's last len(cont) positions; logits at t predict t + 1
            first = keep - 1 - len(cont)
            lp = sum(float(logp[r, first + j, t]) for j, t in enumerate(cont))
            out[b][key] = out[b].get(key, 0.0) + math.exp(lp)
    return out


def _encode(tokenizer, sample, style: str, max_history: int, max_prompt_tokens: int) -> list[int]:
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
    category_of: CategoryOf | None = None,
) -> list[GenResult]:
    """Ranked lists of at most ``k`` queries for ``samples`` (rows of ``aigq_*_sft`` as dicts).

    Model queries come first (cleaned by ``postprocess``), then the fallback tops the list up
    to ``k``. Generation errors of a batch are logged and the batch falls back, never raising.
    ``category_of`` (normalised query -> category, built from data before the samples) serves
    ``decoding.group_queries`` of Direct / plain ``query_beam`` lists.
    """
    decoding = decoding or Decoding()
    if kind not in ("direct", "plain", "think"):
        raise ValueError(f"kind must be direct, plain or think, got {kind!r}")
    if kind == "think" and decoding.max_new_tokens_think > decoding.max_new_tokens:
        decoding = dataclasses.replace(decoding, max_new_tokens=decoding.max_new_tokens_think)
    if cold_start not in ("fallback", "model"):
        raise ValueError("cold_start must be 'fallback' or 'model'")
    if decoding.strategy == "query_beam" and decoding.wording == "log" and not isinstance(category_of, QueryVocabulary):
        raise ValueError("wording 'log' needs the click log's QueryVocabulary as category_of "
                         "(evaluate.build_query_vocabulary)")
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
        i: _encode(tokenizer, samples[i], style, max_history, decoding.max_prompt_tokens) for i in todo
    }
    todo.sort(key=lambda i: len(encoded[i]))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        if decoding.strategy == "query_beam":
            interests = None
            if kind == "think" and decoding.think_interests == "triggers":
                interests = [behaviour_interests(samples[i], category_of, max_history) for i in chunk]
            try:
                done = query_beam_results(model, tokenizer, [encoded[i] for i in chunk], kind, k, decoding,
                                          [_fallback_for(fallback, samples[i]) for i in chunk], blocklist,
                                          category_of, interests)
            except Exception:
                logger.exception("generation failed for a batch of %d; using the fallback", len(chunk))
                done = [_to_result([("", False)], kind, k, _fallback_for(fallback, samples[i]), blocklist)
                        for i in chunk]
            for i, r in zip(chunk, done, strict=True):
                results[i] = r
            continue
        try:
            texts = generate_texts(model, tokenizer, [encoded[i] for i in chunk], decoding)
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
def _token_id(tokenizer, token: str) -> int | None:
    i = tokenizer.convert_tokens_to_ids(token)
    return None if i is None or i == tokenizer.unk_token_id else int(i)


def next_queries(
    model, tokenizer, prefixes: Sequence[Sequence[int]], decoding: Decoding
) -> list[list[tuple[str, float]]]:
    """For each prefix (token ids ending in ``<q>``), the ``num_beams`` most probable next queries
    with their joint log-probabilities (no length normalisation), best first: one beam search per
    prefix over a single query, ended by ``<q>``, ``<think>`` or eos. Queries cut at
    ``query_max_tokens`` or holding a marker are dropped."""
    import torch

    from aigq_model.parsing import TARGET_MARKERS, THINK_OPEN

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    stops = sorted({t for t in (eos, _token_id(tokenizer, Q_MARK), _token_id(tokenizer, THINK_OPEN)) if t is not None})
    n = decoding.num_beams
    ids, mask = left_pad(prefixes, pad)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=decoding.query_max_tokens,
            eos_token_id=stops, pad_token_id=pad, use_cache=True, num_beams=n, num_return_sequences=n,
            do_sample=False, length_penalty=0.0, early_stopping=True, temperature=None, top_k=None, top_p=None,
            return_dict_in_generate=True, output_scores=True,
        )  # sequences (len(prefixes) * n, width + new), beams of a prefix adjacent, best first
    seqs, scores = out.sequences, out.sequences_scores.tolist()
    lists = []
    for start in range(0, seqs.shape[0], n):
        queries = []
        for row, score in zip(seqs[start : start + n, ids.shape[1] :].tolist(), scores[start : start + n], strict=True):
            end = next((j for j, t in enumerate(row) if t in stops), None)
            if end is None:
                continue  # cut at query_max_tokens
            text = tokenizer.decode(row[:end], skip_special_tokens=False)
            if not any(m in text for m in TARGET_MARKERS):
                queries.append((text, float(score)))
        lists.append(queries)
    return lists


def query_beam_results(
    model, tokenizer, prompts: Sequence[Sequence[int]], kind: str, k: int, decoding: Decoding,
    fallbacks: Sequence[Sequence[str]], blocklist, category_of: CategoryOf | None = None,
    interests: Sequence[Sequence] | None = None,
) -> list[GenResult]:
    """``query_beam`` decoding of one batch. Direct / plain: the ``num_beams`` most probable first
    queries of the list (``next_queries`` after ``prompt <q>``), which is the model's ranking of
    the user's interests: IL-SFT puts the strongest first. Think: a greedy pass writes the interest
    points (triggers, rationale); each of the first ``think_points`` complete points is then
    expanded with its most probable queries (``next_queries`` after ``... </think><q>``) and the
    points' lists are interleaved, strongest point first. ``decoding.group_queries`` N > 0 takes N
    queries per point (Think) or per category (Direct / plain, ``group_by_category``) per round.
    ``decoding.wording`` ``log`` words every candidate list with ``log_worded`` (Direct / plain:
    the one list, not regrouped; Think: each point's list) from ``category_of``, a
    ``QueryVocabulary``. Think with ``decoding.think_interests`` ``triggers`` skips the
    expansions: its list is ``interest_worded`` of ``trigger_masses`` over ``interests`` (per
    prompt, ``behaviour_interests`` of its sample); the greedy pass still writes the points."""
    from aigq_model.parsing import THINK_CLOSE

    q_id = _token_id(tokenizer, Q_MARK)
    if q_id is None:
        raise ValueError(f"the tokenizer has no {Q_MARK} token; query_beam needs a trained AIGQ policy")
    log_words = decoding.wording == "log"
    if log_words and not isinstance(category_of, QueryVocabulary):
        raise ValueError("wording 'log' needs the click log's QueryVocabulary as category_of")

    def ranked(cands: Sequence[tuple[str, float]], limit: int) -> list[str]:
        if log_words:
            return postprocess(log_worded(cands, category_of), blocklist, max_queries=limit)
        return postprocess([q for q, _ in cands], blocklist, max_queries=max(len(cands), 1))

    if kind != "think":
        lists = next_queries(model, tokenizer, [[*p, q_id] for p in prompts], decoding)
        out = []
        for cands, popular in zip(lists, fallbacks, strict=True):
            own = ranked(cands, k)
            if not log_words:
                own = group_by_category(own, category_of, decoding.group_queries)
            out.append(_finish(own[:k], "", False, None, k, popular, blocklist, {"n_sequences": len(cands)}))
        return out
    greedy = generate_texts(model, tokenizer, prompts, dataclasses.replace(decoding, strategy="greedy", num_return_sequences=1))
    prefixes, owner = [], []
    parsed_all = []
    for b, (prompt, ((text, done),)) in enumerate(zip(prompts, greedy, strict=True)):
        parsed = parse_think(text, complete=done)
        parsed_all.append(parsed)
        cut = 0
        for _ in range(decoding.think_points if decoding.think_interests == "points" else 0):
            at = text.find(THINK_CLOSE, cut)
            if at < 0:
                break
            cut = at + len(THINK_CLOSE)
            head = tokenizer(text[:cut], add_special_tokens=False)["input_ids"]
            prefixes.append([*prompt, *head, q_id])
            owner.append(b)
    per_sample: list[list[list[str]]] = [[] for _ in prompts]
    if decoding.think_interests == "triggers":
        if interests is None:
            raise ValueError("think_interests 'triggers' needs the behaviours' interests (behaviour_interests)")
        for b, mass in enumerate(trigger_masses(model, tokenizer, prompts, interests)):
            if mass:
                per_sample[b].append(postprocess(interest_worded(mass, category_of), blocklist, max_queries=k))
    else:
        expanded = next_queries(model, tokenizer, prefixes, decoding) if prefixes else []
        for b, cands in zip(owner, expanded, strict=True):
            per_sample[b].append(ranked(cands, k) if log_words else [q for q, _ in cands])
    out = []
    for b, parsed in enumerate(parsed_all):
        lists = per_sample[b] or [parsed.queries]
        own = postprocess(merge_lists(lists, max(decoding.group_queries, 1)), blocklist, max_queries=k)
        triggers = [p.triggers for p in parsed.points]
        out.append(_finish(own, greedy[b][0][0], parsed.malformed, triggers, k, fallbacks[b], blocklist,
                           {"n_sequences": len(lists)}))
    return out


def _finish(own, raw, malformed, triggers, k, popular, blocklist, extra) -> GenResult:
    """The model's cleaned queries ``own`` topped up to ``k`` by the fallback, as a result."""
    queries = with_fallback(own, popular, k, blocklist)
    source = "model" if len(queries) == len(own) else ("model+fallback" if own else "fallback")
    return GenResult(queries, raw, malformed, n_model=len(own), source=source, triggers=triggers, extra=extra)
