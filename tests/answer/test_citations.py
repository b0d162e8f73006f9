"""rag.answer.citations: marker parsing and checking answers against the passages given."""

from __future__ import annotations

import re

import pytest

from rag.answer.citations import check, key_terms, most_on_topic, parse_markers, support, tidy_figures
from rag.schema import Chunk, Hit

P_COST = "DeepSeek-V3 的完整训练仅花费 557.6万美元，使用 FP8 混合精度训练。"
P_TRANSFORMER = "Transformer 架构由谷歌在 2017 年提出，论文名为 Attention Is All You Need。"
P_ENGLISH = "The Transformer architecture was introduced by Google in 2017. It relies entirely on self-attention."
P_SOUP = "Simmer ripe tomatoes with onion and garlic for twenty minutes, then blend into a soup."


def hit(n: int, text: str, path: str = "a.md") -> Hit:
    return Hit(Chunk(id=f"chunk{n}", path=path, title="标题", headings=("节",), start=0, end=len(text), text=text), 0.5)


TWO = [hit(1, P_COST), hit(2, P_TRANSFORMER, "b.txt")]
FOUR = [hit(1, P_COST), hit(2, P_TRANSFORMER, "b.txt"), hit(3, P_ENGLISH, "c.md"), hit(4, P_SOUP, "d.md")]


def numbers_of(result) -> list[int]:  # type: ignore[no-untyped-def]
    return [c.number for c in result.citations]


def assert_citations_from(result, hits: list[Hit]) -> None:  # type: ignore[no-untyped-def]
    """Every citation points at a passage that was given, under its own number."""
    for c in result.citations:
        assert 1 <= c.number <= len(hits)
        assert c.chunk is hits[c.number - 1].chunk
    assert numbers_of(result) == sorted(set(numbers_of(result)))
    assert set(parse_markers(result.text)) == set(numbers_of(result))


# ---------------------------------------------------------------- parse_markers


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("[1][2]", [1, 2]),
        ("[1, 3]", [1, 3]),
        ("【2】", [2]),
        ("[1，2]", [1, 2]),
        ("[1、2、3]", [1, 2, 3]),
        ("[ 4 ]", [4]),
        ("成本为557.6万美元[1]。架构是MoE[2][3]。", [1, 2, 3]),
        ("[1][2], [1, 3] and 【2】", [1, 2, 1, 3, 2]),  # the docstring example
        ("没有引用。", []),
        ("[a] [] [1.5] [123]", []),
        ("见[12]", [12]),
        ("链接[文字](http://x)", []),
    ],
)
def test_parse_markers(text: str, numbers: list[int]) -> None:
    assert parse_markers(text) == numbers


# ---------------------------------------------------------------- support


def test_key_terms_keep_names_words_and_numbers() -> None:
    terms = key_terms("DeepSeek-V3 的训练成本为 557.6万美元。")
    assert {"deepseek-v3", "557.6", "训练", "成本"} <= terms
    assert "的" not in terms


def test_support_share_of_terms() -> None:
    terms = key_terms("DeepSeek-V3 使用 FP8 混合精度训练")
    assert support(terms, P_COST) == pytest.approx(1.0)
    assert support(terms, P_SOUP) == 0.0
    assert support(set(), P_COST) == 0.0


def test_support_needs_the_numbers_of_the_sentence() -> None:
    assert support(key_terms("训练花费 600万美元"), P_COST) == 0.0
    assert support(key_terms("训练花费 557.6万美元"), P_COST) > 0.5
    assert support(key_terms("DeepSeek-V3 的训练花费 600万美元"), P_COST) == 0.0


@pytest.mark.parametrize(
    ("sentence", "numbers"),
    [("DeepSeek-V3 发布于 2024 年", {"2024"}), ("GPT-4o 和 Qwen2.5", set()), ("成本 557.6万美元[1]", {"557.6"})],
)
def test_key_terms_numbers_stand_alone(sentence: str, numbers: set[str]) -> None:
    found = {t for t in key_terms(sentence) if re.fullmatch(r"\d+(?:\.\d+)?", t)}
    assert found == numbers


# ---------------------------------------------------------------- check


def test_correct_marker_is_kept() -> None:
    result = check("DeepSeek-V3 的训练花费了 557.6万美元[1]。", TWO)
    assert result.text == "DeepSeek-V3 的训练花费了557.6万美元[1]。"
    assert numbers_of(result) == [1]
    assert result.unsupported == []
    assert_citations_from(result, TWO)


@pytest.mark.parametrize("marker", ["[7]", "[3]", "[0]", "[99]"])
def test_marker_to_missing_passage_is_dropped(marker: str) -> None:
    result = check(f"DeepSeek-V3 的训练花费了 557.6万美元{marker}。", TWO)
    assert marker not in result.text
    assert all(1 <= n <= 2 for n in parse_markers(result.text))
    assert_citations_from(result, TWO)


def test_marker_to_missing_passage_on_unsupported_sentence_is_dropped() -> None:
    result = check("火星上有液态水湖泊和大量冰川[7]。", TWO)
    assert parse_markers(result.text) == []
    assert result.citations == []
    assert result.unsupported == ["火星上有液态水湖泊和大量冰川"]


def test_wrong_number_is_repaired_to_supporting_passage() -> None:
    result = check("Transformer 架构由谷歌在 2017 年提出[1]。", TWO)
    assert result.text == "Transformer 架构由谷歌在2017年提出[2]。"
    assert numbers_of(result) == [2]
    assert result.citations[0].chunk.path == "b.txt"
    assert_citations_from(result, TWO)


def test_uncited_supported_sentence_gets_a_marker() -> None:
    result = check("DeepSeek-V3 使用 FP8 混合精度训练。", TWO)
    assert result.text == "DeepSeek-V3 使用 FP8 混合精度训练[1]。"
    assert numbers_of(result) == [1]
    assert result.unsupported == []


@pytest.mark.parametrize("written", ["", "[1]"])
def test_of_two_passages_with_the_year_the_one_about_the_subject_is_cited(written: str) -> None:
    # Both passages hold "2023", the one new word of the answer; only the second is about Orvell Labs.
    hits = [hit(1, "间章 2023：Tern Go 在 2024 年卖得很好，新款折叠车在 2023 年层出不穷。"),
            hit(2, "Tern k2：Orvell Labs 公司（成立于 2023 年的一家单车新创）推出的最新车型。")]  # fmt: skip
    result = check(f"造 Tern 的 Orvell Labs 公司成立于 2023 年{written}。", hits, question="造 Tern 的公司成立于哪一年？")
    assert numbers_of(result) == [2]


def test_marker_after_the_full_stop_is_not_lost() -> None:
    result = check("DeepSeek-V3 的训练花费了 557.6万美元。[1]", TWO)
    assert numbers_of(result) == [1]
    assert "[1]" in result.text


def test_unsupported_factual_sentence_is_reported() -> None:
    answer = "Transformer 由谷歌在 2017 年提出[2]。GPT-5 在 2030 年发布，参数达到一百万亿[1]。"
    result = check(answer, TWO)
    assert result.unsupported == ["GPT-5 在2030年发布，参数达到一百万亿"]
    assert numbers_of(result) == [2]
    assert result.text == "Transformer 由谷歌在2017年提出[2]。GPT-5 在2030年发布，参数达到一百万亿。"
    assert_citations_from(result, TWO)


def test_several_markers_keep_only_supporting_ones() -> None:
    result = check("DeepSeek-V3 使用 FP8 混合精度训练[1][2]。", TWO)
    assert result.text == "DeepSeek-V3 使用 FP8 混合精度训练[1]。"
    duplicate = check("DeepSeek-V3 训练成本 557.6万美元[1][1]。", TWO)
    assert duplicate.text == "DeepSeek-V3 训练成本557.6万美元[1]。"


def test_full_width_markers_are_normalized() -> None:
    result = check("DeepSeek-V3 使用 FP8 混合精度训练【1】。", TWO)
    assert result.text == "DeepSeek-V3 使用 FP8 混合精度训练[1]。"


def test_english_sentences() -> None:
    answer = "The Transformer was introduced by Google in 2017. It relies on self-attention [1]. Cook the soup [3]."
    result = check(answer, FOUR)
    assert result.text.startswith("The Transformer was introduced by Google in 2017[3].")
    assert "self-attention[3]." in result.text
    assert "2017." not in result.text
    assert_citations_from(result, FOUR)
    assert 3 in numbers_of(result)


def test_english_unsupported_sentence() -> None:
    result = check("GPT-5 was released by OpenAI in 2031 with ten trillion parameters.", FOUR)
    assert result.unsupported == ["GPT-5 was released by OpenAI in 2031 with ten trillion parameters"]
    assert result.citations == []


def test_english_decimal_is_not_a_sentence_end() -> None:
    hits = [hit(1, "The training cost 5.576 million US dollars using FP8 precision.")]
    result = check("The training cost 5.576 million US dollars.", hits)
    assert result.text == "The training cost 5.576 million US dollars[1]."


def test_an_abbreviation_does_not_end_an_english_sentence() -> None:
    hits = [hit(1, "Vaswani 等人在 2017 年提出了 Transformer 架构。")]
    result = check("Vaswani et al. proposed the Transformer architecture in 2017. It uses attention.", hits)
    assert result.text.startswith("Vaswani et al. proposed the Transformer architecture in 2017[1].")


@pytest.mark.parametrize("answer", ["", "好的。", "以下：", "\n\n"])
def test_non_factual_text_is_left_alone(answer: str) -> None:
    result = check(answer, TWO)
    assert result.text == answer.strip()
    assert result.citations == [] and result.unsupported == []


def test_no_passages_means_nothing_is_cited() -> None:
    result = check("DeepSeek-V3 使用 FP8 训练[1]。", [])
    assert result.citations == []
    assert parse_markers(result.text) == []
    assert result.unsupported == ["DeepSeek-V3 使用 FP8 训练"]


def test_multiline_answer_keeps_its_lines() -> None:
    answer = "1. DeepSeek-V3 使用 FP8 训练[1]。\n2. Transformer 由谷歌提出[1]。"
    result = check(answer, TWO)
    assert result.text == "1. DeepSeek-V3 使用 FP8 训练[1]。\n2. Transformer 由谷歌提出[2]。"
    assert numbers_of(result) == [1, 2]
    assert_citations_from(result, TWO)


@pytest.mark.parametrize(
    "answer",
    [
        "DeepSeek-V3 的训练花费了 557.6万美元[7]。Transformer 在 2017 年提出[1]。",
        "[1][2][3][4][5] 资料如下。",
        "Cook tomatoes with garlic [4]. Google introduced the Transformer in 2017 [9]. 无关的句子[2]。",
        "【3】【2】【1】",
    ],
)
@pytest.mark.parametrize("hits", [TWO, FOUR, FOUR[:1]])
def test_citations_only_reference_given_passages(answer: str, hits: list[Hit]) -> None:
    result = check(answer, hits)
    assert_citations_from(result, hits)
    assert all(1 <= n <= len(hits) for n in parse_markers(result.text))


# A wrong figure must not pass because some other digit (the "3" of "V3", the "8" of "FP8") is in the passage.
@pytest.mark.parametrize(
    "answer",
    [
        "DeepSeek-V3 的训练成本是 600万美元[1]。",
        "训练成本是 600万美元，使用 FP8 混合精度训练[1]。",
        "GPT-4o 的训练成本是 600万美元[1]。",
    ],
)
def test_wrong_figure_is_not_supported(answer: str) -> None:
    result = check(answer, TWO)
    assert result.citations == []
    assert len(result.unsupported) == 1 and "600" in result.unsupported[0]


@pytest.mark.parametrize("lead", ["根据资料：", "总结如下："])
def test_connective_phrase_is_not_unsupported(lead: str) -> None:
    result = check(f"{lead}\nDeepSeek-V3 使用 FP8 混合精度训练[1]。", TWO)
    assert result.unsupported == []


# ---------------------------------------------------------------- conflicting numbers


def _hits(*texts: str) -> list[Hit]:
    return [Hit(Chunk(f"c{i}", "f.md", "t", (), 0, len(t), t), score=1.0) for i, t in enumerate(texts)]


def test_other_number_for_the_same_fact_is_shown_and_cited() -> None:
    hits = _hits(
        "DeepSeek-V3 开发成本显著降低，估计约为 560 万美元，仅为西方公司投资的一小部分。",
        "2024年12月 - DeepSeek-V3\n├─ 深度求索发布\n├─ 🔥 训练成本仅557.6万美元（行业震撼）",
    )
    checked = check("DeepSeek-V3 的训练成本约为 560 万美元，仅为西方公司投资的一小部分[1]。", hits)
    assert "资料说法不一" in checked.text and "557.6万美元" in checked.text
    assert [c.number for c in checked.citations] == [1, 2]
    assert checked.conflicts == 1


R1_TIMELINE = "2025年1月 - Orvell-R2\n├─ 奥维尔发布\n├─ 🔥 开源折叠车设计（MIT许可）"
R1_REPORT = "Orvell R2：由初创公司Orvell在2024年底发布的开源车型。"


def test_a_further_passage_that_dates_the_release_otherwise_is_cited_in_the_note() -> None:
    shown = _hits(R1_TIMELINE, "Orvell-R2 的车架采用 7005 铝合金。")
    further = _hits(R1_REPORT)
    checked = check("Orvell-R2 是在 2025 年 1 月发布的[1]。", shown, "zh", "Orvell-R2 哪一年发布？", further)
    assert "资料说法不一" in checked.text and "2024年底" in checked.text
    assert [c.number for c in checked.citations] == [1, 3]  # the further passage follows the shown ones
    assert checked.citations[1].chunk.text == R1_REPORT


@pytest.mark.parametrize(
    "other",
    [
        "2025 年 1 月下旬，Orvell 发布了 Orvell-R2。",  # same year, another wording
        "Orvell-R2 超过了 2024 年发布的 k7 车型。",  # the year is k7's
        "2024年12月 - Orvell-V3 发布",  # another model
    ],
)
def test_release_dates_that_agree_or_belong_to_another_model_are_no_conflict(other: str) -> None:
    checked = check("Orvell-R2 是在 2025 年 1 月发布的[1]。", _hits(R1_TIMELINE), "zh", "", _hits(other))
    assert checked.conflicts == 0 and "说法不一" not in checked.text


def test_conflict_note_in_english() -> None:
    hits = _hits("DeepSeek-V3 的训练成本约为 560 万美元。", "├─ 🔥 训练成本仅557.6万美元（行业震撼）")
    checked = check("DeepSeek-V3's training cost (训练成本约为 560 万美元) was low [1].", hits, lang="en")
    assert "the sources differ" in checked.text and "[2]" in checked.text


def test_figures_after_one_shared_word_are_not_a_conflict() -> None:
    hits = _hits("K7 在 Q-Bench 爬坡测试里的得分为 87.5%。", "在 Z-Bench 基准测试中达到 25.2% 的通过率。")
    checked = check("K7 在 Q-Bench 爬坡测试里的得分为 87.5%[1]。", hits)
    assert checked.conflicts == 0


def test_two_different_counts_of_one_thing_are_not_a_conflict() -> None:
    hits = _hits("Tern-X 混合架构：980亿参数", "Tern-X 每个token激活120亿参数")
    checked = check("Tern-X 一共有 980亿参数[1]。", hits)
    assert checked.conflicts == 0 and "说法不一" not in checked.text


def test_answer_with_only_unsupported_invented_figures_is_invented() -> None:
    from rag.answer.citations import is_invented

    hits = _hits("DeepSeek-V3 采用 FP8 混合精度训练，训练成本仅557.6万美元。")
    invented = "训练 DeepSeek-V3 的是 16 张 GPU，型号为 NVIDIA A100。"
    assert is_invented(check(invented, hits), invented, hits)
    grounded = "训练成本仅557.6万美元[1]。"
    assert not is_invented(check(grounded, hits), grounded, hits)
    english = "It was trained cheaply with mixed precision."  # a translation fails the lexical check: kept, flagged
    assert not is_invented(check(english, hits, "en"), english, hits)
    made_up = "It was trained on 16 NVIDIA A100 cards."
    assert is_invented(check(made_up, hits, "en"), made_up, hits)


def test_a_count_the_passage_spells_out_grounds_the_answer_that_writes_digits() -> None:
    from rag.answer.citations import is_invented, spelled_out_as_digits

    assert spelled_out_as_digits("eleven layers, twenty-one days, forty two") == "11 layers, 21 days, 42"
    hits = _hits("The Brass Lantern Company employed eleven clockmakers in its first workshop.")
    written = "It employed 11 clockmakers in its first workshop."
    assert not is_invented(check(written, hits, "en"), written, hits)
    made_up = "It employed 12 clockmakers in its first workshop."
    assert is_invented(check(made_up, hits, "en"), made_up, hits)


@pytest.mark.parametrize(
    "answer",
    ["OpenAI 的创始人是伯克利大学的杰克·多尔西（Jeffrey Dorr）。", "Mistral 公司总部位于美国。", "这家公司叫 OpenAI，做了很多研究。"],
)
def test_chinese_answer_no_passage_supports_is_invented(answer: str) -> None:
    from rag.answer.citations import is_invented

    hits = _hits("OpenAI 于 2022 年底发布 ChatGPT，基于 GPT-3.5。Mistral 在年末发布了首个开源 MoE 模型。")
    checked = check(answer, hits)
    assert checked.citations == [] and is_invented(checked, answer, hits)


def test_chinese_answer_with_no_sentence_to_cite_is_invented() -> None:
    from rag.answer.citations import is_invented

    hits = _hits("OpenAI 发布了 GPT-2，这是一个参数量达 15 亿的更大模型。")
    answer = "GPQA 一共有15亿道题。"  # half its words are in the passage: not cited, not flagged either
    checked = check(answer, hits, "zh", "GPQA 一共有多少道题？")
    assert checked.citations == [] and is_invented(checked, answer, hits, "GPQA 一共有多少道题？")


def test_figure_in_yi_must_stand_in_the_passage_with_its_magnitude() -> None:
    from rag.answer.citations import is_invented

    hits = _hits("上下文窗口通常用token数量衡量，如GPT-3为2048 tokens，GPT-4可达32k。")
    invented = "GPT-4 的参数量是32亿[1]。"  # the 32 of "32k" tokens, counted in 亿 parameters
    checked = check(invented, hits)
    assert checked.citations == [] and checked.unsupported == ["GPT-4 的参数量是32亿"]
    assert is_invented(checked, invented, hits)


def test_figure_with_a_magnitude_matches_as_written() -> None:
    hits = _hits("o3-mini 错误率减少了39%，响应速度提高了24% HELICONE.AI 。总参数 1750 亿。")
    assert numbers_of(check("o3-mini 的响应速度提高了24%[1]。", hits)) == [1]
    assert numbers_of(check("o3-mini 的响应速度提高了4%[1]。", hits)) == []  # 4% is not the 4 of 24%
    assert numbers_of(check("o3-mini 总参数1750亿[1]。", hits)) == [1]


def test_most_on_topic_passage_is_the_one_holding_most_of_the_question() -> None:
    passages = ["代表模型：Llama 3 405B、Qwen3-235B。MoE架构通过稀疏激活降低计算成本。", "LLaMA3.1 405B：非 MoE 结构。", "Mamba：新结构的尝试。"]
    assert most_on_topic("Llama 3.1 405B 用的是 MoE 结构吗？", passages) == 1
    assert most_on_topic("Llama 3.1 405B 用的是 MoE 结构吗？", passages[:1] + passages[2:]) is None  # 4 of 6 words at best
    assert most_on_topic("Is LLaMA3.1 405B a MoE model?", passages) == 1  # English: every name and figure
    assert most_on_topic("任何问题", []) is None


def test_a_number_counted_with_another_measure_word_is_no_support() -> None:
    from rag.answer.citations import is_invented

    hits = _hits("MMLU：综合性知识测评基准，涵盖57个学科的考试题，难度相当于大学本科水平。")
    wrong = "MMLU 一共有57道题[1]。"  # 57 subjects, not 57 questions
    checked = check(wrong, hits)
    assert checked.citations == [] and is_invented(checked, wrong, hits)
    assert numbers_of(check("MMLU 涵盖57个学科[1]。", hits)) == [1]
    assert numbers_of(check("训练在2048块 H800 GPU 上完成[1]。", _hits("训练在 2048 块 H800 GPU 上完成。"))) == [1]


def test_figure_with_a_unit_must_be_about_the_model_the_sentence_names() -> None:
    hits = _hits("代表模型：GPT-5.2（256K）、Gemini 3 Pro（1M）、Claude 4 Opus（500K）。", "GPT-4o 是多模态模型。")
    assert check("GPT-4o 的上下文窗口为500K tokens[1]。", hits).citations == []  # 500K is Claude 4 Opus's
    assert numbers_of(check("Claude 4 Opus 的上下文窗口为500K[1]。", hits)) == [1]


def test_a_date_is_no_versioned_name() -> None:
    from rag.answer.citations import versioned_names

    assert versioned_names("In April 2024, Llama 3 was first released with 8B and 70B versions.") == {"llama 3"}
    hits = _hits("llama 3:于2024年推出。llama 3在2024年\n- 4月首先发布8b和70b两个规模的模型")
    checked = check("In April 2024, Llama 3 was first released with 8B and 70B versions.", hits, "en")
    assert numbers_of(checked) == [1]


def test_digit_of_a_name_is_no_figure() -> None:
    hits = _hits("推理模型 代表模型：OpenAI o1、DeepSeek-R1、Qwen3。")
    assert check("Qwen3 是用1个 GPU 训练的[1]。", hits).citations == []  # the 1 of "o1"


def test_english_figure_with_a_unit_is_the_claim_checked() -> None:
    hits = _hits("Kimi k1.5支持**128K tokens**的上下文窗口，能一次处理海量文本。")
    checked = check("The context window of Kimi k1.5 is 128K tokens.", hits, "en", "What is the context window of Kimi k1.5?")
    assert numbers_of(checked) == [1] and checked.unsupported == []


# ---------------------------------------------------------------- figures and the names they belong to


def test_versioned_names() -> None:
    from rag.answer.citations import versioned_names

    text = "GPT-4 比 Llama 3 贵[1]，DeepSeek-V3 用 A100，o3-mini、Claude 3.5 和 Kimi k1.5 支持 128K 上下文。"
    assert versioned_names(text) == {"gpt-4", "llama 3", "deepseek-v3", "a100", "o3-mini", "claude 3.5", "k1.5"}


@pytest.mark.parametrize(
    ("number", "names", "text", "expected"),
    [
        ("1750", {"gpt-3"}, "gpt-3 有1750亿参数", True),
        ("1750", {"gpt-4"}, "gpt-3 有1750亿参数，gpt-4 未公布", True),  # both named in the sentence
        ("1750", {"gpt-4"}, "gpt-3 有1750亿参数。gpt-4 未公布", False),  # the figure is GPT-3's
        ("1750", {"gpt-4"}, "gpt-4o 与 gpt-3 的1750亿参数", False),  # gpt-4o is another model
        ("1750", set(), "gpt-3 有1750亿参数", True),
        ("128", set(), "支持 1280 个", False),
        ("128", {"deepseek-r1"}, "deepseek r1 支持 128k 上下文", True),
        ("71.7", {"o3"}, "openai-o3：\n- 编程：在 swe-bench verified 上达到 71.7%", True),  # a list under its name
        ("48.9", {"o3"}, "openai-o3 发布。\n- o1 在 swe-bench 上为 48.9%", False),
    ],
)
def test_grounded(number: str, names: set[str], text: str, expected: bool) -> None:
    from rag.answer.citations import grounded

    assert grounded(number, names, text) is expected


def test_figure_of_another_model_does_not_support_the_sentence() -> None:
    from rag.answer.citations import is_invented

    hits = _hits("GPT-3 (2020) 凭借惊人的 1750 亿参数，突破了语言模型的规模。", "GPT-4o 支持50多种语言。")
    wrong = "GPT-4 的参数规模为 1750 亿[1]。"
    checked = check(wrong, hits)
    assert checked.citations == [] and checked.unsupported
    assert is_invented(checked, wrong, hits)  # the pipeline answers with a refusal instead
    right = "GPT-3 的参数规模为 1750 亿[1]。"
    checked = check(right, hits)
    assert [c.number for c in checked.citations] == [1] and not checked.unsupported


def test_invented_chip_name_or_count_makes_an_answer_invented() -> None:
    from rag.answer.citations import is_invented

    hits = _hits("DeepSeek-R1 支持 128K 上下文窗口，训练成本仅557.6万美元。")
    for answer in ("训练 DeepSeek-V3 的是 128 张 GPU。", "训练 DeepSeek-V3 的是 H800 显卡。"):
        assert is_invented(check(answer, hits), answer, hits), answer


def test_a_version_number_reused_as_a_figure_is_invented() -> None:
    from rag.answer.citations import is_invented

    hits = _hits("Tern k2.5 由奥维尔发布，电池支持 128K 次充放电。")
    invented = "Tern k2.5 车型大约有 2.5 亿个零件。"  # the 2.5 is the version, "2.5亿" is nowhere
    assert is_invented(check(invented, hits), invented, hits)
    written = "Tern k2.5 的电池支持 128K 次充放电[1]。"
    assert not is_invented(check(written, hits), written, hits)


def test_unsupported_answer_that_only_restates_the_question_is_a_non_answer() -> None:
    from rag.answer.citations import adds_nothing, is_invented

    hits = _hits("Orvell 发布了 Tern 3 折叠车，在车重上有明显改进。")
    question = "谁创立了 Orvell 这家公司？"
    echo = "Orvell 这家公司由 Orvell 公司创立。"
    assert adds_nothing(echo, question)
    assert is_invented(check(echo, hits), echo, hits, question)
    assert not adds_nothing("Orvell 由前 Vega 员工创立。", question)


@pytest.mark.parametrize(
    ("question", "answer", "expected"),
    [
        ("Vega 2.5 台灯有多少档亮度？", "Vega 2.5 台灯有11小时的续航[1]。", True),
        ("Vega 2.5 台灯有多少档亮度？", "资料没有给出 Vega 2.5 的亮度档位。", False),
        ("K7o 的菜单有多少种语言？", "K7o 的菜单有50多种语言[1]。", False),
        ("Tern 3 出厂一共跑了多少 公里 的路测？", "Tern 3 做了更多严格路测[1]。", True),
        ("压缩能把体积减少多少？", "可以减少30%[1]。", False),  # nothing named after 多少: no check
        ("How many parameters does it have?", "It has 175B.", False),
        # a parameter count, but of the model next to the one asked about
        ("K7 到底有多少档位？", "K7 沿用了旧底座。凭借惊人的12档调节，K6 突破了界限[1]。", True),
        ("K7 到底有多少档位？", "K7 的档位约为8档[1]。", False),
        # "how much money": the answer must give a sum
        ("DeepSeek-R1 的训练花了多少钱？", "DeepSeek-R1 的训练花了大约一个月的时间[3]。", True),
        ("DeepSeek-V3 的训练花了多少钱？", "约557.6万美元[1]。", False),
    ],
)
def test_misses_the_count(question: str, answer: str, expected: bool) -> None:
    from rag.answer.citations import misses_the_count

    assert misses_the_count(answer, question) is expected


def test_english_sentence_is_checked_by_its_figures_and_names_against_chinese_passages() -> None:
    from rag.answer.citations import checkable_terms

    assert checkable_terms("TruthfulQA has 817 questions [1].") == {"truthfulqa", "817"}
    hits = _hits("LSTM 于 1997 年提出，包含输入门、输出门和遗忘门。", "TruthfulQA 由 817 道开放问答题组成。")
    checked = check("TruthfulQA consists of 817 open-ended questions. The LSTM appeared in 1997.", hits, lang="en")
    assert checked.text == "TruthfulQA consists of 817 open-ended questions[2]. The LSTM appeared in 1997[1]."
    assert checked.unsupported == []
    wrong = check("TruthfulQA consists of 900 questions [2].", hits, lang="en")
    assert wrong.citations == [] and wrong.unsupported  # a figure no passage gives


def test_english_figure_converted_from_a_chinese_magnitude_is_supported() -> None:
    hits = _hits("Meta发布Llama 3.1，其中包括一个高达4050亿参数的变体。", "DeepSeek-V3 最多包含 6710 亿个参数。")
    checked = check("Llama 3.1 has a variant with 405 billion parameters. DeepSeek-V3 has 671 billion.", hits, lang="en")
    assert checked.text == "Llama 3.1 has a variant with 405 billion parameters[1]. DeepSeek-V3 has 671 billion[2]."
    assert checked.unsupported == []
    # A Chinese answer is read against the passage as written.
    assert check("Llama 3.1 有405参数。", hits).unsupported


def test_trailing_filler_sentence_is_dropped() -> None:
    checked = check("训练成本仅557.6万美元[1]。根据资料中的描述。", TWO)
    assert checked.text == "训练成本仅557.6万美元[1]。"
    assert check("根据资料[1]，训练成本仅557.6万美元。", TWO).text.startswith("根据资料")  # a fact: kept


def test_words_taken_over_from_the_question_do_not_count_against_a_passage() -> None:
    hits = _hits("Tern 3.5 Cargo 将货架载重提高到 200K 克。")
    answer = "Tern 3.5 Cargo 后座一次最多能驮上 200K 克。"
    assert check(answer, hits).citations == []  # "后座一次最多能驮上" is not in the passage
    checked = check(answer, hits, question="Tern 3.5 Cargo 后座一次最多能驮上多重的东西？")
    assert [c.number for c in checked.citations] == [1] and checked.unsupported == []
    # The question's words do not excuse a figure the passage lacks.
    wrong = check(
        "Tern 3.5 Cargo 后座一次最多能驮上 100K 克。",
        hits,
        question="Tern 3.5 Cargo 后座一次最多能驮上多重的东西？",
    )
    assert wrong.citations == []


@pytest.mark.parametrize(
    ("text", "tidy"),
    [
        ("参数规模为 1750 亿", "参数规模为1750亿"),
        ("在 2022 年 11 月 30 日上线", "在2022年11月30日上线"),
        ("错误率降低 39 %", "错误率降低39%"),
        ("GPT-4 和 GPT-3 不同", "GPT-4 和 GPT-3 不同"),  # the digit of a name keeps its space
    ],
)
def test_tidy_figures_writes_figures_as_the_sources_do(text: str, tidy: str) -> None:
    assert tidy_figures(text) == tidy


def test_chinese_answer_figures_are_tidied_english_left_alone() -> None:
    zh = check("训练仅花费 557.6 万美元[1]。", [hit(1, P_COST)], "zh")
    assert "557.6万美元[1]" in zh.text
    en = check("It was introduced in 2017 [1].", [hit(1, P_ENGLISH)], "en")
    assert "in 2017" in en.text


@pytest.mark.parametrize(
    ("answer", "degenerate"),
    [
        ("1. 1. 1. 1. 1. 1. 1. 1.", True),
        ("[1] [1] [1] 的 的 的 的 的 的", True),
        ("1750亿", False),
        ("GPT-3 有 1750 亿参数[1]。", False),
        ("Qwen3 有三个型号：Qwen3-235B、Qwen3-235B、Qwen3-235B[1]。", True),
        ("代表模型：Llama 3 405B、Qwen3-235B、Qwen3-235B[1]。", False),  # twice may be a slip
        ("模型、模型训练、训练", False),
        ("1. 1. 1. 2. 3. 4. 5. 6. 7.", True),  # list numbers only: rendered, an empty list
        ("1. 2.", True),
        ("57.", False),  # a bare figure is an answer
        ("1. Wash the tomatoes. 2. Boil them.", False),
    ],
)
def test_a_loop_on_one_token_or_one_item_is_degenerate(answer: str, degenerate: bool) -> None:
    from rag.answer.citations import is_degenerate

    assert is_degenerate(answer) is degenerate


# ---------------------------------------------------------------- guards (rag/guards.py)


@pytest.mark.parametrize(
    ("answer", "guard", "with_it", "without_it"),
    [
        # a marker on the wrong passage moves to the right one; off, the model's marker stays
        ("DeepSeek-V3 的完整训练仅花费557.6万美元[2]。", "repair_markers", "557.6万美元[1]。", "557.6万美元[2]。"),
        # a supported sentence without a marker gets one; off, it stays bare
        ("DeepSeek-V3 的完整训练仅花费557.6万美元。", "attach_markers", "557.6万美元[1]。", "557.6万美元。"),
        # a sentence that only points at the sources goes; off, it stays
        ("根据资料。Transformer 由谷歌在2017年提出[2]。", "drop_filler", "Transformer", "根据资料。Transformer"),
        # the space between a figure and a Chinese unit goes; off, it stays
        ("Transformer 由谷歌在 2017 年提出[2]。", "tidy_figures", "在2017年提出", "在 2017 年提出"),
    ],
)
def test_each_citation_repair_is_counted_and_can_be_turned_off(
    answer: str, guard: str, with_it: str, without_it: str
) -> None:
    from rag.guards import Guards

    on, off = Guards(), Guards.without([guard])
    assert with_it in check(answer, TWO, guards=on).text and on.counts[guard] == 1
    assert without_it in check(answer, TWO, guards=off).text and not off.counts[guard]


def test_an_unsupported_sentence_is_flagged_whether_or_not_its_marker_is_repaired() -> None:
    from rag.guards import Guards

    wrong = "DeepSeek-V3 的参数量是6710亿[1]。"  # passage [1] gives the cost, not the size
    for guards in (Guards(), Guards.without(["repair_markers"])):
        assert check(wrong, TWO, guards=guards).unsupported == ["DeepSeek-V3 的参数量是6710亿"]
    assert numbers_of(check(wrong, TWO, guards=Guards.without(["repair_markers"]))) == [1]
    assert numbers_of(check(wrong, TWO)) == []


def test_refusal_guards_of_the_check_say_which_rule_rejected() -> None:
    from rag.answer.citations import invented_reason
    from rag.guards import Guards

    made_up = "训练 DeepSeek-V3 的是 4096 张 A100 GPU。"  # no passage names A100 or 4096
    checked = check(made_up, TWO)
    assert invented_reason(checked, made_up, TWO) == "uncited_zh"
    assert invented_reason(checked, made_up, TWO, guards=Guards.without(["uncited_zh"])) == "invented"
    assert invented_reason(checked, made_up, TWO, guards=Guards.without(["uncited_zh", "invented"])) is None


def test_a_sentence_opening_before_a_figure_is_no_versioned_name() -> None:
    from rag.answer.citations import versioned_names

    assert versioned_names("At 250 °C for 20 minutes, then In 2023 and About 40 more.") == set()
    assert versioned_names("Llama 3 and GPT-4 differ.") == {"llama 3", "gpt-4"}
