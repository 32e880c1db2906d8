"""Issue 14, items 1-8, at the level of the pure control modules (no ROS): every published point
honours max_joint_velocity from the *reported* position, slow steps are re-checked before
publishing, decompression bombs are refused before decoding, control_rate is bounded,
instructions have one validation, duplicate joint names are refused, parameter sets are whole."""
import re
import resource
import struct
import time
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from vla_pruner_ros.control.images import (
    ImageConversionError,
    LatestFrameDecoder,
    compressed_to_rgb,
    declared_size,
    image_to_rgb,
    rgb_to_image_fields,
)
from vla_pruner_ros.control.inputs import (
    InputBuffer,
    clean_instruction,
    joint_positions_from_msg,
    string_message_bytes,
)
from vla_pruner_ros.control.params import FLOAT_PARAMETERS, NodeSettings, apply_parameter_changes
from vla_pruner_ros.control.robot_config import load_robot_config
from vla_pruner_ros.control.runner import StaleStepError, StepResult, recheck_before_publish
from vla_pruner_ros.control.safety import (
    JOINT_LIMIT_TOLERANCE,
    JointStateOutOfLimits,
    make_safe_chunk,
    reanchor_chunk,
)

ROBOT = load_robot_config()
HOME = np.array([0.0, -0.63, -0.83, 0.0, 1.46, 0.0])
DT, VMAX = 0.1, 1.0


def _home_actions(n=8):
    actions = np.zeros((n, 7))
    actions[:, :6] = HOME
    return actions


def _first_point_speed(chunk, reported):
    return float(np.abs(chunk.joint_positions[0] - reported).max() / DT)


# --- item 1: out-of-limit joint states -----------------------------------------------------------
def _out_of_limits(case):
    current = HOME.copy()
    if case == "joint2=2.5":
        current[1] = 2.5
    elif case == "all slightly outside":
        current = ROBOT.upper + 0.05
    elif case == "joint1=100":
        current[0] = 100.0
    elif case == "joint1=1e308":
        current[0] = 1e308
    return current


@pytest.mark.parametrize("case", ["joint2=2.5", "all slightly outside", "joint1=100", "joint1=1e308"])
def test_a_joint_state_outside_the_limits_is_refused_naming_the_joint(case):
    # Before: accepted; the first point was 5.06 / 1.5 / 938 / inf rad/s from the reported position.
    with pytest.raises(JointStateOutOfLimits) as error:
        make_safe_chunk(_home_actions(), _out_of_limits(case), ROBOT, DT, VMAX)
    text = str(error.value)
    assert "outside the joint limits" in text and ("joint1" in text or "joint2" in text)


def test_within_the_tolerance_every_point_honours_the_velocity_from_the_reported_position():
    rng = np.random.default_rng(0)
    for _ in range(200):
        reported = rng.uniform(ROBOT.lower, ROBOT.upper)
        joint = rng.integers(6)
        side = rng.choice([-1, 1])
        offset = rng.uniform(0, JOINT_LIMIT_TOLERANCE)
        reported[joint] = (ROBOT.upper if side > 0 else ROBOT.lower)[joint] + side * offset
        actions = np.concatenate([rng.uniform(-8, 8, (8, 6)), rng.uniform(0, 1, (8, 1))], axis=1)
        chunk = make_safe_chunk(actions, reported, ROBOT, DT, VMAX)
        path = np.vstack([reported, chunk.joint_positions])
        assert np.all(np.abs(np.diff(path, axis=0)) <= VMAX * DT + 1e-12)
        assert np.all(chunk.joint_positions >= ROBOT.lower) and np.all(chunk.joint_positions <= ROBOT.upper)


def test_the_tolerance_never_exceeds_one_step_at_the_velocity_limit():
    reported = HOME.copy()
    reported[1] = ROBOT.upper[1] + 0.004  # inside the 0.01 rad tolerance, outside one 0.001 rad step
    with pytest.raises(JointStateOutOfLimits):
        make_safe_chunk(_home_actions(), reported, ROBOT, dt=0.01, max_joint_velocity=0.1)


# --- item 2: a slow step is re-checked before it is published -------------------------------------
def _result(chunk, wall_s=0.05):
    return StepResult(step_index=0, stamp=10.0, pruner=None, output=None, chunk=chunk, control_period=DT,
                      wall_ms=wall_s * 1e3, notes=list(chunk.notes))


def test_a_chunk_whose_inputs_aged_past_max_input_age_is_dropped():
    settings = NodeSettings(max_input_age=0.5, max_joint_velocity=VMAX, control_rate=10.0)
    chunk = make_safe_chunk(_home_actions(), HOME, ROBOT, DT, VMAX)
    stamps = {"fixed": 10.0, "wrist": 10.0, "joint_states": 10.0}
    with pytest.raises(StaleStepError, match=r"the step took 7.20 s .*fixed 7.30 s"):
        recheck_before_publish(_result(chunk, 7.2), stamps, HOME, 17.25, 17.3, settings, ROBOT)
    with pytest.raises(StaleStepError, match="no joint state newer than max_input_age"):
        recheck_before_publish(_result(chunk), stamps, HOME, 9.0, 10.3, settings, ROBOT)


def test_a_chunk_is_re_anchored_where_the_arm_is_when_it_is_published():
    settings = NodeSettings(max_input_age=0.5, max_joint_velocity=VMAX, control_rate=10.0)
    target = HOME + 0.05
    actions = _home_actions()
    actions[:, :6] = target
    chunk = make_safe_chunk(actions, HOME, ROBOT, DT, VMAX)
    moved = HOME - 0.18  # the previous command kept moving the arm while this step ran
    # What was published before: the chunk as computed, 2.3 rad/s from where the arm is.
    assert _first_point_speed(chunk, moved) > 2 * VMAX
    stamps = {"fixed": 10.0, "wrist": 10.0, "joint_states": 10.0}
    result = recheck_before_publish(_result(chunk), stamps, moved, 10.25, 10.3, settings, ROBOT)
    path = np.vstack([moved, result.chunk.joint_positions])
    assert np.all(np.abs(np.diff(path, axis=0)) <= VMAX * DT + 1e-12)
    assert np.allclose(result.chunk.joint_positions[-1], target)  # still heads for the policy's targets
    assert result.chunk.velocity_limited and any("slowed down" in note for note in result.notes)


def test_re_anchoring_refuses_an_out_of_limit_arm():
    chunk = make_safe_chunk(_home_actions(), HOME, ROBOT, DT, VMAX)
    with pytest.raises(JointStateOutOfLimits):
        reanchor_chunk(chunk, _out_of_limits("joint2=2.5"), ROBOT, DT, VMAX)


# --- item 3: decompression bombs ------------------------------------------------------------------
def jpeg_bomb(width=20000, height=20000) -> bytes:
    """A real 8x8 JPEG whose frame header is edited to declare ``width`` x ``height`` (~630 bytes)."""
    import cv2

    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def png_bomb(width=16000, height=16000, rows=64) -> bytes:
    """A PNG declaring ``width`` x ``height`` with the first ``rows`` rows of zeros (the rest
    missing: the decoder still allocates the whole frame first)."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    body = zlib.compress(b"\x00" * ((1 + 3 * width) * rows), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind,make,declared", [
    ("jpeg", jpeg_bomb, "20000x20000 = 400000000 pixels"),
    ("png", png_bomb, "16000x16000 = 256000000 pixels"),
])
def test_a_decompression_bomb_is_refused_before_decoding(kind, make, declared):
    data = make()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(ImageConversionError) as error:
        compressed_to_rgb(SimpleNamespace(format=kind, data=data), max_pixels=4_194_304)
    elapsed = time.perf_counter() - started
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    # Before: decoded anyway -- 25.4 s and +2290 MB (jpeg), 14.5 s and +1483 MB (png, full size).
    assert declared in str(error.value) and "max_image_pixels 4194304" in str(error.value)
    assert elapsed < 0.5, f"took {elapsed:.2f} s"
    assert grown_mb < 100, f"peak memory grew {grown_mb:.0f} MB"


def test_declared_sizes_match_what_decodes_and_raw_frames_are_capped_too():
    import cv2

    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for ext, kind in ((".png", "png"), (".jpg", "jpeg")):
        data = cv2.imencode(ext, rgb)[1].tobytes()
        assert declared_size(data) == (kind, 53, 37)
        assert compressed_to_rgb(SimpleNamespace(format=kind, data=data)).shape == (37, 53, 3)
        with pytest.raises(ImageConversionError, match="more than max_image_pixels 1000"):
            compressed_to_rgb(SimpleNamespace(format=kind, data=data), max_pixels=1000)
    with pytest.raises(ImageConversionError, match="neither a PNG nor a JPEG header"):
        compressed_to_rgb(SimpleNamespace(format="bmp", data=cv2.imencode(".bmp", rgb)[1].tobytes()))
    raw = SimpleNamespace(**rgb_to_image_fields(rgb))
    assert image_to_rgb(raw, max_pixels=37 * 53).shape == (37, 53, 3)
    huge = SimpleNamespace(height=12000, width=12000, encoding="rgb8", step=36000, data=b"")
    with pytest.raises(ImageConversionError, match="12000x12000 = 144000000 pixels"):
        image_to_rgb(huge, max_pixels=4_194_304)


def test_frames_are_decoded_off_the_callers_thread_newest_only():
    import threading

    results, release = [], threading.Event()

    def decode(item):
        if item == "slow":
            release.wait(5)
        if item == "bad":
            raise ImageConversionError("cannot decode")
        return item

    decoder = LatestFrameDecoder(decode, lambda view, item, rgb, error: results.append((view, rgb, error)))
    try:
        started = time.perf_counter()
        decoder.submit("fixed", "slow")
        time.sleep(0.05)
        for i in range(5):
            decoder.submit("fixed", f"frame{i}")  # arrive while "slow" decodes: only the newest is kept
        decoder.submit("wrist", "bad")
        assert time.perf_counter() - started < 0.5  # submit never waits on a decode
        release.set()
        deadline = time.monotonic() + 5
        while len(results) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert results == [("fixed", "slow", None), ("fixed", "frame4", None), ("wrist", None, "cannot decode")]
    finally:
        decoder.close()


def test_an_undecodable_newest_frame_holds_its_view_with_the_reason():
    buffer = InputBuffer(required=("fixed",))
    buffer.put("fixed", np.zeros(3), stamp=1.0, now=1.0)
    buffer.put("fixed", None, stamp=1.1, now=1.1, error="fixed camera: compressed image ... more than max_image_pixels")
    values, reason = buffer.snapshot(now=1.2, max_age=0.5)
    assert values is None and reason == "fixed camera: compressed image ... more than max_image_pixels"
    buffer.put("fixed", np.zeros(3), stamp=1.2, now=1.2)
    assert buffer.snapshot(now=1.3, max_age=0.5)[0] is not None


# --- item 4: control_rate -----------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.05, 1e-12, 5e-324, 0.0, 150.0])
def test_control_rate_is_bounded_to_what_a_controller_can_follow(rate):
    # Before: 0.05, 1e-12 and 5e-324 were accepted (step periods 80 s, 4e12 s, inf).
    with pytest.raises(ValueError, match=r"control_rate: .* is outside \[1.0, 100.0\]"):
        apply_parameter_changes(NodeSettings(), {"control_rate": rate})
    assert apply_parameter_changes(NodeSettings(), {"control_rate": 1.0}).step_period == 4.0


# --- item 6: one instruction validation -----------------------------------------------------------
@pytest.mark.parametrize("text,fragment", [
    ("", "instruction is empty"),
    ("   ", "instruction is empty"),
    ("x" * 100_000, "100000 characters; expected at most 512"),
    ("move\x07 the cube", "control character U+0007"),
    ("move the\x00 cube", "NUL character at position 8"),
    ("move \u200b the cube", "invisible format character U+200B (ZERO WIDTH SPACE) at position 5"),
    ("move \u202e the cube", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
    ("move \x1b[31m the cube", "control character U+001B"),
])
def test_bad_instructions_are_refused_the_same_way_as_parameter_and_on_the_topic(text, fragment):
    # Before: the parameter accepted every one of these; the topic accepted the control,
    # zero-width and RTL characters and (through rclpy) cut the NUL case to 'move the'.
    with pytest.raises(ValueError, match=re.escape(fragment)):
        clean_instruction(text)
    settings = NodeSettings(instruction="pick up the cube")
    with pytest.raises(ValueError, match="instruction"):
        apply_parameter_changes(settings, {"instruction": text})
    cdr = b"\x00\x01\x00\x00" + struct.pack("<I", len(text.encode()) + 1) + text.encode() + b"\x00"
    assert string_message_bytes(cdr) == text.encode()
    with pytest.raises(ValueError, match="instruction"):
        clean_instruction(string_message_bytes(cdr))


def test_valid_text_with_a_replacement_character_and_plain_whitespace_is_accepted():
    # Before: refused as "not valid UTF-8".
    assert clean_instruction("move \ufffd to the cube".encode()) == "move \ufffd to the cube"
    assert clean_instruction("move the\tgripper\r\nup") == "move the gripper up"
    with pytest.raises(ValueError, match="not valid UTF-8"):
        clean_instruction(b"move \xff\xfe to the cube")
    # The parameter gets the same cleaning; '' is only "no instruction yet" (the start-up default).
    assert apply_parameter_changes(NodeSettings(), {"instruction": "  pick  up\nthe cube"}).instruction == \
        "pick up the cube"
    assert apply_parameter_changes(NodeSettings(), {"instruction": ""}).instruction == ""


def test_string_bytes_are_read_from_either_cdr_byte_order_and_garbage_is_not():
    text = "move the\x00 cube".encode()
    big = b"\x00\x00\x00\x00" + struct.pack(">I", len(text) + 1) + text + b"\x00"
    assert string_message_bytes(big) == text
    assert string_message_bytes(b"\x00\x01\x00\x00\xff\xff\xff\x7f") is None
    assert string_message_bytes(b"nonsense") is None


# --- item 7: joint states -----------------------------------------------------------------------
def test_duplicate_joint_names_are_refused():
    # Before: the last joint2 (2.0) was used silently -- 26 rad/s against the first (-0.63) at 0.1 s.
    msg = SimpleNamespace(name=list(ROBOT.joints) + ["joint2"], position=list(HOME) + [2.0])
    with pytest.raises(ValueError, match=r"names 'joint2' twice \(entries 1 and 6\)"):
        joint_positions_from_msg(msg, ROBOT.joints)


def test_empty_joint_states_are_refused_and_foreign_ones_named_when_nothing_else_arrives():
    with pytest.raises(ValueError, match="names no joints"):
        joint_positions_from_msg(SimpleNamespace(name=[], position=[]), ROBOT.joints)
    buffer = InputBuffer(required=("joint_states",))
    buffer.note("joint_states", "messages there name none of the arm's joints: joint state lacks ...", now=1.0)
    assert "name none of the arm's joints" in buffer.snapshot(now=1.1, max_age=0.5)[1]
    buffer.put("joint_states", HOME, stamp=1.2, now=1.2)
    buffer.note("joint_states", "gripper only", now=1.25)  # a gripper publisher next to a good one
    assert buffer.snapshot(now=1.3, max_age=0.5)[0] is not None
    assert "gripper only" in buffer.snapshot(now=2.0, max_age=0.5)[1]  # named once the arm's go stale


# --- item 8 (pure part): integers for floats ---------------------------------------------------
def test_float_parameters_take_integers():
    assert {"prune.keep_ratio", "control_rate", "max_joint_velocity"} <= FLOAT_PARAMETERS
    assert "prune.window" not in FLOAT_PARAMETERS
    assert apply_parameter_changes(NodeSettings(), {"prune.keep_ratio": 1}).pruner.keep_ratio == 1.0
