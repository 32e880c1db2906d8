#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Extra arguments go to pytest,
# e.g. scripts/test.sh -x   or   scripts/test.sh test/test_nodes.py -k stale
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
# shellcheck disable=SC1091
source "$ROOT/.env.sh"
# With no path arguments pytest runs setup.cfg's testpaths (test/).
exec python -m pytest "$@"
