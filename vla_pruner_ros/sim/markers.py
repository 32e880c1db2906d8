"""The simulated workcell as plain 3-D primitives for RViz markers (``sim_cameras`` turns them into a
``visualization_msgs/MarkerArray``): the table, the cubes and the arm at a joint state, in the
xArm6 base frame ``link_base`` (the same geometry the simulated cameras render)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .render import arm_geometry, cube_boxes
from .scene import TABLE_EXTENT, Scene

FRAME_ID = "link_base"
TABLE_RGB = (150, 120, 90)
TABLE_THICKNESS = 0.02


@dataclass(frozen=True)
class Primitive:
    kind: str  # "cube", "cylinder" or "sphere"
    position: tuple[float, float, float]  # centre, m
    orientation: tuple[float, float, float, float]  # quaternion x, y, z, w
    scale: tuple[float, float, float]  # full extents, m
    rgba: tuple[float, float, float, float]  # 0..1


def quaternion_from_matrix(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a 3x3 rotation matrix."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s
    q = np.array(q, dtype=np.float64)
    return tuple(float(v) for v in q / np.linalg.norm(q))


def _z_to(direction: np.ndarray) -> tuple[float, float, float, float]:
    """The rotation taking +z onto ``direction`` (a cylinder's axis), as a quaternion."""
    d = direction / np.linalg.norm(direction)
    w = 1.0 + d[2]
    if w < 1e-9:  # pointing straight down
        return (1.0, 0.0, 0.0, 0.0)
    q = np.array([-d[1], d[0], 0.0, w])
    return tuple(float(v) for v in q / np.linalg.norm(q))


def _rgba(rgb, alpha: float = 1.0) -> tuple[float, float, float, float]:
    return tuple(float(c) / 255.0 for c in rgb) + (alpha,)


def scene_primitives(scene: Scene) -> list[Primitive]:
    """The table and the cubes (static for a scene)."""
    x0, x1, y0, y1 = TABLE_EXTENT
    table = Primitive("cube", ((x0 + x1) / 2, (y0 + y1) / 2, -TABLE_THICKNESS / 2), (0.0, 0.0, 0.0, 1.0),
                      (x1 - x0, y1 - y0, TABLE_THICKNESS), _rgba(TABLE_RGB))
    cubes = [Primitive("cube", tuple(float(v) for v in centre), quaternion_from_matrix(rotation),
                       tuple(float(2 * h) for h in half), _rgba(rgb))
             for centre, rotation, half, rgb in cube_boxes(scene)]
    return [table, *cubes]


def arm_primitives(link_frames: np.ndarray, gripper: float) -> list[Primitive]:
    """The arm and gripper at one state: a cylinder with round ends per capsule, a box per box."""
    capsules, boxes = arm_geometry(link_frames, gripper)
    out = []
    for start, end, radius, rgb in capsules:
        start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
        axis = end - start
        length = float(np.linalg.norm(axis))
        diameter = 2.0 * float(radius)
        if length > 1e-6:
            out.append(Primitive("cylinder", tuple(float(v) for v in (start + end) / 2), _z_to(axis),
                                 (diameter, diameter, length), _rgba(rgb)))
        for point in (start, end):
            out.append(Primitive("sphere", tuple(float(v) for v in point), (0.0, 0.0, 0.0, 1.0),
                                 (diameter, diameter, diameter), _rgba(rgb)))
    for centre, rotation, half, rgb in boxes:
        out.append(Primitive("cube", tuple(float(v) for v in centre), quaternion_from_matrix(rotation),
                             tuple(float(2 * h) for h in half), _rgba(rgb)))
    return out
