"""Answers and sources as HTML for the page. Pure functions, no Gradio.

In the chat, every [n] of an answer becomes a link to `#src-<turn>-<n>`, the
cited passage in the sources panel, and sentences the citation checker could
not support are wrapped in `<span class="unsupported">`. In the sources
panel each cited passage shows its file, heading path, page and the passage
itself, with the sentences that best match the citing answer sentences in
`<mark>`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rag.answer.citations import key_terms, sentences_citing, support
from rag.answer.hygiene import UNSUPPORTED_NOTE
from rag.schema import Answer, Chunk, Hit
from ui.text import TEXT, lang_or_default, say

if TYPE_CHECKING:
    from rag.index.reader import Index

# How many past turns keep their sources in the panel (older [n] links then lead nowhere).
KEEP_TURNS = 10

_MARKER = re.compile(r"\[(\d{1,2})\]")
# A sentence ends after Chinese or Western end punctuation (with closing quotes), or at a newline;
# a '.' only counts when whitespace follows, so "557.6" and "v2.5" stay whole; a ';' before the next
# "header: " of a table row (rag/ingest/formats.py row_lines) does not, so a row is marked whole.
_SENTENCE_END = re.compile(r"(?:[。！？!?；]|;(?! [^;:\n]{1,40}: ))+[”’」』\"')）]*|\.(?=\s)|\n")
_TAG = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class Exchange:
    """One question and its answer, as the sources panel remembers it."""

    number: int  # 1, 2, ... within one conversation; part of every citation link
    question: str
    answer: Answer
    stopped: bool = False  # the reader pressed stop; the answer may be cut short


# ---------------------------------------------------------------- the answer in the chat


def streaming_text(text: str) -> str:
    """An answer still being written: shown as the model writes it, markup escaped."""
    return html.escape(text, quote=False)


def answer_html(answer: Answer, turn: int, lang: str, stopped: bool = False) -> str:
    """The finished answer: [n] linked to its passage, unsupported sentences marked.

    In turn 3, "成本为557.6万美元[1]。" citing deepseek.md becomes
    '成本为557.6万美元<a class="cite" href="#src-3-1" title="deepseek.md">[1]</a>。'
    """
    text = html.escape(answer.text, quote=False)
    for sentence in dict.fromkeys(answer.unsupported):
        escaped = html.escape(sentence, quote=False)
        if escaped and escaped in text:
            tip = html.escape(say(lang, "unsupported_tip"))
            text = text.replace(escaped, f'<span class="unsupported" title="{tip}">{escaped}</span>', 1)
    for note in UNSUPPORTED_NOTE.values():  # the sentences set aside under it are underlined above
        text = text.replace(html.escape(note, quote=False), f'<b class="unsupported-note">⚠ {html.escape(note, quote=False)}</b>', 1)
    cited = {c.number: c.chunk for c in answer.citations}

    def link(m: re.Match[str]) -> str:
        n = int(m.group(1))
        if n not in cited:
            return m.group(0)
        where = html.escape(cited[n].path, quote=True)
        return f'<a class="cite" href="#src-{turn}-{n}" title="{where}">[{n}]</a>'

    text = _MARKER.sub(link, text)
    if stopped:
        text = f"{text} *{say(lang, 'stopped')}*" if text.strip() else f"*{say(lang, 'stopped')}*"
    return text


def answer_html_stopped(lang: str) -> str:
    """What the chat shows for an answer stopped before its first word."""
    return f"*{say(lang, 'stopped')}*"


def plain_answer(content: object) -> str:
    """An answer as the chat holds it -> the words alone, for the next question's context."""
    if isinstance(content, list):  # Gradio may hand back [{"type": "text", "text": ...}, ...]
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        return ""
    text = html.unescape(_TAG.sub("", content))
    return _MARKER.sub("", text).replace("*", "").strip()


# ---------------------------------------------------------------- the sources panel


def split_sentences(text: str) -> list[str]:
    """Cut a passage into sentences that join back to exactly the passage.

    >>> split_sentences("成本为557.6万美元。使用 FP8。 Then more. End")
    ['成本为557.6万美元。', '使用 FP8。', ' Then more.', ' End']
    """
    pieces, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        pieces.append(text[start : m.end()])
        start = m.end()
    if start < len(text):
        pieces.append(text[start:])
    return [p for p in pieces if p]


def best_sentences(passage: str, claims: Sequence[str]) -> set[int]:
    """Indexes of the passage sentences that best support each claim (an answer sentence citing it)."""
    sentences = split_sentences(passage)
    chosen: set[int] = set()
    for claim in claims:
        terms = key_terms(claim)
        if not terms:
            continue
        scores = [support(terms, s) if s.strip() else 0.0 for s in sentences]
        if not any(scores):
            # The claim's numbers are split across sentences: fall back to plain term overlap.
            scores = [sum(1 for t in terms if t in s.lower()) / len(terms) for s in sentences]
        best = max(scores, default=0.0)
        if best > 0:
            chosen.add(scores.index(best))
    return chosen


def highlighted_passage(passage: str, claims: Sequence[str]) -> str:
    """The passage as HTML with the sentences supporting `claims` in <mark>."""
    marked = best_sentences(passage, claims)
    out = []
    for i, sentence in enumerate(split_sentences(passage)):
        if i in marked and sentence.strip():
            lead = sentence[: len(sentence) - len(sentence.lstrip())]
            trail = sentence[len(sentence.rstrip()) :]
            out.append(f"{html.escape(lead)}<mark>{html.escape(sentence.strip())}</mark>{html.escape(trail)}")
        else:
            out.append(html.escape(sentence))
    return "".join(out)


def _where(chunk: Chunk, lang: str) -> str:
    heading = chunk.heading or chunk.title
    parts = [f'<span class="file">{html.escape(chunk.path)}</span>']
    if heading:
        parts.append(f'<span class="heading">{html.escape(heading)}</span>')
    if chunk.page:
        where = say(lang, chunk.unit, n=chunk.page)  # page 3, slide 3 or sheet 3
        parts.append(f'<span class="page">{html.escape(where)}</span>')
    parts.append(f'<span class="chars">{html.escape(say(lang, "chars", start=chunk.start, end=chunk.end))}</span>')
    return " · ".join(parts)


def passage_html(
    chunk: Chunk, lang: str, number: int | None = None, turn: int | None = None, claims: Sequence[str] = ()
) -> str:
    """One passage: [n], where it comes from, and its text (cited sentences marked)."""
    label = f'<b class="num">[{number}]</b> ' if number is not None else ""
    anchor = f' id="src-{turn}-{number}"' if number is not None and turn is not None else ""
    cls = "src cited" if claims else "src"
    body = highlighted_passage(chunk.text, claims) if claims else html.escape(chunk.text)
    cited_by = ""
    if claims:
        quoted = "".join(f"<q>{html.escape(_MARKER.sub('', c).strip())}</q>" for c in claims)
        cited_by = f'<div class="cited-by">{html.escape(say(lang, "cited_by"))} {quoted}</div>'
    return (
        f'<div class="{cls}"{anchor}><div class="meta">{label}{_where(chunk, lang)}</div>'
        f'<div class="passage">{body}</div>{cited_by}</div>'
    )


def details_html(answer: Answer, lang: str) -> str:
    """The search query, the scores of every retrieved passage, and the timings."""
    hits: list[Hit] = answer.hits or answer.related

    def num(x: float | None, fmt: str) -> str:
        return "–" if x is None else format(x, fmt)

    rows = "".join(
        f"<tr><td>{i}</td><td>{h.score:.4f}</td><td>{num(h.dense_score, '.3f')}</td>"
        f"<td>{num(h.lexical_score, '.2f')}</td><td>{html.escape(h.chunk.path)}</td>"
        f"<td>{html.escape(h.chunk.heading or h.chunk.title)}</td></tr>"
        for i, h in enumerate(hits, start=1)
    )
    head = "".join(
        f"<th>{html.escape(say(lang, k))}</th>"
        for k in ("score_rank", "score_fused", "score_dense", "score_bm25", "score_file", "score_heading")
    )
    times = ", ".join(f"{html.escape(_timing_label(k, lang))} {v:.2f} s" for k, v in answer.timings.items())
    tokens = ""
    if answer.prompt_tokens or answer.completion_tokens:
        tokens = (
            f" · {html.escape(say(lang, 'tokens', prompt=answer.prompt_tokens, completion=answer.completion_tokens))}"
        )
    return (
        f'<details class="retrieval" open><summary>{html.escape(say(lang, "details_title"))}</summary>'
        f'<p>{html.escape(say(lang, "query"))}<code class="query">{html.escape(answer.query)}</code></p>'
        f'<table class="scores"><tr>{head}</tr>{rows}</table>'
        f'<p class="timings">{html.escape(say(lang, "timings"))}{times}{tokens}</p></details>'
    )


def _timing_label(key: str, lang: str) -> str:
    return say(lang, f"t_{key}") if f"t_{key}" in TEXT[lang_or_default(lang)] else key


def exchange_html(ex: Exchange, lang: str, show_details: bool, latest: bool) -> str:
    """The sources panel for one question: cited passages first, then related ones, then (if asked) retrieval details."""
    answer, parts = ex.answer, []
    if answer.citations:
        parts.append(f"<h4>{html.escape(say(lang, 'cited'))}</h4>")
        for c in answer.citations:
            claims = sentences_citing(answer.text, c.number)
            parts.append(passage_html(c.chunk, lang, c.number, ex.number, claims))
    elif answer.refused and answer.related:
        parts.append(f'<h4 class="related-title">{html.escape(say(lang, "related"))}</h4>')
        parts += [f'<div class="related">{passage_html(h.chunk, lang)}</div>' for h in answer.related]
    elif answer.hits:
        # The answer cites nothing: show what the model read, so the reader can still check.
        parts.append(f'<h4 class="related-title">{html.escape(say(lang, "uncited"))}</h4>')
        parts += [f'<div class="related">{passage_html(h.chunk, lang, i)}</div>' for i, h in enumerate(answer.hits, 1)]
    if answer.unsupported:
        items = "".join(f"<li>{html.escape(s)}</li>" for s in answer.unsupported)
        parts.append(
            f'<div class="unsupported-list"><b>{html.escape(say(lang, "unsupported"))}</b><ul>{items}</ul></div>'
        )
    if show_details:
        parts.append(details_html(answer, lang))
    title = html.escape(say(lang, "turn", n=ex.number, question=ex.question))
    is_open = " open" if latest else ""
    return f'<details class="turn" id="turn-{ex.number}"{is_open}><summary>{title}</summary>{"".join(parts)}</details>'


def sources_html(exchanges: Sequence[Exchange], lang: str, show_details: bool = False, status: str = "") -> str:
    """The whole panel: an optional status line, then each turn's sources, newest first and open."""
    head = f'<p class="status">{html.escape(status)}</p>' if status else ""
    if not exchanges:
        return head or f'<p class="empty">{html.escape(say(lang, "sources_empty"))}</p>'
    recent = list(exchanges)[-KEEP_TURNS:]
    body = "".join(exchange_html(ex, lang, show_details, latest=(ex is recent[-1])) for ex in reversed(recent))
    return head + body


# ---------------------------------------------------------------- the index panel


def status_html(lines: Sequence[str], done: int = 0, total: int = 0, error: bool = False) -> str:
    """Status lines for index updates and uploads; a `total` adds a progress bar."""
    bar = f'<progress value="{done}" max="{total}"></progress>' if total else ""
    cls = "status error" if error else "status"
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f'<div class="{cls}"><ul>{items}</ul>{bar}</div>'


def _local_time(stamp: str) -> str:
    try:
        return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return stamp


def documents_rows(index: Index) -> list[list[Any]]:
    """[name, chunks, last indexed] for each indexed document."""
    return [
        [path, len(entry.chunk_ids), _local_time(entry.indexed_at)]
        for path, entry in sorted(index.manifest.files.items())
    ]


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>#|])")


def index_summary(index: Index, lang: str) -> str:
    """The index panel's markdown: model, counts, build time, and each skipped file with its reason
    (kept in the manifest, so the panel says it until the file is fixed, not only after a build)."""
    m = index.manifest
    head = say(lang, "index_info", model=m.embed_model, documents=len(m.files), chunks=len(index),
               built=_local_time(m.built_at))  # fmt: skip
    skipped = [
        "- " + _MARKDOWN_SPECIAL.sub(r"\\\1", say(lang, "build_skipped", path=path, reason=entry.get("reason", "")))
        for path, entry in sorted(m.skipped.items())
    ]
    return "\n\n".join([head, say(lang, "index_skipped", n=len(skipped)), "\n".join(skipped)]) if skipped else head
