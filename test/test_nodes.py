"""The whole hardware-free system in one process over real rclpy: simulated xArm6 + cameras +
the policy node on the tiny checkpoint (issue 5's "must show")."""
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from ros_harness import Probe, RosHarness, wait_for
from vla_pruner_ros.control.robot_config import load_robot_config
from vla_pruner_ros.msg import PrunerStats, RetainedTokenMask

ROBOT = load_robot_config()
# Generous on purpose: CI machines are shared, and one took 0.7 s for a tiny-checkpoint step with
# every node in one process (all its chunks were then dropped as stale and the arm never moved).
MAX_INPUT_AGE = 2.0


class SystemProbe(Probe):
    """Records what the system publishes, with receive times."""

    def __init__(self, harness):
        super().__init__(harness, "test_probe", "vla_pruner_policy")
        self.trajectories = self.record(JointTrajectory, ROBOT.trajectory_topic)
        self.masks = self.record(RetainedTokenMask, "/vla_pruner_policy/retained_tokens")
        self.stats = self.record(PrunerStats, "/vla_pruner_policy/stats")
        self.diagnostics = self.record(DiagnosticArray, "/diagnostics")
        self.joint_states = self.record(JointState, "/joint_states")
        self.overlays = self.record(Image, "/vla_pruner_policy/overlay/fixed")


@pytest.fixture(scope="module")
def system(tiny_checkpoint):
    from vla_pruner_ros.model import load_policy
    from vla_pruner_ros.nodes.policy_node import PolicyNode
    from vla_pruner_ros.nodes.sim_cameras import SimCamerasNode
    from vla_pruner_ros.nodes.sim_xarm6 import SimXArm6Node

    policy = load_policy(tiny_checkpoint)
    # Executors as launched: the policy node on one thread (policy_node.main), the simulated arm
    # and cameras on their own single-threaded one (a context of their own, as another process).
    harness = RosHarness(threads=1)
    sims = RosHarness(threads=1)
    probe = SystemProbe(harness)
    arm = sims.add(SimXArm6Node(context=sims.context))
    cameras = sims.add(SimCamerasNode(context=sims.context, parameter_overrides=[
        Parameter("rate", value=15.0)]))
    node = harness.add(PolicyNode(policy=policy, context=harness.context, parameter_overrides=[
        Parameter("autostart", value=True),
        Parameter("instruction", value="move the gripper above the red cube"),
        Parameter("max_input_age", value=MAX_INPUT_AGE),
        Parameter("max_joint_velocity", value=1.0),
        Parameter("prune.keep_ratio", value=0.25),
    ]))
    yield harness, probe, node, arm, cameras
    harness.close()
    sims.close()


def _steps_wait(probe, count, timeout=60.0):
    since = time.monotonic()
    return wait_for(lambda: len(probe.after(probe.stats, since)) >= count and probe.after(probe.stats, since),
                    timeout, message=f"{count} policy steps")


def test_trajectories_arrive_within_limits_and_the_arm_moves(system):
    harness, probe, node, arm, cameras = system
    wait_for(lambda: len(probe.trajectories) >= 3, 60.0, message="3 trajectories on the controller topic")
    first_state = probe.joint_states[0][1]
    with probe.lock:
        trajectories = [msg for _, msg in probe.trajectories]
    dt = 1.0 / node.settings.control_rate
    for trajectory in trajectories:
        if not trajectory.points:
            continue  # a stop command
        assert list(trajectory.joint_names) == list(ROBOT.joints)
        positions = np.array([p.positions for p in trajectory.points])
        assert np.all(positions >= ROBOT.lower) and np.all(positions <= ROBOT.upper)
        assert np.all(np.abs(np.diff(positions, axis=0)) <= 1.0 * dt + 1e-9)
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in trajectory.points]
        assert times == pytest.approx([dt * (i + 1) for i in range(len(times))])
    wait_for(lambda: np.abs(np.array(probe.joint_states[-1][1].position[:6])
                            - np.array(first_state.position[:6])).max() > 1e-3,
             10.0, message="the simulated arm to move")
    overlay = probe.overlays[-1][1]
    assert (overlay.height, overlay.width, overlay.encoding) == (224, 224, "rgb8")


def test_keep_ratio_change_applies_to_the_next_steps(system):
    harness, probe, node, arm, cameras = system
    result = probe.set_parameter("prune.keep_ratio", 0.125)
    assert result.successful, result.reason
    since = time.monotonic()
    mask = wait_for(lambda: next((m for m in probe.after(probe.masks, since)
                                  if not m.warmup and len(m.kept_indices) == 64), None),
                    30.0, message="a mask with 64 kept tokens (12.5 % of 512)")
    assert mask.keep_ratio == pytest.approx(0.125) and mask.method == "vla_pruner"
    assert list(mask.grid_rows) == [16, 16] and list(mask.view_offsets) == [0, 256]
    assert sum(mask.kept_per_view) == 64 and list(mask.kept_indices) == sorted(mask.kept_indices)
    stats = wait_for(lambda: next((s for s in probe.after(probe.stats, since) if s.visual_tokens_after == 64), None),
                     30.0, message="stats of a pruned step")
    assert stats.visual_tokens_before == 512 and stats.pool_dual >= 64 and stats.total_ms > 0
    assert probe.get_parameter("prune.keep_ratio") == pytest.approx(0.125)


@pytest.mark.parametrize("name,value", [
    ("prune.keep_ratio", 0.0), ("prune.keep_ratio", 1.5), ("prune.window", 0),
    ("prune.method", "bogus"), ("prune.layer", 99), ("control_rate", -1.0),
])
def test_invalid_parameters_are_rejected_and_the_old_value_holds(system, name, value):
    harness, probe, node, arm, cameras = system
    before = probe.get_parameter(name)
    result = probe.set_parameter(name, value)
    assert not result.successful and result.reason
    assert probe.get_parameter(name) == before


def test_stale_camera_holds_the_arm_and_resumes(system):
    harness, probe, node, arm, cameras = system
    _steps_wait(probe, 2)
    cameras.set_parameters([Parameter("publish.wrist", value=False)])
    removed = time.monotonic()
    # Diagnostics go to ERROR with the reason once the frames are older than max_input_age.
    wait_for(lambda: any(s.level == DiagnosticStatus.ERROR and "wrist: last message" in s.message
                         for msg in probe.after(probe.diagnostics, removed) for s in msg.status),
             10.0, message="diagnostics ERROR naming the stale wrist camera")
    time.sleep(1.5)
    with probe.lock:
        latest_step_ms = max(msg.total_ms for _, msg in probe.stats)
    late = [msg for msg in probe.after(probe.trajectories, removed + MAX_INPUT_AGE + latest_step_ms / 1e3 + 0.3)
            if msg.points]
    assert late == [], "commands were sent with a stale camera"
    cameras.set_parameters([Parameter("publish.wrist", value=True)])
    resumed = time.monotonic()
    wait_for(lambda: any(m.points for m in probe.after(probe.trajectories, resumed)), 30.0,
             message=lambda: f"commands after the camera came back (policy status: {node.status})")


@pytest.mark.parametrize("signal_name, after_line, delay", [
    ("SIGINT", "ready:", 0.0),            # right after start-up, racing the executor's first spin
    ("SIGINT", "ready:", 1.0),            # while it runs
    ("SIGINT", "loading policy", 0.0),    # while the model loads
    ("SIGTERM", "ready:", 1.0),
])
def test_sigint_stops_a_running_node_cleanly(tiny_checkpoint, signal_name, after_line, delay):
    """Ctrl-C or SIGTERM at any time: exit code 0, no traceback, the worker joined (the process ends)."""
    import os
    import signal
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "vla_pruner_ros.nodes.policy_node", "--ros-args",
         "-p", f"checkpoint:={tiny_checkpoint}", "-p", "instruction:='move the gripper above the red cube'"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if after_line in line or not line:
            break
    assert any(after_line in line for line in lines), "".join(lines)
    time.sleep(delay)
    process.send_signal(getattr(signal, signal_name))
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, "".join(lines) + output
    assert "Traceback" not in "".join(lines) + output
