"""LIBERO protocol helpers (no LIBERO needed): proprio, images, gripper, unnorm key, sweep."""
import math

import numpy as np
import pytest

from vla_pruner_ros.libero.protocol import (
    NOOP_ACTION,
    SUITE_MAX_STEPS,
    EvalConfiguration,
    build_configurations,
    choose_unnorm_key,
    images_from_obs,
    parse_keep_ratios,
    parse_task_ids,
    postprocess_action,
    proprio_from_obs,
    quat_to_axis_angle,
    rotate_180,
)


def quat_from_axis_angle(axis, angle):
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    return np.concatenate([axis * math.sin(angle / 2), [math.cos(angle / 2)]])  # (x, y, z, w)


def test_quat_to_axis_angle_recovers_axis_times_angle():
    rng = np.random.default_rng(0)
    for _ in range(50):
        axis, angle = rng.normal(size=3), rng.uniform(0.01, math.pi - 0.01)
        expected = axis / np.linalg.norm(axis) * angle
        np.testing.assert_allclose(quat_to_axis_angle(quat_from_axis_angle(axis, angle)), expected, atol=1e-9)


def test_quat_to_axis_angle_edge_cases():
    np.testing.assert_array_equal(quat_to_axis_angle([0, 0, 0, 1]), np.zeros(3))
    np.testing.assert_array_equal(quat_to_axis_angle([0, 0, 0, 1.0000001]), np.zeros(3))  # w clipped
    # 90 degrees about z
    np.testing.assert_allclose(quat_to_axis_angle([0, 0, math.sqrt(0.5), math.sqrt(0.5)]), [0, 0, math.pi / 2])
    # robosuite's convention keeps the sign of w: -q is the long way round (angle 2*pi - theta)
    q = quat_from_axis_angle([1, 0, 0], 0.5)
    np.testing.assert_allclose(quat_to_axis_angle(-q), [-(2 * math.pi - 0.5), 0, 0], atol=1e-9)


def libero_obs(step=0):
    fixed = np.zeros((256, 256, 3), np.uint8)
    fixed[0, 0] = (255, 0, 0)  # marker in the top-left corner
    wrist = np.full((256, 256, 3), 7, np.uint8)
    wrist[0, 255] = (0, 255, 0)  # marker in the top-right corner
    return {
        "agentview_image": fixed,
        "robot0_eye_in_hand_image": wrist,
        "robot0_eef_pos": np.array([0.1, -0.2, 1.0 + step]),
        "robot0_eef_quat": quat_from_axis_angle([0, 1, 0], 0.3),
        "robot0_gripper_qpos": np.array([0.04, -0.04]),
        "robot0_joint_pos": np.zeros(7),
    }


def test_proprio_is_pos_axis_angle_gripper():
    proprio = proprio_from_obs(libero_obs())
    assert proprio.shape == (8,)
    np.testing.assert_allclose(proprio, [0.1, -0.2, 1.0, 0, 0.3, 0, 0.04, -0.04], atol=1e-12)


def test_proprio_rejects_missing_or_misshaped_keys():
    obs = libero_obs()
    del obs["robot0_gripper_qpos"]
    with pytest.raises(ValueError, match="robot0_gripper_qpos"):
        proprio_from_obs(obs)
    obs = libero_obs()
    obs["robot0_eef_quat"] = np.zeros(3)
    with pytest.raises(ValueError, match="robot0_eef_quat.*4 values"):
        proprio_from_obs(obs)


def test_rotate_180_flips_both_axes_and_copies():
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    rotated = rotate_180(image)
    assert rotated.flags.c_contiguous
    np.testing.assert_array_equal(rotated[0, 0], image[3, 4])
    np.testing.assert_array_equal(rotated[3, 4], image[0, 0])
    np.testing.assert_array_equal(rotate_180(rotated), image)
    with pytest.raises(ValueError, match="uint8"):
        rotate_180(image.astype(np.float32))


def test_images_from_obs_maps_cameras_to_views_rotated():
    images = images_from_obs(libero_obs(), ("fixed", "wrist"))
    assert set(images) == {"fixed", "wrist"}
    assert tuple(images["fixed"][255, 255]) == (255, 0, 0)  # top-left marker now bottom-right
    assert tuple(images["wrist"][255, 0]) == (0, 255, 0)  # top-right marker now bottom-left
    assert list(images_from_obs(libero_obs(), ("front",))) == ["front"]
    with pytest.raises(ValueError, match="view_names"):
        images_from_obs(libero_obs(), ("a", "b", "c"))


def test_gripper_postprocessing_open_close_and_threshold():
    base = [0.1, -0.2, 0.3, 0.01, -0.02, 0.03]
    # model: 1 = open, 0 = close; env: -1 = open, +1 = close
    assert postprocess_action(base + [1.0])[-1] == -1.0
    assert postprocess_action(base + [0.9])[-1] == -1.0
    assert postprocess_action(base + [0.0])[-1] == 1.0
    assert postprocess_action(base + [0.2])[-1] == 1.0
    assert postprocess_action(base + [-1.3])[-1] == 1.0  # un-normalised values can leave [0, 1]
    assert postprocess_action(base + [0.5])[-1] == 0.0  # upstream's np.sign(0) = 0
    np.testing.assert_array_equal(postprocess_action(base + [1.0])[:6], base)


def test_postprocess_does_not_mutate_and_validates():
    action = np.array([0, 0, 0, 0, 0, 0, 1.0])
    postprocess_action(action)
    assert action[-1] == 1.0
    with pytest.raises(ValueError, match="7 values"):
        postprocess_action([0.0] * 6)
    with pytest.raises(ValueError, match="non-finite"):
        postprocess_action([0, 0, np.nan, 0, 0, 0, 1])


def test_noop_action_keeps_gripper_open():
    assert len(NOOP_ACTION) == 7 and NOOP_ACTION[-1] == -1.0 and not any(NOOP_ACTION[:6])


def test_choose_unnorm_key():
    assert choose_unnorm_key(["libero_spatial", "libero_goal"], "libero_spatial") == "libero_spatial"
    assert choose_unnorm_key(["libero_goal_no_noops"], "libero_goal") == "libero_goal_no_noops"
    assert choose_unnorm_key(["a", "b"], "libero_goal", "b") == "b"
    with pytest.raises(ValueError, match="libero_10_no_noops"):
        choose_unnorm_key(["libero_goal_no_noops"], "libero_10")
    with pytest.raises(ValueError, match="unnorm_key='x'"):
        choose_unnorm_key(["a"], "libero_goal", "x")


def test_suite_step_limits_match_oft():
    assert SUITE_MAX_STEPS == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300,
                               "libero_10": 520, "libero_90": 400}


def test_build_configurations_runs_none_once_first():
    configurations = build_configurations(["fastv", "none", "vla_pruner"], [0.5, 0.25], ["none", "fastv", "vla_pruner"])
    assert [c.label for c in configurations] == ["none", "fastv@0.5", "fastv@0.25", "vla_pruner@0.5",
                                                 "vla_pruner@0.25"]
    assert configurations[0] == EvalConfiguration("none", 1.0)
    with pytest.raises(ValueError, match="unknown.*'magic'"):
        build_configurations(["magic"], [0.5], ["none", "fastv"])


def test_parse_keep_ratios_and_task_ids():
    assert parse_keep_ratios("0.125, 0.5,0.25,0.5") == [0.5, 0.25, 0.125]
    for bad, match in (("0", "outside"), ("1.5", "outside"), ("half", "not a number"), ("", "comma-separated")):
        with pytest.raises(ValueError, match=match):
            parse_keep_ratios(bad)
    assert parse_task_ids(None, 3) == [0, 1, 2]
    assert parse_task_ids("5-7,0,6", 10) == [0, 5, 6, 7]
    for bad in ("10", "3-1", "x", "-1"):
        with pytest.raises(ValueError, match="--tasks"):
            parse_task_ids(bad, 10)
