"""Replay a `rag eval answers --json` report at other answerable_min thresholds, and the key-term check.

The run must have been made with RAG_ANSWERABLE_MIN=0 (every answer scored, none refused by the
check), so the report holds each answer before the check and its score. For a threshold t an
answer counts as refused when the run refused it or its score is below t. Scores were taken with
early stopping at 0.5 (the first cited passage scored >= 0.5 ends the check), so thresholds up
to 0.5 replay exactly.

    python scripts/refusal_sweep.py REPORT.json [--terms]

--terms also replays a model-free alternative: refuse when a number, Latin word, 《title》 or
jieba proper noun (nr/ns/nt/nz) of the question is in none of the cited passages.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata

THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)


def norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower().replace(" ", "")


def constraint_terms(question: str) -> set[str]:
    import jieba.posseg as pseg

    q = unicodedata.normalize("NFKC", question)
    terms = set(re.findall(r"\d+(?:\.\d+)?", q)) | {w.lower() for w in re.findall(r"[A-Za-z][A-Za-z0-9\-]+", q)}
    terms |= set(re.findall(r"《([^》]+)》", q))
    terms |= {p.word for p in pseg.cut(q) if p.flag in ("nr", "ns", "nt", "nz") and len(p.word) >= 2}
    return {norm(t) for t in terms}


def table(rows: list[dict], refuse) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    acc = sum(1 for r in ans if r["has_terms"] and not refuse(r)) / len(ans)
    ref = sum(1 for r in una if refuse(r)) / len(una)
    false = sum(1 for r in ans if refuse(r)) / len(ans)
    return acc, ref, false


def main() -> None:
    report = json.load(open(sys.argv[1], encoding="utf-8"))
    rows = report["questions"]
    print(f"{len(rows)} questions; accuracy / refusal / false refusal")
    for t in THRESHOLDS:
        def refuse(r, t=t):  # type: ignore[no-untyped-def]
            s = r.get("answerable_score")
            return r["refused"] or (s is not None and s < t)
        acc, ref, false = table(rows, refuse)
        print(f"answerable_min {t:4.2f}: {acc:.3f} / {ref:.3f} / {false:.3f}")
    scored = sorted((r["answerable_score"], r["answerable"], r["id"]) for r in rows
                    if not r["refused"] and r.get("answerable_score") is not None)  # fmt: skip
    print("scores of the answered (score, answerable, id):")
    for s, a, i in scored:
        print(f"  {s:.3f} {'answerable  ' if a else 'UNANSWERABLE'} {i}")
    if "--terms" in sys.argv:
        def missing(r):  # type: ignore[no-untyped-def]
            texts = norm(" ".join(c.get("text", "") for c in r["citations"]) or " ".join(p.get("text", "") for p in r["passages"][:1]))
            return sorted(t for t in constraint_terms(r["question"]) if t not in texts)
        def refuse_terms(r):  # type: ignore[no-untyped-def]
            return r["refused"] or bool(missing(r))
        acc, ref, false = table(rows, refuse_terms)
        print(f"key-term check: {acc:.3f} / {ref:.3f} / {false:.3f}")
        for r in rows:
            if not r["refused"] and missing(r):
                print(f"  {'answerable  ' if r['answerable'] else 'UNANSWERABLE'} {r['id']} misses {missing(r)}")


if __name__ == "__main__":
    main()
