"""RetainedTokenMask and PrunerStats travel over real rclpy (Fast DDS, loopback)."""
import time

import pytest

rclpy = pytest.importorskip("rclpy")
from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from vla_pruner_ros.msg import PrunerStats, RetainedTokenMask  # noqa: E402


def _round_trip(msg_type, message, timeout=10.0):
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("msg_round_trip", context=context)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        received = []
        node.create_subscription(msg_type, "round_trip", received.append, qos)
        publisher = node.create_publisher(msg_type, "round_trip", qos)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + timeout
        while not received and time.monotonic() < deadline:
            # Publish until discovery has matched the subscription.
            if publisher.get_subscription_count() > 0:
                publisher.publish(message)
            executor.spin_once(timeout_sec=0.05)
        executor.shutdown()
        node.destroy_node()
        assert received, f"no {msg_type.__name__} received within {timeout} s"
        return received[0]
    finally:
        rclpy.shutdown(context=context)


def test_retained_token_mask_round_trip():
    sent = RetainedTokenMask()
    sent.header.stamp.sec = 12
    sent.header.stamp.nanosec = 345
    sent.step_index = 7
    sent.method = "vla_pruner"
    sent.keep_ratio = 0.25
    sent.warmup = False
    sent.view_names = ["fixed", "wrist"]
    sent.grid_rows = [16, 16]
    sent.grid_cols = [16, 16]
    sent.view_offsets = [0, 256]
    sent.num_visual_tokens = 512
    sent.kept_indices = [0, 5, 255, 256, 511]
    sent.kept_per_view = [3, 2]
    got = _round_trip(RetainedTokenMask, sent)
    assert got.step_index == 7 and got.method == "vla_pruner"
    assert got.keep_ratio == pytest.approx(0.25)
    assert list(got.view_names) == ["fixed", "wrist"]
    assert list(got.grid_rows) == [16, 16] and list(got.view_offsets) == [0, 256]
    assert list(got.kept_indices) == [0, 5, 255, 256, 511]
    assert list(got.kept_per_view) == [3, 2]
    assert (got.header.stamp.sec, got.header.stamp.nanosec) == (12, 345)


def test_pruner_stats_round_trip():
    sent = PrunerStats()
    sent.step_index = 3
    sent.method = "fastv"
    sent.enabled = True
    sent.keep_ratio = 0.125
    sent.prune_layer = 3
    sent.smoothing = "window"
    sent.window = 3
    sent.decay = 0.8
    sent.visual_tokens_before = 512
    sent.visual_tokens_after = 64
    sent.pool_vl, sent.pool_act, sent.pool_dual = 64, 64, 100
    sent.pool_ratio = 100 / 64
    sent.select_ms = 0.42
    sent.total_ms = 91.5
    sent.flops = 1.25e12
    sent.flops_ratio = 0.3
    sent.input_names = ["fixed", "wrist", "joint_states"]
    sent.input_stamps = [Time(sec=12, nanosec=1), Time(sec=12, nanosec=2), Time(sec=12, nanosec=3)]
    got = _round_trip(PrunerStats, sent)
    assert list(got.input_names) == ["fixed", "wrist", "joint_states"]
    assert [(t.sec, t.nanosec) for t in got.input_stamps] == [(12, 1), (12, 2), (12, 3)]
    assert (got.method, got.enabled, got.prune_layer, got.window) == ("fastv", True, 3, 3)
    assert (got.visual_tokens_before, got.visual_tokens_after) == (512, 64)
    assert (got.pool_vl, got.pool_act, got.pool_dual) == (64, 64, 100)
    assert got.pool_ratio == pytest.approx(100 / 64)
    assert got.flops == pytest.approx(1.25e12)
    assert got.total_ms == pytest.approx(91.5)
