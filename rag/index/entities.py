"""The names a corpus mentions, mined from its own text when the index is built (entities.json).

No hand-written table of companies or products: any corpus brings its own. A question that names
something the corpus never mentions ("what did <an organisation absent from every document> release?")
cannot be answered from it, however close the nearest passages look. Names are found by general means:
Latin-script capitalised or versioned words, and Chinese words jieba tags as person (nr), place (ns),
organisation (nt) or other proper noun (nz), plus a noun written before an organisation suffix.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from rag.index.lexical import _jieba

ENTITIES_FILE = "entities.json"
# jieba's tags for proper nouns: person, person-ish org ("nrt"), place, organisation, other proper noun.
_PROPER_TAGS = frozenset(["nr", "nrt", "nrfg", "ns", "nt", "nz"])
# A noun written before one of these is an organisation's name ("某某公司" -> "某某"): Chinese grammar, no corpus.
_ORG_SUFFIX = re.compile(r"^([\u4e00-\u9fff]{2,6}?)(公司|集团|大学|学院|研究院|研究所|实验室|银行|医院)$")
_CJK = re.compile(r"^[\u4e00-\u9fff]{2,}$")
# Capitalised or versioned Latin words: "Acme", "Zorblax-7", "XK9". A capital after the sentence's start
# is what English writes names with; the first word of a sentence is left out unless it recurs elsewhere.
_LATIN = re.compile(r"(?<![A-Za-z0-9.\-])(?:[A-Z][A-Za-z0-9\-]*[A-Za-z0-9]|[A-Za-z]+-?\d[A-Za-z0-9\-]*)(?![A-Za-z0-9])")


def _jieba_posseg():  # type: ignore[no-untyped-def]
    _jieba()  # dictionary loaded, quietly
    import jieba.posseg

    return jieba.posseg


def chinese_entities(text: str) -> list[str]:
    """Chinese proper nouns of `text`: '张伟在北京大学读书' -> ['张伟', '北京大学']; '某某公司' also gives '某某'."""
    found: list[str] = []
    for pair in _jieba_posseg().lcut(unicodedata.normalize("NFKC", text)):
        word, flag = pair.word.strip(), pair.flag
        if not _CJK.match(word):
            continue
        m = _ORG_SUFFIX.match(word)
        if m:
            found.append(m.group(1))
        if flag in _PROPER_TAGS:
            found.append(word)
    return found


def latin_entities(text: str) -> list[str]:
    """Capitalised or versioned Latin words, lower-cased: 'Acme built the XK9' -> ['acme', 'xk9']."""
    return [m.group(0).lower() for m in _LATIN.finditer(unicodedata.normalize("NFKC", text))]


def mine(texts: Iterable[str]) -> dict[str, int]:
    """Each name the texts mention, with the number of passages that mention it."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(set(chinese_entities(text)) | set(latin_entities(text)))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def save(directory: Path, entities: dict[str, int]) -> None:
    """Written beside the BM25 state, so the vocabulary always matches the passages of its build."""
    (directory / ENTITIES_FILE).write_text(json.dumps(entities, ensure_ascii=False), encoding="utf-8")


def load(directory: Path) -> dict[str, int] | None:
    """The build's names; None for a build made before they were mined (then no question is refused for a name)."""
    path = directory / ENTITIES_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def unknown_entities(query: str, vocabulary: dict[str, int] | None, knows: Callable[[str], bool]) -> list[str]:
    """Chinese names a question gives that the corpus never mentions: not among its mined names, and
    not written anywhere in its passages (`knows`). [] when the corpus writes no Chinese names at all:
    a Chinese question about an English corpus names its subjects in translation, which no table maps.
    """
    if not vocabulary or not any(_CJK.match(name) for name in vocabulary):
        return []
    asked = dict.fromkeys(chinese_entities(query))
    return [name for name in asked if name not in vocabulary and not knows(name)]
