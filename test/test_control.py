"""The pure logic under the ROS layer: parameters, robot config, safety, inputs, images, overlays."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from vla_pruner_ros.control.images import ImageConversionError, compressed_to_rgb, image_to_rgb, rgb_to_image_fields
from vla_pruner_ros.control.inputs import (
    InputBuffer,
    clean_instruction,
    joint_positions_from_msg,
    optional_joint_position,
)
from vla_pruner_ros.control.overlay import draw_retained_tokens, patch_boxes
from vla_pruner_ros.control.params import PARAMETERS, NodeSettings, apply_parameter_changes
from vla_pruner_ros.control.robot_config import load_robot_config
from vla_pruner_ros.control.safety import UnsafeActionError, make_safe_chunk

ROBOT = load_robot_config()


# --- parameters ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,value,fragment", [
    ("prune.keep_ratio", 0.0, "outside (0.0, 1.0]"),
    ("prune.keep_ratio", 1.5, "outside (0.0, 1.0]"),
    ("prune.keep_ratio", float("nan"), "not a finite number"),
    ("prune.keep_ratio", "half", "expected a float"),
    ("prune.window", 0, "outside [1, 64]"),
    ("prune.window", 2.5, "expected a int"),
    ("prune.decay", -0.1, "outside [0.0, 1.0]"),
    ("prune.method", "fastest", "is not one of"),
    ("prune.smoothing", "kalman", "is not one of"),
    ("prune.layer", 0, "outside [1, 128]"),
    ("prune.enabled", 1, "expected a bool"),
    ("control_rate", 0.0, "outside [1.0, 100.0]"),
    ("control_rate", 0.05, "outside [1.0, 100.0]"),
    ("control_rate", 1e-12, "outside [1.0, 100.0]"),
    ("control_rate", 5e-324, "outside [1.0, 100.0]"),
    ("max_input_age", -1.0, "outside (0.0, 60.0]"),
    ("actions_per_step", 0, "outside [1, 64]"),
    ("max_joint_velocity", 11.0, "outside (0.0, 10.0]"),
])
def test_invalid_parameter_changes_are_refused_with_a_reason(name, value, fragment):
    settings = NodeSettings()
    with pytest.raises(ValueError) as error:
        apply_parameter_changes(settings, {name: value})
    assert name in str(error.value) and fragment in str(error.value)


def test_a_change_set_is_applied_whole_or_not_at_all():
    settings = NodeSettings()
    with pytest.raises(ValueError):
        apply_parameter_changes(settings, {"prune.keep_ratio": 0.125, "prune.window": 0})
    assert settings.pruner.keep_ratio == 0.25  # frozen: nothing half-applied
    new = apply_parameter_changes(settings, {"prune.keep_ratio": 0.125, "prune.window": 5, "control_rate": 20})
    assert (new.pruner.keep_ratio, new.pruner.window, new.control_rate) == (0.125, 5, 20.0)
    assert new.pruner_config().keep_ratio == 0.125 and new.pruner_config().window == 5


def test_prune_layer_is_bounded_by_the_model_depth():
    with pytest.raises(ValueError, match="must be < the model's 4 LLM layers"):
        apply_parameter_changes(NodeSettings(), {"prune.layer": 4}, num_layers=4)
    assert apply_parameter_changes(NodeSettings(), {"prune.layer": 3}, num_layers=4).pruner.prune_layer == 3


def test_every_parameter_default_is_valid_and_names_are_unique():
    names = [spec.name for spec in PARAMETERS]
    assert len(names) == len(set(names))
    settings = apply_parameter_changes(NodeSettings(), {spec.name: spec.default for spec in PARAMETERS})
    assert settings == NodeSettings()


def test_policy_yaml_holds_valid_values_for_every_live_parameter():
    from vla_pruner_ros.control.launch_logic import node_parameters
    from vla_pruner_ros.control.robot_config import default_config_dir

    values = node_parameters(default_config_dir() / "policy.yaml")
    live = {spec.name: values[spec.name] for spec in PARAMETERS}  # KeyError if one is missing
    settings = apply_parameter_changes(NodeSettings(), live)
    assert settings.pruner.method == "vla_pruner" and settings.pruner.window == 3 and settings.pruner.decay == 0.8


# --- robot config -------------------------------------------------------------------------------
def test_robot_config_has_the_xarm6_limits():
    assert ROBOT.joints == ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
    assert ROBOT.lower[1] == pytest.approx(-2.059) and ROBOT.upper[2] == pytest.approx(0.19198)
    assert ROBOT.max_joint_velocity == pytest.approx(3.14)
    assert ROBOT.action_dim == 7 and ROBOT.gripper_action_index == 6
    proprio = ROBOT.proprio(np.arange(6) * 0.1, gripper_position=0.425)
    assert proprio == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5])


def test_robot_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("robot:\n  joints: [a, b]\n  position_limits: {a: [0, 1]}\n  max_joint_velocity: 1\n"
                   "action:\n  joint_indices: [0, 1]\n")
    with pytest.raises(ValueError, match="no entry for joint 'b'"):
        load_robot_config(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_robot_config(tmp_path / "missing.yaml")


# --- safety -------------------------------------------------------------------------------------
def test_safe_chunk_respects_position_limits_and_velocity():
    rng = np.random.default_rng(0)
    current = np.zeros(6)
    actions = np.concatenate([rng.uniform(-8, 8, (8, 6)), rng.uniform(-1, 2, (8, 1))], axis=1)
    dt, vmax = 0.1, 1.0
    chunk = make_safe_chunk(actions, current, ROBOT, dt, vmax)
    positions = chunk.joint_positions
    assert np.all(positions >= ROBOT.lower - 1e-12) and np.all(positions <= ROBOT.upper + 1e-12)
    steps = np.diff(np.vstack([current, positions]), axis=0)
    assert np.all(np.abs(steps) <= vmax * dt + 1e-12)
    assert chunk.position_clamped and chunk.velocity_limited
    assert np.all((chunk.gripper_positions >= 0) & (chunk.gripper_positions <= 0.85))


def test_safe_chunk_passes_a_slow_feasible_chunk_unchanged():
    current = np.array([0.0, -0.5, -0.8, 0.0, 1.4, 0.0])
    targets = current + np.linspace(0.01, 0.08, 8)[:, None]
    actions = np.concatenate([targets, np.full((8, 1), 0.5)], axis=1)
    chunk = make_safe_chunk(actions, current, ROBOT, dt=0.1, max_joint_velocity=1.0)
    assert np.allclose(chunk.joint_positions, targets)
    assert not chunk.position_clamped and not chunk.velocity_limited and not chunk.notes
    assert np.allclose(chunk.gripper_positions, 0.425)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_are_refused(bad):
    actions = np.zeros((8, 7))
    actions[3, 2] = bad
    with pytest.raises(UnsafeActionError, match="step 3, dim 2"):
        make_safe_chunk(actions, np.zeros(6), ROBOT, 0.1)


def test_wrong_action_shape_is_refused():
    with pytest.raises(UnsafeActionError, match="expected"):
        make_safe_chunk(np.zeros((8, 5)), np.zeros(6), ROBOT, 0.1)


# --- inputs -------------------------------------------------------------------------------------
def test_input_buffer_freshness_and_reasons():
    buffer = InputBuffer(required=("fixed", "wrist", "joint_states"))
    values, reason = buffer.snapshot(now=10.0, max_age=0.5)
    assert values is None and "fixed: nothing received yet" in reason
    for name in buffer.required:
        buffer.put(name, name, stamp=9.9, now=9.9)
    values, reason = buffer.snapshot(now=10.0, max_age=0.5)
    assert reason == "" and set(values) == {"fixed", "wrist", "joint_states"}
    values, reason = buffer.snapshot(now=10.6, max_age=0.5)
    assert values is None and "0.70 s old > max_input_age 0.50 s" in reason


def test_input_buffer_ignores_late_old_frames_and_flags_future_stamps():
    buffer = InputBuffer(required=("fixed",))
    buffer.put("fixed", "new", stamp=5.0, now=5.0)
    buffer.put("fixed", "old", stamp=4.0, now=5.1)
    assert buffer.get("fixed").value == "new"
    buffer.put("fixed", "future", stamp=100.0, now=5.2)
    values, reason = buffer.snapshot(now=5.3, max_age=1.0)
    assert values is None and "in the future" in reason
    buffer.put("fixed", "fixed-clock", stamp=5.4, now=5.4)  # recovery after a bad stamp
    values, reason = buffer.snapshot(now=5.5, max_age=1.0)
    assert values["fixed"].value == "fixed-clock"


def test_unstamped_messages_use_the_receive_time():
    buffer = InputBuffer(required=("joint_states",))
    buffer.put("joint_states", 1, stamp=0.0, now=42.0)
    assert buffer.get("joint_states").stamp == 42.0


def _joint_state(names, positions):
    return SimpleNamespace(name=names, position=positions)


def test_joint_states_are_matched_by_name_not_order():
    names = ["joint3", "drive_joint", "joint1", "joint2", "joint6", "joint5", "joint4"]
    positions = [3.0, 0.4, 1.0, 2.0, 6.0, 5.0, 4.0]
    assert list(joint_positions_from_msg(_joint_state(names, positions), ROBOT.joints)) == [1, 2, 3, 4, 5, 6]
    assert optional_joint_position(_joint_state(names, positions), "drive_joint") == 0.4
    assert optional_joint_position(_joint_state(names, positions), "missing") is None


@pytest.mark.parametrize("names,positions,fragment", [
    (["joint1", "joint2"], [0.0, 0.0], "lacks ['joint3'"),
    ([f"joint{i}" for i in range(1, 7)], [0.0] * 5, "only 5 positions"),
    ([f"joint{i}" for i in range(1, 7)], [0.0, math.nan, 0, 0, 0, 0], "non-finite positions for ['joint2']"),
    ([f"joint{i}" for i in range(1, 7)], [0.0, 0, 0, 0, math.inf, 0], "non-finite positions for ['joint5']"),
])
def test_bad_joint_states_are_refused(names, positions, fragment):
    with pytest.raises(ValueError) as error:
        joint_positions_from_msg(_joint_state(names, positions), ROBOT.joints)
    assert fragment in str(error.value)


def test_instruction_cleaning():
    assert clean_instruction("  move the  gripper\nabove the red cube ") == "move the gripper above the red cube"
    assert clean_instruction("pick up the cube".encode()) == "pick up the cube"
    with pytest.raises(ValueError, match="empty"):
        clean_instruction("   ")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        clean_instruction(b"\xff\xfe move")
    with pytest.raises(ValueError, match="at most 512"):
        clean_instruction("x" * 600)


# --- images -------------------------------------------------------------------------------------
def _image(encoding, array, step=None, data=None):
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    step = step or width * channels
    rows = np.zeros((height, max(step, width * channels)), dtype=np.uint8)
    rows[:, : width * channels] = array.reshape(height, -1)
    return SimpleNamespace(encoding=encoding, height=height, width=width, step=step, is_bigendian=0,
                           data=rows.tobytes() if data is None else data)


def test_every_supported_encoding_gives_the_same_rgb():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(image_to_rgb(_image("rgb8", rgb)), rgb)
    assert np.array_equal(image_to_rgb(_image("bgr8", rgb[:, :, ::-1])), rgb)
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 9, np.uint8)], axis=2)
    assert np.array_equal(image_to_rgb(_image("rgba8", rgba)), rgb)
    assert np.array_equal(image_to_rgb(_image("bgra8", rgba[:, :, [2, 1, 0, 3]])), rgb)
    mono = rgb[:, :, 0]
    assert np.array_equal(image_to_rgb(_image("mono8", mono)), np.repeat(mono[:, :, None], 3, axis=2))
    # Row padding (step > width * channels) is skipped.
    assert np.array_equal(image_to_rgb(_image("rgb8", rgb, step=7 * 3 + 5)), rgb)
    # Round trip through our own field writer.
    assert np.array_equal(image_to_rgb(SimpleNamespace(**rgb_to_image_fields(rgb))), rgb)


@pytest.mark.parametrize("make,fragment", [
    (lambda a: _image("16UC1", a[:, :, 0]), "unsupported image encoding '16UC1'"),
    (lambda a: _image("rgb8", a, step=10), "step 10 is smaller than width*channels"),
    (lambda a: _image("rgb8", a, data=b"\x00" * 20), "holds 20 bytes; expected step*height"),
    (lambda a: SimpleNamespace(encoding="rgb8", height=0, width=7, step=21, data=b""), "is empty"),
])
def test_bad_images_are_refused_with_what_was_expected(make, fragment):
    with pytest.raises(ImageConversionError) as error:
        image_to_rgb(make(np.zeros((5, 7, 3), dtype=np.uint8)))
    assert fragment in str(error.value)


def test_compressed_images_decode_and_garbage_is_refused():
    import cv2

    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (255, 0, 0)
    ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
    assert ok
    decoded = compressed_to_rgb(SimpleNamespace(format="png", data=png.tobytes()))
    assert np.array_equal(decoded, rgb)
    with pytest.raises(ImageConversionError, match="could not be decoded"):
        compressed_to_rgb(SimpleNamespace(format="jpeg", data=b"not a jpeg at all"))
    with pytest.raises(ImageConversionError, match="no data"):
        compressed_to_rgb(SimpleNamespace(format="jpeg", data=b""))


# --- overlays -----------------------------------------------------------------------------------
def test_patch_boxes_tile_the_frame():
    boxes = patch_boxes(224, 224, 16, 16)
    assert boxes.shape == (256, 4)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
    assert area == 224 * 224
    assert tuple(boxes[17]) == (14, 14, 28, 28)  # row 1, column 1


def test_overlay_dims_pruned_patches_only():
    frame = np.full((32, 32, 3), 200, np.uint8)
    overlay = draw_retained_tokens(frame, 2, 2, kept_local=np.array([0, 3]), dim=0.25)
    assert overlay[24, 8].tolist() == [50, 50, 50]  # patch 2 (row 1, col 0): pruned, dimmed
    assert overlay[8, 24].tolist() == [50, 50, 50]  # patch 1: pruned
    assert overlay[8, 8].tolist() == [200, 200, 200]  # patch 0 interior: kept
    assert (overlay[0, 0:16] != 200).any()  # kept patch outlined
    untouched = draw_retained_tokens(frame, 2, 2, kept_local=None)
    assert np.array_equal(untouched, frame)


def test_node_image_converter_agrees_with_ours():
    from sensor_msgs.msg import Image

    from vla_pruner_ros.control.images import make_image_converter

    convert = make_image_converter()
    rgb = np.random.default_rng(3).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    for encoding, pixels in (("rgb8", rgb), ("bgr8", rgb[:, :, ::-1])):
        fields = rgb_to_image_fields(np.ascontiguousarray(pixels))
        fields["encoding"] = encoding
        assert np.array_equal(convert(Image(**fields)), rgb)
    try:
        import cv_bridge  # noqa: F401
    except ImportError:
        assert convert is image_to_rgb  # no cv_bridge here: our converter
