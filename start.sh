#!/usr/bin/env bash
# One command: install everything (first run only), build the index if there is none,
# and start the chat page on http://127.0.0.1:7860 (with the OpenAI-compatible API at /v1, docs/api.md).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/rag serve "$@"
