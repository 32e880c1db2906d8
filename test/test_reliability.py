"""Bad input and faults never crash the policy node, never move the arm outside its limits,
and are reported with a reason that names the input and what was expected (issue 8).

The node runs the real tiny checkpoint over real rclpy; this test plays the sensors, so each
input can be broken on purpose and then repaired."""
import struct
import threading
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from ros_harness import Probe, RosHarness, wait_for
from vla_pruner_ros.control.images import rgb_to_image_fields
from vla_pruner_ros.control.params import PARAMETERS
from vla_pruner_ros.control.robot_config import load_robot_config
from vla_pruner_ros.msg import PrunerStats, RetainedTokenMask

ROBOT = load_robot_config()
HOME = [0.0, -0.63, -0.83, 0.0, 1.46, 0.0]
INSTRUCTION = "move the gripper above the red cube"


def _image_msg(seed: int) -> Image:
    rgb = np.random.default_rng(seed).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    return Image(**rgb_to_image_fields(rgb))


def _joint_msg(names=None, positions=None) -> JointState:
    names = list(ROBOT.joints) + ["drive_joint"] if names is None else names
    positions = HOME + [0.0] if positions is None else positions
    return JointState(name=names, position=[float(p) for p in positions])


class Feeder:
    """Publishes both camera views and the joint state at 20 Hz; any of them can be replaced by
    a bad message (or None: stop publishing it); `stamp_offset` shifts a stamp (seconds)."""

    def __init__(self, node, camera_type=Image, camera_suffix="", good_image=None):
        self.node = node
        sensor = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {
            "fixed": node.create_publisher(camera_type, "/fixed_camera/color/image_raw" + camera_suffix, sensor),
            "wrist": node.create_publisher(camera_type, "/wrist_camera/color/image_raw" + camera_suffix, sensor),
            "joints": node.create_publisher(JointState, "/joint_states", sensor),
        }
        self.good = {"fixed": good_image or _image_msg(1), "wrist": good_image or _image_msg(2),
                     "joints": _joint_msg()}
        self.current = dict(self.good)
        self.stamp_offset = {name: 0.0 for name in self.pubs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def restore(self):
        self.current = dict(self.good)
        self.stamp_offset = {name: 0.0 for name in self.pubs}

    def _run(self):
        while not self._stop.is_set():
            now = self.node.get_clock().now().nanoseconds * 1e-9
            for name, publisher in self.pubs.items():
                msg = self.current.get(name)
                if msg is None:
                    continue
                stamp = now + self.stamp_offset[name]
                msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp), int((stamp % 1) * 1e9)
                publisher.publish(msg)
            time.sleep(0.05)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)


class FaultyPolicy:
    """The real policy, with a switch that makes its next steps raise or return NaN actions."""

    def __init__(self, policy):
        self._policy = policy
        self.fault = None  # None, "raise" or "nan"
        self.delay = 0.0  # seconds each step takes longer (a slow model, a loaded machine)

    def __getattr__(self, name):
        return getattr(self._policy, name)

    def predict(self, *args, **kwargs):
        if self.fault == "raise":
            raise RuntimeError("injected model fault")
        if self.delay:
            time.sleep(self.delay)
        out = self._policy.predict(*args, **kwargs)
        if self.fault == "nan":
            out.actions = out.actions.copy()
            out.actions[2, 1] = np.nan
        return out


class System:
    def __init__(self, checkpoint, image_transport="raw", name="vla_pruner_policy"):
        from vla_pruner_ros.model import load_policy
        from vla_pruner_ros.nodes.policy_node import PolicyNode

        self.policy = FaultyPolicy(load_policy(checkpoint))
        self.harness = RosHarness(threads=1)  # the node's executor as launched (policy_node.main)
        self.recorder = Probe(self.harness, f"probe_{name}", name)
        self.probe, self.lock, self.after = self.recorder.node, self.recorder.lock, self.recorder.after
        self.get, self.set = self.recorder.get_parameter, self.recorder.set_parameter
        self.trajectories = self.recorder.record(JointTrajectory, ROBOT.trajectory_topic)
        self.diagnostics = self.recorder.record(DiagnosticArray, "/diagnostics")
        self.masks = self.recorder.record(RetainedTokenMask, f"/{name}/retained_tokens")
        self.stats = self.recorder.record(PrunerStats, f"/{name}/stats")
        self.instruction_pub = self.probe.create_publisher(
            String, "/instruction", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        suffix = "/compressed" if image_transport == "compressed" else ""
        good_image = None
        if image_transport == "compressed":
            import cv2

            ok, jpeg = cv2.imencode(".jpg", np.zeros((224, 224, 3), np.uint8))
            good_image = CompressedImage(format="jpeg", data=jpeg.tobytes())
        self.feeder = Feeder(self.probe, CompressedImage if good_image else Image, suffix, good_image)
        self.node = self.harness.add(PolicyNode(policy=self.policy, node_name=name, context=self.harness.context,
                                                parameter_overrides=[
            Parameter("autostart", value=True),
            Parameter("instruction", value=INSTRUCTION),
            Parameter("image_transport", value=image_transport),
            Parameter("max_input_age", value=0.5),
            Parameter("max_joint_velocity", value=1.0),
            Parameter("actions_per_step", value=2),
        ]))
        self.name = name

    def wait_diagnostic(self, since, fragment, level=DiagnosticStatus.ERROR, timeout=10.0):
        def found():
            for msg in self.after(self.diagnostics, since):
                for status in msg.status:
                    if status.name.startswith(self.name) and (level is None or status.level == level):
                        text = status.message + " " + " ".join(f"{kv.key}={kv.value}" for kv in status.values)
                        if fragment in text:
                            return text
            return None
        return wait_for(found, timeout, message=lambda: f"a diagnostic with {fragment!r}; last: "
                        f"{[s.message for m in self.after(self.diagnostics, since)[-3:] for s in m.status]}")

    def wait_own_steps(self, timeout=60.0):
        """This node's own first steps (the trajectory topic is shared with other test nodes)."""
        return wait_for(lambda: self.after(self.masks, 0.0), timeout, message=f"{self.name}'s first step")

    def wait_commands(self, since, timeout=30.0):
        return wait_for(lambda: [m for m in self.after(self.trajectories, since) if m.points], timeout,
                        message="commands to resume")

    def check_alive_and_within_limits(self):
        assert self.get("prune.keep_ratio") > 0  # the parameter service answers
        with self.lock:
            trajectories = [m for _, m in self.trajectories if m.points]
        for trajectory in trajectories:
            positions = np.array([p.positions for p in trajectory.points])
            assert np.isfinite(positions).all()
            assert np.all(positions >= ROBOT.lower) and np.all(positions <= ROBOT.upper)
            assert np.all(np.abs(np.diff(positions, axis=0)) <= 1.0 * 0.1 + 1e-9)

    def close(self):
        self.feeder.close()
        self.harness.close()


@pytest.fixture(scope="module")
def system(tiny_checkpoint):
    system = System(tiny_checkpoint)
    system.wait_commands(0.0, timeout=60.0)
    yield system
    system.check_alive_and_within_limits()
    system.close()


@pytest.fixture
def healthy(system):
    """Each case starts from a healthy system and must leave one behind."""
    system.feeder.restore()
    system.policy.fault, system.policy.delay = None, 0.0
    system.wait_commands(time.monotonic())
    yield system
    system.check_alive_and_within_limits()
    system.feeder.restore()
    system.policy.fault, system.policy.delay = None, 0.0
    system.wait_commands(time.monotonic())  # it recovers once the input is good again


def _broken_image(kind):
    msg = _image_msg(3)
    if kind == "encoding":
        msg.encoding = "16UC1"
    elif kind == "step":
        msg.step = 100
    elif kind == "empty":
        msg.data = b""
    elif kind == "size":
        msg.height = 300  # more rows than the data holds
    return msg


@pytest.mark.parametrize("kind,fragment", [
    ("encoding", "wrist camera: unsupported image encoding '16UC1'; expected one of rgb8"),
    ("step", "wrist camera: image step 100 is smaller than width*channels"),
    ("empty", "wrist camera: image data holds 0 bytes; expected step*height"),
    ("size", "wrist camera: image data holds 150528 bytes; expected step*height = 672*300"),
])
def test_bad_images_hold_with_a_reason(healthy, kind, fragment):
    since = time.monotonic()
    healthy.feeder.current["wrist"] = _broken_image(kind)
    healthy.wait_diagnostic(since, fragment)


def test_a_missing_view_holds(healthy):
    since = time.monotonic()
    healthy.feeder.current["fixed"] = None
    healthy.wait_diagnostic(since, "fixed: last message")


def test_frames_stamped_in_the_future_hold(healthy):
    since = time.monotonic()
    healthy.feeder.stamp_offset["wrist"] = 30.0
    healthy.wait_diagnostic(since, "wrist: stamp is")


def test_frames_out_of_order_never_move_the_step_stamp_back(healthy):
    since = time.monotonic()
    healthy.feeder.stamp_offset["fixed"] = -0.3  # late copies of older frames
    time.sleep(0.5)
    healthy.feeder.stamp_offset["fixed"] = 0.0
    healthy.wait_commands(time.monotonic())
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in healthy.after(healthy.masks, since)]
    assert stamps == sorted(stamps)


@pytest.mark.parametrize("names,positions,fragment", [
    (["joint1", "joint2", "joint4", "joint5", "joint6"], HOME[:2] + HOME[3:], "lacks ['joint3']"),
    (None, HOME[:1] + [float("nan")] + HOME[2:] + [0.0], "non-finite positions for ['joint2']"),
    (None, HOME[:5] + [float("inf"), 0.0], "non-finite positions for ['joint6']"),
    (None, HOME[:5], "7 names but only 5 positions"),
])
def test_bad_joint_states_hold_with_a_reason(healthy, names, positions, fragment):
    since = time.monotonic()
    healthy.feeder.current["joints"] = _joint_msg(names, positions)
    healthy.wait_diagnostic(since, fragment)


def test_extra_joints_in_any_order_are_fine(healthy):
    names = ["drive_joint", "joint6", "other_axis", "joint5", "joint4", "joint3", "joint2", "joint1"]
    positions = [0.0, HOME[5], 9.0, HOME[4], HOME[3], HOME[2], HOME[1], HOME[0]]
    healthy.feeder.current["joints"] = _joint_msg(names, positions)
    healthy.wait_commands(time.monotonic())


def test_stale_joint_states_hold(healthy):
    since = time.monotonic()
    healthy.feeder.current["joints"] = None
    healthy.wait_diagnostic(since, "joint_states: last message")


def _string_cdr(payload: bytes) -> bytes:
    # CDR little endian: encapsulation header, uint32 length (with the terminating NUL), bytes.
    return b"\x00\x01\x00\x00" + struct.pack("<I", len(payload) + 1) + payload + b"\x00"


@pytest.mark.parametrize("payload,fragment", [
    (b"   ", "instruction is empty"),
    (b"x" * 2000, "expected at most 512"),
    (b"move \xff\xfe to the cube", "instruction is not valid UTF-8"),
])
def test_bad_instructions_are_ignored_with_a_reason(healthy, payload, fragment):
    since = time.monotonic()
    healthy.instruction_pub.publish(_string_cdr(payload))
    wait_for(lambda: fragment in healthy.node._input_errors.get("instruction", ""), 10.0,
             message=f"the instruction error {fragment!r}")
    status = healthy.wait_diagnostic(since, fragment, level=healthy.node.status[0])
    assert "input_error.instruction" in status
    assert healthy.get("instruction") == INSTRUCTION
    healthy.instruction_pub.publish(String(data=INSTRUCTION))  # a good one clears the error
    wait_for(lambda: "instruction" not in healthy.node._input_errors, 10.0, message="the error to clear")


def test_instruction_change_mid_episode_resets_the_pruner_history(healthy):
    wait_for(lambda: any(not m.warmup for m in healthy.after(healthy.masks, time.monotonic() - 2)), 30.0,
             message="a step past warm-up")
    since = time.monotonic()
    healthy.instruction_pub.publish(String(data="move the gripper above the blue cube"))
    first = wait_for(lambda: next((m for m in healthy.after(healthy.masks, since)
                                   if m.step_index == 0), None), 30.0, message="a new episode's first step")
    assert first.warmup and len(first.kept_indices) == first.num_visual_tokens
    assert healthy.get("instruction") == "move the gripper above the blue cube"
    healthy.set("instruction", INSTRUCTION)


def _bad_value(spec):
    if isinstance(spec.default, bool):
        return "yes"
    if isinstance(spec.default, str):
        return "not-a-choice" if spec.choices else 3.5
    if spec.exclusive_minimum:
        return spec.minimum
    return spec.maximum + 1 if isinstance(spec.default, int) else spec.maximum * 2 + 1


@pytest.mark.parametrize("spec", PARAMETERS, ids=lambda s: s.name)
def test_out_of_range_and_wrong_type_parameters_are_refused(system, spec):
    before = system.get(spec.name)
    for value in (_bad_value(spec), [1, 2] if not isinstance(spec.default, str) else 7):
        result = system.set(spec.name, value)
        assert not result.successful and result.reason, (spec.name, value)
    assert system.get(spec.name) == before


def test_parameters_changed_while_steps_run(healthy):
    since = time.monotonic()
    for i in range(20):
        assert healthy.set("prune.keep_ratio", 0.5 if i % 2 else 0.25).successful
        time.sleep(0.1)
    assert healthy.set("prune.keep_ratio", 0.25).successful
    kept = {len(m.kept_indices) for m in healthy.after(healthy.masks, since) if not m.warmup}
    assert kept <= {128, 256}


@pytest.mark.parametrize("fault,fragment", [
    ("raise", "step failed, holding: RuntimeError: injected model fault"),
    ("nan", "step failed, holding: UnsafeActionError: action chunk holds a non-finite value (step 2, dim 1)"),
])
def test_model_faults_hold_and_the_next_good_step_resumes(healthy, fault, fragment):
    since = time.monotonic()
    healthy.policy.fault = fault
    healthy.wait_diagnostic(since, fragment)
    failed_at = time.monotonic()
    time.sleep(0.5)
    assert [m for m in healthy.after(healthy.trajectories, failed_at + 0.3) if m.points] == []
    healthy.policy.fault = None
    healthy.wait_commands(time.monotonic())


def test_compressed_images_that_do_not_decode_hold(tiny_checkpoint):
    system = System(tiny_checkpoint, image_transport="compressed", name="compressed_policy")
    try:
        system.wait_own_steps()
        since = time.monotonic()
        system.feeder.current["fixed"] = CompressedImage(format="jpeg", data=b"\x00garbage" * 10)
        system.wait_diagnostic(since, "fixed camera: compressed image ('jpeg', 80 bytes) could not be decoded",
                               level=None)
        system.check_alive_and_within_limits()
        system.feeder.restore()
        restored = time.monotonic()
        wait_for(lambda: system.after(system.masks, restored), 30.0, message=f"{system.name} to step again")
    finally:
        system.close()


# --- checkpoints ------------------------------------------------------------------------------
def _copy_checkpoint(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


class _Payload:
    """Unpickling this would run a shell command: a state-dict file must never do that."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_without_running_it(tiny_checkpoint, tmp_path):
    import torch

    from vla_pruner_ros.model import load_policy

    checkpoint = _copy_checkpoint(tiny_checkpoint, tmp_path / "evil")
    marker = tmp_path / "code_ran"
    head = next(checkpoint.glob("action_head--*.pt"))
    torch.save({"module.model.fc1.weight": _Payload(marker)}, head)
    with pytest.raises(Exception) as error:
        load_policy(checkpoint)
    assert head.name in str(error.value)
    assert not marker.exists(), "loading the checkpoint executed code"


def test_missing_files_and_statistics_keys_are_named(tiny_checkpoint, tmp_path):
    import json

    from vla_pruner_ros.model import load_policy

    no_config = _copy_checkpoint(tiny_checkpoint, tmp_path / "no_config")
    (no_config / "config.json").unlink()
    with pytest.raises(Exception, match="config.json"):
        load_policy(no_config)
    other_key = _copy_checkpoint(tiny_checkpoint, tmp_path / "other_key")
    stats = json.loads((other_key / "dataset_statistics.json").read_text())
    (other_key / "dataset_statistics.json").write_text(json.dumps({"libero_spatial_no_noops": stats["xarm6_sim"]}))
    with pytest.raises(Exception, match="xarm6_sim") as error:
        load_policy(other_key, unnorm_key="xarm6_sim")
    assert "libero_spatial_no_noops" in str(error.value)


def test_the_node_refuses_a_bad_checkpoint_with_a_message_not_a_traceback(tmp_path):
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "vla_pruner_ros.nodes.policy_node", "--ros-args",
         "-p", f"checkpoint:={tmp_path / 'nowhere'}"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert result.returncode == 1
    assert "fatal:" in result.stderr and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr


# --- issue 14: motion safety, hangs, input checks -------------------------------------------------
def _commands_since(system, since):
    return [m for m in system.after(system.trajectories, since) if m.points]


@pytest.mark.parametrize("joint,value,fragment", [
    (1, 2.5, "joint2 = 2.5 rad is 0.406 rad above its upper limit 2.0944"),
    (0, 100.0, "joint1 = 100 rad is 93.7 rad above its upper limit"),
    (0, 1e308, "joint1 = 1e+308 rad"),
])
def test_a_joint_state_outside_the_limits_holds_the_arm_with_the_reason(healthy, joint, value, fragment):
    """Item 1. Before: the node commanded from the clamped position: first points 5.06 / 938 /
    inf rad/s from the reported position, diagnostics 'steps faster than 1 rad/s were slowed down'."""
    positions = HOME + [0.0]
    positions[joint] = value
    since = time.monotonic()
    healthy.feeder.current["joints"] = _joint_msg(positions=positions)
    healthy.wait_diagnostic(since, fragment)
    held = time.monotonic()
    time.sleep(1.0)
    assert _commands_since(healthy, held + 0.3) == []


def test_a_slow_step_publishes_no_stale_command(healthy):
    """Item 2. Before: a step that outlived max_input_age still published its chunk."""
    since = time.monotonic()
    healthy.policy.delay = 1.0  # > max_input_age 0.5
    text = healthy.wait_diagnostic(since, "chunk dropped: the step took 1.", timeout=20.0)
    assert "> max_input_age 0.50 s" in text
    slow_from = time.monotonic() + 0.3
    time.sleep(2.5)
    assert _commands_since(healthy, slow_from) == []
    # The dropped steps ran (the pruner's history holds them): their stats and masks still go out,
    # so a latency budget, a plot or a replay of the bag sees every step.
    slow_stats = healthy.after(healthy.stats, slow_from)  # every step from slow_from on was dropped
    assert slow_stats, "no stats of the slow (dropped) steps"
    slow_steps = {m.step_index for m in slow_stats}
    assert slow_steps <= {m.step_index for m in healthy.after(healthy.masks, slow_from)}
    healthy.policy.delay = 0.0


def test_every_command_starts_within_the_velocity_limit_of_the_reported_position(healthy):
    """Items 1-2: the first point of every command is at most one step at max_joint_velocity from
    the joint state the arm reported (the feeder's), even while that position jumps around
    (a driver that reports a position the last command did not lead to)."""
    since = time.monotonic()
    for offset in (0.0, 0.3, -0.3, 0.0):
        positions = list(np.array(HOME) + offset) + [0.0]
        healthy.feeder.current["joints"] = _joint_msg(positions=positions)
        start = time.monotonic()
        wait_for(lambda: _commands_since(healthy, start + 0.3), 30.0, message="a command from the new position")
        for trajectory in _commands_since(healthy, start + 0.3):
            first = np.array(trajectory.points[0].positions)
            assert np.all(np.abs(first - np.array(positions[:6])) <= 1.0 * 0.1 + 1e-9)
    assert _commands_since(healthy, since)


def test_control_rate_changes_always_recover_and_absurd_rates_are_refused(healthy):
    """Item 4. Before: 0.05 Hz then 10 Hz gave no step for 80 s; 1e-12 gave OverflowError and
    no step ever again."""
    for value in (0.05, 1e-12, 5e-324):
        result = healthy.set("control_rate", value)
        assert not result.successful and "control_rate out of range Min: 1.0, Max: 100.0" in result.reason
    try:
        assert healthy.set("actions_per_step", 64).successful
        assert healthy.set("control_rate", 1.0).successful  # the slowest: a step every 64 s
        time.sleep(1.5)
    finally:
        assert healthy.set("control_rate", 10.0).successful and healthy.set("actions_per_step", 2).successful
    healthy.wait_commands(time.monotonic(), timeout=10.0)


def test_the_instruction_parameter_has_the_topics_checks(healthy):
    """Item 6. Before: the parameter accepted '', '   ', 100 kB, control characters and NUL."""
    for value, fragment in (("", "instruction is empty"), ("   ", "instruction is empty"),
                            ("x" * 100_000, "expected at most 512"),
                            ("move\x07 the cube", "control character U+0007"),
                            ("move \u202e the cube", "U+202E")):
        result = healthy.set("instruction", value)
        assert not result.successful and fragment in result.reason, (value[:20], result.reason)
    # A NUL cannot travel in a ROS string (the parameter service gets 'move the'); in-process it is refused.
    result = healthy.node.set_parameters([Parameter("instruction", value="move the\x00 cube")])[0]
    assert not result.successful and "NUL character at position 8" in result.reason
    assert healthy.get("instruction") == INSTRUCTION
    long_words = " ".join(["supercalifragilistic"] * 24)  # 500 characters, far over 128 tokens
    result = healthy.set("instruction", long_words)
    assert not result.successful and "tokens long" in result.reason and "would be cut" in result.reason


@pytest.mark.parametrize("payload,fragment", [
    (b"move the\x00 gripper above the red cube", "NUL character at position 8"),
    (b"move the \x1b[31mgripper", "control character U+001B"),
    ("move \u200b the gripper".encode(), "U+200B"),
])
def test_the_instruction_topic_refuses_what_rclpy_would_hide(healthy, payload, fragment):
    """Item 6. Before: a NUL cut the instruction to 'move the' and the node obeyed it."""
    healthy.instruction_pub.publish(_string_cdr(payload))
    wait_for(lambda: fragment in healthy.node._input_errors.get("instruction", ""), 10.0,
             message=lambda: f"the instruction error {fragment!r}: {healthy.node._input_errors}")
    assert healthy.get("instruction") == INSTRUCTION
    healthy.instruction_pub.publish(String(data=INSTRUCTION))
    wait_for(lambda: "instruction" not in healthy.node._input_errors, 10.0, message="the error to clear")


def test_valid_text_with_a_replacement_character_is_an_instruction(healthy):
    """Item 6. Before: refused as 'not valid UTF-8'."""
    text = "move the gripper above the \ufffd cube"
    healthy.instruction_pub.publish(String(data=text))
    wait_for(lambda: healthy.get("instruction") == text, 10.0, message="the instruction to be taken")
    assert healthy.set("instruction", INSTRUCTION).successful


@pytest.mark.parametrize("names,positions,fragment", [
    (list(ROBOT.joints) + ["joint2"], HOME + [2.0], "names 'joint2' twice (entries 1 and 6)"),
    ([], [], "name none of the arm's joints: joint state names no joints"),
    (["drive_joint"], [0.3], "name none of the arm's joints: joint state lacks"),
])
def test_duplicate_empty_and_gripper_only_joint_states_hold_naming_the_cause(healthy, names, positions, fragment):
    """Item 7. Before: duplicates used the last value silently; empty/stamp-only/gripper-only
    messages held with 'joint_states: last message ... old' only."""
    since = time.monotonic()
    healthy.feeder.current["joints"] = _joint_msg(names, positions)
    healthy.wait_diagnostic(since, fragment)


def test_a_multi_parameter_request_is_applied_whole_or_not_at_all(system):
    """Item 8. Before: SetParameters applied the good value and refused only the bad one (rclpy
    sets them one by one); `ros2 param load` sends a whole file that way."""
    from rcl_interfaces.srv import SetParameters

    before = (system.get("prune.keep_ratio"), system.get("prune.window"))
    request = SetParameters.Request(parameters=[
        Parameter("prune.keep_ratio", value=0.125).to_parameter_msg(),
        Parameter("prune.window", value=0).to_parameter_msg()])
    results = system.recorder._call(system.recorder._set, request).results
    assert [r.successful for r in results] == [False, False]
    assert "prune.window out of range" in results[0].reason and "none of the 2" in results[0].reason
    assert (system.get("prune.keep_ratio"), system.get("prune.window")) == before
    # A dumped file (read-only start-up parameters at their values) loads: no-ops pass.
    request = SetParameters.Request(parameters=[
        Parameter("image_transport", value="raw").to_parameter_msg(),
        Parameter("prune.keep_ratio", value=0.125).to_parameter_msg()])
    results = system.recorder._call(system.recorder._set, request).results
    assert all(r.successful for r in results), [r.reason for r in results]
    assert system.get("prune.keep_ratio") == 0.125
    assert system.set("prune.keep_ratio", before[0]).successful


def test_integers_are_floats_and_a_nameless_parameter_is_not_created(system):
    """Item 8. Before: `prune.keep_ratio 1` was refused with "expected '3' got '2'"; a parameter
    named '' was created."""
    from rcl_interfaces.srv import ListParameters

    result = system.set("prune.keep_ratio", 1)
    assert result.successful, result.reason
    assert system.get("prune.keep_ratio") == 1.0 and isinstance(system.get("prune.keep_ratio"), float)
    assert system.set("prune.keep_ratio", 0.25).successful
    result = system.set("", 5)
    assert not result.successful and "no such parameter" in result.reason
    client = system.probe.create_client(ListParameters, f"/{system.name}/list_parameters")
    names = system.recorder._call(client, ListParameters.Request()).result.names
    assert "" not in names and "prune.keep_ratio" in names


def test_a_refused_parameter_is_logged_with_the_reason(system):
    """Issue 15 item 8: `ros2 param set` exits 0 even when refused; the node's log says why."""
    from rcl_interfaces.msg import Log

    logs = system.recorder.record(Log, "/rosout", depth=200)
    time.sleep(1.0)  # discovery of the new subscription
    for name, value, fragment in (("prune.window", 0, "Parameter prune.window out of range"),  # rclpy's range check
                                  ("prune.method", "fastest", "prune.method: 'fastest' is not one of")):  # ours
        assert not system.set(name, value).successful
        wait_for(lambda: any(f"parameter change refused: {fragment}" in m.msg for m in system.after(logs, 0.0)),
                 10.0, message=f"the refusal of {name} in /rosout")
    from rcl_interfaces.srv import SetParametersAtomically

    client = system.probe.create_client(SetParametersAtomically, f"/{system.name}/set_parameters_atomically")
    request = SetParametersAtomically.Request(parameters=[Parameter("prune.decay", value=2.0).to_parameter_msg()])
    assert not system.recorder._call(client, request).result.successful
    wait_for(lambda: any("parameter change refused: Parameter prune.decay out of range" in m.msg
                         for m in system.after(logs, 0.0)), 10.0, message="the atomic refusal in /rosout")


def test_switching_method_live_warms_up_for_window_steps(healthy):
    """Issue 15 item 8: fastv -> vla_pruner live must give `window` (3) unpruned steps."""
    assert healthy.set("prune.method", "fastv").successful
    wait_for(lambda: [m for m in healthy.after(healthy.masks, time.monotonic() - 1) if m.method == "fastv"],
             30.0, message="fastv steps")
    since = time.monotonic()
    assert healthy.set("prune.method", "vla_pruner").successful
    masks = wait_for(lambda: (lambda ms: ms if sum(not m.warmup for m in ms) >= 2 else None)(
        [m for m in healthy.after(healthy.masks, since) if m.method == "vla_pruner"]), 60.0,
        message="vla_pruner steps past warm-up")
    warm = [m.warmup for m in masks]
    assert warm[:4] == [True, True, True, False], warm
    assert all(len(m.kept_indices) == m.num_visual_tokens for m in masks[:3])


def test_a_huge_chunk_length_is_refused_at_start_up_in_one_line(tiny_checkpoint, tmp_path):
    """Item 5. Before: chunk_length 100000 (parameter or sidecar) started, then no step in 60 s,
    3.3 GB, diagnostics 'nothing received yet', and SIGINT ignored."""
    import json
    import os
    import subprocess
    import sys

    sidecar = _copy_checkpoint(tiny_checkpoint, tmp_path / "huge_chunk")
    meta = json.loads((sidecar / "vla_pruner_oft.json").read_text())
    (sidecar / "vla_pruner_oft.json").write_text(json.dumps({**meta, "chunk_length": 100000}))
    for checkpoint, extra in ((tiny_checkpoint, ["-p", "chunk_length:=100000"]), (sidecar, [])):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "vla_pruner_ros.nodes.policy_node", "--ros-args",
             "-p", f"checkpoint:={checkpoint}", *extra],
            capture_output=True, text=True, timeout=120, env=dict(os.environ))
        fatal = [line for line in result.stderr.splitlines() if "fatal:" in line]
        assert result.returncode == 1, result.stderr
        assert len(fatal) == 1 and "chunk_length 100000 does not fit" in fatal[0], result.stderr
        assert "max_position_embeddings 2048" in fatal[0] and "Traceback" not in result.stderr
        assert time.monotonic() - started < 100


def test_a_decompression_bomb_on_the_camera_topic_is_refused_and_the_node_stays_responsive(tiny_checkpoint):
    """Item 3. Before: a 631-byte JPEG declaring 20000x20000 decoded for 25 s (+2.3 GB) on the
    step thread, over and over."""
    from test_safety_issue14 import jpeg_bomb

    system = System(tiny_checkpoint, image_transport="compressed", name="bomb_policy")
    try:
        system.wait_own_steps()
        since = time.monotonic()
        system.feeder.current["wrist"] = CompressedImage(format="jpeg", data=jpeg_bomb())
        text = system.wait_diagnostic(since, "wrist camera: compressed image (jpeg header) is 20000x20000",
                                      level=None)  # ERROR once a step was published, WARN before
        assert "more than max_image_pixels 4194304" in text
        for _ in range(5):  # the parameter service answers at once while bombs keep arriving
            asked = time.monotonic()
            assert system.get("max_image_pixels") == 4194304
            assert time.monotonic() - asked < 2.0
        system.check_alive_and_within_limits()
        system.feeder.restore()
        restored = time.monotonic()
        wait_for(lambda: system.after(system.masks, restored), 30.0, message=f"{system.name} to step again")
    finally:
        system.close()
