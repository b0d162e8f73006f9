"""rag.answer.prompting: numbered passages within a token budget, language and refusal detection."""

from __future__ import annotations

import re

import pytest

from rag.answer.prompting import (
    REFUSAL,
    SYSTEM_PROMPT,
    asks_several_things,
    build_prompt,
    english_figures,
    is_refusal,
    language_of,
    passage_header,
)
from rag.schema import Chunk, Hit


def hit(n: int, text: str, headings: tuple[str, ...] = ("第一节",), title: str = "文档") -> Hit:
    return Hit(Chunk(f"id{n}", f"doc{n}.md", title, headings, 0, len(text), text), 1.0 / n)


HITS = [
    hit(1, "第一句话。第二句话。第三句话。"),
    hit(2, "另一段的内容，讲的是架构。"),
    hit(3, "短。"),
]


def blocks_of(user: str) -> str:
    """The passages part of the user message."""
    assert user.startswith("资料：\n\n")
    return user[len("资料：\n\n") : user.rindex("\n\n")]


def test_passages_are_numbered_in_order() -> None:
    prompt = build_prompt("问题是什么？", HITS, len, 1000)
    assert prompt.hits == HITS
    numbers = [int(n) for n in re.findall(r"^\[(\d+)\] ", prompt.user, re.MULTILINE)]
    assert numbers == [1, 2, 3]
    for n, h in enumerate(HITS, start=1):
        assert f"{passage_header(n, h)}\n{h.chunk.text}" in prompt.user
    assert prompt.user.endswith("问题：问题是什么？")
    assert prompt.system == SYSTEM_PROMPT


def test_messages_put_the_fixed_system_prompt_first() -> None:
    messages = build_prompt("问题？", HITS, len, 1000).messages()
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT
    assert "[1]" in messages[1]["content"]


def test_english_question_label() -> None:
    prompt = build_prompt("  Who proposed the Transformer?  ", HITS, len, 1000)
    assert prompt.user.endswith("Question：Who proposed the Transformer?")


@pytest.mark.parametrize(
    ("text", "glossed"),
    [
        ("高达4050亿参数", "高达 405 billion 参数"),
        ("1.5亿用户", " 150 million 用户"),
        ("6710 亿个参数，其中 370 亿个", " 671 billion 个参数，其中  37 billion 个"),
        ("1万亿参数", " 1 trillion 参数"),
        ("约15万字", "约15万字"),  # 万 is left as it is
        ("亿亿级别的参数", "亿亿级别的参数"),  # no figure
        ("v2.5亿", "v2.5亿"),  # part of a name
    ],
)
def test_english_figures_gloss_chinese_magnitudes(text: str, glossed: str) -> None:
    assert english_figures(text) == glossed


def test_only_an_english_question_sees_the_glosses() -> None:
    hits = [hit(1, "Llama 3.1 有4050亿参数。")]
    assert "有 405 billion 参数" in build_prompt("How large is Llama 3.1?", hits, len, 1000).user
    assert "4050亿参数" in build_prompt("Llama 3.1 有多大？", hits, len, 1000).user


def test_passage_header() -> None:
    assert passage_header(2, hit(1, "x", ("A", "B", "C"), "书名")) == "[2] 《书名》 B > C"
    assert passage_header(1, hit(1, "x", (), "书名")) == "[1] 《书名》 书名"
    assert passage_header(2, hit(1, "x", ("A", "B", "C"), "书名"), brief=True) == "[2] C"
    assert passage_header(1, hit(1, "x", (), "书名"), brief=True) == "[1]"


@pytest.mark.parametrize(
    ("question", "several"),
    [
        ("K7 电水壶的容量有多大？现在还能买到吗？", True),
        ("Tern-2 和 Vega 3.1 的电池续航分别有多长？", True),
        ("k7-mini 跟完整版 k7 相比有什么优势？", True),
        ("Orvell 和 Tern 的车架设计有什么不同？", True),
        ("How many modes does the Tern lamp have, and what does each do?", True),
        ("How does GPT-4 compare with Claude 3?", True),
        ("DeepSeek-V3 的训练成本是多少？", False),
        ("混合专家模型是什么", False),
        ("What speed did Orvell's T3 reach on the test track?", False),
        ("Who developed BERT and GPT?", False),
    ],
)
def test_asks_several_things(question: str, several: bool) -> None:
    assert asks_several_things(question) is several


def test_passage_text_is_cleaned() -> None:
    prompt = build_prompt("问题？", [hit(1, "**重点**内容¹，见[链接](http://x)。")], len, 1000)
    assert "重点内容，见链接。" in prompt.user
    assert "**" not in prompt.user and "http" not in prompt.user


@pytest.mark.parametrize("budget", [10, 12, 20, 25, 30, 40, 55, 70, 1000])
def test_budget_is_respected(budget: int) -> None:
    prompt = build_prompt("问题？", HITS, len, budget)
    assert len(prompt.hits) <= len(HITS)
    if prompt.hits:
        assert len(blocks_of(prompt.user)) <= budget
    # the passages included are always a prefix of the ranking
    assert prompt.hits == HITS[: len(prompt.hits)]


def test_passage_that_does_not_fit_whole_is_cut_at_a_sentence_end() -> None:
    header = passage_header(1, HITS[0])
    budget = len(header) + 2 + len("第一句话。第二句话。") + 3  # room for two sentences, not three
    prompt = build_prompt("问题？", HITS, len, budget)
    assert prompt.hits == HITS[:1]
    assert blocks_of(prompt.user) == f"{header}\n第一句话。第二句话。"


def test_passages_that_do_not_fit_are_dropped() -> None:
    first = passage_header(1, HITS[0])
    budget = len(first) + 2 + len(HITS[0].chunk.text) + 5  # the second header alone does not fit
    prompt = build_prompt("问题？", HITS, len, budget)
    assert prompt.hits == HITS[:1]
    assert "[2]" not in prompt.user


def test_nothing_fits() -> None:
    prompt = build_prompt("问题？", HITS, len, 5)
    assert prompt.hits == []
    assert "[1]" not in prompt.user
    assert prompt.user.endswith("问题：问题？")


def test_first_sentence_longer_than_budget_drops_the_passage() -> None:
    long_hit = hit(1, "这是一个非常长的句子没有任何标点" * 5 + "。后面还有。")
    prompt = build_prompt("问题？", [long_hit], len, 40)
    assert prompt.hits == []


def test_budget_uses_the_given_token_counter() -> None:
    def count_words(text: str) -> int:  # a coarse "tokenizer": one token per 4 characters
        return (len(text) + 3) // 4

    generous = build_prompt("问题？", HITS, count_words, 30)
    strict = build_prompt("问题？", HITS, len, 30)
    assert len(generous.hits) > len(strict.hits)


def test_no_hits() -> None:
    prompt = build_prompt("问题？", [], len, 1000)
    assert prompt.hits == []
    assert prompt.user.endswith("问题：问题？")


# ---------------------------------------------------------------- language and refusals


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("DeepSeek-V3 的训练成本是多少？", "zh"),
        ("什么是MoE", "zh"),
        ("What is MoE?", "en"),
        ("GPT-4o vs Claude 3.5", "en"),
        ("", "en"),
        ("12345", "en"),
    ],
)
def test_language_of(text: str, lang: str) -> None:
    assert language_of(text) == lang


@pytest.mark.parametrize(
    "answer",
    [
        REFUSAL["zh"],
        REFUSAL["en"],
        "资料中没有相关信息。",
        "抱歉，资料中没有提到这个问题。",
        "提供的资料未提及该模型的发布时间。",
        "根据现有资料，无法回答这个问题。",
        "The documents do not contain information about this.",
        "The passages do not mention the release date.",
        "I cannot answer this from the documents.",
        "There is no information about that in the passages.",
        "This is not mentioned in the documents.",
    ],
)
def test_is_refusal(answer: str) -> None:
    assert is_refusal(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "DeepSeek-V3 的训练成本为 557.6万美元[1]。",
        "Transformer 由谷歌在 2017 年提出[2]。",
        "The Transformer was introduced by Google in 2017 [1].",
        # A caveat after an English answer is not a refusal ("et al." does not end the sentence).
        "It was proposed by Vaswani et al. at Google in 2017 [1]. The passages do not mention the month.",
        "",
    ],
)
def test_is_not_refusal(answer: str) -> None:
    assert not is_refusal(answer)


def test_refusal_phrase_late_in_a_long_answer_does_not_count() -> None:
    answer = "DeepSeek-V3 采用混合专家架构，总参数 6710 亿[1]。" * 10 + "其他细节资料中没有提到。"
    assert not is_refusal(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "557.6万美元的训练成本不包含前期研究和消融实验的费用[1]。",
        "DeepSeek 未提供训练数据的具体来源，但公开了模型权重[1]。",
    ],
)
def test_factual_answer_with_a_negation_is_not_a_refusal(answer: str) -> None:
    assert not is_refusal(answer)


# ---------------------------------------------------------------- focusing long passages

LONG = (
    "".join(f"第{i}句讲的是主题{i}。" for i in range(1, 21))
    + "DeepSeek-V3 的训练成本为 557.6万美元。"
    + "".join(f"后面第{i}句是补充说明。" for i in range(1, 11))
)


def test_focus_keeps_short_text() -> None:
    from rag.answer.prompting import focus

    assert focus("短文本。", {"训练"}, 100) == "短文本。"


@pytest.mark.parametrize("limit", [30, 60, 120, 200])
def test_focus_keeps_the_matching_sentence_within_the_limit(limit: int) -> None:
    from rag.answer.prompting import focus

    out = focus(LONG, {"deepseek-v3", "训练", "成本"}, limit)
    assert len(out) <= limit
    assert out in LONG  # one contiguous run of the passage
    assert "557.6万美元" in out


def test_focus_without_terms_starts_at_the_beginning() -> None:
    from rag.answer.prompting import focus

    out = focus(LONG, set(), 40)
    assert LONG.startswith(out)


def test_focus_scores_a_sentence_with_the_lines_a_wrap_cut_it_into() -> None:
    from rag.answer.prompting import focus

    # a PDF wrapped the line inside the name; the other sentence names the model on one line
    text = (
        "前文讲评测。Claude\n3.5 Sonnet还将上下文窗口扩展到200K tokens，可以\n处理超长文档而一次性输出结果。"
        + "中间是别的内容。" * 6
        + "Claude 3.5 Sonnet提供免费网页版体验。"
    )
    out = focus(text, {"claude", "3.5", "sonnet", "一次"}, 60)
    assert "200K" in out and out in text


def test_focus_keeps_list_items_and_table_rows_apart() -> None:
    from rag.answer.prompting import focus

    text = "- 甲：别的内容\n- 乙：也是别的\n| GPT-4o | 128K |\n" + "填充。" * 20
    assert focus(text, {"gpt-4o"}, 20) == "| GPT-4o | 128K |"


def test_build_prompt_focuses_passages_on_the_query() -> None:
    prompt = build_prompt("训练成本？", [hit(1, LONG)], len, 1000, passage_chars=60, terms={"训练", "成本"})
    body = blocks_of(prompt.user).split("\n", 1)[1]
    assert "557.6万美元" in body and len(body) <= 60


def test_later_passages_get_their_own_length() -> None:
    prompt = build_prompt("训练成本？", [hit(1, LONG), hit(2, LONG)], len, 1000, passage_chars=60,
                          terms={"训练", "成本"}, later_passage_chars=30)  # fmt: skip
    first, second = [b.split("\n", 1)[1] for b in blocks_of(prompt.user).split("\n\n")]
    assert 30 < len(first) <= 60 and len(second) <= 30
    assert "557.6万美元" in first
