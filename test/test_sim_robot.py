"""SimArm: trajectory interpolation, velocity/position limits, rejection of bad trajectories."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_pruner_ros.sim.kinematics import HOME_JOINTS, JOINT_NAMES
from vla_pruner_ros.sim.robot import SimArm

DT = 0.01


def run(arm, seconds):
    for _ in range(int(round(seconds / DT))):
        arm.step(DT)


def test_velocity_limit_respected_and_target_reached():
    arm = SimArm(velocity_limits=[3.14, 3.14, 3.14, 2.0, 2.0, 1.0])
    goal = HOME_JOINTS + np.array([2.0, 0.8, -0.9, 1.5, -1.0, 1.2])
    arm.set_target(goal)  # duration 0: "as fast as allowed"
    previous = arm.joints.copy()
    for _ in range(200):
        arm.step(DT)
        moved = np.abs(arm.joints - previous)
        assert np.all(moved <= arm.velocity_limits * DT + 1e-12)
        assert np.all(np.abs(arm.velocities) <= arm.velocity_limits + 1e-9)
        previous = arm.joints.copy()
    np.testing.assert_allclose(arm.joints, goal, atol=1e-12)
    np.testing.assert_allclose(arm.velocities, 0.0, atol=1e-9)
    # The slowest joint (1.2 rad at 1 rad/s) needed 1.2 s: halfway through it was still moving.
    arm2 = SimArm(velocity_limits=[3.14, 3.14, 3.14, 2.0, 2.0, 1.0])
    arm2.set_target(goal)
    run(arm2, 0.6)
    assert arm2.joints[5] == pytest.approx(HOME_JOINTS[5] + 0.6, abs=1e-9)


def test_trajectory_is_linearly_interpolated_from_the_state_at_receipt():
    arm = SimArm()
    start = arm.joints.copy()
    p1 = start + np.array([0.3, -0.2, 0.1, 0.4, -0.3, 0.2])
    p2 = p1 + np.array([-0.1, 0.2, 0.2, -0.5, 0.1, 0.0])
    arm.set_trajectory([1.0, 2.0], [p1, p2])
    run(arm, 0.25)
    np.testing.assert_allclose(arm.joints, start + 0.25 * (p1 - start), atol=1e-9)
    run(arm, 1.25)  # t = 1.5: halfway between the points
    np.testing.assert_allclose(arm.joints, (p1 + p2) / 2, atol=1e-9)
    run(arm, 1.5)  # past the end: hold the last point
    np.testing.assert_allclose(arm.joints, p2, atol=1e-12)
    assert arm.time == pytest.approx(3.0)


def test_first_point_at_time_zero_and_replacement_by_a_new_trajectory():
    arm = SimArm()
    start = arm.joints.copy()
    p0, p1 = start + 0.05, start + 0.15
    arm.set_trajectory([0.0, 1.0], [p0, p1])  # p0 is an immediate target
    run(arm, 0.05)
    # At 3.14 rad/s the 0.05 rad jump is done in 0.02 s, then the ramp to p1 takes over.
    np.testing.assert_allclose(arm.joints, p0 + 0.05 * (p1 - p0), atol=1e-9)
    here = arm.joints.copy()
    back = start - 0.1
    arm.set_trajectory([0.5], [back])  # a new message replaces the old trajectory
    run(arm, 0.25)
    np.testing.assert_allclose(arm.joints, here + 0.5 * (back - here), atol=1e-9)


def test_joint_names_reorder_columns():
    arm = SimArm()
    goal = HOME_JOINTS + np.arange(1, 7) * 0.05
    order = ["joint6", "joint3", "joint1", "joint5", "joint2", "joint4"]
    columns = [goal[JOINT_NAMES.index(name)] for name in order]
    arm.set_trajectory([0.5], [columns], joint_names=order)
    run(arm, 0.6)
    np.testing.assert_allclose(arm.joints, goal, atol=1e-12)


def test_position_limits_clamp_targets():
    arm = SimArm()
    goal = HOME_JOINTS.copy()
    goal[2] = 2.5    # joint3 upper limit is 0.19198
    goal[4] = -3.0   # joint5 lower limit is -1.69297
    arm.set_target(goal)
    run(arm, 2.0)
    assert arm.joints[2] == pytest.approx(0.19198)
    assert arm.joints[4] == pytest.approx(-1.69297)
    assert arm.kinematics.within_limits(arm.joints)


def test_gripper_moves_at_its_speed_and_is_clipped():
    arm = SimArm(gripper_speed=2.0)
    arm.set_trajectory([0.1], [arm.joints], gripper=[1.7])
    run(arm, 0.2)
    assert arm.gripper == pytest.approx(0.4)  # 2 strokes/s for 0.2 s
    run(arm, 1.0)
    assert arm.gripper == 1.0
    state = arm.joint_state(include_gripper=True)
    assert state["name"] == list(JOINT_NAMES) + ["drive_joint"]
    assert state["position"][-1] == pytest.approx(0.85)
    np.testing.assert_allclose(arm.proprio, np.concatenate([arm.joints, [1.0]]))
    # A trajectory without gripper commands keeps the previous gripper target.
    arm.set_target(arm.joints + 0.1)
    run(arm, 0.3)
    assert arm.gripper == 1.0


def test_gripper_only_command_keeps_the_arm_trajectory():
    arm = SimArm()
    goal = HOME_JOINTS + 0.3
    arm.set_trajectory([1.0], [goal], gripper=[0.0])
    run(arm, 0.5)
    arm.set_gripper(0.6)
    run(arm, 0.6)
    np.testing.assert_allclose(arm.joints, goal, atol=1e-9)
    assert arm.gripper == pytest.approx(0.6)
    with pytest.raises(ValueError, match="gripper command"):
        arm.set_gripper(np.nan)


@pytest.mark.parametrize("times, positions, gripper, names, message", [
    ([0.5], [[0.0, 0.0, np.nan, 0.0, 0.0, 0.0]], None, None, "positions must be finite"),
    ([0.5], [[0.0, 0.0, np.inf, 0.0, 0.0, 0.0]], None, None, "positions must be finite"),
    ([0.5], [[0.0] * 5], None, None, "positions must have shape"),
    ([0.5, 1.0], [[0.0] * 6], None, None, "positions must have shape"),
    ([1.0, 1.0], [[0.0] * 6, [0.1] * 6], None, None, "strictly increasing"),
    ([1.0, 0.5], [[0.0] * 6, [0.1] * 6], None, None, "strictly increasing"),
    ([-0.1], [[0.0] * 6], None, None, ">= 0"),
    ([np.nan], [[0.0] * 6], None, None, "times must be finite"),
    ([], np.zeros((0, 6)), None, None, "non-empty"),
    ([0.5], [[0.0] * 6], [np.nan], None, "gripper commands must be finite"),
    ([0.5], [[0.0] * 6], [0.1, 0.2], None, "gripper must have shape"),
    ([0.5], [[0.0] * 6], None, ["joint1"] * 6, "permutation"),
    ([0.5], [[0.0] * 6], None, ["a", "b", "c", "d", "e", "f"], "permutation"),
])
def test_bad_trajectories_are_rejected_and_leave_the_arm_untouched(times, positions, gripper, names, message):
    arm = SimArm()
    arm.set_target(HOME_JOINTS + 0.1, duration=1.0)
    with pytest.raises(ValueError, match=message):
        arm.set_trajectory(times, positions, gripper=gripper, joint_names=names)
    run(arm, 1.0)  # the previous trajectory still runs
    np.testing.assert_allclose(arm.joints, HOME_JOINTS + 0.1, atol=1e-9)


def test_bad_construction_and_step_arguments():
    with pytest.raises(ValueError, match="velocity_limits"):
        SimArm(velocity_limits=[1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="gripper_speed"):
        SimArm(gripper_speed=-1.0)
    arm = SimArm()
    for dt in (0.0, -0.01, np.nan):
        with pytest.raises(ValueError, match="dt"):
            arm.step(dt)
    with pytest.raises(ValueError, match="joints"):
        arm.reset([0.0] * 5)


def test_advance_runs_fixed_substeps_and_a_remainder():
    arm = SimArm()
    goal = HOME_JOINTS + 0.2
    arm.set_target(goal, duration=0.1)
    arm.advance(0.1, physics_dt=0.01)
    np.testing.assert_allclose(arm.joints, goal, atol=1e-12)
    assert arm.time == pytest.approx(0.1)
    arm.advance(0.035, physics_dt=0.01)
    assert arm.time == pytest.approx(0.135)


finite = st.floats(min_value=-50.0, max_value=50.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(points=st.lists(st.lists(finite, min_size=6, max_size=6), min_size=1, max_size=4),
       gaps=st.lists(st.floats(min_value=1e-3, max_value=0.5), min_size=4, max_size=4),
       dt=st.floats(min_value=1e-4, max_value=0.05))
def test_never_nan_and_always_within_limits(points, gaps, dt):
    arm = SimArm()
    times = np.cumsum(gaps[:len(points)])
    arm.set_trajectory(times, points, gripper=np.linspace(-3, 3, len(points)))
    for _ in range(30):
        arm.step(dt)
        assert np.all(np.isfinite(arm.joints)) and np.all(np.isfinite(arm.velocities))
        assert arm.kinematics.within_limits(arm.joints)
        assert 0.0 <= arm.gripper <= 1.0
        assert np.all(np.abs(arm.velocities) <= arm.velocity_limits + 1e-6)
