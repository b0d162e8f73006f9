"""Answer text + passages -> checked citations.

Small models forget, misnumber or invent [n] markers, so markers are
checked, not trusted: a marker pointing at no passage is dropped; one whose
passage does not support its sentence is moved to the passage that does (or
dropped); a sentence without a marker gets one when a passage clearly
supports it; a factual sentence no passage supports is reported.

Support is lexical: the share of the sentence's key terms (jieba words and
numbers, after NFKC normalization) that occur in the passage.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from rag.answer.prompting import ENGLISH_FULL_STOP, english_figures, language_of
from rag.guards import ALL, Guards
from rag.index.lexical import STOPWORDS, mentions, words
from rag.ingest.chunking import clean_text
from rag.schema import Citation, Hit

_MARKER = re.compile(r"\s?[\[【]\s*(\d{1,2}(?:\s*[,，、]\s*\d{1,2})*)\s*[\]】]")
_SENTENCE = re.compile(rf"[^。！？!?\n]*?(?:[。！？!?]+|{ENGLISH_FULL_STOP}|\n|$)")
# A number that stands alone: not the "3" of "DeepSeek-V3" or the "4" of "GPT-4o".
_NUMBER = re.compile(r"(?<![a-z0-9.\-])\d+(?:\.\d+)?(?![a-z0-9])")

# A number with the unit written after it: "557.6万美元", "2025年", "50%".
_QUANTITY = re.compile(r"(?<![0-9a-z.])(\d+(?:\.\d+)?)\s?([%％]|[\u4e00-\u9fff]{1,3}|[a-z]{1,6})", re.IGNORECASE)
CONFLICT_NOTE = {
    "zh": "注意：资料说法不一，{refs}。",
    "en": "Note: the sources differ: {refs}.",
}
CONFLICT_REF = {"zh": "[{n}] 写的是“{quote}”", "en": "[{n}] says “{quote}”"}
MAX_CONFLICTS = 2

# Qwen puts a space between a figure and a Chinese word ("1750 亿", "在 2022 年"); the
# sources write "1750亿", and a reader searching the answer for the source's term should
# find it. The digit of a Latin name ("GPT-4 和") keeps its space.
_FIGURE_SPACE = re.compile(r"(?<![A-Za-z\-])(\d+(?:\.\d+)?)[ \t]+(?=[\u4e00-\u9fff%％])|(?<=[\u4e00-\u9fff])[ \t]+(?=\d)")


def tidy_figures(text: str) -> str:
    """'在 2022 年 11 月发布 1750 亿参数' -> '在2022年11月发布1750亿参数' (Chinese answers only)."""
    return _FIGURE_SPACE.sub(lambda m: m.group(1) or "", text)


_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_NUMBER_WORD = re.compile(
    r"\b(?:(" + "|".join(_TENS) + r")(?:[- ](" + "|".join(_UNITS[1:10]) + r"))?|(" + "|".join(_UNITS) + r"))\b"
)


def spelled_out_as_digits(text: str) -> str:
    """English number words under a hundred written as digits, so a passage that spells a count
    ("eleven layers") grounds the answer that writes it ("11 layers"). Text is normalised (lower case).
    Examples: 'eleven layers' -> '11 layers'; 'twenty-one days' -> '21 days'."""

    def digits(m: re.Match[str]) -> str:
        if m.group(3):
            return str(_UNITS.index(m.group(3)))
        return str(10 * (_TENS.index(m.group(1)) + 2) + (_UNITS.index(m.group(2)) if m.group(2) else 0))

    return _NUMBER_WORD.sub(digits, text)


SUPPORTS = 0.5  # share of key terms a passage must contain to support a sentence
ATTACH = 0.6  # stricter bar for adding a marker the model did not write


@dataclass(frozen=True)
class CheckedAnswer:
    text: str
    citations: list[Citation]
    unsupported: list[str]
    factual_sentences: int = 0  # sentences that carry a checkable fact
    conflicts: int = 0  # passages found to give another number for a fact of the answer


def parse_markers(text: str) -> list[int]:
    """Every cited number in order. '[1][2]', '[1, 3]' and '【2】' -> [1, 2, 1, 3, 2]."""
    return [int(n) for m in _MARKER.finditer(text) for n in re.split(r"[,，、]", m.group(1))]


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def key_terms(sentence: str) -> set[str]:
    sentence = _MARKER.sub("", sentence)
    return set(words(sentence)) | set(_NUMBER.findall(_norm(sentence)))


# A capitalised word or a name with a version in an English sentence: "TruthfulQA", "DeepSeek-V3", "LSTM".
_PROPER = re.compile(r"(?<![A-Za-z0-9.\-])(?:[A-Z][A-Za-z0-9.\-]+|[A-Za-z]+-?\d[A-Za-z0-9.\-]*)")


def _latin_names(text: str) -> set[str]:
    """Capitalised or versioned Latin words, lower-cased: '创始人是 Jeffrey Dorr' -> {'jeffrey', 'dorr'}."""
    return {m.group(0).rstrip(".-").lower() for m in _PROPER.finditer(unicodedata.normalize("NFKC", text))}


# A figure with a one-letter unit or a percent sign, as both languages write it: "128k", "671b", "71.7%".
_SHORT_UNIT = re.compile(r"(?<![a-z0-9.\-])\d+(?:\.\d+)?(?:[kmbt]|%)(?![a-z0-9])")


def checkable_terms(sentence: str) -> set[str]:
    """The terms a passage can be checked for. In an English sentence about Chinese passages
    only figures and names can match ("TruthfulQA has 817 questions" -> {'truthfulqa', '817'});
    its other words would count against every passage."""
    if language_of(sentence) == "zh":
        return key_terms(sentence)
    body = _MARKER.sub("", sentence)
    return (_latin_names(body) - STOPWORDS) | set(_NUMBER.findall(_norm(body))) | set(_SHORT_UNIT.findall(_norm(body)))


# A name that carries a version: "GPT-4", "o3-mini", "DeepSeek-V3", "A100", "Llama 3", "Claude 3.5".
# Small models lift a figure from a passage about GPT-3 into a sentence about GPT-4; the name
# next to the figure is what tells them apart.
_VERSIONED = re.compile(
    # a word holding a digit ("gpt-4", "a100"), or a capitalised name, a space and a version ("Llama 3")
    r"(?<![A-Za-z0-9.\-])(?:[A-Za-z][A-Za-z0-9.\-]*\d[A-Za-z0-9.\-]*|[A-Z][A-Za-z]*\s\d+(?:\.\d+)?)(?![A-Za-z0-9])"
)


_MONTHS = frozenset(["january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december"])


# English words that open a sentence before a figure: "At 250 °C", "In 2023", "About 40" are no names.
_FUNCTION_WORDS = frozenset(
    ["a", "an", "the", "at", "in", "on", "for", "by", "of", "to", "from", "with", "about", "after", "before",
     "since", "around", "until", "over", "under", "up", "within", "than", "only", "all", "every", "each", "some",
     "most", "nearly", "almost", "approximately", "roughly", "just", "below", "above", "between", "into", "per",
     "then", "and", "but", "or", "so", "if", "during", "is", "are", "was", "were", "it", "its", "there", "they"]
)  # fmt: skip


def versioned_names(text: str) -> set[str]:
    """'GPT-4 比 Llama 3 贵' -> {'gpt-4', 'llama 3'}; a date is no name ('In April 2024' -> set()),
    nor a sentence's first word before a figure ('At 250 °C' -> set())."""
    text = unicodedata.normalize("NFKC", _MARKER.sub("", text))
    found = {m.group(0).rstrip(".-").lower() for m in _VERSIONED.finditer(text)}
    return {name for name in found if name.split()[0] not in _MONTHS and name.split()[0] not in _FUNCTION_WORDS}


_CLAUSE_END = re.compile(r"[。！？；!?;\n]")


def grounded(number: str, names: set[str], text: str) -> bool:
    """`number` occurs in `text` (normalised), about the sentence's versioned `names`.

    The passage must name every one of `names`, and the passage sentence holding the
    number must not be about another versioned name instead: in "gpt-3 有1750亿参数"
    the 1750 belongs to GPT-3. Examples: grounded('1750', {'gpt-4'}, 'gpt-3 有1750亿参数')
    is False; with {'gpt-3'} True; grounded('71.7', {'o3'}, 'o3：\n- 编程：达到 71.7%') True.
    """
    # Not the digit of a name: the 1 of "o1" is no "1个".
    spots = [m.start() for m in re.finditer(r"(?<![0-9a-z.])" + re.escape(number) + r"(?![0-9])", text)]
    if not spots or not all(mentions(text, name) for name in names):
        return False
    if not names:
        return True
    for at in spots:
        starts = [m.end() for m in _CLAUSE_END.finditer(text, 0, at)]
        end = _CLAUSE_END.search(text, at)
        sentence = text[starts[-1] if starts else 0 : end.start() if end else len(text)]
        if all(mentions(sentence, name) for name in names):
            return True
        own = {n for name in names for n in (name, *re.split(r"[\s\-]", name))}
        if not (versioned_names(sentence) - own):
            return True  # no other model named beside the figure
    return False


_DIGIT = re.compile(r"\d")


def _digits_of(names: set[str]) -> set[str]:
    """The numbers inside names ('gpt-4', 'claude 3.5' -> {'4', '3.5'}): versions, not figures."""
    return {d for name in names for d in re.findall(r"\d+(?:\.\d+)?", name)}


def support(sentence_terms: set[str], passage: str, names: set[str] | frozenset[str] = frozenset()) -> float:
    """Share of the sentence's key terms the passage holds; 0 unless its figures are in the passage
    (and about the sentence's versioned `names`, when it has any: see `grounded`)."""
    return _support_in(sentence_terms, _norm(clean_text(passage)), names)


def _support_in(sentence_terms: set[str], text: str, names: set[str] | frozenset[str] = frozenset()) -> float:
    """`support` against a passage already cleaned and normalised (`text`)."""
    if not sentence_terms:
        return 0.0
    numbers = {t for t in sentence_terms if _NUMBER.fullmatch(t)} - _digits_of(names)
    if numbers and not any(grounded(n, names, text) for n in numbers):
        return 0.0  # a sentence's numbers must come from the passage, about the same thing
    parts = set(names) | _digits_of(names) | {p for name in names for p in re.split(r"[\s\-]", name)}
    if any(not grounded(t, names, text) for t in sentence_terms if _DIGIT.search(t) and t not in numbers and t not in parts):
        return 0.0  # a figure with its unit ("100k", "4-8b") must be in the passage as written, about the same thing
    return sum(1 for t in sentence_terms if t in text) / len(sentence_terms)


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE.findall(text) if s]


def sentences_citing(text: str, number: int) -> list[str]:
    """The sentences of an answer that carry the marker [number]."""
    return [s for s in _sentences(text) if number in parse_markers(s)]


# Words of connective phrases ("根据资料：", "总结如下：") that carry no checkable fact.
_META = frozenset(
    [
        "根据",
        "资料",
        "总结",
        "如下",
        "以下",
        "综上",
        "所述",
        "回答",
        "问题",
        "来看",
        "可知",
        "according",
        "documents",
        "passages",
        "sources",
        "answer",
        "following",
        "summary",
    ]
)


# A sentence that only points at the sources; the 1.5B model often ends with one.
_FILLER = re.compile(r"^(?:根据|综上|以上|总结|according to|based on)", re.IGNORECASE)


def _is_factual(body: str) -> bool:
    return len(key_terms(body) - _META) >= 2


_CJK_WORD = re.compile(r"[\u4e00-\u9fff]+")
_WINDOW = 8  # characters before a number that say what it counts ("训练成本仅" 557.6万美元)
# Words that appear next to almost any figure and so cannot show two figures are about one thing.
_GENERIC = frozenset(
    [
        "发布",
        "推出",
        "上线",
        "提出",
        "模型",
        "版本",
        "公司",
        "达到",
        "约为",
        "大约",
        "仅为",
        "只有",
        "左右",
        "以上",
        "以下",
    ]
)


def _quantities(text: str) -> list[tuple[str, str, str]]:
    """(number, unit, the text just before it) for each number with a unit. Months and
    days are left out: "4月" and "7月" are usually different events."""
    text = _norm(text)
    out = []
    for m in _QUANTITY.finditer(text):
        unit = m.group(2)[:1] if m.group(2)[0] in "年月日" else m.group(2)
        if unit in ("月", "日"):
            continue
        out.append((str(float(m.group(1))), unit, text[max(0, m.start() - _WINDOW) : m.start()]))
    return out


def conflicts(sentence: str, cited: Sequence[int], passages: Sequence[str]) -> list[tuple[int, str]]:
    """Passages not cited by `sentence` that give another number, in the same unit, for the same thing.

    "Same thing": see `_same_thing`. Example: "训练成本约为560万美元[1]" against a passage line
    "训练成本仅557.6万美元" -> [(that passage's number, that line)].
    """
    mine = _quantities(sentence)
    if not mine:
        return []
    values = {(v, u) for v, u, _ in mine}
    found: list[tuple[int, str]] = []
    for n, passage in enumerate(passages, start=1):
        if n in cited:
            continue
        for line in _sentences(clean_text(passage)):
            theirs = [q for q in _quantities(line) if q[1] in {u for _, u in values}]
            if not theirs or {(v, u) for v, u, _ in theirs} & values:
                continue  # no figure in the same unit, or the same figure: they agree
            if any(
                _same_thing(near, other_near, unit)
                for _, unit, near in mine
                for _, u2, other_near in theirs
                if u2 == unit
            ):
                found.append((n, line.strip().strip("├└─│ 🔥").strip()))
                break
    return found


# "Orvell-R2 于 2025 年 1 月发布", "由 Orvell 在 2024年底发布的": when a named model came out.
_RELEASED = re.compile(r"发布|推出|上线|亮相|问世|公布|开源")
_YEAR = re.compile(r"(?<!\d)(20\d\d)\s*年")
_DATE_REACH = 30  # characters from the name to the year, and from the year to the verb


def _release_years(clause: str, name: str) -> set[str]:
    """Years the clause (normalised) gives for the release of `name`: the name, then within
    a few characters a year, then a release verb, with no other versioned name between."""
    found: set[str] = set()
    for at in mentions(clause, name):
        after = clause[at : at + len(name) + 2 * _DATE_REACH]
        for m in _YEAR.finditer(after, len(name)):
            between = after[len(name) : m.start()]
            if m.start() - len(name) > _DATE_REACH or versioned_names(between):
                break
            verb = _RELEASED.search(after, m.end(), m.end() + _DATE_REACH // 2)
            if verb and not versioned_names(after[verb.end() : verb.end() + 10]):
                found.add(m.group(1))  # not "…超过了 2024 年发布的 o1": that year is o1's
            break
    return found


def date_conflicts(sentence: str, cited: Sequence[int], passages: Sequence[str]) -> list[tuple[int, str]]:
    """Passages not cited by `sentence` that date the release of the model it names in another year.

    "Orvell-R2 于2025年1月发布[1]" against "Orvell R2：由初创公司Orvell在2024年底发布"
    -> [(that passage's number, that line)]. Months are not compared: "1月" and "1月下旬" agree.
    """
    body = _norm(_MARKER.sub("", sentence))
    names = versioned_names(body)
    claimed = {name: _release_years(body, name) for name in names}
    claimed = {name: years for name, years in claimed.items() if years}
    found: list[tuple[int, str]] = []
    for n, passage in enumerate(passages, start=1):
        if n in cited:
            continue
        for line in _sentences(clean_text(passage)):
            normed = _norm(line)
            if any(_release_years(normed, name) - years for name, years in claimed.items()):
                found.append((n, line.strip().strip("├└─│ 🔥").strip()))
                break
    return found


def _same_thing(before: str, other_before: str, unit: str) -> bool:
    """Both figures follow the same two specific Chinese words ("训练成本仅557.6万美元"
    and "训练成本约为560万美元"). Strict on purpose: a wrong "the sources differ" note
    misleads more than a missing one."""
    shared = (set(words(before)) & set(words(other_before))) - _META - _GENERIC
    return sum(1 for t in shared if len(t) >= 2 and _CJK_WORD.fullmatch(t) and t not in unit) >= 2


def adds_nothing(answer: str, question: str) -> bool:
    """The answer only repeats the question's own words ("Anthropic 是由 Anthropic 公司创办的")."""
    new = key_terms(answer) - key_terms(question) - _META
    return not any(len(t) >= 2 or t.isdigit() for t in new)


# "多少参数", "多少种语言", "多少 token 的数据": the thing a Chinese question counts.
_COUNTED = re.compile(r"多少\s*([^，。？！?,;；的是呢吗]{1,12})")
_MONEY = re.compile(r"[元$¥￥]|美金|dollar|yuan", re.IGNORECASE)


def misses_the_count(answer: str, question: str) -> bool:
    """The question asks how many of something and no sentence of the answer names that thing
    (with the model the question names, if it names one).

    "K7 有多少参数？" answered with its context window is about another
    figure: the model found no parameter count and reported what it did find.
    """
    question = unicodedata.normalize("NFKC", question)
    if "多少钱" in question:  # "K7 的研发花了多少钱？" answered "大约一个月的时间"
        return not _MONEY.search(_MARKER.sub("", answer))
    m = _COUNTED.search(question)
    counted = {w for w in words(m.group(1)) if len(w) >= 2} if m else set()
    if not counted:
        return False
    # "K7 有多少档位？" answered "凭借 5 档调节，K6 …": a count, but of another model.
    asked = versioned_names(question)
    return not any(
        any(w in s for w in counted) and all(mentions(s, name) for name in asked)
        for s in (_norm(x) for x in _sentences(_MARKER.sub("", answer)))
    )


# One list item three times running: "有三个型号：Qwen3-235B、Qwen3-235B、Qwen3-235B".
_REPEATED_ITEM = re.compile(r"([^、，,；;。\s]{2,})(?:[、，,；;]\s*\1){2,}")
_LIST_NUMBER = re.compile(r"(?<![\w.])\d{1,3}[.)、](?!\d)")


def is_degenerate(answer: str) -> bool:
    """The model looped on one or two tokens ("1. 1. 1. 1. 1. 1."), on one list item, or wrote list
    numbers and nothing else ("1. 1. 2. 3. 4."): nothing to show or check. Small models do this on
    prompts they cannot follow (asked for three models where the passages name one); rendered, such
    text is an empty or a made-up list."""
    text = _MARKER.sub("", answer)
    tokens = re.findall(r"\w+", _norm(text))
    words, numbers = _LIST_NUMBER.subn("", text)
    if numbers >= 2 and not re.search(r"\w", words):
        return True  # at least two, so that a bare figure ("57.") stays an answer
    return (len(tokens) >= 6 and len(set(tokens)) <= 2) or bool(_REPEATED_ITEM.search(text))


_MAGNITUDE = re.compile(r"(?<![0-9a-z.\-])(\d+(?:\.\d+)?)\s*([万亿千百]+|[%％])")


def _magnitudes(sentence: str) -> set[str]:
    """Figures written with a magnitude, spaces removed: '约 1.5 亿个参数，提升 20%' -> {'1.5亿', '20%'}."""
    return {n + u for n, u in _MAGNITUDE.findall(_norm(sentence))}


# Chinese measure words: what a number counts ("57个学科" are not "57道题").
_MEASURE = "个道张块名位项种家款篇条门台次倍人"
_COUNT = re.compile(rf"(?<![0-9.a-z])(\d+(?:\.\d+)?)\s*([{_MEASURE}])")


def _figures_agree(sentence: str, solid: str) -> bool:
    """The passage (normalised, spaces removed) writes each figure the sentence gives in 亿, 万 or %
    with that magnitude, and counts no number the sentence counts ("57道") only with other measure
    words ("57个学科"); a passage that writes such a number bare ("57题") does not disagree.
    From "GPT-4可达32k" (tokens) the model wrote "GPT-4 的参数量是32亿": the bare 32 matched.
    Examples: _figures_agree('参数量是32亿', 'gpt-4可达32k') and _figures_agree('57道题', '57个学科')
    are False; _figures_agree('57道题', '共57题') is True."""
    if not all(re.search(r"(?<![0-9.])" + re.escape(figure), solid) for figure in _magnitudes(sentence)):
        return False
    counted = _COUNT.findall(solid)
    for number, measure in _COUNT.findall(_norm(sentence)):
        used = {m for n, m in counted if n == number}
        if used and measure not in used:
            return False
    return True


def is_invented(checked: CheckedAnswer, answer: str, hits: Sequence[Hit], question: str = "") -> bool:
    """`invented_reason` with every guard on, as a yes or no."""
    return invented_reason(checked, answer, hits, question) is not None


def invented_reason(
    checked: CheckedAnswer, answer: str, hits: Sequence[Hit], question: str = "", guards: Guards = ALL
) -> str | None:
    """No sentence is supported, and the answer cannot be a paraphrase of the passages: the name of
    the guard that says so ("uncited_zh", "echo", "invented"; see rag/guards.py), else None.

    The 1.5B model answers unanswerable questions with made-up facts ("16 张 GPU", a founder
    "杰克·多尔西（Jeffrey Dorr）", "总部位于美国") or with a figure that belongs to another model
    ("GPT-4 has 175B parameters" from a passage on GPT-3); such an answer is replaced by a refusal.
    A Chinese answer copies the Chinese passages nearly word for word, so one in which no
    sentence is supported well enough to cite is the model's own (of 947 stored answers, no
    answer to an answerable question was one).
    An English answer translates, and the lexical check often fails it: it is kept, only
    flagged, unless it restates the `question` or gives figures or names no passage gives.
    """
    if not checked.factual_sentences:
        return None
    if guards.when("uncited_zh", lambda: language_of(answer) == "zh" and not checked.citations):
        return "uncited_zh"  # no sentence a passage supports well enough to cite ("GPQA 一共有15亿道题")
    if len(checked.unsupported) < checked.factual_sentences:
        return None
    if question and guards.when("echo", lambda: adds_nothing(answer, question)):
        return "echo"  # nothing supported and nothing new: the documents did not answer
    if guards.when("invented", lambda: _gives_what_no_passage_gives(checked.unsupported, hits)):
        return "invented"
    return None


def _gives_what_no_passage_gives(unsupported: Sequence[str], hits: Sequence[Hit]) -> bool:
    """An unsupported sentence writes a magnitude, a count, a versioned name or a figure that no passage gives."""
    texts = [spelled_out_as_digits(_norm(clean_text(h.chunk.text))) for h in hits]
    solid = "\n".join(re.sub(r"\s+", "", t) for t in texts)
    for sentence in unsupported:
        if not _figures_agree(sentence, solid):
            return True  # "1.5亿" no passage writes, or "57道题" where they count 57 of something else
        names = versioned_names(sentence)
        numbers = set(_NUMBER.findall(_norm(sentence))) - _digits_of(names)
        if any(not any(mentions(t, name) for t in texts) for name in names):
            return True  # a model, product or chip no passage names ("A100")
        if any(not any(grounded(n, names, t) for t in texts) for n in numbers):
            return True  # a figure no passage gives for that name
    return False


ON_TOPIC = 0.7  # share of a Chinese question's words a passage must hold to be plainly about it


def topic_share(question: str, passage: str) -> float:
    """How plainly the passage is about the question: the share of a Chinese question's words it
    holds; for an English question over a Chinese passage, 1.0 when it holds every name and figure
    the question asks about ("DeepSeek-V3"), else 0.0."""
    text = _norm(clean_text(passage))
    if language_of(question) == "zh":
        terms = key_terms(question) - _META
        return sum(1 for t in terms if t in text) / len(terms) if terms else 0.0
    terms = checkable_terms(question)
    return 1.0 if terms and all(t in text for t in terms) else 0.0


def most_on_topic(question: str, passages: Sequence[str]) -> int | None:
    """The index of the passage most plainly about the question (the first, on a tie); None if none is on topic."""
    shares = [topic_share(question, p) for p in passages]
    best = max(range(len(shares)), key=lambda i: (shares[i], -i), default=None)
    return best if best is not None and shares[best] >= ON_TOPIC else None


def _claimed(terms: set[str], asked: set[str], text: str) -> set[str]:
    """The sentence's terms minus the question's own words that the passage (normalised `text`)
    does not contain; empty when what is left adds nothing to the question (an echo supports nothing)."""
    if not asked:
        return terms
    kept = {t for t in terms if t not in asked or t in text}
    return kept if any(len(t) >= 2 or t.isdigit() for t in kept - asked) else set()


@dataclass(frozen=True)
class _Passages:
    """The passages as the sentence check reads them, prepared once per answer rather than once per sentence."""

    texts: list[str]  # as shown to the model: numbered [1]..[n], and quoted by a conflict note
    everywhere: list[str]  # texts, then the further passages: another source may date a release differently
    normed: list[str]  # cleaned and normalised (with the English figures, if glossed): what support reads
    solid: list[str]  # normed without whitespace: what _figures_agree reads
    chinese: list[bool]  # which passages are Chinese: an English sentence is checked by its figures and names


def _prepare(hits: Sequence[Hit], further: Sequence[Hit], lang: str, guards: Guards) -> _Passages:
    """Read the passages once. An English answer may restate a Chinese passage's 亿 figures written
    out ("405 billion", as the English prompt showed them): that reading is checked too, after the
    passage as written (the "english_figures" guard, counted here whenever it changes what is checked)."""
    passages = [h.chunk.text for h in hits]
    glossed = lang == "en" and guards.on("english_figures")
    figures = [english_figures(p) for p in passages] if glossed else passages
    if figures != passages:
        guards.fired("english_figures")  # counted wherever it changes what is checked (ablation asks again there)
    seen = [f"{p}\n{f}" for p, f in zip(passages, figures)] if glossed else passages
    normed = [_norm(clean_text(p)) for p in seen]
    return _Passages(
        texts=passages,
        everywhere=passages + [h.chunk.text for h in further],
        normed=normed,
        solid=[re.sub(r"\s+", "", t) for t in normed],
        chinese=[language_of(p) == "zh" for p in passages],
    )


@dataclass
class _Draft:
    """What `check` builds up sentence by sentence, and `_finish` turns into a CheckedAnswer."""

    parts: list[str] = field(default_factory=list)  # the answer's sentences, markers repaired
    unsupported: list[str] = field(default_factory=list)
    cited: list[int] = field(default_factory=list)  # passage numbers, in the order the markers appear
    factual: int = 0
    # passages giving another figure or date (may grow past MAX_CONFLICTS; only that many are shown)
    disagreements: list[tuple[int, str]] = field(default_factory=list)


def _support_scores(core: str, passages: _Passages, asked: set[str], guards: Guards) -> tuple[list[float], list[float]]:
    """How well each passage supports the sentence `core`: (support for its claim, support for all its words).

    The claim leaves out words taken over from the question that the passage does not use
    (the "question_words" guard). The claim's own words may be in several passages (a bare
    year: "是2023年"); then the one that also names what the sentence is about (the question's
    words too), the higher second score, is its source. A passage that writes one of the
    sentence's figures with another magnitude or measure word supports nothing ("figures_agree").
    """
    terms, cross = key_terms(core), checkable_terms(core)
    names = versioned_names(core)
    agree = [_figures_agree(core, text) if guards.on("figures_agree") else True for text in passages.solid]
    own = [cross if zh else terms for zh in passages.chinese]
    claims = [_claimed(t, asked, text) for t, text in zip(own, passages.normed)]
    if claims != own:
        guards.fired("question_words")
    scores = [_support_in(c, text, names) if ok else 0.0 for c, text, ok in zip(claims, passages.normed, agree)]
    whole = [_support_in(terms, text, names) if ok else 0.0 for text, ok in zip(passages.normed, agree)]
    if any(not ok and (_support_in(c, text, names) or _support_in(terms, text, names))
           for c, text, ok in zip(claims, passages.normed, agree)):  # fmt: skip
        guards.fired("figures_agree")  # it zeroed a passage's support: the markers may differ without it
    return scores, whole


def _kept_markers(written: list[int], scores: list[float], whole: list[float], guards: Guards) -> list[int]:
    """The passage numbers a sentence keeps, given `written`, the in-range markers the model wrote there.

    "repair_markers": a marker whose passage does not support the sentence goes; a lone one moves
    to the passage that supports it better; none left, the best passage is cited if it supports the
    sentence. "attach_markers": a sentence the model left unmarked gets the best passage when it
    clears the stricter ATTACH bar. Examples (scores [0.9, 0.2]): [2] -> [1]; [] -> [1].
    """
    best = max(range(len(scores)), key=lambda i: (scores[i], whole[i])) if scores else -1
    repair = guards.on("repair_markers")
    kept = [n for n in written if scores[n - 1] >= SUPPORTS] if repair else written
    if repair and len(kept) == 1 and (scores[best], whole[best]) > (scores[kept[0] - 1], whole[kept[0] - 1]):
        kept = [best + 1]
    if not kept and best >= 0 and scores[best] >= (SUPPORTS if written else ATTACH) and guards.on(
        "repair_markers" if written else "attach_markers"
    ):
        kept = [best + 1]  # repaired, or attached where the model wrote none
    if kept != written:
        guards.fired("repair_markers" if written else "attach_markers")
    return kept


def _note_conflicts(core: str, kept: list[int], passages: _Passages, draft: _Draft, guards: Guards) -> None:
    """Add to `draft.disagreements` the uncited passages that give another figure for the sentence's
    fact ("conflict_note") or date its model's release in another year ("date_conflict_note"), one
    entry per passage; a guard is counted for the first MAX_CONFLICTS entries, the ones shown."""
    if not kept or len(draft.disagreements) >= MAX_CONFLICTS:
        return
    figures = conflicts(core, kept, passages.texts) if guards.on("conflict_note") else []
    found = [(o, "conflict_note") for o in figures]
    if guards.on("date_conflict_note"):
        found += [(o, "date_conflict_note") for o in date_conflicts(core, kept, passages.everywhere)]
    for other, rule in found:
        if other[0] not in {d[0] for d in draft.disagreements}:
            draft.disagreements.append(other)
            if len(draft.disagreements) <= MAX_CONFLICTS:
                guards.fired(rule)


def _check_sentence(sentence: str, passages: _Passages, asked: set[str], draft: _Draft, guards: Guards) -> None:
    """Add one sentence of the answer to `draft` with its markers checked and repaired.

    A sentence with no checkable fact is kept as written, markers removed, unless it only points
    at the sources ("根据资料中的描述。": "drop_filler"). A factual one is reported unsupported
    when no passage supports it, whichever markers it keeps.
    """
    written = list(dict.fromkeys(n for n in parse_markers(sentence) if 1 <= n <= len(passages.texts)))
    body = _MARKER.sub("", sentence)
    tail = re.search(r"[。！？!?.\n]*$", body)
    end = tail.group(0) if tail else ""
    core = body[: len(body) - len(end)] if end else body
    if not core.strip() or not _is_factual(core):
        if not guards.when("drop_filler", bool(_FILLER.match(core.strip()))):
            draft.parts.append(body)
        return
    draft.factual += 1
    scores, whole = _support_scores(core, passages, asked, guards)
    kept = _kept_markers(written, scores, whole, guards)
    if max(scores, default=0.0) < SUPPORTS:  # then no kept marker's passage supports it either
        draft.unsupported.append(core.strip())
    draft.cited.extend(kept)
    draft.parts.append(core.rstrip() + "".join(f"[{n}]" for n in kept) + end)
    _note_conflicts(core, kept, passages, draft, guards)


def _finish(draft: _Draft, sources: Sequence[Hit], lang: str) -> CheckedAnswer:
    """The checked text, with a note naming the passages that disagree (the model tends to pick one
    source; the reader should see that another disagrees), and a Citation per passage cited.
    `sources`: the hits then the further passages, so that [n] is sources[n - 1]."""
    text = "".join(draft.parts).strip()
    shown = draft.disagreements[:MAX_CONFLICTS]
    cited = list(draft.cited)
    if shown:
        refs = ("；" if lang == "zh" else "; ").join(CONFLICT_REF[lang].format(n=n, quote=q[:80]) for n, q in shown)
        text += ("\n\n" if text else "") + CONFLICT_NOTE[lang].format(refs=refs)
        cited.extend(n for n, _ in shown)
    citations = [Citation(number=n, chunk=sources[n - 1].chunk) for n in sorted(set(cited))]
    return CheckedAnswer(text, citations, draft.unsupported, draft.factual, conflicts=len(shown))


def check(
    answer: str,
    hits: Sequence[Hit],
    lang: str = "zh",
    question: str = "",
    further: Sequence[Hit] = (),
    guards: Guards = ALL,
) -> CheckedAnswer:
    """Check, repair and add the answer's [n] markers against `hits` (passage n is hits[n-1]).

    Words the answer takes over from the `question` ("一次最多能装下") are not held
    against a passage that does not use them: they restate what was asked, not a claim.
    `further`: the next-ranked passages, not shown to the model, read only for another
    source that dates a release differently; one that does is cited as [len(hits) + i].
    `guards`: which of the repairs apply, and their firing counts (rag/guards.py).
    """
    if lang == "zh" and guards.on("tidy_figures"):
        tidied = tidy_figures(answer)
        if tidied != answer:
            guards.fired("tidy_figures")
        answer = tidied
    passages = _prepare(hits, further, lang, guards)
    asked = {t for t in key_terms(question) if not _NUMBER.fullmatch(t)} if guards.on("question_words") else set()
    draft = _Draft()
    for sentence in _sentences(answer):
        _check_sentence(sentence, passages, asked, draft, guards)
    return _finish(draft, [*hits, *further], lang)
