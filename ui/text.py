"""Every piece of text the page shows, in Chinese and English.

`say("zh", "send")` -> "发送". Chinese is the default; the page switches to
English when the browser prefers it or the reader picks it. Model answers are
never translated: they follow the language of the question.
"""

from __future__ import annotations

DEFAULT_LANG = "zh"
LANGUAGES = (("中文", "zh"), ("English", "en"))

TEXT: dict[str, dict[str, str]] = {
    "zh": {
        "title": "## 离线文档问答",
        "subtitle": "回答中的每个 [n] 都链接到原文：点击它，右侧来源栏会显示该段落并高亮被引用的句子。",
        "chat": "对话",
        "chat_empty": "从下面的示例问题开始，或直接输入你的问题。",
        "placeholder": "输入问题，按回车发送",
        "send": "发送",
        "stop": "停止",
        "clear": "清空对话",
        "examples": "示例问题（点击即可提问）",
        "sources": "来源",
        "sources_empty": "回答的引用来源会显示在这里。",
        "settings": "设置",
        "model": "对话模型",
        "model_info": "首次使用某个模型时才加载，最多同时保留两个",
        "role_default": "默认",
        "role_fast": "快速",
        "role_configured": "当前配置",
        "top_k": "给模型的段落数",
        "details": "显示检索详情（检索查询、每个段落的分数、耗时）",
        "index": "索引",
        "index_info": "嵌入模型：`{model}` · {documents} 个文档 · {chunks} 个段落 · 建立于 {built}",
        "index_skipped": "{n} 个文件未能索引（改好后点击“更新索引”）：",
        "index_missing": "还没有索引：{message} 点击“更新索引”建立。",
        "kv_status": "段落 KV 缓存：{blocks}/{total} 段，{mb}/{limit} MB，{state}",
        "kv_limit": "已达磁盘上限（kv_store_max_mb），其余段落按普通方式回答",
        "first_build": "正在首次建立索引：已读取 {files_done}/{files_total} 个文档，已计算 {done}/{total} 个向量（段落及其句子片段）{eta}。建好之前还不能回答问题。",
        "first_build_eta": "，约剩 {eta}",
        "first_build_loading": "索引已建好（{documents} 个文档，{chunks} 个段落），正在加载模型…",
        "first_build_failed": "首次建立索引失败：{error}",
        "ask_while_building": "索引还在建立中，暂时无法回答。{progress}",
        "kv_ready": "已就绪：只需读问题，首字约 1 秒",
        "kv_building": "后台计算中（{done}/{todo}），期间按普通方式回答",
        "kv_incomplete": "不完整，缺的段落按普通方式回答",
        "kv_off": "段落 KV 缓存已关闭（kv_cache = 0）",
        "kv_error": "段落 KV 缓存不可用：{message}",
        "col_document": "文档",
        "col_chunks": "段落数",
        "col_indexed": "最近索引",
        "rebuild": "重建 / 更新索引",
        "upload": "上传文档",
        "upload_files": "选择文件：{types}（每个不超过 {mb:g} MB）",
        "overwrite": "覆盖同名文件（确认替换资料库中已有的文件）",
        "upload_btn": "添加到资料库并更新索引",
        # collections and saved chats
        "collection": "文档集",
        "collection_info": "提问检索所选文档集；上传的文件也放入其中",
        "saved": "保存的对话",
        "saved_empty": "每个对话在第一个回答之后自动保存在这里。",
        "saved_list": "点击打开",
        "new_chat": "新对话",
        "delete_chat": "删除当前对话",
        "export_chat": "导出 Markdown",
        "export_none": "先提问或打开一个对话，再导出。",
        "export_file": "导出的文件",
        # status while answering
        "loading_model": "正在加载对话模型 {name}…",
        "searching": "正在检索…",
        "waiting": "排队中：前面还有 {n} 个问题在回答…",
        "generating": "正在根据 {n} 个段落生成回答…",
        "again": "第一稿未采用（未通过核对或答“没有相关信息”），正在重新回答…",
        "stopped": "（已停止）",
        "error": "出错了：{message}",
        # sources panel
        "turn": "第 {n} 轮：{question}",
        "cited": "引用来源",
        "related": "相关段落（资料中没有直接的答案，以下并非引用）",
        "uncited": "提供给模型的段落（回答没有引用它们）",
        "unsupported": "以下句子在资料中找不到依据：",
        "unsupported_tip": "资料中找不到依据",
        "page": "第 {n} 页",
        "slide": "第 {n} 张幻灯片",
        "sheet": "第 {n} 个工作表",
        "chars": "字符 {start}–{end}",
        "cited_by": "引用它的句子：",
        "details_title": "检索详情",
        "query": "检索查询：",
        "score_rank": "#",
        "score_fused": "融合分 (RRF)",
        "score_dense": "向量相似度",
        "score_bm25": "BM25",
        "score_file": "文件",
        "score_heading": "标题路径",
        "timings": "耗时：",
        "t_retrieval": "检索",
        "t_first_token": "首字",
        "t_generation": "生成",
        "t_total": "总计",
        "tokens": "提示 {prompt} 个词元，回答 {completion} 个词元",
        # index and uploads
        "build_busy": "已有一次索引更新在进行，请稍候。",
        "build_read": "读取文件 {done}/{total}…",
        "build_embed": "计算向量：{done}/{total} 个段落…",
        "build_write": "写入新索引…",
        "build_start": "正在更新索引（期间仍用旧索引回答问题）…",
        "build_done": "完成：{documents} 个文档，{chunks} 个段落，用时 {seconds:.1f} 秒（新增 {added}，更新 {updated}，删除 {removed}）。",
        "build_nochange": "索引已是最新：{documents} 个文档，{chunks} 个段落。",
        "build_skipped": "跳过 {path}：{reason}",
        "build_failed": "索引更新失败：{message} {hint}",
        "up_none": "请先选择要上传的文件。",
        "up_added": "已添加 {name}",
        "up_renamed": "已添加 {original}，保存为 {name}",
        "up_replaced": "已替换 {name}",
        "up_unchanged": "{name} 与资料库中的文件完全相同，未改动",
        "up_exists": "{name} 已存在且内容不同：勾选“覆盖同名文件”后再添加一次才会替换",
        "up_bad_type": "{original}：只接受这些类型的文件：{types}",
        "up_too_big": "{original} 有 {size:.1f} MB，超过 {limit:g} MB 的上限",
        "up_empty": "{original} 是空文件",
        "up_not_pdf": "{original} 不是有效的 PDF 文件",
        "up_not_office": "{original} 不是有效的 Word / Excel / PowerPoint 文件（或设有密码）：去掉密码或重新另存后再上传",
        "up_not_text": "{original} 不是 UTF-8 或 GB18030 编码的文本文件",
        "up_failed": "{original} 无法保存：{detail}",
    },
    "en": {
        "title": "## Offline document Q&A",
        "subtitle": "Every [n] in an answer links to its source: click it and the sources panel shows the passage "
        "with the cited sentence highlighted.",
        "chat": "Chat",
        "chat_empty": "Start with an example question below, or type your own.",
        "placeholder": "Type a question and press Enter",
        "send": "Send",
        "stop": "Stop",
        "clear": "Clear chat",
        "examples": "Example questions (click one to ask it)",
        "sources": "Sources",
        "sources_empty": "The sources of an answer appear here.",
        "settings": "Settings",
        "model": "Chat model",
        "model_info": "Loaded when first used; at most two stay loaded",
        "role_default": "default",
        "role_fast": "fast",
        "role_configured": "configured",
        "top_k": "Passages given to the model",
        "details": "Show retrieval details (search query, score of every passage, timings)",
        "index": "Index",
        "index_info": "Embedding model: `{model}` · {documents} documents · {chunks} chunks · built {built}",
        "index_skipped": "{n} file(s) could not be indexed (fix them, then update the index):",
        "index_missing": "No index yet: {message} Click “Rebuild / update index” to build it.",
        "kv_status": "Passage KV store: {blocks}/{total} passages, {mb}/{limit} MB, {state}",
        "kv_limit": "at its disk limit (kv_store_max_mb); other passages are answered the ordinary way",
        "first_build": "Building the index for the first time: {files_done}/{files_total} documents read, {done}/{total} texts embedded (chunks and their sentence pieces){eta}. Questions can be answered once it is built.",
        "first_build_eta": ", about {eta} left",
        "first_build_loading": "The index is built ({documents} documents, {chunks} chunks); loading the models…",
        "first_build_failed": "The first index build failed: {error}",
        "ask_while_building": "The index is still being built, so this cannot be answered yet. {progress}",
        "kv_ready": "ready: only the question is read, first token in about a second",
        "kv_building": "computing in the background ({done}/{todo}); answering the ordinary way meanwhile",
        "kv_incomplete": "incomplete; questions with missing passages are answered the ordinary way",
        "kv_off": "Passage KV store is off (kv_cache = 0)",
        "kv_error": "Passage KV store unavailable: {message}",
        "col_document": "Document",
        "col_chunks": "Chunks",
        "col_indexed": "Last indexed",
        "rebuild": "Rebuild / update index",
        "upload": "Upload documents",
        "upload_files": "Choose files: {types} (at most {mb:g} MB each)",
        "overwrite": "Overwrite files with the same name (confirms replacing them)",
        "upload_btn": "Add to the corpus and update the index",
        "collection": "Collection",
        "collection_info": "Questions search the chosen collection; uploads go into it",
        "saved": "Saved chats",
        "saved_empty": "Each chat is saved here after its first answer.",
        "saved_list": "Click to open",
        "new_chat": "New chat",
        "delete_chat": "Delete this chat",
        "export_chat": "Export Markdown",
        "export_none": "Ask a question or open a chat first, then export it.",
        "export_file": "Exported file",
        "loading_model": "Loading the chat model {name}…",
        "searching": "Searching…",
        "waiting": "Waiting in line: {n} question(s) ahead…",
        "generating": "Writing the answer from {n} passages…",
        "again": "The first draft was not kept (it failed the check or said the documents do not cover it); answering again…",
        "stopped": "(stopped)",
        "error": "Something went wrong: {message}",
        "turn": "Turn {n}: {question}",
        "cited": "Cited passages",
        "related": "Related passages (the documents do not answer this directly; these are not citations)",
        "uncited": "Passages given to the model (the answer cites none of them)",
        "unsupported": "No passage supports these sentences:",
        "unsupported_tip": "No passage supports this",
        "page": "page {n}",
        "slide": "slide {n}",
        "sheet": "sheet {n}",
        "chars": "chars {start}–{end}",
        "cited_by": "Cited by:",
        "details_title": "Retrieval details",
        "query": "Search query: ",
        "score_rank": "#",
        "score_fused": "fused (RRF)",
        "score_dense": "vector similarity",
        "score_bm25": "BM25",
        "score_file": "file",
        "score_heading": "heading path",
        "timings": "Timings: ",
        "t_retrieval": "retrieval",
        "t_first_token": "first token",
        "t_generation": "generation",
        "t_total": "total",
        "tokens": "{prompt} prompt tokens, {completion} answer tokens",
        "build_busy": "An index update is already running; please wait.",
        "build_read": "Reading files {done}/{total}…",
        "build_embed": "Embedding: {done}/{total} chunks…",
        "build_write": "Writing the new index…",
        "build_start": "Updating the index (answers keep using the old one meanwhile)…",
        "build_done": "Done: {documents} documents, {chunks} chunks in {seconds:.1f} s "
        "(added {added}, updated {updated}, removed {removed}).",
        "build_nochange": "The index is up to date: {documents} documents, {chunks} chunks.",
        "build_skipped": "Skipped {path}: {reason}",
        "build_failed": "The index update failed: {message} {hint}",
        "up_none": "Choose files to upload first.",
        "up_added": "Added {name}",
        "up_renamed": "Added {original} as {name}",
        "up_replaced": "Replaced {name}",
        "up_unchanged": "{name} is identical to the file in the corpus; nothing changed",
        "up_exists": "{name} already exists with different content: tick “Overwrite” and add it again to replace it",
        "up_bad_type": "{original}: only these types are accepted: {types}",
        "up_too_big": "{original} is {size:.1f} MB, over the {limit:g} MB limit",
        "up_empty": "{original} is empty",
        "up_not_pdf": "{original} is not a valid PDF file",
        "up_not_office": "{original} is not a valid Word / Excel / PowerPoint file (or it has a password): remove the password or save it again, then upload it",
        "up_not_text": "{original} is not UTF-8 or GB18030 text",
        "up_failed": "{original} could not be saved: {detail}",
    },
}


def lang_or_default(lang: str | None) -> str:
    return lang if lang in TEXT else DEFAULT_LANG


def say(lang: str | None, key: str, **values: object) -> str:
    """The text for `key` in `lang` (Chinese if unknown), with `values` filled in."""
    template = TEXT[lang_or_default(lang)][key]
    return template.format(**values) if values else template


# Picks the page language in the browser: a choice saved earlier, else the
# browser's preference (English only if it prefers English), else Chinese.
# Used as the `js` of the page-load event: it replaces the first input (the
# language toggle's value) and passes the others through.
DETECT_LANGUAGE_JS = """
(...inputs) => {
  const pick = () => {
    const saved = window.localStorage && localStorage.getItem("rag-chat-lang");
    if (saved === "zh" || saved === "en") return saved;
    const prefs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || ""];
    for (const p of prefs) {
      const l = (p || "").toLowerCase();
      if (l.startsWith("zh")) return "zh";
      if (l.startsWith("en")) return "en";
    }
    return "zh";
  };
  return [pick(), ...inputs.slice(1)];
}
"""
