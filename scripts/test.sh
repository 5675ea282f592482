#!/usr/bin/env bash
# Install everything including the test dependencies, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --test
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
if [ "$status" = 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"
