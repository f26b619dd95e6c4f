"""Parse generated AIGQ text back into queries, and clean query lists for serving.

Output formats (written by ``aigq_model.targets``):

- Direct: ``<q> red shoe<q> running shoe`` (then eos).
- Think: one block per interest point,
  ``<think>[1,3] searched red shoe; clicked nike trainers</think><q> red shoe<q> trainers``,
  trigger indices are the 1-based behaviour indices shown in the prompt; ``[]`` = new interest.

The parsers never raise: anything unexpected sets ``malformed`` and whatever is recoverable is
kept. Decode generations with ``skip_special_tokens=False`` or with the markers added as
ordinary (non-special) tokens, as ``aigq_model.prompts.add_prompt_tokens`` does; text from the
first end-of-sequence marker (``<|...|>``, ``</s>``, ``<eos>``, ``<pad>``) on is ignored.

Parsed queries are normalised (``normalize_query``) but neither de-duplicated nor filtered, so
reward code sees slot j as generated; ``postprocess`` does the serving-side cleaning.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

Q_MARK = "<q>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TARGET_MARKERS = (Q_MARK, THINK_OPEN, THINK_CLOSE)

_END_RE = re.compile(r"<\|[^<>|]{0,40}\|>|</s>|<eos>|<pad>|<unk>", re.IGNORECASE)
_MARKER_RE = re.compile(r"(<q>|<think>|</think>)")
# Any other special-token-looking tag (e.g. a prompt token ``<1>`` or ``<search>``) is garbage.
_TAG_RE = re.compile(r"<[^<>\s]{1,24}>")
_TRIGGERS_RE = re.compile(r"^\s*\[([^\[\]]*)\](.*)$", re.DOTALL)
_WS_RE = re.compile(r"\s+")
_DROP_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn"}
_KEEP_AT_ENDS = frozenset("%#&")


def normalize_query(text: object) -> str:
    """NFKC, lower case, control/format characters dropped, whitespace collapsed, punctuation
    stripped at both ends (but ``%``, ``#``, ``&``: "50%", "c#"). ``None`` and non-strings give ``""``.

    >>> normalize_query("  Red\\u3000SHOES!! ")
    'red shoes'
    """
    if not isinstance(text, str) or not text:
        return ""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(
        " " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch) not in _DROP_CATEGORIES
    )
    text = _WS_RE.sub(" ", text.lower()).strip()
    start, end = 0, len(text)
    while start < end and _strippable(text[start]):
        start += 1
    while end > start and _strippable(text[end - 1]):
        end -= 1
    return text[start:end]


def _strippable(ch: str) -> bool:
    """Whitespace or punctuation, except the few marks that carry meaning at a query's end."""
    return ch.isspace() or (ch not in _KEEP_AT_ENDS and unicodedata.category(ch).startswith("P"))


@dataclass
class ParsedList:
    """Direct output: normalised queries in generated order, their character spans in the text."""

    queries: list[str] = field(default_factory=list)
    malformed: bool = False
    spans: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class ThinkPoint:
    """One interest point: trigger indices (1-based, prompt order), rationale, its queries."""

    triggers: tuple[int, ...]
    rationale: str
    queries: tuple[str, ...]


@dataclass
class ParsedThink:
    points: list[ThinkPoint] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    malformed: bool = False
    spans: list[tuple[int, int]] = field(default_factory=list)
    trigger_spans: list[tuple[int, int]] = field(default_factory=list)


def _cut_at_end(text: object) -> str:
    if not isinstance(text, str):
        return ""
    m = _END_RE.search(text)
    return text if m is None else text[: m.start()]


def _segments(text: str) -> list[tuple[str, int, int]]:
    """``(piece, start, end)``: markers and the text between them, in order, empty text skipped."""
    out, pos = [], 0
    for m in _MARKER_RE.finditer(text):
        if m.start() > pos:
            out.append((text[pos : m.start()], pos, m.start()))
        out.append((m.group(0), m.start(), m.end()))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], pos, len(text)))
    return out


def _clean_query(raw: str) -> tuple[str, bool]:
    """Normalised query and whether garbage (stray tags) had to be removed."""
    stripped = _TAG_RE.sub(" ", raw)
    return normalize_query(stripped), stripped != raw


def _span(raw: str, start: int) -> tuple[int, int]:
    lead = len(raw) - len(raw.lstrip())
    return start + lead, start + len(raw.rstrip())


def parse_direct(text: str, complete: bool = True) -> ParsedList:
    """Queries of a Direct output. ``complete=False`` (generation hit the token limit) drops the
    last, possibly cut-off query and marks the output malformed.

    >>> parse_direct("<q> Red shoe<q> running shoes").queries
    ['red shoe', 'running shoes']
    """
    try:
        return _parse_direct(text, complete)
    except Exception:  # never reached by design; a parser bug must not kill a batch job
        logger.exception("parse_direct failed")
        return ParsedList(malformed=True)


def _parse_direct(text: str, complete: bool) -> ParsedList:
    text = _cut_at_end(text)
    out = ParsedList()
    segs = _segments(text)
    ends_in_query = False
    if not any(s == Q_MARK for s, _, _ in segs):
        # No markers at all: salvage one query per line, but it is not the trained format.
        out.malformed = True
        pos = 0
        for line in text.split("\n"):
            q, _ = _clean_query(line)
            if q:
                out.queries.append(q)
                out.spans.append(_span(line, pos))
            pos += len(line) + 1
        ends_in_query = bool(out.queries)
    else:
        in_query = False
        for piece, start, _ in segs:
            ends_in_query = False
            if piece == Q_MARK:
                out.malformed |= in_query  # "<q><q>": an empty query
                in_query = True
            elif piece in (THINK_OPEN, THINK_CLOSE):
                out.malformed, in_query = True, False
            elif in_query:
                q, dirty = _clean_query(piece)
                out.malformed |= dirty or not q
                if q:
                    out.queries.append(q)
                    out.spans.append(_span(piece, start))
                    ends_in_query = True
                in_query = False
            elif piece.strip():
                out.malformed = True  # text outside a query slot
        out.malformed |= in_query  # ends on a bare marker
    if not complete:
        out.malformed = True
        if ends_in_query:
            out.queries.pop()
            out.spans.pop()
    if not out.queries:
        out.malformed = True
    return out


def _parse_triggers(body: str) -> tuple[tuple[int, ...], str, bool, tuple[int, int] | None]:
    """``[1,3] rationale`` -> ((1, 3), "rationale", ok, span of the bracket in ``body``)."""
    m = _TRIGGERS_RE.match(body)
    if m is None:
        return (), _WS_RE.sub(" ", body).strip(), False, None
    ok, triggers = True, []
    for part in m.group(1).split(","):
        part = part.strip()
        if not part:
            continue
        if part.isascii() and part.isdigit() and len(part) <= 4:
            triggers.append(int(part))
        else:
            ok = False
    rationale = _WS_RE.sub(" ", m.group(2)).strip()
    return tuple(triggers), rationale, ok, (m.start(1) - 1, m.end(1) + 1)


def parse_think(text: str, complete: bool = True) -> ParsedThink:
    """Interest points of a Think output; ``queries`` is every point's queries, in order.

    >>> p = parse_think("<think>[1,3] searched shoes</think><q> red shoe<q> trainers")
    >>> p.points[0].triggers, p.queries, p.malformed
    ((1, 3), ['red shoe', 'trainers'], False)
    """
    try:
        return _parse_think(text, complete)
    except Exception:
        logger.exception("parse_think failed")
        return ParsedThink(malformed=True)


def _parse_think(text: str, complete: bool) -> ParsedThink:
    text = _cut_at_end(text)
    out = ParsedThink()
    # The point being assembled: header (triggers, rationale, bracket span) and (query, span)s.
    header: tuple[tuple[int, ...], str, tuple[int, int] | None] | None = None
    queries: list[tuple[str, tuple[int, int]]] = []
    state = "start"  # start | header | after_header | query | after_query

    def flush() -> None:
        nonlocal header, queries
        if header is None and not queries:
            return
        if not queries:
            out.malformed = True  # an interest point without queries
        else:
            trig, rat, bracket = header if header is not None else ((), "", None)
            out.points.append(ThinkPoint(trig, rat, tuple(q for q, _ in queries)))
            for q, span in queries:
                out.queries.append(q)
                out.spans.append(span)
            if bracket is not None:
                out.trigger_spans.append(bracket)
        header, queries = None, []

    for piece, start, _ in _segments(text):
        if piece == THINK_OPEN:
            out.malformed |= state in ("header", "query")  # unclosed block / empty query
            flush()
            state = "header"
        elif piece == THINK_CLOSE:
            if state != "header":
                out.malformed = True  # a close without an open
            elif header is None:
                out.malformed, header = True, ((), "", None)  # empty block
            state = "after_header"
        elif piece == Q_MARK:
            out.malformed |= state in ("header", "query", "start")
            if state == "header" and header is None:
                header = ((), "", None)
            state = "query"
        elif state == "header":
            trig, rat, ok, bracket = _parse_triggers(piece)
            out.malformed |= not ok or header is not None
            span = None if bracket is None else (start + bracket[0], start + bracket[1])
            header = (trig, rat, span)
        elif state == "query":
            q, dirty = _clean_query(piece)
            out.malformed |= dirty or not q
            if q:
                queries.append((q, _span(piece, start)))
            state = "after_query"
        elif piece.strip():
            out.malformed = True  # stray text outside blocks and query slots
    out.malformed |= state in ("header", "query", "after_header")  # truncated
    if not complete:
        out.malformed = True
        if state == "after_query" and queries:
            queries.pop()
    flush()
    if not out.queries:
        out.malformed = True
    return out


# --- serving-side cleaning ----------------------------------------------------------------
class Blocklist:
    """Queries not to show: exact phrases, substrings and regular expressions, all
    case-insensitive and matched on the normalised query.

    >>> Blocklist(phrases=["Bad Word"], substrings=["gun"], patterns=[r"^\\d+$"]).blocks("shotgun case")
    True
    """

    def __init__(self, phrases: Iterable[str] = (), substrings: Iterable[str] = (), patterns: Iterable[str] = ()):
        self.phrases = {p for p in (normalize_query(x) for x in phrases) if p}
        self.substrings = [s for s in (normalize_query(x) for x in substrings) if s]
        self.patterns = [re.compile(p, re.IGNORECASE) for p in patterns]

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> Blocklist:
        """One rule a line: ``phrase``, ``substring:text`` or ``regex:pattern``; ``#`` comments."""
        phrases, subs, pats = [], [], []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("substring:"):
                subs.append(line[len("substring:") :])
            elif line.startswith("regex:"):
                pats.append(line[len("regex:") :].strip())
            else:
                phrases.append(line)
        return cls(phrases, subs, pats)

    def blocks(self, query: str) -> bool:
        q = normalize_query(query)
        return (
            q in self.phrases
            or any(s in q for s in self.substrings)
            or any(p.search(q) for p in self.patterns)
        )

    def __bool__(self) -> bool:
        return bool(self.phrases or self.substrings or self.patterns)


def postprocess(
    queries: Iterable[str],
    blocklist: Blocklist | None = None,
    max_queries: int = 10,
    max_chars: int = 40,
    max_words: int = 8,
) -> list[str]:
    """Normalise, drop empty / over-long / blocked queries, de-duplicate keeping the first
    occurrence, keep at most ``max_queries``. Over-long queries are dropped, not cut: a cut
    query is not a query anyone typed.

    >>> postprocess(["Red shoe", "red  shoe!", "", "x" * 50, "bad"], Blocklist(["bad"]))
    ['red shoe']
    """
    out: list[str] = []
    seen: set[str] = set()
    for raw in queries:
        q = normalize_query(raw)
        if not q or q in seen or len(q) > max_chars or len(q.split(" ")) > max_words:
            continue
        if blocklist is not None and blocklist.blocks(q):
            continue
        seen.add(q)
        out.append(q)
        if len(out) >= max_queries:
            break
    return out


def with_fallback(
    queries: Sequence[str], popular: Iterable[str], k: int, blocklist: Blocklist | None = None
) -> list[str]:
    """``queries`` topped up to ``k`` with popular queries not already in the list (empty or
    malformed generations, cold-start users); blocked popular queries are skipped too, so the
    block-list holds whatever filled the list.

    >>> with_fallback(["a"], ["b", "a", "c"], 3)
    ['a', 'b', 'c']
    >>> with_fallback([], ["bad word", "c"], 2, Blocklist(["bad word"]))
    ['c']
    """
    out = list(queries)[:k]
    seen = {normalize_query(q) for q in out}
    for q in popular:
        if len(out) >= k:
            break
        n = normalize_query(q)
        if n and n not in seen and not (blocklist is not None and blocklist.blocks(n)):
            seen.add(n)
            out.append(n)
    return out
