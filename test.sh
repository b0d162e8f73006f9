#!/usr/bin/env bash
# One command: install everything the tests need (first run only), then run the whole suite,
# the slow tier included (the production models end to end: setup fetches them; ~3 min).
# ./test.sh --fast skips the slow tier; other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --dev
slow=1
args=()
for a in "$@"; do
  case "$a" in
    --fast) slow=0 ;;
    --slow) ;;  # the default now; kept so older instructions still work
    *) args+=("$a") ;;
  esac
done
if [ "$slow" = 1 ]; then
  .venv/bin/rag models fetch  # the default (production) models the slow tier runs
  args=(-m "slow or not slow" "${args[@]}")
fi
set +e
.venv/bin/python -m pytest "${args[@]}"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure, not a pass." >&2
  exit 1
fi
exit "$rc"
