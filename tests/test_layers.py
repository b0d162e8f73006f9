"""The package layout is the data flow: a stage imports only the stages below it.

Parsed, not imported, so the check costs milliseconds and sees lazy imports inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What each layer may import, besides itself. `rag` alone is the core (config, schema, errors,
# offline, models); rag/__init__.py is the public facade and may reach any stage.
ALLOWED: dict[str, set[str]] = {
    "rag": set(),
    "rag.ingest": {"rag"},
    "rag.index": {"rag", "rag.ingest"},
    "rag.llm": {"rag"},
    "rag.answer": {"rag", "rag.ingest", "rag.index", "rag.llm"},
    "ui": {"rag", "rag.ingest", "rag.index", "rag.llm", "rag.answer"},
    "rag.serve": {"rag", "rag.ingest", "rag.index", "rag.llm", "rag.answer", "ui"},
    "rag.cli": {"rag", "rag.ingest", "rag.index", "rag.llm", "rag.answer", "ui", "rag.serve"},
}
LAYERS = sorted(ALLOWED, key=len, reverse=True)


def layer_of(module: str) -> str | None:
    """'rag.index.lexical' -> 'rag.index'; 'rag.config' -> 'rag'; 'numpy' -> None."""
    for layer in LAYERS:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (`from rag import prompting` counts as rag.prompting)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def product_files() -> list[Path]:
    return [p for top in ("rag", "ui") for p in sorted((ROOT / top).rglob("*.py")) if p.name != "__init__.py" or p.parent.name != "rag"]


@pytest.mark.parametrize("path", product_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_stage_imports_only_the_stages_below_it(path: Path) -> None:
    own = layer_of(module_name(path))
    assert own is not None, f"{path} belongs to no layer: add its package to ALLOWED"
    wrong = set()
    for module in imported_modules(path):
        if module.split(".")[0] == "rag_eval":
            wrong.add(module)
            continue
        target = layer_of(module)
        if target is not None and target != own and target not in ALLOWED[own]:
            # `from rag import offline` names rag.offline, core; a name like rag.answer is a stage.
            wrong.add(module)
    assert not wrong, f"{module_name(path)} ({own}) imports {sorted(wrong)}"


def test_measurement_is_outside_the_product() -> None:
    assert (ROOT / "rag_eval").is_dir()
    assert not any((ROOT / "rag").rglob("bench.py")), "measurement code belongs in rag_eval/"
