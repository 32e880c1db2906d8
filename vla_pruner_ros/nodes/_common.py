"""Small helpers shared by the nodes (rclpy only, no logic)."""
from __future__ import annotations

import inspect
import re
import signal
import sys
import threading
import time

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from ._startup import finish, handing_over


def stamp_to_seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def descriptor(description: str, read_only: bool = False, minimum=None, maximum=None,
               constraints: str = "") -> ParameterDescriptor:
    """A ParameterDescriptor with a range when bounds are given (ints and floats)."""
    desc = ParameterDescriptor(description=description, read_only=read_only,
                               additional_constraints=constraints)
    if minimum is not None and maximum is not None:
        if isinstance(minimum, int) and isinstance(maximum, int) and not isinstance(minimum, bool):
            desc.integer_range = [IntegerRange(from_value=minimum, to_value=maximum, step=1)]
        else:
            desc.floating_point_range = [FloatingPointRange(from_value=float(minimum), to_value=float(maximum),
                                                            step=0.0)]
    return desc


class RateLimitedLogger:
    """Logs a message at most once per ``period`` seconds per key (bad input can arrive at 30 Hz)."""

    def __init__(self, logger, period: float = 5.0):
        self._logger = logger
        self._period = period
        self._last: dict[str, float] = {}

    def __call__(self, level: str, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self._period:
            self._last[key] = now
            # One call site per severity: rclpy refuses a call site whose severity changes.
            if level == "error":
                self._logger.error(message)
            elif level == "warning":
                self._logger.warning(message)
            else:
                self._logger.info(message)


# The GIL is handed between threads at most every sys.getswitchinterval() (5 ms by default). A
# policy step is a Python loop over many short torch ops, each of which releases the GIL; while the
# executor thread is busy (camera and joint-state callbacks), every release can cost the step a full
# interval (a convoy: measured 6.8 s per tiny-checkpoint step in one busy process, 0.15 s with
# 0.5 ms). A short interval keeps the step thread's waits short; the cost is more frequent switches.
# The policy node sets it when it is created, so every process that hosts one gets it.
GIL_SWITCH_INTERVAL_S = 0.0005


def shorten_gil_switch_interval(seconds: float = GIL_SWITCH_INTERVAL_S) -> None:
    """Make GIL hand-overs frequent enough that a torch step next to a busy executor is not starved."""
    if sys.getswitchinterval() > seconds:
        sys.setswitchinterval(seconds)


def _one_line(error: BaseException) -> str:
    """rcl errors carry a C back-trace and several lines: keep the first meaningful one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    text = re.sub(r"^failed to initialize rcl: ", "", text)
    text = re.sub(r"(, at /\S+\.c:\d+)+$", "", text).replace(" Error: error not set", "").strip()
    return text.rstrip(".")


def _default_name(node_factory) -> str:
    try:
        return str(inspect.signature(node_factory).parameters["node_name"].default)
    except (KeyError, TypeError, ValueError):
        return "node"


class _MultiThreadedExecutor(rclpy.executors.MultiThreadedExecutor):
    """rclpy's MultiThreadedExecutor, with a shutdown that lets the callbacks in flight finish
    before the executor's guard condition is destroyed. rclpy (Kilted) destroys it first and joins
    its thread pool after, so a callback finishing meanwhile raised InvalidHandle inside its task:
    "The following exception was never retrieved: cannot use Destroyable because destruction was
    requested" at the end of ~1 run in 14 (10 in 14 with a spin_once loop)."""

    def shutdown(self, timeout_sec=None, **kwargs) -> bool:
        pool = getattr(self, "_executor", None)  # the ThreadPoolExecutor that runs the callbacks
        if pool is not None:
            pool.shutdown(wait=True)
        return super().shutdown(timeout_sec, **kwargs)


def spin_node(node_factory, args=None, num_threads: int = 4) -> int:
    """Create a node, spin it (a multi-threaded executor; single-threaded for num_threads 1), shut down cleanly on Ctrl-C/SIGTERM.

    The signals are handled here, not by rclpy: rclpy's handler shuts the context down at once,
    which destroys the node while executor threads still run its callbacks ("The following
    exception was never retrieved: cannot use Destroyable because destruction was requested", and
    the odd SIGSEGV on shutdown). Here a signal stops the spin loop; then the executor finishes
    the callbacks in flight, the node is destroyed, and only then the context is shut down. A
    signal while the node is still being made (e.g. loading a model) aborts that at once.
    """
    stop = threading.Event()
    spinning = threading.Event()  # set: a signal only asks the loop to stop

    def on_signal(signum, frame) -> None:
        stop.set()
        if not spinning.is_set():
            raise KeyboardInterrupt

    try:
        # Signals go from the start-up handling (_startup.begin) to ours without a gap.
        with handing_over():
            rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, on_signal)
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return finish(0)
    except Exception as error:  # e.g. a malformed --params-file or -p value: one line, no rcl traceback
        print(f"[{_default_name(node_factory)}] fatal: invalid ROS arguments: {_one_line(error)}", file=sys.stderr)
        return finish(1)
    node = None
    code = 0
    try:
        # Made before the node: a Ctrl-C while the node starts (e.g. loads a model) then finds the
        # executor whole, and nothing half-built is left to the garbage collector.
        # num_threads 1: rclpy's single-threaded executor. Its multi-threaded one starved a 30 Hz
        # timer next to a 100 Hz subscription for up to 3.9 s (sim_cameras beside sim_xarm6).
        executor = (SingleThreadedExecutor() if num_threads <= 1
                    else _MultiThreadedExecutor(num_threads=num_threads))
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return finish(0)
    try:
        node = node_factory()
        executor.add_node(node)
        spinning.set()
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as error:  # a start-up error (bad checkpoint, bad config): say it, no traceback
        if not stop.is_set():
            name = getattr(node, "get_name", lambda: _default_name(node_factory))()
            print(f"[{name}] fatal: {error}", file=sys.stderr)
            code = 1
    finally:
        spinning.set()  # a second Ctrl-C during the clean-up must not interrupt it
        # The executor first (it waits for the callbacks in flight), then the node, then the context.
        try:
            executor.shutdown(timeout_sec=5.0)
        except Exception:  # noqa: BLE001 - already stopping; nothing useful to report
            pass
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return finish(code)
