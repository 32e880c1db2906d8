"""What the demo's console says about the named cube, without ROS: which cube an instruction names,
the per-step distance (and, for "pregrasp", grasp) text, the first step at which the task's eval-sim
success test holds, the closest pass and the summary line. ``tools/monitor.py`` only turns
/joint_states and the instruction topic into calls of ``TargetTracker``."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from vla_pruner_ros.sim import pregrasp
from vla_pruner_ros.sim.kinematics import XArm6Kinematics
from vla_pruner_ros.sim.robot import GRIPPER_CLOSED_ANGLE
from vla_pruner_ros.sim.scene import Scene
from vla_pruner_ros.sim.task import SUCCESS_REGIONS, make_scene, success

# "move the gripper above the red cube" (above) and "grasp the left red cube" (pregrasp).
_NAMED = re.compile(r"\b(?:(left|right)\s+)?(red|green|blue)\b")


def gripper_fraction(angle: float) -> float:
    """The gripper joint's angle (rad, drive_joint: 0 open) as SimEnv's 0 (open) .. 1 (closed)."""
    return min(1.0, max(0.0, float(angle) / GRIPPER_CLOSED_ANGLE))


def named_cube(instruction: str, scene: Scene, task: str) -> str | None:
    """The name of the scene's cube that ``instruction`` names: its colour for "above" (the first
    colour word), "<side> <colour>" for "pregrasp" (the first "left|right <colour>" of the scene);
    None when it names none of them."""
    for match in _NAMED.finditer(instruction.lower()):
        side, colour = match.groups()
        if task == "above":
            return colour
        name = f"{side} {colour}" if side else None
        if name in getattr(scene, "names", ()):
            return name
    return None


@dataclass(frozen=True)
class Judgement:
    """The TCP relative to the named cube at one joint state, and whether the task's success test holds."""
    task: str
    cube: str          # the cube's name ("red"; "left red" in pregrasp)
    horizontal: float  # m, TCP to the cube's vertical centre line
    height: float      # m, TCP above the cube's top face
    yaw_error: float   # rad, fingers to the nearest cube face (pregrasp's test; reported for both)
    gripper: float     # 0 open .. 1 closed
    reached: bool      # eval-sim's success test: "above"'s region, or pregrasp.grasped


def judge(task: str, scene: Scene, kinematics: XArm6Kinematics, cube_name: str, joints, gripper: float) -> Judgement:
    """Where the TCP is relative to ``cube_name`` and whether ``task``'s success test holds there."""
    cube = scene.cube(cube_name)
    state = pregrasp.grasp_state(kinematics, np.asarray(joints, dtype=np.float64), cube)
    if task == "above":
        reached = success(state["tcp"], scene, cube.colour, "above")
    elif task == pregrasp.TASK_NAME:
        reached = pregrasp.grasped(kinematics, joints, gripper, cube)
    else:
        raise ValueError(f"task must be above or {pregrasp.TASK_NAME}, got {task!r}")
    return Judgement(task, cube_name, state["horizontal"], state["height"], state["yaw_error"], float(gripper),
                     bool(reached))


def _tenths(value: float) -> float:
    """``value`` to one decimal, with no "-0.0"."""
    return round(float(value), 1) + 0.0


def _degrees(angle: float) -> float:
    return _tenths(np.rad2deg(angle))


def step_text(j: Judgement) -> str:
    """The part of a step line about the named cube."""
    if j.task == "above":
        done = "  reached" if j.reached else ""
        return f" | {j.cube} cube: {j.horizontal * 100:5.1f} cm away, {j.height * 100:5.1f} cm above{done}"
    done = "  grasped" if j.reached else ""
    return (f" | {j.cube} cube: {_tenths(j.horizontal * 100):4.1f} cm off axis, "
            f"{_tenths(j.height * 100):4.1f} cm above its top, "
            f"yaw {_degrees(j.yaw_error):4.1f} deg, gripper {j.gripper:.2f}{done}")


def _pregrasp_test() -> str:
    return (f"within {pregrasp.GRASP_RADIUS * 100:g} cm of its axis, square within "
            f"{np.rad2deg(pregrasp.GRASP_YAW_TOLERANCE):g} deg, gripper closed")


def summary_line(first: Judgement | None, reached_at: int | None, closest: Judgement) -> str:
    """The demo's verdict on one instruction: the first step the success test held (``first`` is the
    judgement there), else the closest pass (least horizontal distance to the cube's axis)."""
    if closest.task == "above":
        radius = f"{SUCCESS_REGIONS['above'].max_horizontal * 100:g} cm"
        if reached_at is not None:
            return (f"[demo] target reached: the {closest.cube} cube at step {reached_at} (gripper within {radius} "
                    f"at hover height, eval-sim's success test); closest {closest.horizontal * 100:.1f} cm")
        return (f"[demo] target not reached: closest {closest.horizontal * 100:.1f} cm from the {closest.cube} cube "
                f"(success: within {radius} at hover height)")
    if reached_at is not None:
        return (f"[demo] target reached: grasped the {first.cube} cube at step {reached_at} (pregrasp success test: "
                f"{_pregrasp_test()}); closest {closest.horizontal * 100:.1f} cm")
    low, high = pregrasp.GRASP_BAND
    return (f"[demo] target not reached: closest {closest.horizontal * 100:.1f} cm off the {closest.cube} cube's axis, "
            f"there {_tenths(closest.height * 100):.1f} cm above its top, yaw {_degrees(closest.yaw_error):.1f} deg, "
            f"gripper {closest.gripper:.2f} (pregrasp success test: {_pregrasp_test()} (>= {pregrasp.CLOSED:g}), "
            f"{-low * 100:g} cm below to {high * 100:g} cm above its top)")


class TargetTracker:
    """Per instruction: the first step at which the task's success test held and the closest pass."""

    def __init__(self, task: str = "above", scene_seed: int = 0, kinematics: XArm6Kinematics | None = None):
        self.task = task
        self.scene = make_scene(task, scene_seed)
        self.kinematics = kinematics or XArm6Kinematics()
        self.reset()

    def reset(self) -> None:
        """A new instruction: forget the previous one's success and closest pass."""
        self.reached_at: int | None = None
        self.first: Judgement | None = None
        self.closest: Judgement | None = None

    def step(self, instruction: str, joints, gripper: float, step_index: int) -> str:
        """Judge one policy step; the text for its line ("" when no cube is named or no joints are known)."""
        name = named_cube(instruction, self.scene, self.task)
        if name is None or joints is None:
            return ""
        j = judge(self.task, self.scene, self.kinematics, name, joints, gripper)
        if j.reached and self.reached_at is None:
            self.reached_at, self.first = step_index, j
        if self.closest is None or j.horizontal < self.closest.horizontal:
            self.closest = j
        return step_text(j)

    def summary(self) -> str | None:
        return None if self.closest is None else summary_line(self.first, self.reached_at, self.closest)
