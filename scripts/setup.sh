#!/usr/bin/env bash
# Installs everything the product needs, idempotently; later runs take seconds.
#   scripts/setup.sh          environment + default models (for using the chat)
#   scripts/setup.sh --dev    also test tools, the small test models and Chromium
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[ "${1:-}" = "--dev" ] && DEV=1
CACHE="${RAG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rag-chat}"
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
# (fresh clones and CI reuse it). On x86_64 we name the CPU features ourselves instead
# of -march=native: native builds turn on llama.cpp's AMX kernels, which crashed
# (SIGSEGV on the first prompt) on this project's Xeon machines. The wheel goes into a
# folder named after those features, so a cache shared with another CPU rebuilds.
LLAMA_VERSION=0.3.36
CMAKE_FLAGS="${CMAKE_ARGS:-}"
if [ -z "$CMAKE_FLAGS" ] && [ "$(uname -m)" = "x86_64" ] && [ -r /proc/cpuinfo ]; then
  CMAKE_FLAGS="-DGGML_NATIVE=OFF"
  cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 avx512vbmi:AVX512_VBMI \
              avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
    case "$cpu_flags" in *" ${pair%%:*} "*) CMAKE_FLAGS="$CMAKE_FLAGS -DGGML_${pair#*:}=ON" ;; esac
  done
fi
WHEELHOUSE="$CACHE/wheelhouse/llama-$LLAMA_VERSION-$(printf '%s' "$CMAKE_FLAGS" | sha256sum | cut -c1-12)"
if ! ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  step "Building llama-cpp-python $LLAMA_VERSION (about 5-10 minutes, once)"
  echo "CMAKE_ARGS=$CMAKE_FLAGS"
  mkdir -p "$WHEELHOUSE"
  CMAKE_ARGS="$CMAKE_FLAGS" .venv/bin/python -m pip wheel --no-deps --no-cache-dir -w "$WHEELHOUSE" "llama-cpp-python==$LLAMA_VERSION"
fi

EXTRAS=""
# The tests start the optional scale parts locally (Milvus Lite, Ray, an LLM server), so --dev installs them too.
[ "$DEV" = 1 ] && EXTRAS="[dev,scale]"
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

# Chromium for the browser tests; a TrueType CJK font so test PDFs and screenshots show Chinese.
if [ "$DEV" = 1 ] && { ! command -v chromium >/dev/null 2>&1 || [ ! -e /usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf ]; }; then
  step "Installing Chromium and a Chinese font for the tests (Debian packages)"
  if [ "$(id -u)" = 0 ]; then APT="apt-get"; else APT="sudo apt-get"; fi
  $APT update -qq
  DEBIAN_FRONTEND=noninteractive $APT install -y -qq chromium fonts-droid-fallback >/dev/null
fi
