"""The OpenVLA-OFT LIBERO evaluation protocol, as plain functions (no LIBERO import).

Facts taken from OFT's public evaluation code (``experiments/robot/libero``, commit 213c5ff):
- one episode per fixed initial state of the benchmark (``task_suite.get_task_init_states``);
- the environment is seeded once per task, when it is made (``env.seed(0)``, i.e.
  ``np.random.seed(0)``), and the episodes run in order: the fixtures each reset places depend on
  that order (``runner.SceneSeeds`` reproduces it for every configuration);
- ``num_steps_wait`` = 10 settle steps with the no-op action (gripper open) before the policy runs;
- a per-suite step limit for the policy's actions (``SUITE_MAX_STEPS``);
- 256x256 frames from the ``agentview`` and ``robot0_eye_in_hand`` cameras, rotated by 180 degrees
  (training data was stored that way); the policy's own processor then does the JPEG round trip,
  the resize to 224 and the center crop;
- proprio = end-effector position (3) + orientation as axis-angle (3) + gripper finger qpos (2);
- the chunk is executed open loop (8 actions) before the policy is queried again; with fewer
  open-loop steps n, ``deque(maxlen=n).extend(chunk)`` keeps the chunk's last n actions;
- an exception during an episode makes it a failure and the evaluation goes on;
- gripper: the model predicts [0, 1] with 1 = open; the environment wants -1 = open, +1 = close,
  binarised;
- statistics key: the suite name, or ``<suite>_no_noops`` (the datasets OFT trained on).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

SUITE_MAX_STEPS = {  # longest training demonstration of each suite, plus a margin (OFT's values)
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
SUITES = tuple(SUITE_MAX_STEPS)
NUM_STEPS_WAIT = 10
ENV_IMAGE_SIZE = 256
EPISODES_PER_TASK = 50  # init states shipped per task
ENV_SEED = 0  # OFT seeds each task's environment with 0, once, when it is made
NOOP_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # no motion, gripper open
ACTION_DIM = 7  # delta position (3), delta axis-angle (3), gripper
PROPRIO_DIM = 8
FIXED_CAMERA, WRIST_CAMERA = "agentview_image", "robot0_eye_in_hand_image"
NO_NOOPS_SUFFIX = "_no_noops"


def check_suite(suite: str) -> str:
    if suite not in SUITE_MAX_STEPS:
        raise ValueError(f"suite={suite!r}: expected one of {list(SUITES)}")
    return suite


# ------------------------------------------------------------------------------ observations
def quat_to_axis_angle(quat: Sequence[float]) -> np.ndarray:
    """Quaternion (x, y, z, w) -> axis-angle vector (unit axis times angle in radians).

    Same convention as robosuite: w is clipped to [-1, 1] and the angle is 2*acos(w) in [0, 2*pi],
    so q and -q give different vectors (the policy was trained on exactly these values).
    """
    x, y, z, w = (float(v) for v in quat)
    w = min(1.0, max(-1.0, w))
    sin_half = math.sqrt(1.0 - w * w)
    if math.isclose(sin_half, 0.0):
        return np.zeros(3)
    return np.array([x, y, z]) * (2.0 * math.acos(w) / sin_half)


def _obs_array(obs: Mapping, key: str, size: int | None = None) -> np.ndarray:
    if key not in obs:
        raise ValueError(f"observation: missing {key!r} (has {sorted(obs)[:12]}...)")
    value = np.asarray(obs[key], dtype=np.float64).reshape(-1)
    if size is not None and value.shape != (size,):
        raise ValueError(f"observation[{key!r}]: expected {size} values, got shape {np.shape(obs[key])}")
    return value


def proprio_from_obs(obs: Mapping) -> np.ndarray:
    """The 8-value LIBERO proprio vector OFT trained on: eef pos, eef axis-angle, gripper qpos."""
    return np.concatenate([
        _obs_array(obs, "robot0_eef_pos", 3),
        quat_to_axis_angle(_obs_array(obs, "robot0_eef_quat", 4)),
        _obs_array(obs, "robot0_gripper_qpos", 2),
    ])


def rotate_180(image: np.ndarray) -> np.ndarray:
    """LIBERO renders upside down relative to the training data: flip both axes (contiguous copy)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"camera image: expected HxWx3 uint8, got shape {image.shape} dtype {image.dtype}")
    return np.ascontiguousarray(image[::-1, ::-1])


def images_from_obs(obs: Mapping, view_names: Sequence[str]) -> dict[str, np.ndarray]:
    """{view name: rotated frame}: the first view is the third-person camera, the second the wrist."""
    cameras = (FIXED_CAMERA, WRIST_CAMERA)
    if not 1 <= len(view_names) <= len(cameras):
        raise ValueError(f"view_names={tuple(view_names)}: LIBERO has {len(cameras)} cameras; expected 1 or 2 views")
    images = {}
    for name, camera in zip(view_names, cameras):
        if camera not in obs:
            raise ValueError(f"observation: missing camera {camera!r}")
        images[name] = rotate_180(obs[camera])
    return images


# ----------------------------------------------------------------------------------- actions
def postprocess_action(action: Sequence[float]) -> np.ndarray:
    """Model action -> environment action: gripper [0, 1] -> sign(2g - 1), then inverted.

    The training data had 0 = close, 1 = open; LIBERO's controller wants -1 = open, +1 = close.
    A gripper value of exactly 0.5 gives 0 (no gripper command), as upstream's np.sign does.
    """
    action = np.array(action, dtype=np.float64).reshape(-1)
    if action.shape != (ACTION_DIM,):
        raise ValueError(f"action: expected {ACTION_DIM} values, got shape {action.shape}")
    if not np.all(np.isfinite(action)):
        raise ValueError(f"action: non-finite values {action.tolist()}")
    action[-1] = -np.sign(2.0 * action[-1] - 1.0)
    return action


# ------------------------------------------------------------------------------ unnorm key
def choose_unnorm_key(statistics_keys: Iterable[str], suite: str, unnorm_key: str | None = None) -> str:
    """The dataset-statistics key for ``suite``: explicit, else ``suite``, else ``suite_no_noops``."""
    keys = sorted(statistics_keys)
    if unnorm_key is not None:
        if unnorm_key not in keys:
            raise ValueError(f"unnorm_key={unnorm_key!r} is not in the checkpoint's dataset statistics {keys}")
        return unnorm_key
    for candidate in (suite, suite + NO_NOOPS_SUFFIX):
        if candidate in keys:
            return candidate
    raise ValueError(f"the checkpoint has no statistics for suite {suite!r} (looked for {suite!r} and "
                     f"{suite + NO_NOOPS_SUFFIX!r}; it has {keys}); pass --unnorm-key to choose one")


# ---------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class EvalConfiguration:
    """One cell of the sweep: a pruning method at a keep ratio ("none" always runs at 1.0)."""

    method: str
    keep_ratio: float

    @property
    def label(self) -> str:
        return "none" if self.method == "none" else f"{self.method}@{self.keep_ratio:g}"

    @property
    def key(self) -> tuple[str, float]:
        return (self.method, round(self.keep_ratio, 6))


def parse_list(text: str, field: str) -> list[str]:
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise ValueError(f"{field}={text!r}: expected a comma-separated list")
    return items


def parse_keep_ratios(text: str) -> list[float]:
    ratios = []
    for item in parse_list(text, "--keep"):
        try:
            ratio = float(item)
        except ValueError:
            raise ValueError(f"--keep: {item!r} is not a number") from None
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"--keep: {ratio} is outside (0, 1]")
        ratios.append(ratio)
    return sorted(set(ratios), reverse=True)


def parse_task_ids(text: str | None, num_tasks: int) -> list[int]:
    """'0,3,5-7' -> [0, 3, 5, 6, 7]; None -> every task of the suite."""
    if text is None:
        return list(range(num_tasks))
    ids: set[int] = set()
    for item in parse_list(text, "--tasks"):
        low, _, high = item.partition("-")
        try:
            span = range(int(low), int(high or low) + 1)
        except ValueError:
            raise ValueError(f"--tasks: {item!r} is not a task id or a range like 2-5") from None
        if not span or span.start < 0 or span.stop > num_tasks:
            raise ValueError(f"--tasks: {item!r} is outside the suite's task ids 0..{num_tasks - 1}")
        ids.update(span)
    return sorted(ids)


def build_configurations(methods: Sequence[str], keep_ratios: Sequence[float],
                         known_methods: Sequence[str]) -> list[EvalConfiguration]:
    """Every method at every keep ratio; "none" (the unpruned reference) once, at 1.0, first."""
    unknown = [m for m in methods if m not in known_methods]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose from {list(known_methods)}")
    if not keep_ratios and any(m != "none" for m in methods):
        raise ValueError("--keep: expected at least one keep ratio for the pruning methods")
    configurations = [EvalConfiguration("none", 1.0)] if "none" in methods else []
    for method in dict.fromkeys(m for m in methods if m != "none"):
        configurations += [EvalConfiguration(method, float(k)) for k in keep_ratios]
    return configurations
