"""Language-conditioned reaching tasks and a scripted expert that solves them.

Tasks (``TASKS``): "above" - move the gripper's TCP into a band above the named cube; "touch" -
come down from above and touch the cube's top face with the (closed) fingertips; "above_switch" -
"above" whose instruction names another cube at a seeded step on the way (``REACH_SWITCH_STEPS``;
the paper's Remark 1 on the reach policies: only the cube named last counts). Cubes do not
collide with anything: success is purely a test on the TCP position. "pregrasp" (sim/pregrasp.py)
- a long-horizon, yaw-aligned grasp pose among look-alike cubes with an instruction that changes
mid-episode; its success also tests the gripper's yaw and closure (``episode_success``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import pregrasp
from .kinematics import XArm6Kinematics
from .scene import Scene

TASKS = {
    "above": "move the gripper above the {colour} cube",
    "touch": "move the gripper above the {colour} cube then touch it",
    pregrasp.TASK_NAME: pregrasp.INSTRUCTION,
}
TASKS["above_switch"] = TASKS["above"]  # "above" with a second instruction on the way (make_episode)
REACH_TASKS = ("above", "touch", "above_switch")  # success is a test on the TCP position alone (``success``)
# control steps (0.1 s each at the default period)
MAX_STEPS = {"above": 60, "touch": 80, "above_switch": 80, pregrasp.TASK_NAME: pregrasp.MAX_STEPS}
# "above_switch": inclusive range of the control step at which the instruction changes. The reach
# policies need ~20 steps (5 calls of 4 executed actions) to reach a cube, so the change comes after
# 2-4 calls, on the way to the first cube; a pruner that resets its history then runs its warm-up again.
REACH_SWITCH_STEPS = (8, 16)


class SuccessRegion(NamedTuple):
    max_horizontal: float  # m, TCP to cube centre in the table plane
    min_height: float      # m, TCP height above the cube's top face
    max_height: float


SUCCESS_REGIONS = {
    "above": SuccessRegion(0.025, 0.03, 0.10),
    "touch": SuccessRegion(0.02, -0.005, 0.015),
}
SUCCESS_REGIONS["above_switch"] = SUCCESS_REGIONS["above"]


class Episode(NamedTuple):
    scene: Scene
    target: str       # name of the cube the instruction names (its colour; "left red" in pregrasp)
    instruction: str
    task: str         # key of TASKS
    # The instruction changes at control step ``switch_step`` (None: never) to name ``next_target``.
    switch_step: int | None = None
    next_target: str | None = None
    next_instruction: str | None = None

    def switched(self, step: int) -> bool:
        return self.switch_step is not None and step >= self.switch_step

    def at(self, step: int) -> "Episode":
        """The episode as seen at control step ``step``: target and instruction of that moment."""
        if self.switched(step):
            return self._replace(target=self.next_target, instruction=self.next_instruction)
        return self


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")


# The scene each task renders, built from a scene seed (the ROS sim cameras and the demo's judge).
SCENES = {"above": Scene, pregrasp.TASK_NAME: pregrasp.PregraspScene}


def make_scene(task: str, scene_seed: int) -> Scene:
    """The scene of ``task`` ("above" or "pregrasp") from ``scene_seed``; ValueError naming the choices."""
    if task not in SCENES:
        raise ValueError(f"task must be one of {', '.join(SCENES)}, got {task!r}")
    return SCENES[task](seed=scene_seed)


def make_episode(seed: int, task: str = "above", target: str | None = None) -> Episode:
    """A seeded scene and a target cube (drawn from the seed unless given) with its instruction."""
    _check_task(task)
    if task == pregrasp.TASK_NAME:
        scene, first, switch, second = pregrasp.draw_episode(seed, target)
        return Episode(scene, first, TASKS[task].format(colour=first), task, switch, second,
                       TASKS[task].format(colour=second))
    scene = Scene(seed)
    colours = [cube.colour for cube in scene.cubes]
    if target is None:
        target = colours[int(np.random.default_rng([int(seed), 7]).integers(len(colours)))]
    elif target not in colours:
        raise ValueError(f"target must be one of the scene's cube colours {colours}, got {target!r}")
    if task == "above_switch":
        # The first target is the "above" episode's of the same seed; the second and the step are
        # drawn from their own stream so they do not change the first.
        rng = np.random.default_rng([int(seed), 41])
        others = [c for c in colours if c != target]
        second = others[int(rng.integers(len(others)))]
        switch = int(rng.integers(REACH_SWITCH_STEPS[0], REACH_SWITCH_STEPS[1] + 1))
        return Episode(scene, target, TASKS[task].format(colour=target), task, switch, second,
                       TASKS[task].format(colour=second))
    return Episode(scene, target, TASKS[task].format(colour=target), task)


def success(tcp_position, scene: Scene, target: str, task: str = "above") -> bool:
    """Whether the TCP is inside the task's region relative to the target cube."""
    _check_task(task)
    if task not in REACH_TASKS:
        raise ValueError(f"task {task!r}: success depends on more than the TCP position; use episode_success")
    tcp = np.asarray(tcp_position, dtype=np.float64)
    if tcp.shape != (3,) or not np.all(np.isfinite(tcp)):
        raise ValueError(f"tcp_position must be 3 finite values, got {tcp_position!r}")
    cube = scene.cube(target)
    region = SUCCESS_REGIONS[task]
    horizontal = np.linalg.norm(tcp[:2] - cube.position[:2])
    height = tcp[2] - cube.top
    return bool(horizontal <= region.max_horizontal and region.min_height <= height <= region.max_height)


class ScriptedExpert:
    """Reaches the target cube from above, one joint target per control period.

    The TCP follows a funnel toward a goal point over the cube: while it is far horizontally it
    stays ``approach_height`` above the goal, and it descends as the horizontal error shrinks,
    so the last part of the motion is vertical. Cartesian speed is at most ``max_speed`` and slows
    down near the goal; each step is turned into joints by IK ("gripper pointing down", seeded
    from the current joints) and scaled so no joint moves faster than ``max_joint_speed``. The
    policy depends only on the current state, so it also produces action chunks by rolling
    itself forward assuming each target is reached (true while targets respect the arm's
    velocity limit).
    """

    def __init__(self, kinematics: XArm6Kinematics | None = None, control_period: float = 0.1,
                 max_speed: float = 0.15, max_joint_speed: float = 1.5, approach_height: float = 0.10,
                 funnel_slope: float = 1.5, position_gain: float = 4.0,
                 goal_heights: dict[str, float] | None = None):
        for name, value in (("control_period", control_period), ("max_speed", max_speed),
                            ("max_joint_speed", max_joint_speed), ("funnel_slope", funnel_slope),
                            ("position_gain", position_gain)):
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not np.isfinite(approach_height) or approach_height < 0:
            raise ValueError(f"approach_height must be >= 0 m, got {approach_height}")
        self.kinematics = kinematics or XArm6Kinematics()
        self.control_period = float(control_period)
        self.max_speed = float(max_speed)
        self.max_joint_speed = float(max_joint_speed)
        self.approach_height = float(approach_height)
        self.funnel_slope = float(funnel_slope)
        self.position_gain = float(position_gain)
        # Goal TCP height above the cube top: the middle of each task's success band.
        self.goal_heights = dict(goal_heights or {"above": 0.065, "above_switch": 0.065, "touch": 0.004})

    def goal(self, episode: Episode) -> np.ndarray:
        cube = episode.scene.cube(episode.target)
        return np.array([cube.position[0], cube.position[1], cube.top + self.goal_heights[episode.task]])

    def next_action(self, episode: Episode, joints, gripper: float = 0.0) -> np.ndarray:
        """(7,) absolute joint targets for the next control period + gripper command (0 open, 1 closed)."""
        q = np.asarray(joints, dtype=np.float64)
        if q.shape != (6,) or not np.all(np.isfinite(q)):
            raise ValueError(f"joints must be 6 finite values, got {joints!r}")
        goal = self.goal(episode)
        tcp = self.kinematics.tcp_pose(q)[:3, 3]
        horizontal = np.linalg.norm(goal[:2] - tcp[:2])
        waypoint = np.array([goal[0], goal[1], goal[2] + min(self.approach_height, self.funnel_slope * horizontal)])
        delta = waypoint - tcp
        distance = np.linalg.norm(delta)
        speed = min(self.max_speed, self.position_gain * distance)
        step = delta * (speed * self.control_period / distance) if distance > 1e-9 else np.zeros(3)
        solution = self.kinematics.inverse_kinematics(tcp + step, q, orientation="down", max_iterations=50)
        joint_step = solution.joints - q
        largest = np.max(np.abs(joint_step))
        limit = self.max_joint_speed * self.control_period
        if largest > limit:
            joint_step *= limit / largest
        # Fingers closed for touching (once over the cube), open otherwise.
        grip = 1.0 if episode.task == "touch" and horizontal < 0.05 else 0.0
        return np.concatenate([q + joint_step, [grip]])

    def action_chunk(self, episode: Episode, joints, gripper: float = 0.0, chunk_size: int = 8) -> np.ndarray:
        """(chunk_size, 7): the next ``chunk_size`` actions, each from the previous one's joints."""
        if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        actions = []
        q, grip = np.asarray(joints, dtype=np.float64), float(gripper)
        for _ in range(chunk_size):
            action = self.next_action(episode, q, grip)
            actions.append(action)
            q, grip = action[:6], action[6]
        return np.stack(actions)


def episode_success(episode: Episode, kinematics: XArm6Kinematics, joints, gripper: float, step: int) -> bool:
    """Whether the arm state solves ``episode`` at control step ``step`` (any task). In an episode
    whose instruction changes, only the cube named last counts, and only after the change."""
    if episode.switch_step is not None and not episode.switched(step):
        return False
    current = episode.at(step)
    if episode.task == pregrasp.TASK_NAME:
        return pregrasp.grasped(kinematics, joints, gripper, current.scene.cube(current.target))
    return success(kinematics.tcp_pose(joints)[:3, 3], current.scene, current.target, current.task)


def make_expert(task: str, kinematics: XArm6Kinematics | None = None, control_period: float = 0.1,
                max_joint_speed: float = 1.5):
    """The scripted expert of ``task`` (``action_chunk(episode.at(step), joints, gripper, n)``)."""
    _check_task(task)
    if task == pregrasp.TASK_NAME:
        return pregrasp.PregraspExpert(kinematics, control_period=control_period, max_joint_speed=max_joint_speed)
    return ScriptedExpert(kinematics, control_period=control_period, max_joint_speed=max_joint_speed)
