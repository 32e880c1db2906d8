"""XArm6Kinematics: FK against the URDF joint origins, Jacobian, IK, limits."""
import numpy as np
import pytest

from vla_pruner_ros.sim.kinematics import (FRAME_NAMES, HOME_JOINTS, JOINT_NAMES, MOVEIT_VELOCITY_LIMIT,
                                           URDF_VELOCITY_LIMIT, XArm6Kinematics, rotation_log)
from vla_pruner_ros.sim.scene import Scene

KIN = XArm6Kinematics()


def test_names_and_limits_match_the_urdf():
    assert JOINT_NAMES == ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
    assert FRAME_NAMES[0] == "link_base" and FRAME_NAMES[-1] == "link_tcp" and len(FRAME_NAMES) == 8
    np.testing.assert_allclose(KIN.lower_limits, [-2 * np.pi, -2.059, -3.927, -2 * np.pi, -1.69297, -2 * np.pi])
    np.testing.assert_allclose(KIN.upper_limits, [2 * np.pi, 2.0944, 0.19198, 2 * np.pi, np.pi, 2 * np.pi])
    assert URDF_VELOCITY_LIMIT == 3.14 and MOVEIT_VELOCITY_LIMIT == 2.14
    np.testing.assert_allclose(KIN.velocity_limits, 3.14)
    assert KIN.tcp_offset == pytest.approx(0.172)


def test_zero_pose_frames_from_urdf_origins():
    # Chaining the URDF origins by hand at q = 0 (every joint turns about its local z):
    #   joint1 at z 0.267; joint2 rolls -90 deg, so link2's y axis points down (world -z);
    #   joint3 = joint2 + (0.0535, -0.2845 along link2 y) -> (0.0535, 0, 0.5515);
    #   joint4 = joint3 + (0.0775, 0.3425 along link3 y = down) -> (0.131, 0, 0.209); link4 z points down;
    #   joint5 at joint4, rolls +90 deg: link5 y axis points down again;
    #   joint6 = joint5 + (0.076, 0.097 down) -> (0.207, 0, 0.112), flange z pointing down;
    #   link_tcp 0.172 further along the flange z -> (0.207, 0, -0.060).
    frames = KIN.forward_kinematics(np.zeros(6))
    expected = [(0, 0, 0), (0, 0, 0.267), (0, 0, 0.267), (0.0535, 0, 0.5515), (0.131, 0, 0.209),
                (0.131, 0, 0.209), (0.207, 0, 0.112), (0.207, 0, -0.060)]
    np.testing.assert_allclose(frames[:, :3, 3], expected, atol=1e-12)
    np.testing.assert_allclose(frames[7, :3, :3], np.diag([1.0, -1.0, -1.0]), atol=1e-12)
    np.testing.assert_allclose(frames[2, :3, :3], [[1, 0, 0], [0, 0, 1], [0, -1, 0]], atol=1e-12)


def test_single_joint_rotations_follow_the_urdf_axes():
    # joint1 turns about world z: the TCP at (0.207, 0, -0.06) swings to (0, 0.207, -0.06).
    np.testing.assert_allclose(KIN.tcp_pose([np.pi / 2, 0, 0, 0, 0, 0])[:3, 3], [0, 0.207, -0.06], atol=1e-12)
    # joint2 turns about link2 z = world +y through the shoulder (0, 0, 0.267): the TCP's offset
    # from the shoulder (0.207, 0, -0.327) rotates by +90 deg about y to (-0.327, 0, -0.207).
    np.testing.assert_allclose(KIN.tcp_pose([0, np.pi / 2, 0, 0, 0, 0])[:3, 3], [-0.327, 0, 0.060], atol=1e-12)
    # joint6 only spins the tool about its own axis: the TCP position does not move.
    np.testing.assert_allclose(KIN.tcp_pose([0, 0, 0, 0, 0, 1.0])[:3, 3], [0.207, 0, -0.06], atol=1e-12)


def test_tcp_offset_is_along_the_flange_axis():
    q = HOME_JOINTS + 0.3
    bare = XArm6Kinematics(tcp_offset=0.0).forward_kinematics(q)
    tool = KIN.forward_kinematics(q)
    np.testing.assert_allclose(bare[7], bare[6])
    np.testing.assert_allclose(tool[7, :3, 3], bare[6, :3, 3] + 0.172 * bare[6, :3, 2], atol=1e-12)


def test_batched_fk_equals_single_and_frames_are_rigid():
    rng = np.random.default_rng(0)
    q = rng.uniform(KIN.lower_limits / 2, KIN.upper_limits / 2, (4, 3, 6))
    batch = KIN.forward_kinematics(q)
    assert batch.shape == (4, 3, 8, 4, 4)
    np.testing.assert_allclose(batch[2, 1], KIN.forward_kinematics(q[2, 1]), atol=1e-14)
    rotations = batch[..., :3, :3]
    identity = np.broadcast_to(np.eye(3), rotations.shape)
    np.testing.assert_allclose(rotations @ np.swapaxes(rotations, -1, -2), identity, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-12)


def test_home_pose_points_down_above_the_table():
    tcp = KIN.tcp_pose(HOME_JOINTS)
    np.testing.assert_allclose(tcp[:3, 2], [0, 0, -1], atol=1e-4)
    np.testing.assert_allclose(tcp[:3, 3], [0.30, 0.0, 0.30], atol=1e-4)
    assert KIN.within_limits(HOME_JOINTS)


def test_jacobian_matches_finite_differences():
    rng = np.random.default_rng(1)
    q = rng.uniform(KIN.lower_limits / 2, KIN.upper_limits / 2, (6, 6))
    jac = KIN.jacobian(q)
    assert jac.shape == (6, 6, 6)
    eps = 1e-6
    base = KIN.tcp_pose(q)
    for i in range(6):
        step = np.zeros(6)
        step[i] = eps
        moved = KIN.tcp_pose(q + step)
        linear = (moved[:, :3, 3] - base[:, :3, 3]) / eps
        angular = rotation_log(moved[:, :3, :3] @ np.swapaxes(base[:, :3, :3], -1, -2)) / eps
        np.testing.assert_allclose(jac[:, :3, i], linear, atol=2e-6)
        np.testing.assert_allclose(jac[:, 3:, i], angular, atol=2e-6)


def test_rotation_log_round_trip_including_near_pi():
    rng = np.random.default_rng(2)
    axes = rng.normal(size=(20, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate([rng.uniform(0, np.pi - 0.1, 18), [np.pi - 1e-7, 1e-9]])
    rotvec = axes * angles[:, None]
    k = np.zeros((20, 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axes[:, 2], axes[:, 1], -axes[:, 0]
    k = k - np.swapaxes(k, 1, 2)
    rot = np.eye(3) + np.sin(angles)[:, None, None] * k + (1 - np.cos(angles))[:, None, None] * (k @ k)
    got = rotation_log(rot)
    same = np.minimum(np.linalg.norm(got - rotvec, axis=1), np.linalg.norm(got + rotvec, axis=1))
    assert np.all(same[:-2] < 1e-7) and same[-2] < 1e-5 and same[-1] < 1e-8


def test_ik_round_trip_full_pose_on_random_configurations():
    rng = np.random.default_rng(3)
    truth = KIN.clamp(HOME_JOINTS + rng.uniform(-0.6, 0.6, (100, 6)))
    target = KIN.tcp_pose(truth)
    seed = truth + rng.uniform(-0.3, 0.3, truth.shape)
    result = KIN.inverse_kinematics(target[:, :3, 3], seed, orientation=target[:, :3, :3])
    assert np.all(result.success)
    reached = KIN.tcp_pose(result.joints)
    np.testing.assert_allclose(reached[:, :3, 3], target[:, :3, 3], atol=1e-4)
    np.testing.assert_allclose(reached[:, :3, :3], target[:, :3, :3], atol=2e-3)
    assert np.all(KIN.within_limits(result.joints))


def test_ik_pointing_down_reaches_the_whole_cube_workspace_from_home():
    targets = []
    for seed in range(40):
        for cube in Scene(seed).cubes:
            for height in (0.004, 0.065, 0.165):  # touch, hover, approach heights above the top
                targets.append([cube.position[0], cube.position[1], cube.top + height])
    targets = np.array(targets)
    result = KIN.inverse_kinematics(targets, HOME_JOINTS)
    assert np.all(result.success), result.position_error.max()
    tcp = KIN.tcp_pose(result.joints)
    np.testing.assert_allclose(tcp[:, :3, 3], targets, atol=1e-4)
    np.testing.assert_allclose(tcp[:, :3, 2], np.broadcast_to([0, 0, -1], targets.shape), atol=2e-3)
    assert np.all(KIN.within_limits(result.joints))


def test_ik_down_keeps_the_seed_yaw_and_single_result_types():
    seed = HOME_JOINTS.copy()
    seed[5] = 0.7
    result = KIN.inverse_kinematics([0.4, 0.1, 0.15], seed)
    assert result.success is True and isinstance(result.position_error, float)
    # Only the axis is constrained, so the tool's spin stays close to the seed's.
    assert abs(result.joints[5] - 0.7) < 0.5


def test_ik_unreachable_target_reports_failure_within_limits():
    result = KIN.inverse_kinematics([1.5, 0.0, 0.3], HOME_JOINTS)
    assert result.success is False
    assert result.position_error > 0.5
    assert KIN.within_limits(result.joints)


def test_clamp_and_within_limits():
    q = np.array([7.0, -3.0, 1.0, 0.0, -2.0, -7.0])
    clamped = KIN.clamp(q)
    np.testing.assert_allclose(clamped, [2 * np.pi, -2.059, 0.19198, 0.0, -1.69297, -2 * np.pi])
    assert not KIN.within_limits(q) and KIN.within_limits(clamped)
    np.testing.assert_array_equal(KIN.within_limits(np.stack([q, clamped])), [False, True])


@pytest.mark.parametrize("joints", [np.zeros(5), np.zeros((2, 7)), [0, 0, np.nan, 0, 0, 0], [np.inf] * 6])
def test_bad_joint_inputs_raise(joints):
    with pytest.raises(ValueError, match="joints"):
        KIN.forward_kinematics(joints)


def test_bad_ik_and_constructor_inputs_raise():
    with pytest.raises(ValueError, match="target_position"):
        KIN.inverse_kinematics([0.3, 0.0], HOME_JOINTS)
    with pytest.raises(ValueError, match="target_position"):
        KIN.inverse_kinematics([0.3, np.nan, 0.2], HOME_JOINTS)
    with pytest.raises(ValueError, match="orientation"):
        KIN.inverse_kinematics([0.3, 0.0, 0.2], HOME_JOINTS, orientation="up")
    with pytest.raises(ValueError, match="tcp_offset"):
        XArm6Kinematics(tcp_offset=-0.1)
    with pytest.raises(ValueError, match="velocity_limit"):
        XArm6Kinematics(velocity_limit=0.0)
