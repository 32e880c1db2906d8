"""The robot side of the policy, read from ``config/xarm6.yaml``: joints, limits, and how
action dimensions and proprioception map to them."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml


def default_config_dir() -> Path:
    """``config/`` of the installed package (ament index) or of the source checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory("vla_pruner_ros")) / "config"
        if share.is_dir():
            return share
    except Exception:  # not built with colcon, or ament_index not importable
        pass
    return Path(__file__).resolve().parents[2] / "config"


@dataclass(frozen=True)
class RobotConfig:
    joints: tuple[str, ...]
    lower: np.ndarray  # (J,) rad
    upper: np.ndarray  # (J,) rad
    max_joint_velocity: float  # rad/s
    trajectory_topic: str
    gripper_joint: str
    gripper_topic: str
    gripper_scale: float
    gripper_offset: float
    gripper_limits: tuple[float, float]
    joint_action_indices: tuple[int, ...]
    gripper_action_index: int | None
    proprio_layout: tuple[str, ...]

    @property
    def action_dim(self) -> int:
        used = list(self.joint_action_indices)
        if self.gripper_action_index is not None:
            used.append(self.gripper_action_index)
        return max(used) + 1

    def gripper_command(self, action_value: float) -> float:
        low, high = self.gripper_limits
        return float(min(high, max(low, self.gripper_offset + self.gripper_scale * action_value)))

    def gripper_action_value(self, position: float) -> float:
        return (position - self.gripper_offset) / self.gripper_scale

    def proprio(self, joint_positions: np.ndarray, gripper_position: float) -> np.ndarray:
        """Proprio vector in ``proprio_layout`` order from joint positions (in ``joints`` order)."""
        values = []
        for name in self.proprio_layout:
            if name == "gripper":
                values.append(self.gripper_action_value(gripper_position))
            else:
                values.append(float(joint_positions[self.joints.index(name)]))
        return np.asarray(values, dtype=np.float64)


def _require(mapping: dict, key: str, where: str):
    if key not in mapping:
        raise ValueError(f"{where}: missing key {key!r}")
    return mapping[key]


def load_robot_config(path: str | os.PathLike | None = None) -> RobotConfig:
    """Read and validate a robot config file (default: ``config/xarm6.yaml``)."""
    path = Path(path) if path else default_config_dir() / "xarm6.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"robot config {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ValueError(f"robot config {path} is not valid YAML: {error}") from None
    where = f"robot config {path}"
    robot = _require(data, "robot", where)
    gripper = data.get("gripper") or {}
    action = _require(data, "action", where)
    joints = tuple(_require(robot, "joints", where))
    limits = _require(robot, "position_limits", where)
    lower, upper = [], []
    for name in joints:
        if name not in limits:
            raise ValueError(f"{where}: position_limits has no entry for joint {name!r}")
        low, high = (float(v) for v in limits[name])
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"{where}: position_limits[{name!r}] = {limits[name]} must be finite with low < high")
        lower.append(low)
        upper.append(high)
    max_velocity = float(_require(robot, "max_joint_velocity", where))
    if not (math.isfinite(max_velocity) and max_velocity > 0):
        raise ValueError(f"{where}: max_joint_velocity must be > 0, got {max_velocity}")
    joint_indices = tuple(int(i) for i in _require(action, "joint_indices", where))
    if len(joint_indices) != len(joints):
        raise ValueError(f"{where}: action.joint_indices has {len(joint_indices)} entries for {len(joints)} joints")
    gripper_index = action.get("gripper_index")
    gripper_index = None if gripper_index is None else int(gripper_index)
    used = list(joint_indices) + ([gripper_index] if gripper_index is not None else [])
    if len(set(used)) != len(used) or min(used) < 0:
        raise ValueError(f"{where}: action indices {used} must be distinct and >= 0")
    layout = tuple((data.get("proprio") or {}).get("layout") or (*joints, "gripper"))
    for name in layout:
        if name != "gripper" and name not in joints:
            raise ValueError(f"{where}: proprio.layout names {name!r}, which is not a joint nor 'gripper'")
    g_limits = tuple(float(v) for v in gripper.get("position_limits", (0.0, 1.0)))
    return RobotConfig(
        joints=joints,
        lower=np.asarray(lower),
        upper=np.asarray(upper),
        max_joint_velocity=max_velocity,
        trajectory_topic=str(robot.get("trajectory_topic", "/xarm6_traj_controller/joint_trajectory")),
        gripper_joint=str(gripper.get("joint", "drive_joint")),
        gripper_topic=str(gripper.get("trajectory_topic", "/xarm_gripper_traj_controller/joint_trajectory")),
        gripper_scale=float(gripper.get("scale", 1.0)),
        gripper_offset=float(gripper.get("offset", 0.0)),
        gripper_limits=(g_limits[0], g_limits[1]),
        joint_action_indices=joint_indices,
        gripper_action_index=gripper_index,
        proprio_layout=layout,
    )
