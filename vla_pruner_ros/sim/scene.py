"""The simulated workcell: a table, coloured cubes at seeded positions, and two cameras.

World frame = xArm6 base frame: z up, x forward, the robot stands on the table top at z = 0.
Camera poses are camera-to-world 4x4 matrices in the OpenCV convention (x right, y down,
z forward). The fixed camera is attached to the world; the wrist camera to ``link6``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .kinematics import FRAME_NAMES

CUBE_COLOURS = {  # RGB, saturated so the instruction's colour is unambiguous in both views
    "red": (205, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 70, 210),
}
TABLE_EXTENT = (-0.35, 0.85, -0.60, 0.60)  # x_min, x_max, y_min, y_max (m); top at z = 0
CUBE_REGION = (0.28, 0.52, -0.22, 0.22)    # where cube centres are sampled (reachable, in view)
LIGHT_DIRECTION = np.array([0.25, -0.35, 1.0]) / np.linalg.norm([0.25, -0.35, 1.0])  # toward the light


def look_at(eye, target, image_down=(0.0, 0.0, -1.0)) -> np.ndarray:
    """Camera-to-world pose at ``eye`` looking at ``target``; ``image_down`` ~ the image's +y."""
    eye, target = np.asarray(eye, dtype=np.float64), np.asarray(target, dtype=np.float64)
    forward = target - eye
    norm = np.linalg.norm(forward)
    if norm < 1e-9:
        raise ValueError("look_at: eye and target coincide")
    return _pose_from_axes(eye, forward / norm, np.asarray(image_down, dtype=np.float64))


def _pose_from_axes(position, forward, image_down) -> np.ndarray:
    right = np.cross(image_down, forward)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("camera image_down must not be parallel to the viewing direction")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, position
    return pose


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: ``offset`` is its pose in ``parent`` ("world" or a link name)."""
    name: str
    vertical_fov_deg: float
    parent: str
    offset: np.ndarray = field(repr=False)
    near: float = 0.02  # m; geometry closer than this is clipped

    def pose(self, link_frames: np.ndarray | None = None) -> np.ndarray:
        """Camera-to-world pose; ``link_frames`` (8, 4, 4) from XArm6Kinematics is needed for links."""
        if self.parent == "world":
            return self.offset
        if link_frames is None:
            raise ValueError(f"camera {self.name!r} is mounted on {self.parent!r}: link_frames are required")
        return link_frames[FRAME_NAMES.index(self.parent)] @ self.offset


def default_cameras() -> dict[str, Camera]:
    # Third-person view from the front-right, seeing the table, the cubes and the whole arm.
    fixed = Camera("fixed", 52.0, "world", look_at((1.0, -0.6, 0.78), (0.26, 0.0, 0.24)))
    # Wrist camera beside the gripper on link6, looking along the gripper (link6 +z), tilted 12
    # degrees toward the fingers so the area under the TCP is near the image centre; the
    # fingers enter from the bottom edge.
    tilt = np.deg2rad(12.0)
    forward = np.array([np.sin(tilt), 0.0, np.cos(tilt)])
    wrist = Camera("wrist", 70.0, "link6", _pose_from_axes(np.array([-0.075, 0.0, 0.065]), forward,
                                                           np.array([1.0, 0.0, 0.0])))
    return {"fixed": fixed, "wrist": wrist}


@dataclass(frozen=True)
class Cube:
    colour: str
    rgb: tuple[int, int, int]
    position: np.ndarray  # (3,) centre, m
    size: float           # edge length, m
    yaw: float            # rad about z

    @property
    def top(self) -> float:
        return float(self.position[2] + self.size / 2)


class Scene:
    """Table + red/green/blue cubes at seeded, non-overlapping, reachable positions + cameras."""

    def __init__(self, seed: int = 0, cube_size: float = 0.045, colours=tuple(CUBE_COLOURS),
                 min_cube_distance: float = 0.10, cube_region=CUBE_REGION):
        if not (0.01 <= cube_size <= 0.1):
            raise ValueError(f"cube_size must be within 0.01..0.1 m, got {cube_size}")
        unknown = [c for c in colours if c not in CUBE_COLOURS]
        if unknown or len(colours) == 0:
            raise ValueError(f"colours must be a non-empty subset of {tuple(CUBE_COLOURS)}, got {colours}")
        x_min, x_max, y_min, y_max = cube_region
        if not (x_min < x_max and y_min < y_max):
            raise ValueError(f"cube_region must be (x_min, x_max, y_min, y_max) with min < max, got {cube_region}")
        if min_cube_distance < cube_size * np.sqrt(2):
            raise ValueError(f"min_cube_distance {min_cube_distance} m lets cubes of {cube_size} m overlap")
        self.seed = int(seed)
        self.cube_size = float(cube_size)
        self.table_extent = TABLE_EXTENT
        self.table_height = 0.0
        self.light_direction = LIGHT_DIRECTION
        self.cameras = default_cameras()
        rng = np.random.default_rng(self.seed)
        centres: list[np.ndarray] = []
        for _ in range(10_000):  # rejection sampling; the region fits three cubes easily
            if len(centres) == len(colours):
                break
            xy = rng.uniform((x_min, y_min), (x_max, y_max))
            if all(np.linalg.norm(xy - c) >= min_cube_distance for c in centres):
                centres.append(xy)
        else:
            raise ValueError("could not place the cubes without overlap; enlarge cube_region")
        yaws = rng.uniform(0.0, np.pi / 2, len(colours))
        self.cubes = tuple(
            Cube(colour, CUBE_COLOURS[colour], np.array([xy[0], xy[1], cube_size / 2]), self.cube_size, float(yaw))
            for colour, xy, yaw in zip(colours, centres, yaws))

    def cube(self, colour: str) -> Cube:
        for cube in self.cubes:
            if cube.colour == colour:
                return cube
        raise ValueError(f"no {colour!r} cube in this scene; colours are {[c.colour for c in self.cubes]}")

    def camera_poses(self, link_frames: np.ndarray) -> dict[str, np.ndarray]:
        return {name: cam.pose(link_frames) for name, cam in self.cameras.items()}
