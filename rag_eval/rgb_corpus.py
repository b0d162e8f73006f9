"""RGB rows -> a foreign corpus folder and a question file, for `rag eval answers --corpus`.

The product is judged on corpora it was not tuned on. This turns RGB (Chen et al., AAAI 2024;
../shared/bench/rgb) into one: every passage becomes a .txt file of a folder, and the rows become
questions with answer groups (`"groups": [["12人", "十二人"], ...]`, every group must appear).

- Answerable rows: their positive passages (at most `max_positive`) and their first `noise`
  negative passages go into the corpus; the negatives of all rows pooled are the distractors.
- Unanswerable rows (the next rows of the shuffled file): only their negatives go in; their
  positives are left out, so the corpus holds the topic but not the answer (RGB's negative
  rejection, over a whole corpus). A row is taken as unanswerable only if no passage of the
  corpus holds every group of its answer (rows are passed over until there are enough).
- An answerable row is kept only if one of its positives in the corpus holds every group;
  its evidence quotes are the sentences of those positives that name a group's alternative.

The output goes outside the repository (RGB is CC BY-NC-SA; it is read from ../shared, never
copied in): OUT/corpus/*.txt, OUT/questions.jsonl, OUT/corpus.json (what was taken, the seed).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import RagError
from rag_eval.rgb import Gold, RgbRow, gold_labels, is_correct, normalize_output

REPO = Path(__file__).resolve().parents[1]
_SENTENCE = re.compile(r"[^。！？!?\n]*(?:[。！？!?]+|\.(?=\s)|\n|$)")
MAX_QUOTES = 3  # evidence quotes per question: enough to find one, few enough to stay readable
QUOTE_CHARS = 120  # a longer sentence is quoted as this many characters around the alternative


class CorpusOutError(RagError):
    """The output folder cannot be used."""


@dataclass
class RgbCorpus:
    passages: list[str]  # distinct passages, in first-seen order: file i is passages[i]
    questions: list[dict[str, object]]  # question-file rows
    skipped: dict[str, list[str]] = field(default_factory=dict)  # why rows were left out -> row ids

    def counts(self) -> dict[str, int]:
        unanswerable = sum(1 for q in self.questions if not q["groups"])
        return {"passages": len(self.passages), "answerable": len(self.questions) - unanswerable,
                "unanswerable": unanswerable}  # fmt: skip


def file_name(lang: str, pid: int) -> str:
    return f"{lang}-{pid:05d}.txt"


def _key(text: str) -> str:
    return " ".join(text.split())


def evidence_quotes(gold: Gold, passage: str) -> list[str]:
    """Sentences of `passage` that name an alternative of some group (cut around it when long).

    Example: gold (("12人",),), "大批民众聚集。事故造成12人死亡。" -> ["事故造成12人死亡。"]
    """
    alternatives = [a for group in gold for a in group if a.strip()]
    out: list[str] = []
    for sentence in _SENTENCE.findall(passage):
        text = sentence.strip()
        norm = normalize_output(text)
        found = [a for a in alternatives if normalize_output(a) in norm]
        if not text or not found:
            continue
        if len(text) > QUOTE_CHARS:
            at = text.find(found[0])
            if at < 0:
                continue  # found only after normalising: the raw text differs, no exact quote to give
            start = max(0, at - QUOTE_CHARS // 2)
            text = text[start : start + QUOTE_CHARS].strip()
        out.append(text)
    return out


def build_corpus(
    rows: Sequence[RgbRow], answerable: int, unanswerable: int, noise: int = 5, max_positive: int = 5,
    seed: int = 0, lang: str = "zh",
) -> RgbCorpus:  # fmt: skip
    """Pick rows (shuffled with `seed`), pool their passages, and write their questions (see the module docstring)."""
    order = list(rows)
    random.Random(seed).shuffle(order)
    asked, candidates = order[:answerable], order[answerable:]
    ids: dict[str, int] = {}
    texts: list[str] = []

    def add(text: str) -> None:
        key = _key(text)
        if key and key not in ids:
            ids[key] = len(texts)
            texts.append(text.strip())

    for row in asked:
        for text in (*row.positive[:max_positive], *row.negative[:noise]):
            add(text)
    held: list[RgbRow] = []
    for row in candidates:  # until `unanswerable` rows whose answer no passage holds (short answers often are)
        if len(held) >= unanswerable:
            break
        if not any(all(gold_labels(row.answer, t)) for t in (*texts, *row.negative[:noise])):
            held.append(row)
            for text in row.negative[:noise]:
                add(text)

    corpus = RgbCorpus(texts, [], {"no positive in the corpus holds every group": [],
                                   "a corpus passage holds its answer": []})  # fmt: skip
    for row in asked:
        holding = [ids[_key(p)] for p in row.positive[:max_positive] if is_correct(row.answer, p)]
        quotes = [(pid, q) for pid in holding for q in evidence_quotes(row.answer, texts[pid])]
        if not quotes:
            corpus.skipped["no positive in the corpus holds every group"].append(row.id)
            continue
        corpus.questions.append({
            "id": f"rgb-{lang}-{row.id}", "question": row.query, "answer": " / ".join(g[0] for g in row.answer),
            "groups": [list(g) for g in row.answer], "must_include": [],
            "evidence": [{"doc": file_name(lang, pid), "quote": q} for pid, q in quotes[:MAX_QUOTES]],
            "type": "rgb",
        })  # fmt: skip
    for row in held:  # checked again against the final corpus: a later row's passages may hold it
        if any(all(gold_labels(row.answer, t)) for t in texts):
            corpus.skipped["a corpus passage holds its answer"].append(row.id)
            continue
        corpus.questions.append({"id": f"rgb-{lang}-{row.id}-held", "question": row.query, "answer": "",
                                 "groups": [], "must_include": [], "evidence": [], "type": "unanswerable"})  # fmt: skip
    return corpus


def paired_questions(questions: Sequence[dict[str, object]], pairs: int, seed: int = 0) -> list[dict[str, object]]:
    """Two-part questions made of two answerable ones ("A？B？"): every group of both must appear.

    Users ask several things at once; each part's passage may sit anywhere in the corpus, so
    this measures whether retrieval and the answer find both. Parts come from a seeded shuffle,
    each question used at most once.
    """
    answerable = [q for q in questions if q["groups"]]
    random.Random(seed).shuffle(answerable)
    out = []
    for a, b in zip(answerable[0:2 * pairs:2], answerable[1:2 * pairs:2], strict=False):
        out.append({
            "id": f"{a['id']}+{b['id']}", "question": _as_question(str(a["question"])) + _as_question(str(b["question"])),
            "answer": f"{a['answer']}；{b['answer']}", "groups": [*a["groups"], *b["groups"]],  # type: ignore[misc]
            "must_include": [], "evidence": [*a["evidence"], *b["evidence"]], "type": "rgb-pair",  # type: ignore[misc]
        })  # fmt: skip
    return out


def _as_question(text: str) -> str:
    """'乌镇峰会举办时间' -> '乌镇峰会举办时间？': each part ends with its own question mark."""
    return text.strip().rstrip("？?。") + "？"


def write_corpus(corpus: RgbCorpus, out: Path, lang: str, provenance: dict[str, object], pairs: int = 0) -> Path:
    """Write OUT/corpus/*.txt, OUT/questions.jsonl and OUT/corpus.json; the question file's path.
    With `pairs`, also OUT/pairs.jsonl: that many two-part questions (`paired_questions`).

    Refuses a folder inside this repository, and a corpus folder holding other files (an index
    built over it would mix them in).
    """
    out = out.expanduser().resolve()
    if out.is_relative_to(REPO):
        raise CorpusOutError(f"{out} is inside the repository.",
                             "RGB is read from ../shared and never copied in: give a folder outside, e.g. /tmp/rgb-zh.")  # fmt: skip
    folder = out / "corpus"
    stale = [p for p in folder.glob("*") if p.name not in {file_name(lang, i) for i in range(len(corpus.passages))}] \
        if folder.is_dir() else []  # fmt: skip
    if stale:
        raise CorpusOutError(f"{folder} already holds other files ({stale[0].name}, …).",
                             "Give an empty or new folder, or remove the old one.")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    for pid, text in enumerate(corpus.passages):
        path = folder / file_name(lang, pid)
        if not path.exists() or path.read_text(encoding="utf-8") != text + "\n":
            path.write_text(text + "\n", encoding="utf-8")  # unchanged files keep their time: `rag index` skips them
    questions = out / "questions.jsonl"
    _write_jsonl(questions, corpus.questions)
    if pairs:
        _write_jsonl(out / "pairs.jsonl", paired_questions(corpus.questions, pairs, int(provenance.get("seed", 0))))  # type: ignore[arg-type]
    meta = {**provenance, **corpus.counts(), "skipped": corpus.skipped}
    (out / "corpus.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return questions


def _write_jsonl(path: Path, rows: Sequence[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def summary(corpus: RgbCorpus) -> str:
    c = corpus.counts()
    lines = [f"{c['passages']} passages, {c['answerable']} answerable and {c['unanswerable']} unanswerable questions"]
    lines += [f"  left out ({why}): {len(ids)} rows" for why, ids in corpus.skipped.items() if ids]
    return "\n".join(lines)
