#!/usr/bin/env bash
# Install the optional Ray extra into the project's .venv (for `--ray` of vla-pruner eval-sim,
# eval-libero and replay). Never part of scripts/setup.sh. Idempotent: a second run only checks.
#   scripts/setup_ray.sh            # install (first run: ~30 s, ~250 MB) and check
#   scripts/setup_ray.sh --check    # also start and stop a 1-CPU local cluster (~10 s)
# What it does:
#   1. a pip dry run of requirements-ray.txt (--no-deps, -c constraints.txt) that refuses to go on if
#      any installed package would change version;
#   2. the install itself, with the same flags;
#   3. a check: `import ray` (after an install or with --check: a local cluster runs one task and
#      shuts down, leaving no process behind).
# On a cluster, run it (or `pip install -c constraints.txt -r requirements-ray.txt`) on every node,
# with the same Python and the same checkout of vla_pruner_ros, since Ray workers import the package.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
cd "$ROOT"

say() { printf '[setup_ray] %s\n' "$*" >&2; }
[[ -x "$PY" ]] || { say "no $VENV: run scripts/setup.sh first"; exit 1; }

stamp_want="$(cat requirements-ray.txt constraints.txt scripts/setup_ray.sh | sha256sum | cut -c1-16)"
stamp_file="$VENV/.vla_pruner_ros-ray-stamp"
full_check=0
[[ "${1:-}" == "--check" ]] && full_check=1
pip_quiet() { "$PY" -m pip "$@" 2>&1 | grep -v "^WARNING: Location '" || true; }
if [[ ! -f "$stamp_file" || "$(cat "$stamp_file")" != "$stamp_want" ]]; then
  say "checking that no installed package changes (pip dry run)"
  report="$(mktemp)"
  trap 'rm -f "$report"' EXIT
  "$PY" -m pip install --dry-run --no-deps -q -c constraints.txt -r requirements-ray.txt \
      --report "$report" 2>&1 | grep -v "^WARNING: Location '" || true
  [[ -s "$report" ]] || { say "pip dry run failed (see above)"; exit 1; }
  "$PY" - "$report" <<'PYCHECK'
import json, sys
from importlib import metadata
changes = []
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        continue
    if have != version:
        changes.append(f"{name} {have} -> {version}")
if changes:
    sys.exit("[setup_ray] refusing: the extra would change installed packages: " + ", ".join(changes))
PYCHECK
  say "installing requirements-ray.txt into .venv"
  pip_quiet install -q --no-deps -c constraints.txt -r requirements-ray.txt
  full_check=1
fi

if ((full_check == 0)); then
  "$PY" -c 'import sys; from vla_pruner_ros.distributed import ray_unavailable_reason as r; m = r(); sys.exit(m and f"[setup_ray] {m}")'
  say "ok (already installed; scripts/setup_ray.sh --check starts a local cluster)"
  exit 0
fi
say "checking Ray (a 1-CPU local cluster runs one task, then shuts down)"
RAY_USAGE_STATS_ENABLED=0 "$PY" - <<'PYCHECK'
import sys
from vla_pruner_ros.distributed import ray_unavailable_reason
reason = ray_unavailable_reason()
if reason:
    sys.exit(f"[setup_ray] {reason}")
import ray
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
try:
    value = ray.get(ray.remote(lambda x: x + 1).remote(41), timeout=120)
finally:
    ray.shutdown()
if value != 42:
    sys.exit(f"[setup_ray] a Ray task returned {value!r}, expected 42")
print(f"[setup_ray] ok: ray {ray.__version__}, a local task ran", file=sys.stderr)
PYCHECK
echo "$stamp_want" > "$stamp_file"  # only after a passing check, so a failed install is retried
