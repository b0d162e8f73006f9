"""Document -> Chunk.

Splits at markdown headings first (outside ``` code fences), then at Chinese
and Western sentence ends (。！？；!?) and line breaks, and packs sentences
into chunks of at most `size` characters, repeating up to `overlap`
characters of trailing sentences at the start of the next chunk. Each chunk
is an exact slice of the document text, so its span maps back to the file.

Example: a section "## A\\n甲。乙。丙。" with size=5, overlap=2 gives the chunks
"## A", "甲。乙。", "乙。丙。": each at most 5 characters, the second starting
again at the sentence that ended the first (a too-long sentence is cut at the
size limit).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rag.ingest.clean import strip_markers
from rag.schema import Chunk, Document

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_FENCE = re.compile(r"^[ \t]*(```|~~~)", re.MULTILINE)
# A sentence ends after a terminal mark (plus closing quotes/brackets) or a newline.
_SENTENCE_END = re.compile(r"[。！？；!?]+[”’」』）)\]】]*|\.(?=\s)|\n")
# Where a chunk is split into the pieces that are embedded one by one (piece_texts): after a
# sentence's end or a line (a list item, a table row). Measured on the dev questions (README).
_PIECE_END = re.compile(r"(?<=[。！？!?\n])")
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_SUPERSCRIPTS = re.compile(r"[⁰¹²³⁴⁵⁶⁷⁸⁹]+")
_EMPHASIS = re.compile(r"\*\*|__")
_SPACES = re.compile(r"[ \t\u3000]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")

# A section shorter than this (e.g. a heading followed directly by a sub-heading)
# is merged into the next one, so no chunk is only a heading.
_MIN_SECTION = 40
# Once a chunk holds this share of the size, it ends at the next paragraph break.
_PARAGRAPH_CUT = 0.5


@dataclass(frozen=True)
class ChunkerSettings:
    size: int
    overlap: int

    def as_dict(self) -> dict[str, int | str]:
        # Bump the strategy name when the algorithm changes, so old indexes are rebuilt.
        return {"strategy": "headings+paragraphs+sentences/4", "size": self.size, "overlap": self.overlap}


def clean_heading(raw: str) -> str:
    return _EMPHASIS.sub("", _MD_LINK.sub(r"\1", raw)).strip()


def clean_text(text: str) -> str:
    """What the embedder, BM25 and the model read: markup, source tags, footnotes and page numbers removed."""
    text = strip_markers(text)  # rag/ingest/clean.py
    text = _SUPERSCRIPTS.sub("", text)
    text = _MD_IMAGE.sub("", text)  # image names are noise to every reader
    text = _MD_LINK.sub(r"\1", text)
    text = _EMPHASIS.sub("", text)
    text = _SPACES.sub(" ", text)
    return _BLANK_LINES.sub("\n", text).strip()


def context_line(chunk: Chunk) -> str:
    """Document title and heading path: "title > heading > sub-heading" (the title alone without headings)."""
    return " > ".join([chunk.title, *chunk.headings]) if chunk.headings else chunk.title


def search_text(chunk: Chunk) -> str:
    """The chunk as indexed: document title and heading path give the passage its context."""
    return f"{context_line(chunk)}\n{clean_text(chunk.text)}"


def piece_texts(chunk: Chunk, max_chars: int) -> list[str]:
    """The chunk's sentences, grouped in order into pieces of at most `max_chars` characters (a longer
    sentence is a piece of its own), each headed by the chunk's context line, as they are embedded.

    A chunk's vector averages everything it says, so a question about one sentence of a chunk on
    something else can rank it low; the piece's vector says that one thing (see Index.dense_search).
    [] when max_chars is 0 or the whole chunk is one piece: its own vector already says it.
    Example: "甲。乙。丙丙丙丙。" (title T) with max_chars 4 -> ["T\n甲。乙。", "T\n丙丙丙丙。"].
    """
    if max_chars <= 0:
        return []
    groups: list[str] = []
    for sentence in _PIECE_END.split(clean_text(chunk.text)):
        if groups and len(groups[-1].strip()) + len(sentence.strip()) <= max_chars:
            groups[-1] += sentence
        elif sentence.strip():
            groups.append(sentence)
    if len(groups) < 2:
        return []
    context = context_line(chunk)
    return [f"{context}\n{g.strip()}" for g in groups]


def _fenced_ranges(text: str) -> list[tuple[int, int]]:
    marks = [m.start() for m in _FENCE.finditer(text)]
    return [(marks[i], marks[i + 1]) for i in range(0, len(marks) - 1, 2)]


def first_heading(text: str, start: int = 0) -> str | None:
    """The first markdown heading at or after `start`, ignoring '#' lines inside code fences."""
    fences = _fenced_ranges(text)
    for m in _HEADING.finditer(text, start):
        if not any(a <= m.start() < b for a, b in fences):
            return clean_heading(m.group(2))
    return None


def _sections(doc: Document) -> list[tuple[tuple[str, ...], int, int]]:
    """(heading path, start, end) for each heading-delimited section of the body: the loader's sections
    (Word headings, slides, sheets) when it gave them, else the markdown headings of the text."""
    text = doc.text
    if doc.sections:
        starts = [(s.headings, max(s.start, doc.body_start)) for s in doc.sections]
        if starts[0][1] > doc.body_start:
            starts.insert(0, ((), doc.body_start))
        ends = [start for _, start in starts[1:]] + [len(text)]
        sections = [(path, a, b) for (path, a), b in zip(starts, ends, strict=True) if b > a]
        return _merge_short(sections, text, into_other_parts=False)
    return _merge_short(_markdown_sections(text, doc.body_start), text, into_other_parts=True)


def _markdown_sections(text: str, start: int) -> list[tuple[tuple[str, ...], int, int]]:
    """Markdown sections with their heading paths; `#` lines inside code fences are not headings."""
    fences = _fenced_ranges(text)
    headings = [
        m
        for m in _HEADING.finditer(text, start)
        if not any(a <= m.start() < b for a, b in fences)
    ]
    sections: list[tuple[tuple[str, ...], int, int]] = []
    stack: list[tuple[int, str]] = []
    cursor, path = start, ()
    for m in headings:
        if m.start() > cursor:
            sections.append((path, cursor, m.start()))
        level = len(m.group(1))
        stack = [(lvl, title) for lvl, title in stack if lvl < level] + [(level, clean_heading(m.group(2)))]
        path = tuple(title for _, title in stack)
        cursor = m.start()
    sections.append((path, cursor, len(text)))
    return sections


def _merge_short(
    sections: list[tuple[tuple[str, ...], int, int]], text: str, into_other_parts: bool
) -> list[tuple[tuple[str, ...], int, int]]:
    """A section too short to stand alone (a heading with a sub-heading right after it) joins the next one.

    Without `into_other_parts` it joins only a section nested under it: a short slide or sheet stays
    itself rather than take the next one's title.
    """
    merged: list[tuple[tuple[str, ...], int, int]] = []
    carry: int | None = None
    for i, (path, a, b) in enumerate(sections):
        a = carry if carry is not None else a
        following = sections[i + 1][0] if i + 1 < len(sections) else ()
        nested = bool(path) and len(following) > len(path) and following[: len(path)] == path
        if len(text[a:b].strip()) < _MIN_SECTION and i + 1 < len(sections) and (into_other_parts or nested):
            carry = a
            continue
        carry = None
        merged.append((path, a, b))
    return [s for s in merged if text[s[1] : s[2]].strip()]


def _sentences(text: str, start: int, end: int, size: int) -> list[tuple[int, int]]:
    spans, cursor = [], start
    for m in _SENTENCE_END.finditer(text, start, end):
        spans.append((cursor, m.end()))
        cursor = m.end()
    if cursor < end:
        spans.append((cursor, end))
    out = []
    for a, b in spans:  # a sentence longer than a chunk is cut at the size limit
        while b - a > size:
            out.append((a, a + size))
            a += size
        if b > a:
            out.append((a, b))
    return out


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def chunk_id(path: str, start: int, end: int, text: str) -> str:
    return hashlib.sha1(f"{path}\0{start}\0{end}\0{text}".encode()).hexdigest()[:16]


def chunk_document(doc: Document, settings: ChunkerSettings) -> list[Chunk]:
    """Cut a document into passages along its sections and paragraphs, so a chunk holds whole facts under its heading path."""
    text, chunks = doc.text, []
    for headings, s_start, s_end in _sections(doc):
        sentences = _sentences(text, s_start, s_end, settings.size)
        # A blank line ends a paragraph; cutting there keeps facts whole and needs no overlap.
        blank = [not text[a:b].strip() for a, b in sentences]
        i = 0
        while i < len(sentences):
            j, length, at_paragraph = i, 0, False
            while j < len(sentences) and (j == i or length + sentences[j][1] - sentences[j][0] <= settings.size):
                if j > i and blank[j] and length >= settings.size * _PARAGRAPH_CUT:
                    at_paragraph = True
                    break
                length += sentences[j][1] - sentences[j][0]
                j += 1
            a, b = _trim(text, sentences[i][0], sentences[j - 1][1])
            if b > a:
                body = text[a:b]
                chunks.append(
                    Chunk(
                        id=chunk_id(doc.path, a, b, body),
                        path=doc.path,
                        title=doc.title,
                        headings=headings,
                        start=a,
                        end=b,
                        text=body,
                        page=doc.page_at(a),
                    )
                )
            if j >= len(sentences):
                break
            if at_paragraph:
                i = j
                continue
            # Step back over trailing sentences that fit in the overlap, always advancing.
            back, k = 0, j
            # The next chunk must still reach past this one: overlap plus sentence j must fit.
            room = settings.size - (sentences[j][1] - sentences[j][0])
            while k - 1 > i and back + sentences[k - 1][1] - sentences[k - 1][0] <= min(settings.overlap, room):
                k -= 1
                back += sentences[k][1] - sentences[k][0]
            i = k
    return _drop_duplicates(chunks)


# A chunk whose cleaned text ends in one of these finished what it was saying: a sentence, a
# bracket or quote, a table row or a code fence. Anything else was cut mid-sentence.
_FINISHED = "。！？!?；;.…)）」』”\"]】|│`"


def runs_on(chunk: Chunk, next_chunk: Chunk) -> bool:
    """Whether `chunk` stops mid-sentence and `next_chunk`, the next chunk of its section, goes on with it.

    The chunker cuts at the size limit wherever the sentences fall, and a PDF page break can end a
    paragraph mid-sentence; the reader of such a chunk misses how its last sentence ends.
    """
    last = clean_text(chunk.text)[-1:]
    return bool(last) and last not in _FINISHED and (chunk.path, chunk.headings) == (next_chunk.path, next_chunk.headings)


def joined(first: Chunk, second: Chunk) -> Chunk:
    """One passage of two neighbouring chunks of a document, their overlap once.

    Where the chunker skipped characters between them (whitespace, or markup that cleans to
    nothing, such as an image link) up to two line breaks stand in for them, so the text is
    the file's slice as every reader sees it (see clean_text), not always byte for byte.
    """
    if second.start <= first.end:
        text = first.text + second.text[first.end - second.start :]
    else:
        text = first.text + "\n" * min(second.start - first.end, 2) + second.text
    return Chunk(
        id=chunk_id(first.path, first.start, second.end, text),
        path=first.path,
        title=first.title,
        headings=first.headings,
        start=first.start,
        end=second.end,
        text=text,
        page=first.page,
    )


def following(chunks: Sequence[Chunk]) -> dict[int, int]:
    """Row -> the row of the next chunk of the same document (rows need not be in document order)."""
    order = sorted(range(len(chunks)), key=lambda i: (chunks[i].path, chunks[i].start))
    return {a: b for a, b in itertools.pairwise(order) if chunks[a].path == chunks[b].path}


def passage(chunk: Chunk, next_chunk: Chunk | None, max_chars: int) -> Chunk:
    """What the model reads for `chunk`: the chunk, or it joined with the next chunk of its document
    when it `runs_on` into it and the two span at most `max_chars` (0: never joined).

    Example: of the chunks "甲说，", "乙。", "丙。" of one section, "甲说，" is read joined with "乙。".
    """
    if next_chunk is not None and next_chunk.end - chunk.start <= max_chars and runs_on(chunk, next_chunk):
        return joined(chunk, next_chunk)
    return chunk


def _drop_duplicates(chunks: list[Chunk]) -> list[Chunk]:
    seen, out = set(), []
    for c in chunks:
        if c.id not in seen and clean_text(c.text):
            seen.add(c.id)
            out.append(c)
    return out
