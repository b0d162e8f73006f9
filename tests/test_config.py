"""rag.config: defaults <- rag.toml <- RAG_* environment <- explicit overrides."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from rag.config import TABLE_SETTINGS, Settings, load_settings
from rag.errors import ConfigError
from tests.fakes import isolate


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("RAG_CONFIG", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return isolate(monkeypatch, tmp_path)


def test_defaults(cwd: Path) -> None:
    s = load_settings()
    assert s == Settings()
    assert s.corpus_dir == Path("corpus")
    assert s.index_dir == Path("index")
    assert 1 <= s.top_k <= s.candidates
    assert 0 <= s.chunk_overlap < s.chunk_size
    from rag.models import REGISTRY

    assert REGISTRY[s.embed_model].kind == "embedding"
    assert REGISTRY[s.chat_model].kind == "chat"
    assert s.temperature == 0.0
    assert s.host == "127.0.0.1", "never listen beyond this machine by default"
    assert s.cache_dir == Path.home() / ".cache" / "rag-chat"
    assert s.models_dir == s.cache_dir / "models"
    assert s.wheels_dir == s.cache_dir / "wheels"


def test_cache_dir_follows_xdg(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cwd / "xdg"))
    assert load_settings().cache_dir == cwd / "xdg" / "rag-chat"


def test_toml_file_in_working_directory(cwd: Path) -> None:
    (cwd / "rag.toml").write_text(
        'top_k = 6\nchunk_size = 500\nmin_dense_score = 0.3\nembed_model = "minilm-l6"\ncorpus_dir = "docs"\n',
        encoding="utf-8",
    )
    s = load_settings()
    assert s.top_k == 6 and isinstance(s.top_k, int)
    assert s.chunk_size == 500
    assert s.min_dense_score == 0.3
    assert s.embed_model == "minilm-l6"
    assert s.corpus_dir == Path("docs")
    assert s.chunk_overlap == Settings().chunk_overlap  # untouched settings keep their defaults


def test_explicit_config_file_and_rag_config(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (cwd / "rag.toml").write_text("top_k = 6\n", encoding="utf-8")
    other = cwd / "other.toml"
    other.write_text("top_k = 9\n", encoding="utf-8")
    assert load_settings(config_file=other).top_k == 9
    monkeypatch.setenv("RAG_CONFIG", str(other))
    assert load_settings().top_k == 9


def test_env_var(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_TOP_K", "8")
    monkeypatch.setenv("RAG_MIN_DENSE_SCORE", "0.5")
    monkeypatch.setenv("RAG_INDEX_DIR", "~/idx")
    monkeypatch.setenv("RAG_HOST", "0.0.0.0")
    s = load_settings()
    assert s.top_k == 8 and isinstance(s.top_k, int)
    assert s.min_dense_score == 0.5
    assert s.index_dir == Path.home() / "idx"
    assert s.host == "0.0.0.0"


def test_priority_defaults_toml_env_override(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (cwd / "rag.toml").write_text("top_k = 5\ncandidates = 20\nport = 8000\n", encoding="utf-8")
    monkeypatch.setenv("RAG_TOP_K", "7")
    monkeypatch.setenv("RAG_CANDIDATES", "25")
    s = load_settings(top_k=9)
    assert s.top_k == 9  # override beats env
    assert s.candidates == 25  # env beats toml
    assert s.port == 8000  # toml beats default
    assert s.rrf_k == 60  # default


def test_none_override_means_unset(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_TOP_K", "7")
    assert load_settings(top_k=None).top_k == 7


def test_overrides_are_coerced(cwd: Path) -> None:
    s = load_settings(top_k="3", corpus_dir="some/where", dense_weight="2")
    assert s.top_k == 3
    assert s.corpus_dir == Path("some/where")
    assert s.dense_weight == 2.0 and isinstance(s.dense_weight, float)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("top_k", "abc", "top_k"),
        ("top_k", "4.5", "top_k"),
        ("chunk_size", "", "chunk_size"),
        ("min_dense_score", "high", "min_dense_score"),
        ("top_k", "0", "top_k"),
        ("top_k", "-1", "top_k"),
        ("candidates", str(Settings().top_k - 1), "candidates"),  # fewer candidates than top_k
        ("chunk_overlap", str(Settings().chunk_size), "chunk_overlap"),  # not smaller than chunk_size
        ("chunk_overlap", "1000", "chunk_overlap"),
        ("passage_chars", "0", "passage_chars"),
        ("lean_first_chars", "0", "lean_first_chars"),
        ("lean_later_chars", "-5", "lean_later_chars"),
    ],
)
def test_invalid_env_values(cwd: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: str, match: str) -> None:
    monkeypatch.setenv(f"RAG_{key.upper()}", value)
    with pytest.raises(ConfigError, match=match) as info:
        load_settings()
    assert info.value.hint


@pytest.mark.parametrize(
    "overrides",
    [{"top_k": "x"}, {"chunk_size": 100, "chunk_overlap": 100}, {"top_k": 31, "candidates": 30}, {"port": "http"}],
)
def test_invalid_overrides(cwd: Path, overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load_settings(**overrides)


def test_invalid_toml_value(cwd: Path) -> None:
    (cwd / "rag.toml").write_text('top_k = "many"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="top_k"):
        load_settings()


def test_unreadable_toml(cwd: Path) -> None:
    (cwd / "rag.toml").write_text("top_k = = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="rag.toml"):
        load_settings()


def test_missing_explicit_config_file(cwd: Path) -> None:
    with pytest.raises(ConfigError):
        load_settings(config_file=cwd / "nope.toml")


def test_unknown_key_in_toml(cwd: Path) -> None:
    (cwd / "rag.toml").write_text("top_kk = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top_kk") as info:
        load_settings()
    assert "top_k" in info.value.hint  # the known settings are listed


def test_unknown_override(cwd: Path) -> None:
    with pytest.raises(ConfigError, match="colour"):
        load_settings(colour="blue")


def test_unknown_env_var_is_ignored(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_NOT_A_SETTING", "1")
    assert load_settings() == Settings()


def test_every_field_can_be_set_from_the_environment(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples = {"int": "7", "float": "0.5", "str": "x", "Path": "p", "bool": "off", "Path | None": "p",
               "tuple[str, ...]": "echo"}  # fmt: skip
    for f in fields(Settings):
        if f.name in TABLE_SETTINGS:  # tables (e.g. [collections.NAME]) come from rag.toml only
            continue
        validated = ("chunk_size", "chunk_overlap", "top_k", "candidates", "kv_cache_type", "kv_order", "fusion", "embed_dtype",
                     "vector_store", "milvus_uri", "llm_url")  # fmt: skip
        if f.name in validated:
            continue
        monkeypatch.setenv(f"RAG_{f.name.upper()}", samples[str(f.type)])
    s = load_settings()
    assert s.n_ctx == 7 and s.temperature == 0.5 and s.host == "x" and s.cache_dir == Path("p")
    assert s.kv_cache is False
    assert s.disabled_guards == ("echo",)


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("true", True), ("0", False), ("off", False)])
def test_kv_cache_switch(cwd: Path, monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("RAG_KV_CACHE", raw)
    assert load_settings().kv_cache is expected


@pytest.mark.parametrize(("name", "value"), [("kv_cache", "maybe"), ("kv_cache_type", "q4_0")])
def test_bad_kv_settings_say_what_to_use(cwd: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(**{name: value})


@pytest.mark.parametrize(("name", "value"), [("fusion", "max"), ("per_doc_cap", -1)])
def test_bad_retrieval_settings_say_what_to_use(cwd: Path, name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(**{name: value})


@pytest.mark.parametrize(("name", "value"), [("vector_store", "chroma"), ("milvus_uri", "milvus.sqlite")])
def test_bad_vector_store_settings_say_what_to_use(cwd: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(**{name: value})


def test_vector_store_from_the_environment(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().vector_store == "faiss" and load_settings().milvus_uri == ""
    monkeypatch.setenv("RAG_VECTOR_STORE", "milvus")
    monkeypatch.setenv("RAG_MILVUS_URI", "http://127.0.0.1:19530")
    s = load_settings()
    assert s.vector_store == "milvus" and s.milvus_uri == "http://127.0.0.1:19530"


def test_settings_are_frozen(cwd: Path) -> None:
    s = load_settings()
    with pytest.raises(AttributeError):
        s.top_k = 3  # type: ignore[misc]


@pytest.mark.parametrize("value", ["4.5", "true"])
def test_non_integer_toml_value_for_an_int_setting(cwd: Path, value: str) -> None:
    (cwd / "rag.toml").write_text(f"top_k = {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top_k"):
        load_settings()
