"""Helpers for tests that run real nodes in this process over rclpy (Fast DDS, loopback)."""
from __future__ import annotations

import threading
import time

import rclpy
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor


class RosHarness:
    """An rclpy context + an executor spinning in a background thread: multi-threaded, or
    rclpy's single-threaded one for ``threads=1`` (what the simulated arm and cameras spin on
    when launched: a quarter of the CPU the multi-threaded one takes for their 100 Hz + 30 Hz)."""

    def __init__(self, threads: int = 6):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = (SingleThreadedExecutor(context=self.context) if threads <= 1
                         else MultiThreadedExecutor(num_threads=threads, context=self.context))
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._nodes = []
        self.error = None
        self._closing = False
        self._stop = threading.Event()
        self._thread.start()

    def _spin(self):
        try:
            # spin_once until close() says stop: shutting an executor down under a running
            # spin() races it (the single-threaded one then raised "wait set is empty").
            while not self._stop.is_set():
                self.executor.spin_once(timeout_sec=0.05)
        except Exception as error:  # a callback raised: make it visible, tests will then time out
            # A callback still running while close() tears the nodes down may touch a destroyed
            # handle (InvalidHandle): that is the teardown, not the node under test.
            closing = self._closing and type(error).__name__ == "InvalidHandle"
            if rclpy.ok(context=self.context) and not closing:
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
        self._closing = True
        self._stop.set()
        self._thread.join(timeout=5)  # the loop has stopped before anything is shut down
        self.executor.shutdown(timeout_sec=5)  # waits for callbacks still in flight
        for node in self._nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)
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


class Probe:
    """A test node that records what it receives (with receive times) and calls one node's
    parameter services the way `ros2 param get/set` does."""

    def __init__(self, harness: RosHarness, name: str, target: str):
        from rcl_interfaces.srv import GetParameters, SetParameters

        self.node = harness.node(name)
        self.lock = threading.Lock()
        self._get = self.node.create_client(GetParameters, f"/{target}/get_parameters")
        self._set = self.node.create_client(SetParameters, f"/{target}/set_parameters")

    def record(self, msg_type, topic: str, depth: int = 100) -> list:
        """A list that fills with (receive time, message) pairs."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        store: list = []

        def callback(msg):
            with self.lock:
                store.append((time.monotonic(), msg))

        self.node.create_subscription(msg_type, topic, callback,
                                      QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE))
        return store

    def after(self, store: list, since: float) -> list:
        with self.lock:
            return [msg for t, msg in store if t >= since]

    def _call(self, client, request, timeout: float = 10.0):
        assert client.wait_for_service(timeout_sec=timeout), f"{client.srv_name} is not available"
        future = client.call_async(request)
        wait_for(future.done, timeout, message=f"{client.srv_name} to answer (is the node alive?)")
        return future.result()

    def get_parameter(self, name: str):
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        value = self._call(self._get, GetParameters.Request(names=[name])).values[0]
        return parameter_value_to_python(value)

    def set_parameter(self, name: str, value):
        """The SetParametersResult of setting one parameter."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        return self._call(self._set, request).results[0]
