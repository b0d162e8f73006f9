"""Markers that are not prose, taken out of what the embedder, BM25 and the model read.

Documents copied from the web or a PDF carry things no sentence says: a source tag after a
sentence ("… 发布 [EXAMPLE.COM](#)。", "… released. EXAMPLE.ORG"), footnote references ("[12]",
"[citation needed]") that look exactly like the model's own citation markers, and page
furniture (a line that is only "12", "- 12 -", "Page 3 of 10" or "第 3 页"). A small model
copies them into answers, cites "[12]" as if it were passage 12, and BM25 matches on them.

Only the *reading* is cleaned: `Chunk.text` stays the exact slice of the file, so the source
panel shows the original and spans still point into it (chunking.clean_text calls
`strip_markers` first). Every rule is about the form of the text, never about a corpus's
content.

Example:
    >>> strip_markers("模型于 2024 年发布 [EXAMPLE.COM](#)。见注释[3]。\\n- 7 -\\n下一段")
    '模型于 2024 年发布。见注释。\\n下一段'
"""

from __future__ import annotations

import re

# A domain of at least two labels with a 2-6 letter top level: "example.com", "EN.EXAMPLE.ORG".
_DOMAIN = r"(?:[A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,6}"
# "[EXAMPLE.COM]", "[example.com](#)", "[EXAMPLE.COM](https://…)": a bracketed domain, link or not.
_BRACKETED_SOURCE = re.compile(rf"\[\s*{_DOMAIN}\s*\](?:\([^)\s]*\))?")
# A bare domain in capitals after prose ("… 发布 EXAMPLE.COM。"): written in capitals it is a tag,
# not a web address someone is told to visit ("see example.com" stays).
_BARE_SOURCE = re.compile(r"(?<![\w.@/])(?:[A-Z0-9][A-Z0-9\-]*\.)+[A-Z]{2,6}(?![\w.@/])")
# Footnote references: "[12]", "[3, 4]", "[2-5]", "[note 3]", "[citation needed]", "[12](#ref)".
_FOOTNOTE = re.compile(
    r"\[\s*(?:\d{1,3}(?:\s*[,，\-–]\s*\d{1,3})*|(?:note|n|fn)\s*\d{1,3}|citation needed)\s*\](?:\([^)\s]*\))?",
    re.IGNORECASE,
)
# A line that is only a page number or a running "page n of m".
_PAGE_LINE = re.compile(
    r"^[ \t]*(?:[-–—]?[ \t]*\d{1,4}[ \t]*[-–—]?|page[ \t]+\d{1,4}(?:[ \t]+of[ \t]+\d{1,4})?|"
    r"第[ \t]*\d{1,4}[ \t]*页(?:[ \t]*[/，,]?[ \t]*共[ \t]*\d{1,4}[ \t]*页)?|\d{1,4}[ \t]*/[ \t]*\d{1,4})[ \t]*(?:\n|$)",
    re.IGNORECASE | re.MULTILINE,
)
_CARRIAGE = re.compile(r"\r\n?")
# The gap a removed tag leaves before punctuation: "发布 。" -> "发布。", "released ." -> "released."
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t\u3000]+(?=[。，、；：！？,.;:!?）)])")


def strip_markers(text: str) -> str:
    """The text without source tags, footnote references and page-number lines (see the module docstring)."""
    text = _CARRIAGE.sub("\n", text)
    text = _BRACKETED_SOURCE.sub("", text)
    text = _BARE_SOURCE.sub("", text)
    text = _FOOTNOTE.sub("", text)
    text = _PAGE_LINE.sub("", text)
    return _SPACE_BEFORE_PUNCT.sub("", text)
