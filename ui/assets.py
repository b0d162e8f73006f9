"""The page's own CSS and JavaScript, served inline by Gradio (nothing is fetched from elsewhere)."""

from __future__ import annotations

# System fonts only: the default theme would fetch Google Fonts, which an offline page must not.
FONTS = ["system-ui", "PingFang SC", "Noto Sans CJK SC", "Microsoft YaHei", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "monospace"]

CSS = """
#header { align-items: center; }
#lang { max-width: 220px; }
#sources { max-height: 720px; overflow-y: auto; padding-right: 4px; }
#sources details.turn { margin-bottom: 10px; }
#sources details.turn > summary { cursor: pointer; font-weight: 600; padding: 4px 0; }
#sources h4 { margin: 8px 0 4px; }
#sources .status { color: var(--body-text-color-subdued); }
#sources .src { border-left: 3px solid var(--color-accent); padding: 6px 10px; margin: 8px 0; border-radius: 4px;
  scroll-margin: 24px; transition: background-color 0.3s; }
#sources .src.active { background: var(--color-accent-soft); box-shadow: 0 0 0 2px var(--color-accent); }
#sources .related .src { border-left-color: var(--border-color-primary); }
#sources .meta { font-size: 0.88em; color: var(--body-text-color-subdued); }
#sources .meta .file { font-weight: 600; color: var(--body-text-color); }
#sources .passage { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 0.92em; line-height: 1.65; margin-top: 4px; }
#sources mark { background: #ffe58a; color: #1f2328; padding: 0 1px; border-radius: 2px; }
#sources .cited-by { font-size: 0.85em; color: var(--body-text-color-subdued); margin-top: 4px; }
#sources .cited-by q { margin-right: 6px; }
#sources .unsupported-list { background: #fff3cd; color: #5c4400; padding: 6px 10px; border-radius: 4px; margin: 8px 0; }
#sources .unsupported-list ul { margin: 4px 0 0 18px; }
#sources table.scores { font-size: 0.82em; width: 100%; }
#sources table.scores td, #sources table.scores th { padding: 2px 6px; }
#sources code.query { white-space: pre-wrap; }
#chat a.cite { font-weight: 600; text-decoration: none; color: var(--color-accent); cursor: pointer; padding: 0 1px; }
#chat a.cite:hover { text-decoration: underline; }
#chat .unsupported { background: #fff3cd; color: #5c4400; text-decoration: underline wavy #d97706; }
#chat .unsupported::after { content: " ⚠"; }
#index-status progress { width: 100%; }
"""

# Runs once when the page loads. A click on an [n] link in an answer opens
# that answer's sources, scrolls the cited passage into view and outlines it.
# It listens in the capture phase so Gradio's own link handling never sees
# the click (it would open '#src-…' in a new tab).
JS = """
() => {
  const showSource = (id) => {
    const el = document.getElementById(id);
    if (!el) return;
    const turn = el.closest("details.turn");
    if (turn) turn.open = true;
    document.querySelectorAll("#sources .src.active").forEach((s) => s.classList.remove("active"));
    el.classList.add("active");
    el.scrollIntoView({ block: "nearest", behavior: "smooth" });
  };
  document.addEventListener("click", (event) => {
    const link = event.target instanceof Element ? event.target.closest('a[href*="#src-"]') : null;
    if (!link) return;
    event.preventDefault();
    event.stopPropagation();
    const href = link.getAttribute("href");
    showSource(href.slice(href.indexOf("#") + 1));
  }, true);
}
"""

STORE_LANGUAGE_JS = """
(lang) => { try { localStorage.setItem("rag-chat-lang", lang); } catch (e) {} return lang; }
"""
