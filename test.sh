#!/usr/bin/env bash
# One command: install everything the tests need (first run only), then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --dev
set +e
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure, not a pass." >&2
  exit 1
fi
exit "$rc"
