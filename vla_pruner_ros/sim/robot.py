"""A simulated xArm6 that follows joint trajectories the way a JointTrajectoryController does.

A trajectory arrives as points at ``time_from_start`` relative to the moment it is received.
The reference is the linear interpolation from the state at receipt to the first point, then
between points, holding the last point afterwards. Each ``step(dt)`` moves the joints toward the
reference at the time ``t + dt`` with per-joint velocity limits, and clamps them to the position
limits. A new trajectory replaces the old one (no splicing), like a new JointTrajectory message.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kinematics import HOME_JOINTS, JOINT_NAMES, XArm6Kinematics

GRIPPER_JOINT_NAME = "drive_joint"
GRIPPER_CLOSED_ANGLE = 0.85  # rad, xarm_gripper drive_joint upper limit (0 = open)


@dataclass
class _Trajectory:
    received_at: float
    times: np.ndarray            # (K,) time_from_start, strictly increasing, >= 0
    positions: np.ndarray        # (K, 6)
    start_positions: np.ndarray  # (6,) joints at receipt
    gripper: np.ndarray | None   # (K,) or None: keep the current gripper target
    start_gripper: float

    def sample(self, now: float) -> tuple[np.ndarray, float | None]:
        elapsed = now - self.received_at
        times, points = self.times, self.positions
        grip = self.gripper
        if times[0] > 0:  # the segment from the state at receipt to the first point
            times = np.concatenate([[0.0], times])
            points = np.concatenate([self.start_positions[None], points])
            if grip is not None:
                grip = np.concatenate([[self.start_gripper], grip])
        if elapsed >= times[-1]:
            return points[-1], (None if grip is None else float(grip[-1]))
        if elapsed <= times[0]:
            return points[0], (None if grip is None else float(grip[0]))
        i = int(np.searchsorted(times, elapsed, side="right")) - 1
        w = (elapsed - times[i]) / (times[i + 1] - times[i])
        joints = points[i] + w * (points[i + 1] - points[i])
        return joints, (None if grip is None else float(grip[i] + w * (grip[i + 1] - grip[i])))


class SimArm:
    """Joint-space xArm6 with a 0..1 gripper (0 open, 1 closed), velocity- and position-limited."""

    joint_names = JOINT_NAMES

    def __init__(self, kinematics: XArm6Kinematics | None = None, initial_joints=HOME_JOINTS,
                 initial_gripper: float = 0.0, velocity_limits=None, gripper_speed: float = 2.0):
        self.kinematics = kinematics or XArm6Kinematics()
        limits = self.kinematics.velocity_limits if velocity_limits is None else velocity_limits
        limits = np.broadcast_to(np.asarray(limits, dtype=np.float64), (6,)).copy()
        if not np.all(np.isfinite(limits) & (limits > 0)):
            raise ValueError(f"velocity_limits must be positive and finite (rad/s), got {limits}")
        if not np.isfinite(gripper_speed) or gripper_speed <= 0:
            raise ValueError(f"gripper_speed must be positive (fraction of the stroke per s), got {gripper_speed}")
        self.velocity_limits = limits
        self.gripper_speed = float(gripper_speed)
        self.reset(initial_joints, initial_gripper)

    # ---- state --------------------------------------------------------------------------
    def reset(self, joints=HOME_JOINTS, gripper: float = 0.0) -> None:
        q = np.asarray(joints, dtype=np.float64)
        if q.shape != (6,) or not np.all(np.isfinite(q)):
            raise ValueError(f"joints must be 6 finite values, got {q!r}")
        gripper = float(gripper)
        if not np.isfinite(gripper):
            raise ValueError(f"gripper must be finite, got {gripper}")
        self.joints = self.kinematics.clamp(q)
        self.velocities = np.zeros(6)
        self.gripper = float(np.clip(gripper, 0.0, 1.0))
        self.gripper_target = self.gripper
        self.time = 0.0
        self._trajectory: _Trajectory | None = None

    @property
    def proprio(self) -> np.ndarray:
        """(7,) joints followed by the gripper state."""
        return np.concatenate([self.joints, [self.gripper]])

    def joint_state(self, include_gripper: bool = False) -> dict:
        """Fields of a sensor_msgs/JointState (the gripper as xarm_gripper's drive_joint angle)."""
        names, position, velocity = list(JOINT_NAMES), list(self.joints), list(self.velocities)
        if include_gripper:
            names.append(GRIPPER_JOINT_NAME)
            position.append(self.gripper * GRIPPER_CLOSED_ANGLE)
            velocity.append(0.0)
        return {"name": names, "position": position, "velocity": velocity}

    # ---- commands -----------------------------------------------------------------------
    def set_trajectory(self, times, positions, gripper=None, joint_names=None) -> None:
        """Follow a trajectory: ``positions[k]`` is the goal at ``times[k]`` s after now.

        joint_names: the column order of ``positions`` (any permutation of joint1..joint6);
        defaults to joint1..joint6. Positions outside the joint limits are clamped. gripper: an
        optional (K,) 0..1 command per point (clipped to 0..1).
        """
        times = np.atleast_1d(np.asarray(times, dtype=np.float64))
        positions = np.asarray(positions, dtype=np.float64)
        if times.ndim != 1 or times.size == 0:
            raise ValueError(f"times must be a non-empty 1-D sequence, got shape {times.shape}")
        if positions.ndim == 1 and times.size == 1:
            positions = positions[None]
        if positions.shape != (times.size, 6):
            raise ValueError(f"positions must have shape ({times.size}, 6) to match times, got {positions.shape}")
        if not np.all(np.isfinite(times)):
            raise ValueError(f"times must be finite, got {times}")
        if not np.all(np.isfinite(positions)):
            raise ValueError("positions must be finite (found NaN or inf)")
        if times[0] < 0 or np.any(np.diff(times) <= 0):
            raise ValueError(f"times must be >= 0 and strictly increasing, got {times}")
        if joint_names is not None:
            names = list(joint_names)
            if sorted(names) != sorted(JOINT_NAMES):
                raise ValueError(f"joint_names must be a permutation of {JOINT_NAMES}, got {names}")
            positions = positions[:, [names.index(n) for n in JOINT_NAMES]]
        grip = None
        if gripper is not None:
            grip = np.atleast_1d(np.asarray(gripper, dtype=np.float64))
            if grip.shape != times.shape:
                raise ValueError(f"gripper must have shape {times.shape} to match times, got {grip.shape}")
            if not np.all(np.isfinite(grip)):
                raise ValueError("gripper commands must be finite (found NaN or inf)")
            grip = np.clip(grip, 0.0, 1.0)
        self._trajectory = _Trajectory(self.time, times, self.kinematics.clamp(positions),
                                       self.joints.copy(), grip, self.gripper_target)

    def set_target(self, joints, gripper: float | None = None, duration: float = 0.0) -> None:
        """Go to one joint target, reached ``duration`` s from now (0: as fast as allowed)."""
        joints = np.asarray(joints, dtype=np.float64)
        self.set_trajectory([duration], joints[None] if joints.ndim == 1 else joints,
                            None if gripper is None else [gripper])

    def set_gripper(self, command: float) -> None:
        """Gripper-only command (0 open .. 1 closed, clipped) that leaves the arm's trajectory running."""
        command = float(command)
        if not np.isfinite(command):
            raise ValueError(f"gripper command must be finite, got {command}")
        self.gripper_target = float(np.clip(command, 0.0, 1.0))
        if self._trajectory is not None:
            self._trajectory.gripper = None  # the newest gripper command wins

    # ---- simulation ---------------------------------------------------------------------
    def reference(self, at_time: float | None = None) -> tuple[np.ndarray, float]:
        """The (joints, gripper) the controller is tracking at ``at_time`` (default: now)."""
        if self._trajectory is None:
            return self.joints.copy(), self.gripper_target
        joints, grip = self._trajectory.sample(self.time if at_time is None else at_time)
        return joints, (self.gripper_target if grip is None else grip)

    def step(self, dt: float) -> None:
        """Advance ``dt`` seconds: move toward the reference with velocity and position limits."""
        if not np.isfinite(dt) or dt <= 0:
            raise ValueError(f"dt must be a positive number of seconds, got {dt}")
        target, grip_target = self.reference(self.time + dt)
        self.gripper_target = grip_target
        max_move = self.velocity_limits * dt
        new_joints = self.kinematics.clamp(self.joints + np.clip(target - self.joints, -max_move, max_move))
        self.velocities = (new_joints - self.joints) / dt
        self.joints = new_joints
        max_grip = self.gripper_speed * dt
        self.gripper = float(np.clip(self.gripper + np.clip(grip_target - self.gripper, -max_grip, max_grip), 0, 1))
        self.time += dt

    def advance(self, duration: float, physics_dt: float = 0.01) -> None:
        """Run ``step`` at a fixed physics period for ``duration`` s (the last sub-step may be short)."""
        if not np.isfinite(duration) or duration < 0:
            raise ValueError(f"duration must be >= 0 s, got {duration}")
        if not np.isfinite(physics_dt) or physics_dt <= 0:
            raise ValueError(f"physics_dt must be > 0 s, got {physics_dt}")
        steps = int(np.floor(duration / physics_dt + 1e-9))
        for _ in range(steps):
            self.step(physics_dt)
        rest = duration - steps * physics_dt
        if rest > 1e-12:
            self.step(rest)
