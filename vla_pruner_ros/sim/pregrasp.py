"""The "pregrasp" task: a long-horizon, yaw-aligned pre-grasp among look-alike cubes, with an
instruction that changes mid-episode.

Scene: four cubes, two colours drawn from red/green/blue, two cubes of each colour. The two cubes
of a colour are told apart only by where they stand: "left" is the one with the larger y (the
robot's left), at least ``MIN_PAIR_SEPARATION`` apart in y, so the instruction "grasp the left red
cube" needs the whole table (the fixed view); from above one cube the wrist view cannot say which
red cube it is. Cubes are drawn at random yaws.

Episode: the instruction names one cube; at a seeded step (``SWITCH_STEPS``, before the arm can
have finished) it is replaced by one naming another cube (the paper's Remark 1: an abrupt target
switch). Success, only for the cube named last: the gripper closed (>= ``CLOSED``) around the
cube's upper half (TCP within ``GRASP_RADIUS`` of its centre line, in a height band below its top)
with the fingers square to the cube's faces (yaw error <= ``GRASP_YAW_TOLERANCE`` modulo 90
degrees). The yaw of a 4.5 cm cube is a few pixels in the fixed view; it is read from the wrist
view, which the expert only uses (by construction of its stages) once it is above the cube.

``PregraspExpert`` solves it from privileged state (~100 % on the evaluation seeds): a funnel to a
hover point over the named cube, then (close above it) turning the gripper to the nearest
face-aligned yaw, descending once aligned and centred, closing; when the instruction changes it
opens, rises and goes to the new cube. It depends only on the current state and the current
instruction, so it also produces action chunks by rolling itself forward.
"""
from __future__ import annotations

import numpy as np

from .kinematics import XArm6Kinematics
from .scene import CUBE_COLOURS, CUBE_REGION, Cube, Scene

TASK_NAME = "pregrasp"
INSTRUCTION = "grasp the {colour} cube"  # colour = "<side> <colour>", e.g. "left red"
SIDES = ("left", "right")
MAX_STEPS = 160           # control steps (16 s at 0.1 s)
SWITCH_STEPS = (25, 45)   # inclusive range of the step at which the instruction changes
MIN_PAIR_SEPARATION = 0.09  # m in y between the two cubes of a colour
GRASP_RADIUS = 0.012        # m, TCP to the cube's vertical centre line
GRASP_BAND = (-0.03, 0.004)  # m, TCP height relative to the cube top
GRASP_YAW_TOLERANCE = np.deg2rad(8.0)
CLOSED = 0.8                # gripper fraction counted as closed


def cube_names(scene: "PregraspScene") -> tuple[str, ...]:
    return scene.names


class PregraspScene(Scene):
    """Table + four cubes (two colours x two) at seeded, non-overlapping positions and yaws.

    ``names[i]`` ("left red", ...) names ``cubes[i]``; ``cube(name)`` looks one up."""

    def __init__(self, seed: int = 0, cube_size: float = 0.045, min_cube_distance: float = 0.10,
                 cube_region=CUBE_REGION):
        super().__init__(seed, cube_size=cube_size, colours=("red",), min_cube_distance=min_cube_distance,
                         cube_region=cube_region)
        rng = np.random.default_rng([int(seed), 31])
        x_min, x_max, y_min, y_max = cube_region
        colours = list(CUBE_COLOURS)
        pair = [colours[i] for i in sorted(rng.choice(len(colours), 2, replace=False))]
        for _ in range(10_000):
            xy = rng.uniform((x_min, y_min), (x_max, y_max), (4, 2))
            if min(np.linalg.norm(xy[i] - xy[j]) for i in range(4) for j in range(i)) < min_cube_distance:
                continue
            # Cubes 0, 1 take the first colour, 2, 3 the second: each pair must be clearly left/right.
            if abs(xy[0, 1] - xy[1, 1]) < MIN_PAIR_SEPARATION or abs(xy[2, 1] - xy[3, 1]) < MIN_PAIR_SEPARATION:
                continue
            break
        else:
            raise ValueError("could not place the pre-grasp cubes; enlarge cube_region")
        yaws = rng.uniform(0.0, np.pi / 2, 4)
        cubes, names = [], []
        for k, colour in enumerate(pair):
            a, b = 2 * k, 2 * k + 1
            for i, side in ((a, "left" if xy[a, 1] > xy[b, 1] else "right"),
                            (b, "left" if xy[b, 1] > xy[a, 1] else "right")):
                cubes.append(Cube(colour, CUBE_COLOURS[colour], np.array([xy[i, 0], xy[i, 1], cube_size / 2]),
                                  self.cube_size, float(yaws[i])))
                names.append(f"{side} {colour}")
        self.cubes = tuple(cubes)
        self.names = tuple(names)

    def cube(self, name: str) -> Cube:
        if name in self.names:
            return self.cubes[self.names.index(name)]
        raise ValueError(f"no {name!r} cube in this scene; cubes are {list(self.names)}")

    def index(self, name: str) -> int:
        self.cube(name)
        return self.names.index(name)


def draw_episode(seed: int, target: str | None = None):
    """(scene, first target, switch step, second target) of a seeded episode."""
    scene = PregraspScene(seed)
    rng = np.random.default_rng([int(seed), 37])
    first = scene.names[int(rng.integers(4))]
    if target is not None:
        scene.cube(target)
        first = target
    others = [n for n in scene.names if n != first]
    second = others[int(rng.integers(len(others)))]
    switch = int(rng.integers(SWITCH_STEPS[0], SWITCH_STEPS[1] + 1))
    return scene, first, switch, second


def finger_yaw(kinematics: XArm6Kinematics, joints) -> float:
    """Direction (rad) of the line between the fingers (the TCP's y axis) in the table plane."""
    rotation = kinematics.tcp_pose(joints)[:3, :3]
    return float(np.arctan2(rotation[1, 1], rotation[0, 1]))


def yaw_error(cube_yaw: float, gripper_yaw: float) -> float:
    """Signed angle (rad, in [-pi/4, pi/4)) to turn the fingers square to the cube's faces."""
    quarter = np.pi / 2
    return float((cube_yaw - gripper_yaw + quarter / 2) % quarter - quarter / 2)


def grasp_state(kinematics: XArm6Kinematics, joints, cube: Cube) -> dict:
    tcp = kinematics.tcp_pose(joints)[:3, 3]
    return {"tcp": tcp,
            "horizontal": float(np.linalg.norm(tcp[:2] - cube.position[:2])),
            "height": float(tcp[2] - cube.top),
            "yaw_error": yaw_error(cube.yaw, finger_yaw(kinematics, joints))}


def grasped(kinematics: XArm6Kinematics, joints, gripper: float, cube: Cube) -> bool:
    """The success test: closed, centred, in the height band, square to the faces."""
    s = grasp_state(kinematics, joints, cube)
    return bool(gripper >= CLOSED and s["horizontal"] <= GRASP_RADIUS
                and GRASP_BAND[0] <= s["height"] <= GRASP_BAND[1]
                and abs(s["yaw_error"]) <= GRASP_YAW_TOLERANCE)


def down_rotation(yaw: float) -> np.ndarray:
    """TCP orientation pointing down with the fingers along ``yaw`` (rad)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[-s, c, 0.0], [c, s, 0.0], [0.0, 0.0, -1.0]])


class PregraspExpert:
    """Scripted solver of the pregrasp task (see the module doc); same interface as ScriptedExpert.

    Every label is a continuous function of the current state and instruction (so that a policy of
    limited precision is not trained on averages of contradicting labels, and DAgger can label any
    visited state):

    - height: the TCP goes to ``grasp_depth`` below the cube top plus a funnel term,
      ``xy_slope * max(0, horizontal - xy_deadzone) + yaw_slope * max(0, |yaw error| - yaw_deadzone)``,
      capped at the hover height plus ``approach_height``: far away it travels high, above the cube it
      sinks as it centres and squares up, with no threshold to cross;
    - yaw: it turns by ``yaw_gain * sin(4 e) / 4`` per control period (``e`` the yaw error to the
      nearest face, rate-limited by ``yaw_speed``): about ``e`` near alignment, and zero at +-45
      degrees, where the nearest face changes, so the turn label does not flip there; the turn fades
      in between ``align_radius`` (full) and ``2 align_radius`` (none) from the cube's axis (the yaw
      is read from the wrist view);
    - gripper: closes when centred (``close_radius``), square (``close_yaw``) and at most ``close_height``
      above the top; once closing (``gripper`` > 0.05, the state it is given) it keeps closing while
      the grasp stays inside the success test's tolerances (``keep_margin`` of them);
    - low (below the hover height) and more than ``rise_radius`` off the named cube (after the
      instruction changed), it rises straight up first.
    """

    def __init__(self, kinematics: XArm6Kinematics | None = None, control_period: float = 0.1,
                 max_speed: float = 0.12, max_joint_speed: float = 1.5, hover_height: float = 0.07,
                 grasp_depth: float = 0.015, approach_height: float = 0.10, xy_slope: float = 2.0,
                 xy_deadzone: float = 0.003, yaw_slope: float = 0.15, yaw_deadzone: float = np.deg2rad(1.5),
                 position_gain: float = 4.0, yaw_speed: float = 1.0, yaw_gain: float = 1.0,
                 align_radius: float = 0.03, rise_radius: float = 0.03, close_radius: float = 0.008,
                 close_yaw: float = np.deg2rad(5.0), close_height: float = 0.001, keep_margin: float = 0.9):
        for name, value in (("control_period", control_period), ("max_speed", max_speed),
                            ("max_joint_speed", max_joint_speed), ("yaw_speed", yaw_speed),
                            ("align_radius", align_radius)):
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.kinematics = kinematics or XArm6Kinematics()
        self.control_period = float(control_period)
        self.max_speed = float(max_speed)
        self.max_joint_speed = float(max_joint_speed)
        self.hover_height = float(hover_height)
        self.grasp_depth = float(grasp_depth)
        self.approach_height = float(approach_height)
        self.xy_slope = float(xy_slope)
        self.xy_deadzone = float(xy_deadzone)
        self.yaw_slope = float(yaw_slope)
        self.yaw_deadzone = float(yaw_deadzone)
        self.position_gain = float(position_gain)
        self.yaw_speed = float(yaw_speed)
        self.yaw_gain = float(yaw_gain)
        self.align_radius = float(align_radius)
        self.rise_radius = float(rise_radius)
        self.close_radius = float(close_radius)
        self.close_yaw = float(close_yaw)
        self.close_height = float(close_height)
        self.keep_margin = float(keep_margin)

    def goal_height(self, horizontal: float, yaw_err: float, cube: Cube) -> float:
        """The funnel: the TCP height the expert heads for at this horizontal and yaw error."""
        lift = (self.xy_slope * max(0.0, horizontal - self.xy_deadzone)
                + self.yaw_slope * max(0.0, abs(yaw_err) - self.yaw_deadzone))
        return cube.top - self.grasp_depth + min(self.grasp_depth + self.hover_height + self.approach_height, lift)

    def yaw_turn(self, horizontal: float, yaw_err: float) -> float:
        """Turn (rad) for the next control period: continuous in the yaw error, also at +-45 deg."""
        fade = float(np.clip(2.0 - horizontal / self.align_radius, 0.0, 1.0))
        limit = self.yaw_speed * self.control_period
        return fade * float(np.clip(self.yaw_gain * np.sin(4.0 * yaw_err) / 4.0, -limit, limit))

    def gripper_command(self, state: dict, gripper: float) -> float:
        horizontal, height, yaw_err = state["horizontal"], state["height"], abs(state["yaw_error"])
        if horizontal < self.close_radius and yaw_err < self.close_yaw and height < self.close_height:
            return 1.0
        m = self.keep_margin
        keep = (gripper > 0.05 and horizontal < m * GRASP_RADIUS and yaw_err < m * GRASP_YAW_TOLERANCE
                and m * GRASP_BAND[0] <= height <= m * GRASP_BAND[1])
        return 1.0 if keep else 0.0

    def next_action(self, episode, joints, gripper: float = 0.0) -> np.ndarray:
        """(7,) joint targets for the next control period + gripper command, for ``episode.target``."""
        q = np.asarray(joints, dtype=np.float64)
        if q.shape != (6,) or not np.all(np.isfinite(q)):
            raise ValueError(f"joints must be 6 finite values, got {joints!r}")
        cube = episode.scene.cube(episode.target)
        state = grasp_state(self.kinematics, q, cube)
        tcp, horizontal, yaw_err = state["tcp"], state["horizontal"], state["yaw_error"]
        goal = np.array([cube.position[0], cube.position[1], self.goal_height(horizontal, yaw_err, cube)])
        hover = cube.top + self.hover_height
        if tcp[2] < hover - 0.02 and horizontal > self.rise_radius:
            goal = np.array([tcp[0], tcp[1], hover])  # low but off the cube (a new target): rise first
        delta = goal - tcp
        distance = np.linalg.norm(delta)
        speed = min(self.max_speed, self.position_gain * distance)
        step = delta * (speed * self.control_period / distance) if distance > 1e-9 else np.zeros(3)
        yaw_now = finger_yaw(self.kinematics, q)
        turn = self.yaw_turn(horizontal, yaw_err)
        solution = self.kinematics.inverse_kinematics(tcp + step, q, orientation=down_rotation(yaw_now + turn),
                                                      max_iterations=50)
        joint_step = solution.joints - q
        largest = np.max(np.abs(joint_step))
        limit = self.max_joint_speed * self.control_period
        if largest > limit:
            joint_step *= limit / largest
        return np.concatenate([q + joint_step, [self.gripper_command(state, float(gripper))]])

    def action_chunk(self, episode, joints, gripper: float = 0.0, chunk_size: int = 8) -> np.ndarray:
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
