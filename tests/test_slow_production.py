"""The production models end to end (slow tier: run by `./test.sh` and CI, skipped by plain pytest and `./test.sh --fast`).

Every rule about model behaviour is otherwise tested only against scripted replies; these run the
default chat model and embedder on a small invented corpus the test writes itself, so a model
upgrade or a prompt change that breaks the basics shows up here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# Invented facts about a made-up product line, so no answer can come from the model's memory.
CORPUS = {
    "kettle.md": "# 澄川 K7 电水壶说明书\n\n澄川 K7 电水壶的容量为 1.7 升，烧开一壶水需要 140 秒。\n\n"
    "底座指示灯变为琥珀色表示需要除垢。\n",
    "lamp.md": "# 雾岭 L2 台灯\n\n雾岭 L2 台灯的电池充满电需要 3 小时，续航 11 小时。\n\n"
    "台灯的保修期为 26 个月。\n",
    "bike.md": "# Orvell Tern folding bike\n\nThe Orvell Tern folding bike weighs 9.4 kg and folds in 12 seconds.\n\n"
    "Its frame is made of magnesium alloy.\n",
}

ANSWERABLE = [
    ("澄川 K7 电水壶烧开一壶水需要多久？", "kettle.md", "140"),
    ("雾岭 L2 台灯的保修期是多长？", "lamp.md", "26"),
    ("澄川 K7 底座指示灯变成什么颜色表示需要除垢？", "kettle.md", "琥珀"),
    ("How much does the Orvell Tern folding bike weigh?", "bike.md", "9.4"),
]
OUTSIDE = "青岚 X9 咖啡机的水箱容量是多少？"


def _production_models_available() -> bool:
    from rag.config import load_settings
    from rag.models import get_spec, is_installed

    settings = load_settings()
    return all(is_installed(get_spec(n), settings.models_dir) for n in (settings.embed_model, settings.chat_model))


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A pipeline over the invented corpus with the default (production) models."""
    if not _production_models_available():
        pytest.fail("The default models are missing. Run: rag models fetch  (scripts/setup.sh fetches them)")
    from rag.answer.pipeline import Pipeline
    from rag.cli import run_index
    from rag.config import load_settings

    base: Path = tmp_path_factory.mktemp("production")
    corpus = base / "corpus"
    corpus.mkdir()
    for name, text in CORPUS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    settings = load_settings(corpus_dir=corpus, index_dir=base / "index")
    run_index(settings, quiet=True)
    return Pipeline(settings)


def _answer(pipeline, question: str):  # type: ignore[no-untyped-def]
    from rag.answer.pipeline import Done

    return [e for e in pipeline.ask(question) if isinstance(e, Done)][-1].answer


@pytest.mark.parametrize(("question", "source", "fact"), ANSWERABLE)
def test_production_models_find_the_passage_and_state_the_fact(production, question, source, fact) -> None:  # type: ignore[no-untyped-def]
    answer = _answer(production, question)
    assert source in [Path(h.chunk.path).name for h in answer.hits[:3]], "retrieval missed the passage"
    assert not answer.refused, answer.text
    assert fact in answer.text


def test_production_models_refuse_a_question_outside_the_corpus(production) -> None:  # type: ignore[no-untyped-def]
    answer = _answer(production, OUTSIDE)
    assert answer.refused, answer.text
