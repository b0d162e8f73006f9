"""Answer hygiene: what any answer needs before it is shown, whatever the corpus.

- `drop_repeats`: a small model writes the same sentence or list item twice ("X 于 2024 年发布。
  X 于 2024 年发布。", "支持文本、图像、文本"); the repeat says nothing and reads as a glitch.
  Applied to the model's text before the citation check, so a repeat is neither checked nor
  shown. (A loop of three or more, `citations.is_degenerate`, is still judged on the raw text
  and refused: that is a model that lost its way, not one that repeated itself once.)
- `set_aside_unsupported`: a sentence no passage supports is not presented as the answer. It is
  moved under a marked note at the end rather than dropped: the support test is lexical, and an
  English answer to Chinese passages (a translation) often fails it while being right, so dropping
  would silently delete correct content; under the note the reader still sees it, told that the
  documents do not back it (the page underlines it and lists it beside the sources).

Example:
    >>> drop_repeats("A 于 2024 年发布[1]。A 于 2024 年发布。它支持文本、图像、文本[2]。")
    'A 于 2024 年发布[1]。它支持文本、图像[2]。'
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace

from rag.answer.citations import _MARKER, CheckedAnswer
from rag.answer.prompting import ENGLISH_FULL_STOP

UNSUPPORTED_NOTE = {
    "zh": "以下内容在资料中找不到依据，仅供参考：",
    "en": "Not supported by the documents (unverified):",
}

_SENTENCE = re.compile(rf"[^。！？!?\n]*?(?:[。！？!?]+|{ENGLISH_FULL_STOP}|\n|$)")
# The citation marker as citations.py parses it ("[1]", "【2, 3】"), so both agree on what a marker is.
_TRAILING_MARKERS = re.compile(rf"(?:{_MARKER.pattern})+$")
_ITEM_SEP = re.compile(r"([、；;])")
_LIST_HEAD = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)、])\s*")
_NUMBERED = re.compile(r"^(\s*)(\d{1,2})([.)、]\s*)")
MIN_KEY = 4  # characters of content a sentence needs before a second copy counts as a repeat


def _key(text: str) -> str:
    """What two copies share: no markers, list bullets, punctuation, spaces or case."""
    text = _LIST_HEAD.sub("", _MARKER.sub("", unicodedata.normalize("NFKC", text)))
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _split(text: str) -> list[str]:
    return [s for s in _SENTENCE.findall(text) if s]


_NUMBER_ONLY = re.compile(r"\s*\d{1,2}[.)、]")


def _units(line: str) -> list[str]:
    """A line's sentences, a list number kept with its item ('3. Red apples' is one, not '3.' and 'Red apples')."""
    parts = _split(line)
    if len(parts) >= 2 and _NUMBER_ONLY.fullmatch(parts[0]):
        parts[:2] = [parts[0] + parts[1]]
    return parts


def _dedupe_items(sentence: str) -> str:
    """'文本、图像、文本[2]。' -> '文本、图像[2]。': a repeated item of an enumeration (、 or ;) is left out."""
    parts = _ITEM_SEP.split(sentence)
    if len(parts) < 5:  # fewer than three items: nothing to enumerate twice
        return sentence
    items, seps = parts[0::2], parts[1::2]
    tail_end = re.search(r"[。！？!?.\n]*$", items[-1])
    end = tail_end.group(0) if tail_end else ""
    last = items[-1][: len(items[-1]) - len(end)]
    markers = _TRAILING_MARKERS.search(last)
    items[-1] = last[: markers.start()] if markers else last
    trailer = (markers.group(0) if markers else "") + end
    lead = _key(items[0])  # the first item carries the sentence's opening: "它支持文本"
    seen: set[str] = set()
    kept: list[str] = []
    for i, item in enumerate(items):
        key = _key(item)
        if key and (key in seen or (i and len(key) >= 2 and lead.endswith(key))):
            continue
        seen.add(key)
        kept.append((seps[i - 1] if i and kept else "") + item)
    return "".join(kept) + trailer


def _renumber(lines: list[str]) -> list[str]:
    """Numbered list lines '1.', '3.' left after a repeat was dropped -> '1.', '2.' (other lines untouched)."""
    out, expected = [], 1
    for line in lines:
        m = _NUMBERED.match(line)
        if m:
            line = f"{m.group(1)}{expected}{m.group(3)}{line[m.end() :]}"
            expected += 1
        elif line.strip():
            expected = 1
        out.append(line)
    return out


def drop_repeats(text: str) -> str:
    """The text with each sentence or list line said once (the first copy kept, with its markers)."""
    seen: set[str] = set()
    lines: list[str] = []
    dropped = False
    for line in text.split("\n"):
        kept = []
        for unit in _units(line):
            key = _key(unit)
            shortest = 2 if _LIST_HEAD.match(unit) else MIN_KEY  # a list item may be one short word
            if len(key) >= shortest and key in seen:
                dropped = True
                continue
            seen.add(key)
            deduped = _dedupe_items(unit)
            dropped = dropped or deduped != unit
            kept.append(deduped)
        if kept or not line.strip():
            lines.append("".join(kept))
    if not dropped:
        return text
    return "\n".join(_renumber(lines)).strip()


def set_aside_unsupported(checked: CheckedAnswer, lang: str) -> CheckedAnswer:
    """The checked answer with the sentences no passage supports moved under UNSUPPORTED_NOTE.

    Example (lang "en"): "X has 4 wheels[1]. It is blue." with "It is blue" unsupported ->
    "X has 4 wheels[1].\\n\\nNot supported by the documents (unverified):\\nIt is blue."
    A note the checker added (sources that differ) stays at the end of the answer proper.
    """
    if not checked.unsupported:
        return checked
    wanted = {_key(s) for s in checked.unsupported} - {""}
    lines, moved = [], []
    for line in checked.text.split("\n"):
        units = _units(line)
        kept = [u for u in units if _key(u) not in wanted]
        moved += [_LIST_HEAD.sub("", u).strip() for u in units if _key(u) in wanted]
        if kept or not line.strip():
            lines.append("".join(kept))
    if not moved:
        return checked
    text = "\n".join(_renumber(lines)).strip()
    note = UNSUPPORTED_NOTE.get(lang, UNSUPPORTED_NOTE["en"])
    aside = "\n".join(m for m in moved if m)
    return replace(checked, text=(f"{text}\n\n" if text else "") + f"{note}\n{aside}")


def answer_body(text: str) -> str:
    """The part of a shown answer presented as the answer: before the unsupported note."""
    for note in UNSUPPORTED_NOTE.values():
        at = text.find(note)
        if at >= 0:
            text = text[:at]
    return text.strip()
