"""rag.guards: named switches for the answer rules, counted when they fire; the disabled_guards setting."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from rag.config import load_settings
from rag.errors import ConfigError
from rag.guards import GUARDS, Guards, parse_names
from tests.fakes import isolate

ROOT = Path(__file__).resolve().parents[1]


def test_parse_names_accepts_commas_spaces_and_lists() -> None:
    assert parse_names(" echo, focus_retry ,,") == ("echo", "focus_retry")
    assert parse_names(["echo", "echo"]) == ("echo",)
    assert parse_names("") == ()


def test_an_unknown_name_is_an_error_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_names("echo,no_such_rule")
    assert "no_such_rule" in caught.value.message
    assert all(name in caught.value.hint for name in GUARDS)


def test_when_counts_only_rules_that_are_on_and_hold() -> None:
    g = Guards.without(["echo"])
    calls: list[str] = []
    assert not g.when("echo", lambda: calls.append("echo") or True)
    assert calls == [], "the condition of a rule that is off is not even evaluated"
    assert g.when("invented", True) and not g.when("invented", False)
    assert g.when("invented", lambda: "non-empty")
    assert g.counts == {"invented": 2}
    g.reset()
    assert not g.counts


def test_a_misspelt_name_in_code_is_caught() -> None:
    with pytest.raises(KeyError):
        Guards().on("evidence_treshold")


def test_counts_are_exact_across_threads() -> None:
    g = Guards()

    def fire() -> None:
        for _ in range(2000):
            g.fired("echo")

    threads = [threading.Thread(target=fire) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert g.counts["echo"] == 8000


def test_every_guard_is_checked_somewhere_and_every_check_is_registered() -> None:
    """The registry and the code agree: no dead name, no unregistered switch."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "rag").rglob("*.py") if p.name != "guards.py")
    called = set(re.findall(r'\.(?:on|when|fired)\(\s*"([a-z_]+)"', source))
    assert called - set(GUARDS) == set(), "a switch checked in the code but not registered"
    assert [n for n in GUARDS if f'"{n}"' not in source] == [], "a registered guard no code checks"
    assert all(desc and len(desc) < 110 for desc in GUARDS.values())


def test_disabled_guards_from_the_environment_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path)
    monkeypatch.delenv("RAG_CONFIG", raising=False)
    assert load_settings().disabled_guards == ()
    (tmp_path / "rag.toml").write_text('disabled_guards = ["echo"]\n', encoding="utf-8")
    assert load_settings().disabled_guards == ("echo",)
    monkeypatch.setenv("RAG_DISABLED_GUARDS", "focus_retry, invented")
    assert load_settings().disabled_guards == ("focus_retry", "invented")
    monkeypatch.setenv("RAG_DISABLED_GUARDS", "focus_retry,nonsense")
    with pytest.raises(ConfigError, match="nonsense"):
        load_settings()
