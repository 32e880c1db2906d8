"""Kinematics of the UFACTORY xArm6: forward kinematics, Jacobian, inverse kinematics.

The geometry is the one of the public ``xarm_description`` URDF (xarm6.urdf.xacro): every joint
is a revolute joint about its own z axis, placed by a fixed ``origin xyz/rpy`` in its parent link.
Only rolls of +-90 degrees appear in those origins (the URDF writes 1.5708; we use exact pi/2).
The xArm gripper's tool centre point (``link_tcp``) is 0.172 m along the flange's z axis.

Everything is vectorised over leading batch dimensions: ``joints`` may be ``(6,)`` or ``(..., 6)``.
The world frame is the robot base frame (``link_base``), z up, x forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

JOINT_NAMES = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
# Frames returned by forward_kinematics, in order (link frames sit at their parent joint).
FRAME_NAMES = ("link_base", "link1", "link2", "link3", "link4", "link5", "link6", "link_tcp")

# Joint origins in the parent link: (x, y, z, roll). Pitch and yaw are zero for all of them.
_HALF_PI = np.pi / 2
JOINT_ORIGINS = (
    (0.0, 0.0, 0.267, 0.0),          # link_base -> link1
    (0.0, 0.0, 0.0, -_HALF_PI),      # link1 -> link2
    (0.0535, -0.2845, 0.0, 0.0),     # link2 -> link3
    (0.0775, 0.3425, 0.0, -_HALF_PI),  # link3 -> link4
    (0.0, 0.0, 0.0, _HALF_PI),       # link4 -> link5
    (0.076, 0.097, 0.0, -_HALF_PI),  # link5 -> link6
)
LOWER_LIMITS = np.array([-2 * np.pi, -2.059, -3.927, -2 * np.pi, -1.69297, -2 * np.pi])
UPPER_LIMITS = np.array([2 * np.pi, 2.0944, 0.19198, 2 * np.pi, np.pi, 2 * np.pi])
URDF_VELOCITY_LIMIT = 3.14    # rad/s, every joint, from the URDF <limit velocity=...>
MOVEIT_VELOCITY_LIMIT = 2.14  # rad/s, xarm_moveit_config joint_limits.yaml
XARM_GRIPPER_TCP_OFFSET = 0.172  # m, xarm_gripper joint_tcp origin z
# A ready pose with the gripper pointing straight down, TCP at about (0.30, 0, 0.30).
HOME_JOINTS = np.array([0.0, -0.63153, -0.83315, 0.0, 1.46468, 0.0])

DOWN = np.array([0.0, 0.0, -1.0])


def _origin_matrix(x: float, y: float, z: float, roll: float) -> np.ndarray:
    c, s = np.cos(roll), np.sin(roll)
    c, s = (0.0 if abs(c) < 1e-12 else c), (0.0 if abs(s) < 1e-12 else s)
    return np.array([[1, 0, 0, x], [0, c, -s, y], [0, s, c, z], [0, 0, 0, 1]], dtype=np.float64)


def _as_joints(joints, name: str = "joints") -> np.ndarray:
    q = np.asarray(joints, dtype=np.float64)
    if q.ndim == 0 or q.shape[-1] != 6:
        raise ValueError(f"{name} must have shape (..., 6), got {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"{name} must be finite, got {q}")
    return q


def skew(v: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 3, 3) cross-product matrices."""
    out = np.zeros(v.shape[:-1] + (3, 3))
    out[..., 0, 1], out[..., 0, 2] = -v[..., 2], v[..., 1]
    out[..., 1, 0], out[..., 1, 2] = v[..., 2], -v[..., 0]
    out[..., 2, 0], out[..., 2, 1] = -v[..., 1], v[..., 0]
    return out


def rotation_log(rotation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) rotation vectors (axis * angle)."""
    r = np.asarray(rotation)
    cos = np.clip((np.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    vee = np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    sin = np.sin(angle)
    small = sin < 1e-6
    scale = np.where(small, 0.5, angle / (2.0 * np.where(small, 1.0, sin)))
    rotvec = vee * scale[..., None]
    # Near pi the antisymmetric part vanishes: recover the axis from the symmetric part.
    near_pi = small & (cos < 0)
    if np.any(near_pi):
        sym = (r[near_pi] + np.eye(3)) / 2.0
        col = np.argmax(np.diagonal(sym, axis1=-2, axis2=-1), axis=-1)
        axis = sym[np.arange(len(col)), :, col]
        axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
        rotvec[near_pi] = axis * angle[near_pi][..., None]
    return rotvec


@dataclass(frozen=True)
class IKResult:
    joints: np.ndarray             # (..., 6) best joints found, within limits
    success: np.ndarray | bool     # converged to both tolerances
    position_error: np.ndarray | float     # m, |target - tcp|
    orientation_error: np.ndarray | float  # rad, angle to the orientation target (0 if none)
    iterations: int


class XArm6Kinematics:
    """xArm6 forward/inverse kinematics with an optional tool (TCP) offset along the flange z."""

    joint_names = JOINT_NAMES
    frame_names = FRAME_NAMES

    def __init__(self, tcp_offset: float = XARM_GRIPPER_TCP_OFFSET,
                 velocity_limit: float = URDF_VELOCITY_LIMIT):
        if not np.isfinite(tcp_offset) or tcp_offset < 0:
            raise ValueError(f"tcp_offset must be a finite non-negative length in m, got {tcp_offset}")
        if not np.isfinite(velocity_limit) or velocity_limit <= 0:
            raise ValueError(f"velocity_limit must be positive, got {velocity_limit}")
        self.tcp_offset = float(tcp_offset)
        self.lower_limits = LOWER_LIMITS.copy()
        self.upper_limits = UPPER_LIMITS.copy()
        self.velocity_limits = np.full(6, float(velocity_limit))
        self._origins = np.stack([_origin_matrix(*o) for o in JOINT_ORIGINS])  # (6, 4, 4)
        self._tcp = np.eye(4)
        self._tcp[2, 3] = self.tcp_offset

    # ---- limits -------------------------------------------------------------------------
    def clamp(self, joints) -> np.ndarray:
        return np.clip(_as_joints(joints), self.lower_limits, self.upper_limits)

    def within_limits(self, joints, tolerance: float = 1e-9) -> np.ndarray | bool:
        q = _as_joints(joints)
        return np.all((q >= self.lower_limits - tolerance) & (q <= self.upper_limits + tolerance), axis=-1)

    # ---- forward kinematics -------------------------------------------------------------
    def forward_kinematics(self, joints) -> np.ndarray:
        """Frames of link_base, link1..link6 and link_tcp in the base frame: (..., 8, 4, 4)."""
        q = _as_joints(joints)
        batch = q.shape[:-1]
        cos, sin = np.cos(q), np.sin(q)
        frames = np.empty(batch + (8, 4, 4))
        frames[..., 0, :, :] = np.eye(4)
        current = np.broadcast_to(np.eye(4), batch + (4, 4))
        for i in range(6):
            rot_z = np.zeros(batch + (4, 4))
            rot_z[..., 0, 0], rot_z[..., 0, 1] = cos[..., i], -sin[..., i]
            rot_z[..., 1, 0], rot_z[..., 1, 1] = sin[..., i], cos[..., i]
            rot_z[..., 2, 2] = rot_z[..., 3, 3] = 1.0
            current = current @ self._origins[i] @ rot_z
            frames[..., i + 1, :, :] = current
        frames[..., 7, :, :] = current @ self._tcp
        return frames

    def tcp_pose(self, joints) -> np.ndarray:
        """(..., 4, 4) pose of the tool centre point."""
        return self.forward_kinematics(joints)[..., 7, :, :]

    def jacobian(self, joints, frames: np.ndarray | None = None) -> np.ndarray:
        """Geometric Jacobian of the TCP in the base frame: (..., 6, 6), rows (v_xyz, omega_xyz)."""
        if frames is None:
            frames = self.forward_kinematics(joints)
        axes = frames[..., 1:7, :3, 2]          # joint i turns about the z axis of link i
        origins = frames[..., 1:7, :3, 3]
        tcp = frames[..., 7, :3, 3]
        linear = np.cross(axes, tcp[..., None, :] - origins)  # (..., 6 joints, 3)
        return np.concatenate([np.swapaxes(linear, -1, -2), np.swapaxes(axes, -1, -2)], axis=-2)

    # ---- inverse kinematics -------------------------------------------------------------
    def inverse_kinematics(self, target_position, seed_joints, orientation="down",
                           max_iterations: int = 200, position_tolerance: float = 1e-4,
                           orientation_tolerance: float = 1e-3, damping: float = 0.05,
                           max_step: float = 0.3) -> IKResult:
        """Damped least squares (Levenberg-Marquardt style) IK for the TCP, seeded from joints.

        orientation: "down" constrains only the TCP z axis to point along -z world (the yaw stays
        free and, by the least-norm step, near the seed's); a (3, 3) rotation constrains the full
        TCP orientation; None solves for position only. Joints are clamped to their limits after
        every step, so the result always lies within them. Batched over leading dimensions.
        """
        target = np.asarray(target_position, dtype=np.float64)
        if target.shape[-1:] != (3,) or not np.all(np.isfinite(target)):
            raise ValueError(f"target_position must be finite with shape (..., 3), got {target.shape}")
        q = self.clamp(seed_joints)
        batch = np.broadcast_shapes(target.shape[:-1], q.shape[:-1])
        target = np.broadcast_to(target, batch + (3,))
        q = np.array(np.broadcast_to(q, batch + (6,)))
        target_rotation = None
        if isinstance(orientation, str):
            if orientation != "down":
                raise ValueError(f"orientation must be 'down', a (3, 3) rotation or None, got {orientation!r}")
        elif orientation is not None:
            target_rotation = np.broadcast_to(np.asarray(orientation, dtype=np.float64), batch + (3, 3))
            if not np.all(np.isfinite(target_rotation)):
                raise ValueError("orientation rotation must be finite")

        def residual(joints):
            frames = self.forward_kinematics(joints)
            tcp = frames[..., 7, :, :]
            jac = self.jacobian(joints, frames)
            pos_err = target - tcp[..., :3, 3]
            if orientation is None:
                return pos_err, np.zeros(batch + (3,)), jac[..., :3, :], pos_err
            if target_rotation is None:  # pointing down: rotate z_tcp onto DOWN, spin is free
                z_axis = tcp[..., :3, 2]
                rot_err = np.cross(z_axis, DOWN)
                angle = np.arctan2(np.linalg.norm(rot_err, axis=-1), np.sum(z_axis * DOWN, -1))
                rot_err = rot_err * (angle / np.maximum(np.linalg.norm(rot_err, axis=-1), 1e-12))[..., None]
                project = np.eye(3) - z_axis[..., :, None] * z_axis[..., None, :]
                rot_jac = project @ jac[..., 3:, :]
            else:
                rot_err = rotation_log(target_rotation @ np.swapaxes(tcp[..., :3, :3], -1, -2))
                rot_jac = jac[..., 3:, :]
            error = np.concatenate([pos_err, rot_err], -1)
            return pos_err, rot_err, np.concatenate([jac[..., :3, :], rot_jac], -2), error

        pos_err, rot_err, jac, error = residual(q)
        cost = np.sum(error**2, -1)
        lam = np.full(batch, damping)
        iterations = 0
        for iterations in range(1, max_iterations + 1):
            done = (np.linalg.norm(pos_err, axis=-1) < position_tolerance) & \
                   (np.linalg.norm(rot_err, axis=-1) < orientation_tolerance)
            if np.all(done):
                break
            rows = jac.shape[-2]
            jjt = jac @ np.swapaxes(jac, -1, -2) + (lam**2)[..., None, None] * np.eye(rows)
            step = (np.swapaxes(jac, -1, -2) @ np.linalg.solve(jjt, error[..., None]))[..., 0]
            norm = np.max(np.abs(step), axis=-1, keepdims=True)
            step = step * np.minimum(1.0, max_step / np.maximum(norm, 1e-12))
            candidate = self.clamp(q + np.where(done[..., None], 0.0, step))
            c_pos, c_rot, c_jac, c_error = residual(candidate)
            c_cost = np.sum(c_error**2, -1)
            better = (c_cost < cost) & ~done
            # Accept improving steps and relax the damping; otherwise stiffen it and retry.
            q = np.where(better[..., None], candidate, q)
            pos_err = np.where(better[..., None], c_pos, pos_err)
            rot_err = np.where(better[..., None], c_rot, rot_err)
            error = np.where(better[..., None], c_error, error)
            jac = np.where(better[..., None, None], c_jac, jac)
            cost = np.where(better, c_cost, cost)
            lam = np.where(better, np.maximum(lam * 0.5, 1e-3), np.minimum(lam * 4.0, 1e3))
        position_error = np.linalg.norm(pos_err, axis=-1)
        orientation_error = np.linalg.norm(rot_err, axis=-1)
        success = (position_error < position_tolerance) & (orientation_error < orientation_tolerance)
        if not batch:
            return IKResult(q, bool(success), float(position_error), float(orientation_error), iterations)
        return IKResult(q, success, position_error, orientation_error, iterations)
