#!/usr/bin/env bash
# Set up (idempotent) and run the hardware-free demo: simulated xArm6 + cameras + the policy
# node with VLA-Pruner, one status line per control step, until Ctrl-C.
# Extra arguments go to `vla-pruner demo` (see `vla-pruner demo --help`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
# shellcheck disable=SC1091
source "$ROOT/.env.sh"
exec vla-pruner demo "$@"
