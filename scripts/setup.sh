#!/usr/bin/env bash
# Set up vla_pruner_ros for this checkout, idempotently (a second run takes seconds):
#   1. a project-local virtual environment .venv/ with the pinned packages (constraints.txt),
#   2. the ROS 2 package itself built with colcon into .colcon/install (messages + Python),
#   3. the checkpoints the demo and tests use,
#   4. .env.sh, which every other command sources.
# Usage: scripts/setup.sh [--refreeze]   (--refreeze rewrites constraints.txt from the venv)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
COLCON="$ROOT/.colcon"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"

say() { printf '[setup] %s\n' "$*" >&2; }
# pip prints a warning for every package missing from this machine's local indexes; hide those.
quiet_pip() { "$VENV/bin/python" -m pip "$@" 2>&1 | grep -v "^WARNING: Location '" || true; }

# --- 1. virtual environment ------------------------------------------------------------------
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  say "Python 3.11 is required (the ROS 2 Kilted wheels are cp311); got: $("$PYTHON" --version 2>&1)."
  say "Set PYTHON=/path/to/python3.11 and run again."
  exit 1
fi
stamp_want="$(cat requirements.txt constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
stamp_file="$VENV/.vla_pruner_ros-stamp"
if [[ ! -f "$stamp_file" || "$(cat "$stamp_file")" != "$stamp_want" ]]; then
  [[ -x "$VENV/bin/python" ]] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  say "installing pinned packages into .venv (first run: a few minutes, ~6 GB)"
  quiet_pip install -q -r requirements.txt -c constraints.txt
  "$VENV/bin/python" -c 'import torch, timm, transformers, rclpy' \
    || { say "the venv is incomplete (an import failed above)"; exit 1; }
  # The ROS wheels' exported CMake targets name include dirs of the machine they were built on
  # (/opt/python/cp311-cp311/...). CMake refuses non-existent include dirs, so point them at
  # this venv's Python and NumPy headers (inside the venv only; nothing outside is touched).
  py_inc="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  np_inc="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
  { grep -rl --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" 2>/dev/null || true; } | while read -r f; do
    sed -i "s#/opt/python/cp311-cp311/include/python3.11#$py_inc#g;
            s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_inc#g" "$f"
  done
  echo "$stamp_want" > "$stamp_file"
fi
if [[ "${1:-}" == "--refreeze" ]]; then
  { sed -n '1,2p' constraints.txt; "$VENV/bin/python" -m pip freeze | grep -v '^-e \|@ file'; } > constraints.txt.new
  mv constraints.txt.new constraints.txt
  say "constraints.txt rewritten"
fi

# --- 2. colcon build ----------------------------------------------------------------------------
# shellcheck disable=SC1091
source "$VENV/bin/activate"
# The wheels install their ament resources under the venv prefix.
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# The venv lives inside this package's source folder, and CMake refuses to export a target
# (our generated Python bindings) whose include dirs lie in the source folder -- unless they lie
# in the install prefix. So the NumPy headers are reached through a link there.
install_prefix="$COLCON/install/vla_pruner_ros"
mkdir -p "$install_prefix/include"
ln -sfn "$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')" \
  "$install_prefix/include/numpy_core_include"
build_log="$COLCON/build.log"
mkdir -p "$COLCON"
if ! colcon --log-base "$COLCON/log" build --base-paths "$ROOT" \
      --build-base "$COLCON/build" --install-base "$COLCON/install" --symlink-install \
      --event-handlers console_direct- \
      --cmake-args -DPython3_NumPy_INCLUDE_DIR="$install_prefix/include/numpy_core_include" \
      > "$build_log" 2>&1; then
  tail -n 40 "$build_log" >&2
  say "colcon build failed (full log: $build_log)"
  exit 1
fi

# --- 3. env file --------------------------------------------------------------------------------
cat > "$ROOT/.env.sh" <<ENV
# Written by scripts/setup.sh: source it to use this checkout's vla_pruner_ros.
source "$VENV/bin/activate"
export AMENT_PREFIX_PATH="$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}"
# colcon's setup scripts reference unset variables: they fail under 'set -u'.
case \$- in *u*) _vpr_u=1; set +u;; *) _vpr_u=0;; esac
source "$COLCON/install/setup.bash"
[ "\$_vpr_u" = 1 ] && set -u; unset _vpr_u
# Keep DDS discovery on this machine unless the user asked otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE="\${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export RMW_IMPLEMENTATION="\${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
export ROS_LOG_DIR="\${ROS_LOG_DIR:-$COLCON/ros_log}"
export VLA_PRUNER_ROOT="$ROOT"
ENV

# --- 4. checkpoints ---------------------------------------------------------------------------
# shellcheck disable=SC1091
source "$ROOT/.env.sh"
if [[ -f "$ROOT/vla_pruner_ros/model/checkpoint.py" ]]; then
  if [[ ! -f "$ROOT/artifacts/checkpoints/tiny/config.json" ]]; then
    say "writing the tiny checkpoint to artifacts/checkpoints/tiny"
    vla-pruner checkpoint make --preset tiny --out "$ROOT/artifacts/checkpoints/tiny" >&2
  fi
fi
say "ready (source .env.sh to use it by hand)"
