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
from vla_pruner_ros.msg import RetainedTokenMask

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

    def __getattr__(self, name):
        return getattr(self._policy, name)

    def predict(self, *args, **kwargs):
        if self.fault == "raise":
            raise RuntimeError("injected model fault")
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
        self.harness = RosHarness()
        self.recorder = Probe(self.harness, f"probe_{name}", name)
        self.probe, self.lock, self.after = self.recorder.node, self.recorder.lock, self.recorder.after
        self.get, self.set = self.recorder.get_parameter, self.recorder.set_parameter
        self.trajectories = self.recorder.record(JointTrajectory, ROBOT.trajectory_topic)
        self.diagnostics = self.recorder.record(DiagnosticArray, "/diagnostics")
        self.masks = self.recorder.record(RetainedTokenMask, f"/{name}/retained_tokens")
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
                    if status.name.startswith(self.name) and status.level == level:
                        text = status.message + " " + " ".join(f"{kv.key}={kv.value}" for kv in status.values)
                        if fragment in text:
                            return text
            return None
        return wait_for(found, timeout, message=lambda: f"a diagnostic with {fragment!r}; last: "
                        f"{[s.message for m in self.after(self.diagnostics, since)[-3:] for s in m.status]}")

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
    system.policy.fault = None
    system.wait_commands(time.monotonic())
    yield system
    system.check_alive_and_within_limits()
    system.feeder.restore()
    system.policy.fault = None
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
        system.wait_commands(0.0, timeout=60.0)
        since = time.monotonic()
        system.feeder.current["fixed"] = CompressedImage(format="jpeg", data=b"\x00garbage" * 10)
        system.wait_diagnostic(since, "fixed camera: compressed image ('jpeg', 80 bytes) could not be decoded")
        system.check_alive_and_within_limits()
        system.feeder.restore()
        system.wait_commands(time.monotonic())
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
