"""rag.index.lexical: jieba tokenization and the BM25 index."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.index.lexical import STOPWORDS, LexicalIndex, tokenize, words


def test_docstring_examples() -> None:
    assert words("DeepSeek-V3的训练成本") == ["deepseek-v3", "deepseek", "v3", "训练", "成本"]
    assert tokenize("训练成本") == ["训练", "成本", "#训练", "#练成", "#成本"]


@pytest.mark.parametrize(
    ("text", "whole"),
    [
        ("DeepSeek-V3的训练成本", "deepseek-v3"),
        ("deepseek-r1 是推理模型", "deepseek-r1"),
        ("GPT-4o 和 Claude-3.5-Sonnet", "gpt-4o"),
        ("GPT-4o 和 Claude-3.5-Sonnet", "claude-3.5-sonnet"),
        ("Qwen2.5 的效果", "qwen2.5"),
        ("ＤｅｅｐＳｅｅｋ－Ｖ３", "deepseek-v3"),  # full-width forms are NFKC-normalized
    ],
)
def test_model_names_are_kept_whole_and_lower_cased(text: str, whole: str) -> None:
    tokens = tokenize(text)
    assert whole in tokens
    assert all(t == t.lower() for t in tokens)


def test_names_are_also_split_into_parts() -> None:
    tokens = tokenize("DeepSeek-V3")
    assert {"deepseek-v3", "deepseek", "v3"} <= set(tokens)


def test_stopwords_and_punctuation_are_dropped() -> None:
    tokens = tokenize("什么是大语言模型？它的参数有多少！The model is, of course, large.")
    assert not set(tokens) & STOPWORDS
    assert not any(t in {"？", "！", ",", ".", "，", "。", "?", "!"} for t in tokens)
    assert "语言" in tokens and "模型" in tokens
    assert "model" in tokens and "large" in tokens
    assert "the" not in tokens and "is" not in tokens


@pytest.mark.parametrize("text", ["", "   ", "。，！？", "的了是在", "the of and"])
def test_nothing_to_search(text: str) -> None:
    assert words(text) == []
    assert all(t.startswith("#") for t in tokenize(text))  # at most bigrams, which IDF makes harmless


def test_numbers_survive() -> None:
    tokens = tokenize("训练仅花费557.6万美元，共2048块GPU")
    assert "557.6" in tokens
    assert "2048" in tokens
    assert "gpu" in tokens


DOCS = [
    "DeepSeek-V3 的完整训练仅花费 557.6万美元，使用 FP8 混合精度训练。",
    "Transformer 架构由谷歌在 2017 年提出，完全依赖自注意力机制。",
    "Simmer ripe tomatoes with onion and garlic, then blend into soup.",
    "",  # an empty passage still takes a row
    "混合专家（MoE）架构让每个 token 只激活部分参数。",
]


@pytest.fixture
def index() -> LexicalIndex:
    return LexicalIndex.build([tokenize(d) for d in DOCS])


@pytest.mark.parametrize(
    ("query", "row"),
    [
        ("DeepSeek-V3 训练花了多少钱？", 0),
        ("谁提出了 Transformer？", 1),
        ("自注意力", 1),
        ("tomato soup with garlic", 2),
        ("MoE 架构", 4),
        ("deepseek-v3", 0),
    ],
)
def test_search_returns_the_right_row_first(index: LexicalIndex, query: str, row: int) -> None:
    hits = index.search(tokenize(query), 3)
    assert hits, query
    assert hits[0][0] == row
    assert all(score > 0 for _, score in hits)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


def test_search_unknown_terms_returns_nothing(index: LexicalIndex) -> None:
    assert index.search(tokenize("量子计算机的冷却系统"), 5) == []
    assert index.search([], 5) == []


def test_search_n_larger_than_index(index: LexicalIndex) -> None:
    hits = index.search(tokenize("架构"), 50)
    assert {r for r, _ in hits} == {1, 4}
    assert len(hits) <= len(DOCS)


def test_only_positive_scores(index: LexicalIndex) -> None:
    for _, score in index.search(tokenize("训练 架构 soup"), len(DOCS)):
        assert score > 0


def test_save_load_round_trip(index: LexicalIndex, tmp_path: Path) -> None:
    index.save(tmp_path / "bm25")
    loaded = LexicalIndex.load(tmp_path / "bm25", len(DOCS))
    assert loaded.size == len(DOCS)
    for query in ["DeepSeek-V3 训练成本", "谁提出了 Transformer", "garlic soup", "MoE"]:
        tokens = tokenize(query)
        before, after = index.search(tokens, 3), loaded.search(tokens, 3)
        assert [r for r, _ in before] == [r for r, _ in after]
        assert [s for _, s in before] == pytest.approx([s for _, s in after])
    assert loaded.search(tokenize("deepseek-v3"), 1)[0][0] == 0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_empty_index() -> None:
    empty = LexicalIndex.build([])
    assert empty.size == 0
    assert empty.search(tokenize("任何问题"), 5) == []


def test_knows_whether_the_passages_write_a_name(index: LexicalIndex) -> None:
    assert index.knows("谷歌") and index.knows("DeepSeek-V3") and index.knows("混合专家")  # jieba: 由谷歌
    assert not index.knows("苹果") and not index.knows("谷歌 苹果") and not index.knows("")
    assert not LexicalIndex.build([]).knows("谷歌")


def test_index_of_only_empty_passages() -> None:
    idx = LexicalIndex.build([[], []])
    assert idx.size == 2
    assert idx.search(tokenize("模型"), 5) == []


def test_names_are_latin_script_terms() -> None:
    from rag.index.lexical import names

    assert names("用 zLLM 跑 Tern 3，Orvell Cargo 4.5 的 API 和 Vega-V3、K-7o。") == {
        "zllm", "tern 3", "cargo 4.5", "orvell", "api", "vega-v3", "k-7o",
    }  # fmt: skip
    assert names("纯中文的问题") == set()


@pytest.mark.parametrize(
    ("text", "name", "found"),
    [
        ("deepseek r1 发布", "deepseek-r1", True),
        ("deepseek-r1", "r1", True),
        ("gpt-4o 发布", "gpt-4", False),
        ("llama3 和 llama 3.1", "llama 3", True),
        ("vllm-ascend", "vllm", True),
        ("myvllm", "vllm", False),
        ("新一代 iphone se 3 发布", "iphone se3", True),
        ("gpt4 与 gpt-4o", "gpt-4", True),
        ("gpt-4o", "gpt4", False),
    ],
)
def test_mentions_whole_names(text: str, name: str, found: bool) -> None:
    from rag.index.lexical import mentions

    assert bool(mentions(text, name)) is found
