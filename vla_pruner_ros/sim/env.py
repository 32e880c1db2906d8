"""A hardware-free closed-loop environment: SimArm + Scene + Renderer + task, no ROS.

``SimEnv.step`` takes absolute joint targets (6 joints + gripper 0..1) for the next control
period and sends them the way the ROS bridge does: a one-point trajectory reached at
``time_from_start = control_period``, followed by the velocity-limited arm at ``physics_rate``.
"""
from __future__ import annotations

import numpy as np

from .kinematics import HOME_JOINTS, URDF_VELOCITY_LIMIT, XArm6Kinematics
from .render import Renderer
from .robot import SimArm
from . import pregrasp
from .task import MAX_STEPS, Episode, ScriptedExpert, episode_success, make_episode, make_expert


class SimEnv:
    def __init__(self, seed: int = 0, image_size: tuple[int, int] | None = (224, 224),
                 control_period: float = 0.1, physics_rate: float = 100.0, task: str = "above",
                 max_steps: int | None = None, init_joint_noise: float = 0.05,
                 velocity_limit: float = URDF_VELOCITY_LIMIT):
        """image_size: (height, width) of both views, or None to skip rendering (fast rollouts)."""
        if not np.isfinite(control_period) or control_period <= 0:
            raise ValueError(f"control_period must be > 0 s, got {control_period}")
        if not np.isfinite(physics_rate) or physics_rate <= 0:
            raise ValueError(f"physics_rate must be > 0 Hz, got {physics_rate}")
        if max_steps is not None and (not isinstance(max_steps, (int, np.integer)) or max_steps < 1):
            raise ValueError(f"max_steps must be a positive integer or None, got {max_steps!r}")
        if not np.isfinite(init_joint_noise) or init_joint_noise < 0:
            raise ValueError(f"init_joint_noise must be >= 0 rad, got {init_joint_noise}")
        self.kinematics = XArm6Kinematics(velocity_limit=velocity_limit)
        self.arm = SimArm(self.kinematics)
        self.renderer = None
        if image_size is not None:
            if len(image_size) != 2:
                raise ValueError(f"image_size must be (height, width), got {image_size!r}")
            height, width = image_size
            self.renderer = Renderer(width=width, height=height)
        self.control_period = float(control_period)
        self.physics_dt = 1.0 / float(physics_rate)
        self.default_task = task
        self.max_steps_override = max_steps
        self.init_joint_noise = float(init_joint_noise)
        self._seeds = np.random.default_rng(seed)
        self.reset()

    @property
    def max_steps(self) -> int:
        return self.max_steps_override or MAX_STEPS[self.episode.task]

    def reset(self, seed: int | None = None, target: str | None = None, task: str | None = None) -> dict:
        """Start an episode (seed: the scene/start seed; None draws one from the env's seed)."""
        if seed is None:
            seed = int(self._seeds.integers(2**31 - 1))
        self.episode_seed = int(seed)
        self.episode: Episode = make_episode(self.episode_seed, task or self.default_task, target)
        rng = np.random.default_rng([self.episode_seed, 11])
        start = HOME_JOINTS + rng.uniform(-1.0, 1.0, 6) * self.init_joint_noise
        self.arm.reset(start, gripper=0.0)
        self.step_count = 0
        self.done = False
        return self.observation()

    @property
    def current(self) -> Episode:
        """The episode as of now: its target and instruction after a mid-episode change."""
        return self.episode.at(self.step_count)

    def tcp_position(self) -> np.ndarray:
        return self.kinematics.tcp_pose(self.arm.joints)[:3, 3]

    def observation(self) -> dict:
        obs = {
            "joints": self.arm.joints.astype(np.float32),
            "gripper": float(self.arm.gripper),
            "proprio": self.arm.proprio.astype(np.float32),
            "instruction": self.current.instruction,
        }
        if self.renderer is not None:
            frames = self.kinematics.forward_kinematics(self.arm.joints)
            obs["images"] = self.renderer.render_views(self.episode.scene, frames, self.arm.gripper)
        return obs

    def step(self, joint_targets) -> tuple[dict, bool, bool, dict]:
        """Apply (7,) absolute targets for one control period -> (obs, success, done, info)."""
        if self.done:
            raise RuntimeError("the episode is over (success or step limit); call reset()")
        action = np.asarray(joint_targets, dtype=np.float64)
        if action.shape != (7,):
            raise ValueError(f"joint_targets must have shape (7,) = 6 joints + gripper, got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"joint_targets must be finite, got {action}")
        self.arm.set_trajectory([self.control_period], action[None, :6], gripper=[action[6]])
        self.arm.advance(self.control_period, self.physics_dt)
        self.step_count += 1
        tcp = self.tcp_position()
        episode = self.current
        reached = episode_success(self.episode, self.kinematics, self.arm.joints, self.arm.gripper, self.step_count)
        timeout = self.step_count >= self.max_steps
        self.done = reached or timeout
        cube = episode.scene.cube(episode.target)
        info = {
            "step": self.step_count,
            "tcp_position": tcp,
            "horizontal_distance": float(np.linalg.norm(tcp[:2] - cube.position[:2])),
            "height_above_target": float(tcp[2] - cube.top),
            "timeout": bool(timeout and not reached),
            "target": episode.target,
            "task": episode.task,
            "instruction": episode.instruction,
            "yaw_error": pregrasp.yaw_error(cube.yaw, pregrasp.finger_yaw(self.kinematics, self.arm.joints)),
            "gripper": float(self.arm.gripper),
        }
        return self.observation(), reached, self.done, info


def run_expert_episode(env: SimEnv, seed: int | None = None, target: str | None = None,
                       task: str | None = None, chunk_size: int = 8,
                       expert=None) -> dict:
    """Roll the scripted expert out for one episode, recording what a dataset needs.

    Returns {"seed", "instruction", "target", "task", "observations": [obs_t], "actions": (T, 7)
    executed targets, "action_chunks": (T, chunk_size, 7) the expert's chunk at each step
    (chunk[0] == action), "success": bool, "num_steps": T}. obs_t is the observation the action
    at step t was computed from. ``expert``: default the task's (``make_expert``); it always sees
    the instruction of the moment (``env.current``).
    """
    obs = env.reset(seed=seed, target=target, task=task)
    if expert is None:
        expert = make_expert(env.episode.task, env.kinematics, control_period=env.control_period)
    observations, actions, chunks = [], [], []
    reached = False
    while not env.done:
        chunk = expert.action_chunk(env.current, env.arm.joints, env.arm.gripper, chunk_size)
        observations.append(obs)
        actions.append(chunk[0])
        chunks.append(chunk)
        obs, reached, _, _ = env.step(chunk[0])
    return {
        "seed": env.episode_seed,
        "instruction": env.episode.instruction,
        "target": env.episode.target,
        "task": env.episode.task,
        "observations": observations,
        "actions": np.stack(actions),
        "action_chunks": np.stack(chunks),
        "success": bool(reached),
        "num_steps": len(actions),
    }
