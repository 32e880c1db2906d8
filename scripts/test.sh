#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Extra arguments go to pytest,
# e.g. scripts/test.sh -k pruning -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
# shellcheck disable=SC1091
source "$ROOT/.env.sh"
exec python -m pytest "$ROOT/test" "$@"
