"""Helpers for tests that run real nodes in this process over rclpy (Fast DDS, loopback)."""
from __future__ import annotations

import threading
import time

import rclpy
from rclpy.executors import MultiThreadedExecutor


class RosHarness:
    """An rclpy context + a multi-threaded executor spinning in a background thread."""

    def __init__(self, threads: int = 6):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=threads, context=self.context)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._nodes = []
        self.error = None
        self._thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception as error:  # a callback raised: make it visible, tests will then time out
            if rclpy.ok(context=self.context):
                self.error = error
                import traceback

                traceback.print_exc()

    def add(self, node):
        self._nodes.append(node)
        self.executor.add_node(node)
        return node

    def remove(self, node):
        self.executor.remove_node(node)

    def node(self, name: str):
        return self.add(rclpy.create_node(name, context=self.context))

    def close(self):
        self.executor.shutdown(timeout_sec=5)
        for node in self._nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5)
        # A callback that raises stops the executor (and would stop a real node): fail loudly.
        assert self.error is None, f"a callback raised while spinning: {self.error!r}"


def wait_for(predicate, timeout: float, interval: float = 0.02, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    text = message() if callable(message) else message
    raise AssertionError(f"timed out after {timeout} s waiting for {text}")
