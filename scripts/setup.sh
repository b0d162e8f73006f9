#!/usr/bin/env bash
# Installs everything the product needs, idempotently; later runs take seconds.
#   scripts/setup.sh          environment + default models (for using the chat)
#   scripts/setup.sh --dev    also test tools, the small test models and Chromium
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[ "${1:-}" = "--dev" ] && DEV=1
CACHE="${RAG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rag-chat}"
WHEELHOUSE="$CACHE/wheelhouse"
PY="${PYTHON:-python3}"

step() { printf '\n==> %s\n' "$*"; }

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "Python 3.11 or newer is needed (found $("$PY" --version 2>&1)). Install it, or set PYTHON=/path/to/python3.11." >&2
  exit 1
}

if [ ! -x .venv/bin/python ]; then
  step "Creating the virtual environment in .venv"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip wheel
fi

# llama-cpp-python ships only as source. Build it once into a cache outside the repo
# (fresh clones and CI reuse it). A portable AVX2 build instead of -march=native:
# native builds enable AMX kernels that crash on some Xeon CPUs, and a native wheel
# can crash on another machine that shares the cache.
LLAMA_VERSION=0.3.36
if ! ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  step "Building llama-cpp-python $LLAMA_VERSION (about 6-10 minutes, once)"
  mkdir -p "$WHEELHOUSE"
  if [ "$(uname -m)" = "x86_64" ]; then
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
  fi
  .venv/bin/python -m pip wheel --no-deps --no-cache-dir -w "$WHEELHOUSE" "llama-cpp-python==$LLAMA_VERSION"
fi

EXTRAS=""
[ "$DEV" = 1 ] && EXTRAS="[dev]"
STAMP=".venv/.installed$EXTRAS"
WANT="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  step "Installing the project and its dependencies"
  .venv/bin/python -m pip install -q --find-links "$WHEELHOUSE" -e ".$EXTRAS"
  echo "$WANT" > "$STAMP"
fi

step "Fetching and verifying models (cached in $CACHE/models)"
if [ "$DEV" = 1 ]; then
  .venv/bin/rag models fetch smollm2-135m minilm-l6
else
  .venv/bin/rag models fetch
fi

if [ "$DEV" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  step "Installing Chromium for the browser tests (Debian packages)"
  if [ "$(id -u)" = 0 ]; then APT="apt-get"; else APT="sudo apt-get"; fi
  $APT update -qq
  DEBIAN_FRONTEND=noninteractive $APT install -y -qq chromium fonts-noto-cjk >/dev/null
fi
