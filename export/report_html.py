"""The analyst report's hand-written HTML renderer: escaping and number formatting, tables,
inline PNG images and matplotlib figures, and the Markdown subset our reports write.

Every text that reaches the page goes through :func:`esc`; images are embedded as base64 data
URIs, so a page built from these pieces has no external asset.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CSS = """
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:24px auto;max-width:1200px;color:#222;font-size:14px}
h1{font-size:24px;border-bottom:2px solid #345;padding-bottom:6px}
h2{font-size:19px;margin-top:36px;border-bottom:1px solid #ccd;padding-bottom:4px;color:#234}
h3{font-size:16px;margin-top:22px;color:#345}h4,h5{font-size:14px;color:#456}
table{border-collapse:collapse;margin:8px 0 14px;font-size:12.5px}
th,td{border:1px solid #ccd;padding:3px 7px;text-align:left;vertical-align:top;white-space:nowrap}
div.scroll{overflow-x:auto;max-width:100%}
th{background:#eef1f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafbfd}
.missing{color:#a05a00;background:#fff6e6;border-left:4px solid #e0a040;padding:6px 10px}
.error{color:#900;background:#fdecec;border-left:4px solid #c33;padding:6px 10px}
.meta{color:#666;font-size:12px}code{background:#f2f2f2;padding:0 3px;font-size:12px}
img{max-width:100%;height:auto;border:1px solid #eee;margin:6px 0}
nav a{margin-right:14px}ol.queries{margin:0;padding-left:20px}
"""


def esc(value: object) -> str:
    """HTML-escaped text of any value (quotes too).

    >>> esc('<script>alert("x")</script>')
    '&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;'
    """
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: object, digits: int = 4) -> str:
    """A cell value as text: ``–`` for missing or NaN, floats with ``digits`` decimals.

    >>> [fmt(None), fmt(0.123456), fmt(1234567), fmt(float("nan")), fmt("a")]
    ['–', '0.1235', '1,234,567', '–', 'a']
    """
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _is_number(text: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+(\s*±\s*[\d.]+)?%?", text.strip()))


def html_table(headers: Sequence[str], rows: Iterable[Sequence[object]], raw_html: bool = False) -> str:
    """A table; cells are formatted with :func:`fmt` and escaped (``raw_html``: string headers
    and cells are already HTML). Numeric-looking cells are right-aligned."""
    out = ['<div class="scroll"><table><thead><tr>', *(f"<th>{h if raw_html else esc(h)}</th>" for h in headers),
           "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for cell in row:
            text = cell if raw_html and isinstance(cell, str) else esc(fmt(cell))
            cls = ' class="num"' if _is_number(html.unescape(re.sub(r"<[^>]+>", "", text))) else ""
            out.append(f"<td{cls}>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def missing(text: str) -> str:
    """A note saying what is missing (escaped)."""
    return f'<p class="missing">{esc(text)}</p>'


def img_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG inline as a data URI (``ValueError`` if ``png`` is not a PNG)."""
    if not png.startswith(PNG_MAGIC):
        raise ValueError(f"not a PNG: {alt}")
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def png_file_tag(path: Path, alt: str) -> str:
    """The PNG file inline, or a note saying why it is not shown."""
    if not path.is_file():
        return missing(f"no image at {path}")
    png = path.read_bytes()
    if not png.startswith(PNG_MAGIC):
        return missing(f"{path} is not a PNG file")
    return img_tag(png, alt)


def figure_png(fig) -> bytes:
    """The figure as PNG bytes (90 dpi); the figure is closed."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    matplotlib.use("Agg")
    return plt


# --- Markdown (the subset our reports write) ---------------------------------------------------------
_IMG_RE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)\s*$")


def _inline(text: str) -> str:
    """Escape, then ``code`` and **bold**."""
    out = esc(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(text: str, base_dir: Path | None = None, heading_offset: int = 2) -> str:
    """Headings, paragraphs, bullet lists, pipe tables and images (local PNGs next to the file,
    embedded; anything else named, never linked) as HTML. Every text is escaped.

    >>> markdown_to_html("# T\\n\\n| a | b |\\n|---|---|\\n| <x> | 0.5 |")
    '<h3>T</h3>\\n<div class="scroll"><table><thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>&lt;x&gt;</td><td class="num">0.5</td></tr></tbody></table></div>'
    """
    lines = text.splitlines()
    out: list[str] = []
    para: list[str] = []
    bullets: list[str] = []

    def flush():
        if para:
            out.append("<p>" + " ".join(_inline(p) for p in para) + "</p>")
            para.clear()
        if bullets:
            out.append("<ul>" + "".join(f"<li>{_inline(b)}</li>" for b in bullets) + "</ul>")
            bullets.clear()

    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        image = _IMG_RE.match(line.strip())
        if not line.strip():
            flush()
        elif heading:
            flush()
            level = min(len(heading.group(1)) + heading_offset, 6)
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|?[\s:|-]+\|?\s*$",
                                                                               lines[i + 1]) \
                and "-" in lines[i + 1]:
            flush()
            headers = _cells(line)
            i += 2
            body = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                body.append([_inline(c) for c in _cells(lines[i])])
                i += 1
            out.append(html_table([_inline(h) for h in headers], body, raw_html=True))
            continue
        elif image:
            flush()
            alt, src = image.groups()
            if re.match(r"^[a-z]+:", src) or base_dir is None:
                out.append(missing(f"image not embedded: {src}"))
            else:
                out.append(png_file_tag(base_dir / src, alt))
        elif re.match(r"^\s*[-*]\s+", line):
            if para:
                flush()
            bullets.append(re.sub(r"^\s*[-*]\s+", "", line))
        else:
            if bullets:
                flush()
            para.append(line.strip())
        i += 1
    flush()
    return "\n".join(out)


# --- figures ----------------------------------------------------------------------------------------
def line_plot_png(series: Mapping[str, Sequence[tuple[str, float | None]]], title: str, ylabel: str,
               dashed: Iterable[str] = ()) -> bytes:
    """One line per series over the sorted union of x labels (versions)."""
    plt = pyplot()
    xs = sorted({x for points in series.values() for x, _ in points})
    fig, ax = plt.subplots(figsize=(8, 3.4))
    dashed = set(dashed)
    for name, points in series.items():
        values = dict(points)
        ys = [values.get(x) for x in xs]
        ys = [float("nan") if y is None else float(y) for y in ys]
        ax.plot(range(len(xs)), ys, marker="o", linestyle="--" if name in dashed else "-", label=name)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("model version")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_xticks(range(len(xs)), xs, rotation=30)
    return figure_png(fig)
