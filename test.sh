#!/usr/bin/env bash
# One command: install everything the tests need (first run only), then run the whole suite.
# ./test.sh --slow also runs the slow tier (the production models end to end; setup fetches them).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --dev
args=()
for a in "$@"; do
  if [ "$a" = "--slow" ]; then
    args+=(-m "slow or not slow")
    .venv/bin/rag models fetch  # the default (production) models the slow tier runs
  else
    args+=("$a")
  fi
done
set +e
.venv/bin/python -m pytest "${args[@]}"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure, not a pass." >&2
  exit 1
fi
exit "$rc"
