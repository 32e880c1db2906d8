"""Signal handling from the first moment of a node process, before torch and rclpy are imported.

A node process spends its first seconds importing torch (and rclpy) before rclpy installs its own
SIGINT/SIGTERM handling. A Ctrl-C in that window used to end in a KeyboardInterrupt traceback from
inside the import (SIGTERM: killed, exit -15). ``begin()`` runs first in every node process (the
``lib/vla_pruner_ros/<node>`` executables, ``python -m vla_pruner_ros.nodes.<node>``): until rclpy
takes over, SIGINT and SIGTERM end the process at once with exit code 0 (nothing has started
that needs stopping). ``handing_over()`` gives the signals back to rclpy without a gap.

Only node processes call ``begin()``: importing the nodes in a test process changes nothing.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys

# Set by the launch file (and the demo) for the processes it starts: the process gets SIGINT
# when its parent dies, so that no node outlives its launch, however the launch ended.
EXIT_WITH_PARENT_ENV = "VLA_PRUNER_EXIT_WITH_PARENT"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_saved: dict[int, object] = {}
_began = False


def _stop_while_starting(signum, frame) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    os._exit(0)  # still importing: nothing to shut down, and no traceback from inside an import


def exit_with_parent() -> None:
    """SIGINT when the parent process dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        parent = os.getppid()
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent == 1:  # the parent was already gone before the request was made
        _stop_while_starting(signal.SIGINT, None)


def begin(previous: dict | None = None) -> None:
    """Install the start-up signal handling (once per process). ``previous``: the handlers from
    before an earlier stand-in (the installed executables set one on their first line)."""
    global _began
    if _began:
        return
    _began = True
    for signum in _SIGNALS:
        current = signal.signal(signum, _stop_while_starting)
        _saved[signum] = (previous or {}).get(signum, current)
    if os.environ.get(EXIT_WITH_PARENT_ENV) == "1":
        exit_with_parent()


@contextlib.contextmanager
def handing_over():
    """Around ``rclpy.init()``: signals are held, the handlers before ``begin()`` restored, and a
    signal that arrived meanwhile is delivered once rclpy's handling is in place."""
    if not _saved:
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        for signum, handler in _saved.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _saved.clear()
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


def finish(code: int) -> int:
    """End a node process once its node, executor and context are shut down. In a node process
    (``begin()`` ran) the interpreter's own finalisation is skipped: with torch loaded it took
    3-8 s on a busy 2-core machine, past ros2 launch's 5 s between SIGINT and SIGTERM (the launch
    test then saw exit code -15). Elsewhere (a test calling a node's main) it just returns."""
    if not _began:
        return code
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    os._exit(code)


def run_node(executable: str, previous: dict | None = None) -> int:
    """Entry point of the installed node executables: signal handling first, then the imports."""
    begin(previous)
    module = importlib.import_module(f"vla_pruner_ros.nodes.{executable}")
    return module.main()
