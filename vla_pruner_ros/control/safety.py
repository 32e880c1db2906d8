"""Turn a predicted action chunk into joint targets that are safe to send.

Every published point lies within the joint position limits, and consecutive points differ by
at most ``max_joint_velocity * dt`` per joint -- the first one measured from the joint positions
the arm *reports*, never from a corrected copy of them. Non-finite actions are refused outright:
a policy that produces NaN is broken, and no clamped version of its output should move the arm.

A reported position outside the limits: the xArm6's own limits are the URDF's (the config's), so
a report beyond them by more than encoder noise means the driver, its units or calibration, or
the robot config is wrong -- we then do not know where the arm is, and any command is blind
(the xArm also refuses targets beyond its limits with an error). Such a state is refused
(``JointStateOutOfLimits``: the node holds and says which joint, by how much). Within
``JOINT_LIMIT_TOLERANCE`` (and within one step at the velocity limit) the chunk starts from the
reported position: the first point is inside the limits and at most one step away from it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .robot_config import RobotConfig

# A reported position this far beyond a limit (rad) is encoder noise at the hard stop, not a fault.
JOINT_LIMIT_TOLERANCE = 0.01


class UnsafeActionError(ValueError):
    """The chunk cannot be made safe (non-finite values, wrong shape)."""


class JointStateOutOfLimits(UnsafeActionError):
    """The reported joint positions are outside the limits: nothing may be commanded from them."""


@dataclass
class SafeChunk:
    joint_positions: np.ndarray  # (n, J) rad, limits and velocity respected
    gripper_positions: np.ndarray | None  # (n,) gripper joint positions, or None
    position_clamped: bool = False  # some target was outside the position limits
    velocity_limited: bool = False  # some step was faster than max_joint_velocity
    notes: list[str] = field(default_factory=list)
    targets: np.ndarray | None = None  # (n, J) the policy's targets clamped to the limits (for re-anchoring)


def velocity_limit(robot: RobotConfig, max_joint_velocity: float | None = None) -> float:
    """The effective limit (rad/s): the node's parameter, never above the robot config's."""
    if max_joint_velocity is None:
        return robot.max_joint_velocity
    return min(float(max_joint_velocity), robot.max_joint_velocity)


def check_joint_state(current_joints, robot: RobotConfig, max_step: float) -> np.ndarray:
    """The reported positions as a float array, or ``JointStateOutOfLimits`` naming every joint
    that is further outside its limits than ``min(JOINT_LIMIT_TOLERANCE, max_step)``."""
    current = np.asarray(current_joints, dtype=np.float64)
    if current.shape != (len(robot.joints),) or not np.isfinite(current).all():
        raise UnsafeActionError(f"current joint positions {current} are not {len(robot.joints)} finite values")
    tolerance = min(JOINT_LIMIT_TOLERANCE, max_step)
    problems = []
    for name, value, low, high in zip(robot.joints, current, robot.lower, robot.upper):
        if value > high + tolerance:
            problems.append(f"{name} = {value:.6g} rad is {value - high:.3g} rad above its upper limit {high:.6g}")
        elif value < low - tolerance:
            problems.append(f"{name} = {value:.6g} rad is {low - value:.3g} rad below its lower limit {low:.6g}")
    if problems:
        raise JointStateOutOfLimits(
            "joint state outside the joint limits: " + "; ".join(problems)
            + f" (tolerance {tolerance:.3g} rad). The driver (units, calibration) or the robot config's "
            "limits are wrong; no command is sent from a position the arm cannot be at")
    return current


def _limit_from(targets: np.ndarray, start: np.ndarray, robot: RobotConfig, max_step: float) -> tuple[np.ndarray, bool]:
    """Points that follow ``targets`` (within the limits) from ``start``, each at most ``max_step``
    from the one before. ``start`` may be outside the limits by at most ``max_step``: the first
    point is then the limit-side point the step can reach (clipping towards the box never moves a
    point further from ``start``)."""
    points = np.empty_like(targets)
    limited = False
    previous = start
    for i, target in enumerate(targets):
        step = np.clip(target - previous, -max_step, max_step)
        if not np.array_equal(step, target - previous):
            limited = True
        previous = np.clip(previous + step, robot.lower, robot.upper)
        points[i] = previous
    return points, limited


def make_safe_chunk(
    actions: np.ndarray,
    current_joints: np.ndarray,
    robot: RobotConfig,
    dt: float,
    max_joint_velocity: float | None = None,
) -> SafeChunk:
    """Joint targets for ``actions`` (chunk x action_dim, un-normalised) spaced ``dt`` apart,
    starting from the reported ``current_joints``."""
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] < robot.action_dim:
        raise UnsafeActionError(
            f"action chunk has shape {actions.shape}; expected (chunk >= 1, action_dim >= {robot.action_dim})"
        )
    if not np.isfinite(actions).all():
        bad = np.argwhere(~np.isfinite(actions))[0]
        raise UnsafeActionError(f"action chunk holds a non-finite value (step {bad[0]}, dim {bad[1]})")
    if not dt > 0:
        raise UnsafeActionError(f"control period dt={dt} must be > 0")
    vmax = velocity_limit(robot, max_joint_velocity)
    max_step = vmax * dt
    current = check_joint_state(current_joints, robot, max_step)
    targets = actions[:, list(robot.joint_action_indices)]
    clamped = np.clip(targets, robot.lower, robot.upper)
    result = SafeChunk(joint_positions=np.empty_like(clamped), gripper_positions=None, targets=clamped)
    if not np.array_equal(clamped, targets):
        result.position_clamped = True
        result.notes.append("targets outside the joint position limits were clamped")
    result.joint_positions, result.velocity_limited = _limit_from(clamped, current, robot, max_step)
    if result.velocity_limited:
        result.notes.append(f"steps faster than {vmax:.3g} rad/s were slowed down")
    if robot.gripper_action_index is not None:
        result.gripper_positions = np.array(
            [robot.gripper_command(value) for value in actions[:, robot.gripper_action_index]]
        )
    return result


def reanchor_chunk(chunk: SafeChunk, current_joints, robot: RobotConfig, dt: float,
                   max_joint_velocity: float | None = None) -> SafeChunk:
    """``chunk`` re-limited from where the arm is now (``current_joints``, e.g. after a slow step
    while the previous command moved it): the same targets, the first point at most one step
    at the velocity limit from the current position. Raises ``JointStateOutOfLimits`` like
    ``make_safe_chunk``. The velocity_limited flag and notes describe the new points."""
    vmax = velocity_limit(robot, max_joint_velocity)
    max_step = vmax * dt
    current = check_joint_state(current_joints, robot, max_step)
    targets = chunk.targets if chunk.targets is not None else chunk.joint_positions
    points, limited = _limit_from(np.asarray(targets, dtype=np.float64), current, robot, max_step)
    note = f"steps faster than {vmax:.3g} rad/s were slowed down"
    notes = [n for n in chunk.notes if not n.startswith("steps faster than")] + ([note] if limited else [])
    return dataclasses.replace(chunk, joint_positions=points, velocity_limited=limited, notes=notes)
