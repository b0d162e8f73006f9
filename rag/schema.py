"""The small typed records that flow between stages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

# What a chunk's `page` counts, by file suffix, where it is not a page: the slides of a deck, the
# sheets of a workbook. Here in the core, not beside the loaders, so that every layer can name a
# location from the path alone (the chat page, the Markdown export), for chunks saved long ago too.
LOCATION_UNITS: dict[str, str] = {".pptx": "slide", ".xlsx": "sheet"}


def location_unit(path: str) -> str:
    """What a chunk's `page` number counts in this file: 'deck.PPTX' -> 'slide', 'a.xlsx' -> 'sheet', else 'page'."""
    return LOCATION_UNITS.get(PurePosixPath(path).suffix.lower(), "page")


@dataclass(frozen=True)
class Section:
    """Where a part of a document under one heading path starts (a Word heading, a slide, a sheet)."""

    start: int  # offset in Document.text
    headings: tuple[str, ...]  # outermost first; () for a part under no heading (an untitled slide)


@dataclass(frozen=True)
class Document:
    """One source file, decoded. `text` is what spans index into.

    For .txt/.md it is the file's full text (front matter included, so spans
    are offsets in the file); for other formats it is the extracted text
    (PDF pages, slides and sheets joined by blank lines), and `page_starts[i]`
    is where page (slide, sheet) i+1 begins. `sections` gives the heading path
    of formats whose headings are not markdown lines; when empty, the chunker
    follows the markdown headings in `text`.
    """

    path: str  # relative to the corpus directory, '/'-separated
    title: str
    text: str
    sha256: str
    body_start: int = 0  # first character after any YAML front matter
    page_starts: tuple[int, ...] = ()
    sections: tuple[Section, ...] = ()

    def page_at(self, offset: int) -> int | None:
        if not self.page_starts:
            return None
        page = 0
        for i, start in enumerate(self.page_starts):
            if start <= offset:
                page = i + 1
        return page


@dataclass(frozen=True)
class Chunk:
    """A passage. `text` is exactly `document.text[start:end]` (for two chunks joined into one
    passage, see chunking.joined)."""

    id: str
    path: str
    title: str
    headings: tuple[str, ...]
    start: int
    end: int
    text: str
    page: int | None = None

    @property
    def heading(self) -> str:
        return " > ".join(self.headings)

    @property
    def unit(self) -> str:
        """What `page` counts: "page", "slide" or "sheet" (see LOCATION_UNITS)."""
        return location_unit(self.path)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["headings"] = list(self.headings)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Chunk:
        return cls(**{**d, "headings": tuple(d["headings"])})


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk with the scores that ranked it (None = not in that list)."""

    chunk: Chunk
    score: float  # the fused score (see rag/answer/retrieval.py)
    dense_score: float | None = None
    lexical_score: float | None = None


@dataclass(frozen=True)
class Citation:
    number: int  # the [n] shown in the answer; n-th passage given to the model
    chunk: Chunk


@dataclass
class Answer:
    question: str
    query: str  # what was searched (the question, or its standalone rewrite)
    text: str
    citations: list[Citation]
    hits: list[Hit]  # every passage given to the model, in prompt order
    refused: bool = False  # the documents do not cover the question
    unsupported: list[str] = field(default_factory=list)  # sentences no passage supports
    factual_sentences: int = 0  # sentences the citation checker examined
    related: list[Hit] = field(default_factory=list)  # closest passages shown with a refusal
    raw_text: str = ""  # what the model wrote, before citation checking
    timings: dict[str, float] = field(default_factory=dict)  # seconds
    prompt_tokens: int = 0  # tokens the model read before answering (cached blocks not counted)
    completion_tokens: int = 0
    path: str = "ordinary"  # "cached": the passages' KV came from the store (rag/answer/kvstore.py), only the rest was read
    cached_tokens: int = 0  # passage tokens restored from the store instead of read
    # Each generation's path in order: ["cached", "ordinary"] when the cached answer was written
    # again from the whole prompt; a self-refusal asked again adds one more.
    tries: list[str] = field(default_factory=list)
    # P(yes) of the answerable_check on the last try (rag/answer/answerable.py); None: not asked.
    answerable_score: float | None = None
