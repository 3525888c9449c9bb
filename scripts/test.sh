#!/usr/bin/env bash
# The project's test command:  bash scripts/test.sh [pytest args...]
# Runs scripts/setup.sh (fast when everything is already installed), then pytest in the venv.
# Exits non-zero on any test failure, and also when pytest collects no test (its exit code 5).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
# shellcheck source=/dev/null
. "$ROOT/.cache/env.sh"

cd "$ROOT"
echo "[test] $FIFTYONE_CASS_VENV/bin/python -m pytest $*"
set +e
"$FIFTYONE_CASS_VENV/bin/python" -m pytest "$@" </dev/null
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "[test] ERROR: pytest collected no tests (exit 5); treating that as a failure" >&2
    exit 1
fi
if [ "$rc" -ne 0 ]; then
    echo "[test] pytest failed (exit $rc)" >&2
fi
exit "$rc"
