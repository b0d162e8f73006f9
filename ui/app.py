"""The Gradio chat page: streamed answers, numbered citations, a sources panel, index status.

It calls the same Pipeline as the CLI. One Pipeline (one copy of each model)
serves every browser tab; the generator's lock and Gradio's queue make
concurrent questions wait their turn instead of mixing answers.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag import offline  # noqa: F401  (before gradio: analytics off)
from rag.config import Settings
from rag.errors import RagError
from rag.pipeline import Done, Pipeline, Retrieved, Token, Turn
from rag.schema import Answer, Hit

EXAMPLES = [
    "DeepSeek-V3 的训练成本是多少？",
    "什么是混合专家（MoE）架构？",
    "GPQA Diamond 是什么样的评测基准？",
    "Transformer 架构是哪一年提出的？",
    "What Elo rating did OpenAI's o3 reach on Codeforces?",
]

CSS = """
.src { border-left: 3px solid #7c8cf8; padding: 4px 10px; margin: 8px 0; }
.src .meta { font-size: 0.9em; color: #555; }
.src blockquote { margin: 6px 0 0 0; white-space: pre-wrap; font-size: 0.92em; }
.related { border-left-color: #bbb; }
.unsupported { background: #fff3cd; }
"""

# System fonts only: the default theme would fetch Google Fonts, which an offline page must not.
_FONTS = ["system-ui", "PingFang SC", "Noto Sans CJK SC", "Microsoft YaHei", "sans-serif"]


def _passage_html(number: int | None, hit_chunk, related: bool = False) -> str:  # type: ignore[no-untyped-def]
    c = hit_chunk
    label = f"[{number}] " if number is not None else ""
    page = f" · 第 {c.page} 页" if c.page else ""
    heading = html.escape(c.heading or c.title)
    cls = "src related" if related else "src"
    anchor = f' id="src-{number}"' if number is not None else ""
    return (
        f'<div class="{cls}"{anchor}><div class="meta"><b>{label}</b>{html.escape(c.path)} — {heading}{page}'
        f" · 字符 {c.start}–{c.end}</div><blockquote>{html.escape(c.text)}</blockquote></div>"
    )


def sources_html(answer: Answer, show_details: bool = False) -> str:
    parts: list[str] = []
    if answer.citations:
        parts.append("<h4>引用来源</h4>")
        parts += [_passage_html(c.number, c.chunk) for c in answer.citations]
    elif answer.related:
        parts.append("<h4>相关段落（资料未直接回答，非引用）</h4>")
        parts += [_passage_html(None, h.chunk, related=True) for h in answer.related]
    elif answer.hits:
        # The answer cites nothing: show what the model read, so the reader can still check.
        parts.append("<h4>提供给模型的段落（回答未引用）</h4>")
        parts += [_passage_html(i, h.chunk, related=True) for i, h in enumerate(answer.hits, start=1)]
    if answer.unsupported:
        items = "".join(f"<li>{html.escape(s)}</li>" for s in answer.unsupported)
        parts.append(f'<div class="unsupported"><b>未找到资料支持的句子：</b><ul>{items}</ul></div>')
    if show_details:
        parts.append(details_html(answer.query, answer.hits or answer.related, answer.timings))
    return "\n".join(parts) or "<p>（无来源）</p>"


def details_html(query: str, hits: list[Hit], timings: dict[str, float]) -> str:
    rows = "".join(
        f"<tr><td>{i}</td><td>{h.score:.4f}</td><td>{'' if h.dense_score is None else f'{h.dense_score:.3f}'}</td>"
        f"<td>{'' if h.lexical_score is None else f'{h.lexical_score:.2f}'}</td><td>{html.escape(h.chunk.path)}</td></tr>"
        for i, h in enumerate(hits, start=1)
    )
    times = ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
    return (
        f"<details open><summary>检索详情</summary><p>检索查询：{html.escape(query)}</p>"
        f"<table><tr><th>#</th><th>融合分</th><th>向量</th><th>BM25</th><th>文件</th></tr>{rows}</table>"
        f"<p>耗时：{times}</p></details>"
    )


def _history_turns(history: list[dict[str, Any]]) -> list[Turn]:
    turns, question = [], None
    for message in history:
        content = message.get("content")
        text = content if isinstance(content, str) else ""
        if message.get("role") == "user":
            question = text
        elif message.get("role") == "assistant" and question is not None:
            turns.append(Turn(question, re.sub(r"\[\d+\]", "", text)))
            question = None
    return turns[-3:]


def documents_table(pipeline: Pipeline) -> list[list[Any]]:
    try:
        index = pipeline.get_index()
    except RagError as exc:
        return [[f"（{exc.message}）", 0, ""]]
    return [[path, len(entry.chunk_ids), entry.indexed_at] for path, entry in sorted(index.manifest.files.items())]


def build_app(pipeline: Pipeline):  # type: ignore[no-untyped-def]
    import gradio as gr

    settings = pipeline.settings
    rebuild_lock = threading.Lock()

    def respond(message: str, history: list[dict[str, Any]], k: int, show_details: bool) -> Iterator[tuple[Any, str, str]]:
        history = list(history or [])
        turns = _history_turns(history)
        history.append({"role": "user", "content": message})
        history.append({"role": "assistant", "content": "…"})
        yield history, "<p>正在检索…</p>", ""
        text = ""
        try:
            for event in pipeline.ask(message, turns, k=int(k)):
                if isinstance(event, Retrieved):
                    yield history, "<p>正在生成回答…</p>", ""
                elif isinstance(event, Token):
                    text += event.text
                    history[-1] = {"role": "assistant", "content": text}
                    yield history, "<p>正在生成回答…</p>", ""
                elif isinstance(event, Done):
                    history[-1] = {"role": "assistant", "content": event.answer.text}
                    yield history, sources_html(event.answer, show_details), ""
        except RagError as exc:
            history[-1] = {"role": "assistant", "content": f"⚠️ {exc.message}\n\n{exc.hint}"}
            yield history, "", ""

    def rebuild() -> Iterator[tuple[str, list[list[Any]]]]:
        from rag.cli import run_index

        if not rebuild_lock.acquire(blocking=False):
            yield "已有更新在进行中。", documents_table(pipeline)
            return
        try:
            yield "正在更新索引（期间仍使用旧索引回答）…", documents_table(pipeline)
            report = run_index(settings, quiet=True)
            skipped = "".join(f"\n- 跳过 {p}：{r}" for p, r in report.skipped.items())
            msg = (
                f"完成：{report.documents} 个文档，{report.chunks} 个段落，用时 {report.seconds:.1f} 秒"
                f"（新增 {len(report.added)}，更新 {len(report.updated)}，删除 {len(report.removed)}）。{skipped}"
            )
            yield msg, documents_table(pipeline)
        except RagError as exc:
            yield f"⚠️ {exc.message} {exc.hint}", documents_table(pipeline)
        finally:
            rebuild_lock.release()

    theme = gr.themes.Default(font=_FONTS, font_mono=["ui-monospace", "monospace"])
    with gr.Blocks(title="离线文档问答", analytics_enabled=False) as demo:
        gr.Markdown("## 离线文档问答 · 回答附带编号引用，点开右侧来源可核对原文")
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="对话", height=520, elem_id="chat")
                question = gr.Textbox(placeholder="输入问题，按回车发送", show_label=False, elem_id="question")
                with gr.Row():
                    send = gr.Button("发送", variant="primary", elem_id="send")
                    stop = gr.Button("停止", elem_id="stop")
                    clear = gr.Button("清空对话", elem_id="clear")
                gr.Examples(EXAMPLES, inputs=question, label="示例问题")
            with gr.Column(scale=2):
                sources = gr.HTML("<p>回答的引用来源会显示在这里。</p>", elem_id="sources")
                with gr.Accordion("设置", open=False):
                    k = gr.Slider(1, 8, value=settings.top_k, step=1, label="给模型的段落数")
                    show_details = gr.Checkbox(False, label="显示检索详情")
                with gr.Accordion("索引", open=False):
                    gr.Markdown(f"嵌入模型：`{settings.embed_model}` · 对话模型：`{settings.chat_model}`")
                    docs = gr.Dataframe(
                        headers=["文档", "段落数", "索引时间"], value=lambda: documents_table(pipeline), interactive=False
                    )
                    rebuild_btn = gr.Button("更新索引")
                    status = gr.Markdown("")

        inputs = [question, chatbot, k, show_details]
        outputs = [chatbot, sources, question]
        ev1 = question.submit(respond, inputs, outputs, api_name="ask", concurrency_limit=1)
        ev2 = send.click(respond, inputs, outputs, api_name=False, concurrency_limit=1)
        stop.click(None, None, None, cancels=[ev1, ev2])
        clear.click(lambda: ([], "<p>回答的引用来源会显示在这里。</p>", ""), None, outputs, api_name=False)
        rebuild_btn.click(rebuild, None, [status, docs], api_name="rebuild", concurrency_limit=1)
    demo.queue(default_concurrency_limit=1)
    demo._rag_theme = theme  # launch() applies theme and CSS (Gradio 6 takes them there)
    return demo


def launch(settings: Settings, host: str = "127.0.0.1", port: int = 7860, block: bool = True):  # type: ignore[no-untyped-def]
    pipeline = Pipeline(settings)
    # Load models before the first visitor so the first answer is not slowed by it.
    pipeline.get_index()
    pipeline.get_embedder()
    pipeline.get_generator()
    demo = build_app(pipeline)
    print(f"Chat page: http://{host}:{port}", flush=True)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=not block,
        theme=demo._rag_theme,
        css=CSS,
        footer_links=[],
        quiet=True,
    )
    return demo


def main() -> None:
    from rag.config import load_settings

    s = load_settings()
    launch(s, s.host, s.port)


if __name__ == "__main__":
    main()
