"""Hardware-free simulation of the xArm6 workcell (pure Python/NumPy/OpenCV, no ROS).

kinematics: XArm6Kinematics (FK, Jacobian, IK); robot: SimArm (trajectory follower);
scene: Scene (table, cubes, cameras); render: Renderer (OpenCV views); task: tasks, success,
ScriptedExpert; pregrasp: the long-horizon pre-grasp task (look-alike cubes, yaw alignment, an
instruction that changes mid-episode) and its expert; env: SimEnv and run_expert_episode for
training/evaluation loops. ``make_expert(task)`` gives the scripted expert of any task.
"""
from .kinematics import (FRAME_NAMES, HOME_JOINTS, JOINT_NAMES, MOVEIT_VELOCITY_LIMIT,
                         URDF_VELOCITY_LIMIT, XARM_GRIPPER_TCP_OFFSET, IKResult, XArm6Kinematics)
from .robot import SimArm
from .scene import CUBE_COLOURS, Camera, Cube, Scene, look_at
from .render import Renderer
from .task import (MAX_STEPS, SUCCESS_REGIONS, TASKS, Episode, ScriptedExpert, episode_success, make_episode,
                   make_expert, success)
from .pregrasp import PregraspExpert, PregraspScene
from .env import SimEnv, run_expert_episode

__all__ = [
    "FRAME_NAMES", "HOME_JOINTS", "JOINT_NAMES", "MOVEIT_VELOCITY_LIMIT", "URDF_VELOCITY_LIMIT",
    "XARM_GRIPPER_TCP_OFFSET", "IKResult", "XArm6Kinematics", "SimArm", "CUBE_COLOURS", "Camera",
    "Cube", "Scene", "look_at", "Renderer", "MAX_STEPS", "SUCCESS_REGIONS", "TASKS", "Episode",
    "ScriptedExpert", "make_episode", "success", "SimEnv", "run_expert_episode", "episode_success",
    "make_expert", "PregraspExpert", "PregraspScene",
]
