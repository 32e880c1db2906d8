"""Small helpers shared by the nodes (rclpy only, no logic)."""
from __future__ import annotations

import sys
import time

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException


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


def spin_node(node_factory, args=None, num_threads: int = 4) -> int:
    """Create a node, spin it with a multi-threaded executor, shut down cleanly on Ctrl-C."""
    rclpy.init(args=args)
    node = None
    try:
        node = node_factory()
        executor = rclpy.executors.MultiThreadedExecutor(num_threads=num_threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as error:  # a start-up error (bad checkpoint, bad config): say it, no traceback
        name = getattr(node, "get_name", lambda: "node")()
        print(f"[{name}] fatal: {error}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
