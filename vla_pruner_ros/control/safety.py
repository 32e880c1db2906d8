"""Turn a predicted action chunk into joint targets that are safe to send.

Every published point lies within the joint position limits, and consecutive points (the
first one measured from the current joint positions) differ by at most
``max_joint_velocity * dt`` per joint. Non-finite actions are refused outright: a policy
that produces NaN is broken, and no clamped version of its output should move the arm.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .robot_config import RobotConfig


class UnsafeActionError(ValueError):
    """The chunk cannot be made safe (non-finite values, wrong shape)."""


@dataclass
class SafeChunk:
    joint_positions: np.ndarray  # (n, J) rad, limits and velocity respected
    gripper_positions: np.ndarray | None  # (n,) gripper joint positions, or None
    position_clamped: bool = False  # some target was outside the position limits
    velocity_limited: bool = False  # some step was faster than max_joint_velocity
    notes: list[str] = field(default_factory=list)


def make_safe_chunk(
    actions: np.ndarray,
    current_joints: np.ndarray,
    robot: RobotConfig,
    dt: float,
    max_joint_velocity: float | None = None,
) -> SafeChunk:
    """Joint targets for ``actions`` (chunk x action_dim, un-normalised) spaced ``dt`` apart."""
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] < robot.action_dim:
        raise UnsafeActionError(
            f"action chunk has shape {actions.shape}; expected (chunk >= 1, action_dim >= {robot.action_dim})"
        )
    if not np.isfinite(actions).all():
        bad = np.argwhere(~np.isfinite(actions))[0]
        raise UnsafeActionError(f"action chunk holds a non-finite value (step {bad[0]}, dim {bad[1]})")
    current = np.asarray(current_joints, dtype=np.float64)
    if current.shape != (len(robot.joints),) or not np.isfinite(current).all():
        raise UnsafeActionError(f"current joint positions {current} are not {len(robot.joints)} finite values")
    if not dt > 0:
        raise UnsafeActionError(f"control period dt={dt} must be > 0")
    vmax = robot.max_joint_velocity if max_joint_velocity is None else min(max_joint_velocity, robot.max_joint_velocity)
    targets = actions[:, list(robot.joint_action_indices)]
    clamped = np.clip(targets, robot.lower, robot.upper)
    result = SafeChunk(joint_positions=np.empty_like(clamped), gripper_positions=None)
    if not np.array_equal(clamped, targets):
        result.position_clamped = True
        result.notes.append("targets outside the joint position limits were clamped")
    max_step = vmax * dt
    previous = np.clip(current, robot.lower, robot.upper)
    for i, target in enumerate(clamped):
        step = np.clip(target - previous, -max_step, max_step)
        if not np.array_equal(step, target - previous):
            result.velocity_limited = True
        previous = np.clip(previous + step, robot.lower, robot.upper)
        result.joint_positions[i] = previous
    if result.velocity_limited:
        result.notes.append(f"steps faster than {vmax:.3g} rad/s were slowed down")
    if robot.gripper_action_index is not None:
        result.gripper_positions = np.array(
            [robot.gripper_command(value) for value in actions[:, robot.gripper_action_index]]
        )
    return result
