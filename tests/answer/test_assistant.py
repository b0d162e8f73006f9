"""The in-process Python API (`import rag; rag.open(...)`), with the small real models."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_import_rag_stays_cheap() -> None:
    code = "import sys, rag; assert rag.open and 'torch' not in sys.modules and 'gradio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_open_search_and_ask(small_world) -> None:  # type: ignore[no-untyped-def]
    import rag
    from rag import Answer, Hit

    s = small_world
    assistant = rag.open(corpus=s.corpus_dir, index=s.index_dir, embed_model=s.embed_model, chat_model=s.chat_model,
                         n_ctx=s.n_ctx, max_answer_tokens=s.max_answer_tokens, min_dense_score=0.0)  # fmt: skip
    hits = assistant.search("Transformer 是哪一年提出的", k=2)
    assert len(hits) == 2 and all(isinstance(h, Hit) for h in hits) and hits[0].chunk.path == "transformer.txt"
    answer = assistant.ask("它采用什么架构？", [("DeepSeek-V3 的训练成本是多少？", "557.6万美元[1]。")])
    assert isinstance(answer, Answer) and answer.query.startswith("DeepSeek-V3")
    assert all(f"[{c.number}]" in answer.text for c in answer.citations)


def test_open_without_an_index_says_how_to_build_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import rag
    from rag.errors import IndexStateError

    with pytest.raises(IndexStateError, match="rag index"):
        rag.open(corpus=tmp_path / "corpus", index=tmp_path / "index")
