"""Expert demonstrations of the simulated reach task, stored as a training-ready dataset.

Each sample is one control step of an episode, recorded with the conventions of the ROS demo:

- both camera views rendered at 224x224 (as the sim cameras publish them), then brought to the
  policy's size with the policy's own first preprocessing step (``resize_for_policy``: JPEG round
  trip + Lanczos), stored as uint8; the remaining per-tower normalisation happens per batch;
- proprio = 6 joint angles + gripper (0 open .. 1 closed);
- label = the expert's next ``chunk_length`` absolute joint targets + gripper command, rolled out
  from the state the images show (``ScriptedExpert.action_chunk``), 0.1 s apart.

So the policy learns to recover from its own mistakes, the executed actions are perturbed while the
labels stay the expert's correction from wherever the arm ends up (DART-style): Gaussian noise on
the executed joint targets, a random start pose, and sometimes a "detour" where the first few steps
head for a different cube. After success a few extra "hover" steps are recorded so the policy also
learns to stay above the cube, and some episodes start hovering above another cube ("retarget"):
the ROS demo keeps running, so a new instruction finds the arm wherever the last one left it.

The "pregrasp" task (sim/pregrasp.py) is recorded the same way (DART noise, detours, a few steps
holding the grasp after success), one episode per scene with the scene's seeded first target; its
instruction changes mid-episode, so instruction and target are stored per sample, and the labels
after the change are the expert's chunk toward the newly named cube.

The dataset lives in one ``.npz`` (uint8 images compress well); ``SimDataset`` loads it, computes
the BOUNDS_Q99 statistics OFT uses and turns index batches into model inputs.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..model.processing_oft import ACTION_FRAMES, actions_to_frame, resize_for_policy
from ..sim import CUBE_COLOURS, ScriptedExpert, SimEnv
from ..sim.kinematics import XArm6Kinematics
from ..sim.pregrasp import TASK_NAME as PREGRASP, finger_yaw, yaw_error
from ..sim.scene import CUBE_REGION
from ..sim.task import MAX_STEPS, TASKS, make_episode, make_expert, success

RENDER_SIZE = 224  # the sim cameras' image size in the ROS demo
VIEW_NAMES = ("fixed", "wrist")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DatasetConfig:
    """How demonstrations are generated. Scene seeds are ``first_seed .. first_seed + num_scenes - 1``;
    every scene is recorded once per target colour in ``targets`` (same scene, different
    instruction: the policy must read the instruction to tell them apart). Task "pregrasp":
    once per scene, with its seeded first target and instruction change (``targets`` unused)."""

    num_scenes: int = 300
    first_seed: int = 100_000  # far from the evaluation seeds (eval-sim starts at 0)
    task: str = "above"
    targets: tuple[str, ...] = tuple(CUBE_COLOURS)
    image_size: int = 112  # the policy's input size
    chunk_length: int = 8
    control_period: float = 0.1
    max_joint_speed: float = 1.0  # rad/s: the policy node's default max_joint_velocity
    init_joint_noise: float = 0.15  # rad, uniform per joint around HOME (eval uses SimEnv's 0.05)
    action_noise_max: float = 0.03  # rad: each episode's noise std is drawn from U(0, this)
    detour_probability: float = 0.25
    detour_steps: tuple[int, int] = (3, 10)  # inclusive range of steps spent heading for a wrong cube
    hover_steps: int = 4  # extra steps recorded after success
    retarget_probability: float = 0.3  # episodes that start above another cube (unrecorded expert run)
    seed: int = 0  # noise / detour draws

    def __post_init__(self):
        if not isinstance(self.num_scenes, int) or self.num_scenes < 1:
            raise ValueError(f"DatasetConfig.num_scenes={self.num_scenes!r}: expected a positive integer")
        if self.task not in TASKS:
            raise ValueError(f"DatasetConfig.task={self.task!r}: expected one of {sorted(TASKS)}")
        unknown = [t for t in self.targets if t not in CUBE_COLOURS]
        if not self.targets or unknown:
            raise ValueError(f"DatasetConfig.targets={self.targets!r}: expected a non-empty subset of "
                             f"{tuple(CUBE_COLOURS)}")
        if self.image_size % 14 or self.image_size < 14:
            raise ValueError(f"DatasetConfig.image_size={self.image_size}: expected a multiple of 14 (the patch size)")
        if not isinstance(self.chunk_length, int) or self.chunk_length < 1:
            raise ValueError(f"DatasetConfig.chunk_length={self.chunk_length!r}: expected a positive integer")
        for name in ("control_period", "max_joint_speed"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DatasetConfig.{name}={getattr(self, name)!r}: expected > 0")
        for name in ("init_joint_noise", "action_noise_max", "hover_steps"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"DatasetConfig.{name}={getattr(self, name)!r}: expected >= 0")
        for name in ("detour_probability", "retarget_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"DatasetConfig.{name}={getattr(self, name)!r}: expected in [0, 1]")
        low, high = self.detour_steps
        if not 1 <= low <= high:
            raise ValueError(f"DatasetConfig.detour_steps={self.detour_steps!r}: expected 1 <= low <= high")


@dataclass
class EpisodeRecord:
    seed: int
    target: str
    instruction: str
    success: bool
    num_steps: int  # control steps until success (or the limit), hover steps excluded
    action_noise: float
    detour: int  # steps spent heading for a wrong cube (0: none)
    start_above: str | None = None  # "retarget" episodes: the cube the arm starts above
    images: dict[str, list[np.ndarray]] = field(default_factory=lambda: {v: [] for v in VIEW_NAMES})
    proprio: list[np.ndarray] = field(default_factory=list)
    chunks: list[np.ndarray] = field(default_factory=list)
    instructions: list[str] = field(default_factory=list)  # per step (it may change mid-episode)
    targets: list[int] = field(default_factory=list)       # per step: index of the named cube in scene.cubes

    def add_sample(self, obs: dict, chunk: np.ndarray, episode, image_size: int) -> None:
        """One training sample: the views and proprio of ``obs`` labelled with the expert's ``chunk``
        for ``episode`` (the task of that moment: its instruction and named cube)."""
        for view in VIEW_NAMES:
            self.images[view].append(policy_view(obs["images"][view], image_size))
        self.proprio.append(obs["proprio"].astype(np.float32))
        self.chunks.append(chunk.astype(np.float32))
        self.instructions.append(episode.instruction)
        self.targets.append(_cube_index(episode.scene, episode.target))


def policy_view(image: np.ndarray, image_size: int) -> np.ndarray:
    """A rendered view as the policy's processor first sees it (see processing_oft)."""
    return resize_for_policy(np.ascontiguousarray(image), image_size)


def record_episode(env: SimEnv, expert: ScriptedExpert, config: DatasetConfig, seed: int, target: str,
                   rng: np.random.Generator) -> EpisodeRecord:
    """One perturbed expert episode; every step stores the views, proprio and the expert's chunk."""
    obs = env.reset(seed=seed, target=target, task=config.task)
    episode = env.episode
    noise = float(rng.uniform(0.0, config.action_noise_max))
    wrong = [c.colour for c in episode.scene.cubes if c.colour != target]
    start_above = None
    if wrong and rng.random() < config.retarget_probability:
        start_above = str(rng.choice(wrong))
        obs = _move_above(env, expert, episode._replace(target=start_above))
    detour = 0
    if wrong and rng.random() < config.detour_probability:
        detour = int(rng.integers(config.detour_steps[0], config.detour_steps[1] + 1))
        detour_episode = episode._replace(target=str(rng.choice(wrong)))
    record = EpisodeRecord(seed=seed, target=target, instruction=episode.instruction, success=False,
                           num_steps=0, action_noise=noise, detour=detour, start_above=start_above)
    hover_left = config.hover_steps
    limit = MAX_STEPS[config.task]
    while True:
        chunk = expert.action_chunk(episode, env.arm.joints, env.arm.gripper, config.chunk_length)
        record.add_sample(obs, chunk, episode, config.image_size)
        step = len(record.chunks) - 1
        if step < detour:
            action = expert.next_action(detour_episode, env.arm.joints, env.arm.gripper)
        else:
            action = chunk[0].copy()
        if not record.success:  # no perturbation while hovering: show the goal pose itself
            action[:6] += rng.normal(0.0, noise, 6)
        obs, reached, _, _ = env.step(action)
        env.done = False  # the recording decides when to stop (SimEnv stops at success)
        if not record.success:
            record.num_steps += 1
            record.success = bool(reached)
        if record.success:
            if hover_left == 0:
                break
            hover_left -= 1
        elif record.num_steps >= limit:
            break
    return record


def _cube_index(scene, name: str) -> int:
    cube = scene.cube(name)
    return next(i for i, c in enumerate(scene.cubes) if c is cube)


def record_pregrasp_episode(env: SimEnv, expert, config: DatasetConfig, seed: int,
                            rng: np.random.Generator) -> EpisodeRecord:
    """One perturbed expert episode of the pregrasp task (labels follow the instruction of the moment)."""
    obs = env.reset(seed=seed, task=config.task)
    noise = float(rng.uniform(0.0, config.action_noise_max))
    detour = 0
    if rng.random() < config.detour_probability:
        detour = int(rng.integers(config.detour_steps[0], config.detour_steps[1] + 1))
        wrong = [n for n in env.episode.scene.names if n != env.episode.target]
        detour_episode = env.episode._replace(target=str(rng.choice(wrong)), switch_step=None)
    record = EpisodeRecord(seed=seed, target=env.episode.target, instruction=env.episode.instruction,
                           success=False, num_steps=0, action_noise=noise, detour=detour)
    hover_left = config.hover_steps
    limit = MAX_STEPS[config.task]
    while True:
        current = env.current
        chunk = expert.action_chunk(current, env.arm.joints, env.arm.gripper, config.chunk_length)
        record.add_sample(obs, chunk, current, config.image_size)
        step = len(record.chunks) - 1
        action = expert.next_action(detour_episode, env.arm.joints, env.arm.gripper) if step < detour \
            else chunk[0].copy()
        if not record.success:
            # Full noise in transit; near the named cube a fifth of it (the fine stage's scale).
            near = np.linalg.norm(env.tcp_position()[:2] - current.scene.cube(current.target).position[:2]) < 0.04
            action[:6] += rng.normal(0.0, noise * (0.2 if near else 1.0), 6)
        obs, reached, _, _ = env.step(action)
        env.done = False
        if not record.success:
            record.num_steps += 1
            record.success = bool(reached)
        if record.success:
            if hover_left == 0:
                break
            hover_left -= 1
        elif record.num_steps >= limit:
            break
    return record


def _move_above(env: SimEnv, expert: ScriptedExpert, episode) -> dict:
    """Run the expert (unrecorded, unperturbed) until the TCP is over ``episode.target``; the
    observation there is where a "retarget" episode starts."""
    obs = env.observation()
    for _ in range(3 * MAX_STEPS[episode.task]):
        if success(env.tcp_position(), episode.scene, episode.target, episode.task):
            break
        obs, _, _, _ = env.step(expert.next_action(episode, env.arm.joints, env.arm.gripper))
        env.done = False
    return obs


def build_dataset(config: DatasetConfig, out_path: str | os.PathLike, progress: bool = True) -> dict:
    """Record ``num_scenes * len(targets)`` episodes into ``out_path`` (.npz). Returns a summary."""
    # The recording enforces the task's step limit itself (a retarget episode runs the expert first).
    env = SimEnv(seed=config.seed, image_size=(RENDER_SIZE, RENDER_SIZE), control_period=config.control_period,
                 task=config.task, init_joint_noise=config.init_joint_noise, max_steps=10**6)
    expert = make_expert(config.task, env.kinematics, control_period=config.control_period,
                         max_joint_speed=config.max_joint_speed)
    rng = np.random.default_rng(config.seed)
    if config.task == PREGRASP:
        jobs = [(config.first_seed + i, None) for i in range(config.num_scenes)]
    else:
        jobs = [(config.first_seed + i, target) for i in range(config.num_scenes) for target in config.targets]
    iterator = jobs
    if progress:
        from tqdm import tqdm
        iterator = tqdm(jobs, desc="demonstrations", unit="ep", dynamic_ncols=True)
    images = {v: [] for v in VIEW_NAMES}
    proprio, chunks, episode_index, step_index, instruction_index, target_index = [], [], [], [], [], []
    instructions: list[str] = []
    episodes = []
    for number, (seed, target) in enumerate(iterator):
        if config.task == PREGRASP:
            record = record_pregrasp_episode(env, expert, config, seed, rng)
        else:
            record = record_episode(env, expert, config, seed, target, rng)
        for text in [record.instruction] + record.instructions:
            if text not in instructions:
                instructions.append(text)
        instruction_index.extend(instructions.index(text) for text in record.instructions)
        target_index.extend(record.targets)
        for view in VIEW_NAMES:
            images[view].extend(record.images[view])
        proprio.extend(record.proprio)
        chunks.extend(record.chunks)
        episode_index.extend([number] * len(record.chunks))
        step_index.extend(range(len(record.chunks)))
        episodes.append({"seed": record.seed, "target": record.target, "instruction": record.instruction,
                         "success": record.success, "num_steps": record.num_steps,
                         "action_noise": record.action_noise, "detour": record.detour,
                         "start_above": record.start_above, "switch_step": env.episode.switch_step,
                         "next_target": env.episode.next_target})
    meta = {"format_version": FORMAT_VERSION, "config": asdict(config), "instructions": instructions,
            "episodes": episodes, "view_names": list(VIEW_NAMES)}
    out_path = os.fspath(out_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    np.savez_compressed(
        out_path,
        fixed=np.stack(images["fixed"]), wrist=np.stack(images["wrist"]),
        proprio=np.stack(proprio).astype(np.float32), chunks=np.stack(chunks).astype(np.float32),
        episode=np.asarray(episode_index, dtype=np.int32), step=np.asarray(step_index, dtype=np.int32),
        instruction=np.asarray(instruction_index, dtype=np.int32),
        target=np.asarray(target_index, dtype=np.int8),
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    successes = [e["success"] for e in episodes]
    return {"path": out_path, "episodes": len(episodes), "samples": len(chunks),
            "expert_success": float(np.mean(successes)), "instructions": instructions}


# --------------------------------------------------------------------------- statistics
MIN_BOUNDS_SPAN = 0.1  # rad (or gripper fraction): the narrowest q01..q99 band normalisation may use


def bounds_statistics(values: np.ndarray, mask: list[bool] | None = None,
                      min_span: float = MIN_BOUNDS_SPAN) -> dict:
    """OFT-style statistics of (N, D) values: mean/std/min/max/q01/q99 (+ mask when given).

    A dimension that barely varies (the expert holds joint 4 at 0 up to IK round-off, the gripper
    stays open) would get q01 ~ q99, and BOUNDS_Q99 would blow its round-off up to +-1 targets; its
    q01..q99 band is widened symmetrically to ``min_span`` (min/max likewise)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) == 0:
        raise ValueError(f"values: expected a non-empty (N, D) array, got shape {values.shape}")
    if not min_span >= 0:
        raise ValueError(f"min_span={min_span!r}: expected >= 0")

    def widened(low: np.ndarray, high: np.ndarray) -> tuple[list, list]:
        centre, half = (low + high) / 2, np.maximum((high - low) / 2, min_span / 2)
        return (centre - half).tolist(), (centre + half).tolist()

    q01, q99 = widened(np.quantile(values, 0.01, axis=0), np.quantile(values, 0.99, axis=0))
    low, high = widened(values.min(0), values.max(0))
    stats = {"mean": values.mean(0).tolist(), "std": values.std(0).tolist(), "min": low, "max": high,
             "q01": q01, "q99": q99}
    if mask is not None:
        if len(mask) != values.shape[1]:
            raise ValueError(f"mask: {len(mask)} entries for {values.shape[1]} dimensions")
        stats["mask"] = [bool(m) for m in mask]
    return stats


def action_mask_for(action_dim: int) -> list[bool]:
    """Joints normalised, the gripper (last) masked out of normalisation, as OFT does."""
    return [True] * (action_dim - 1) + [False]


def chunks_in_frame(chunks: np.ndarray, proprio: np.ndarray, action_frame: str = "absolute") -> np.ndarray:
    """The recorded (absolute) chunks as the policy is trained to output them (``ACTION_FRAMES``)."""
    if action_frame == "absolute":
        return chunks
    return actions_to_frame(chunks, proprio, action_frame, action_mask_for(chunks.shape[-1])).astype(np.float32)


def dataset_statistics(proprio: np.ndarray, chunks: np.ndarray, num_trajectories: int,
                       action_frame: str = "absolute") -> dict:
    """The ``dataset_statistics.json`` entry for this data: actions over every chunk step, in
    ``action_frame`` (the gripper masked out of normalisation, as OFT does), proprio over every state."""
    action_dim = chunks.shape[-1]
    actions = chunks_in_frame(chunks, proprio, action_frame).reshape(-1, action_dim)
    return {
        "action": bounds_statistics(actions, mask=action_mask_for(action_dim)),
        "proprio": bounds_statistics(proprio),
        "num_trajectories": int(num_trajectories),
        "num_transitions": int(len(proprio)),
    }


def normalize_bounds(values: np.ndarray, stats: dict) -> np.ndarray:
    """BOUNDS_Q99 to [-1, 1] with clipping, masked dimensions passed through (as processing_oft)."""
    low, high = np.asarray(stats["q01"]), np.asarray(stats["q99"])
    mask = np.asarray(stats.get("mask", np.ones_like(low, dtype=bool)), dtype=bool)
    scaled = np.clip(2 * (values - low) / (high - low + 1e-8) - 1, -1.0, 1.0)
    return np.where(mask, scaled, values)


def read_npy_header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy that starts at ``stream``'s position; the stream is
    left at the first byte of its data."""
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read_header(stream)


def stored_npz_array(path: str | os.PathLike, name: str) -> np.ndarray | None:
    """Member ``name`` of an .npz as a read-only memory map, or None when it cannot be mapped (the
    member is compressed, or is an object array).

    Datasets written uncompressed (``--no-compress``) hold each array as a plain .npy inside the zip,
    so its bytes can be mapped where they lie: the views of a 100k-sample dataset (~20 GB) then stay in
    the page cache instead of the trainer's memory, which is what lets datasets outgrow the RAM."""
    member = f"{name}.npy"
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise KeyError(f"dataset {path}: no array {name!r}") from None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)  # the local file header; its name/extra lengths can differ from the central directory's
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"dataset {path}: damaged zip entry {member!r}")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        shape, fortran_order, dtype = read_npy_header(handle)
        if dtype.hasobject:
            return None
        offset = handle.tell()
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")


def read_meta(path: str | os.PathLike) -> dict:
    """A recorded dataset's metadata (config, episodes, instructions) without reading its arrays."""
    with np.load(path) as data:
        return json.loads(data["meta"].tobytes().decode())


def statistics_from_file(path: str | os.PathLike, with_task: bool = False, action_frame: str = "absolute"):
    """``dataset_statistics`` of a recorded dataset without loading its images (and its task)."""
    with np.load(path) as data:
        meta = json.loads(data["meta"].tobytes().decode())
        stats = dataset_statistics(data["proprio"], data["chunks"], len(meta["episodes"]), action_frame)
    return (stats, meta["config"].get("task", "above")) if with_task else stats


def cube_patch_classes(joints: np.ndarray, scenes: list, image_size: int, grid: int,
                       by: str = "colour") -> np.ndarray:
    """(N, 2 * grid * grid) int8: which cube's top centre each patch of each view shows (0 none,
    1 + index in CUBE_COLOURS, or with ``by="cube"`` 1 + index in scene.cubes), from the cameras'
    geometry at joint states (N, 6) of scenes (N,).

    Training-only labels for the probes in train.py (the arm may hide a cube: the label ignores
    occlusion). Pixel coordinates are those of the 224 px render mapped onto the policy's image."""
    from ..sim.kinematics import FRAME_NAMES, XArm6Kinematics
    from ..sim.render import Renderer

    joints = np.asarray(joints, dtype=np.float64)
    renderer = Renderer(RENDER_SIZE, RENDER_SIZE)
    frames = XArm6Kinematics().forward_kinematics(joints)  # (N, 8, 4, 4)
    cameras = scenes[0].cameras
    classes = np.zeros((len(joints), len(VIEW_NAMES), grid, grid), dtype=np.int8)
    colours = list(CUBE_COLOURS)
    # (N, C, 3) cube tops and (N, C) their classes; scenes may differ in their number of cubes
    most = max(len(scene.cubes) for scene in scenes)
    tops = np.full((len(scenes), most, 3), np.nan)
    labels = np.zeros((len(scenes), most), dtype=np.int8)
    for n, scene in enumerate(scenes):
        for k, cube in enumerate(scene.cubes):
            tops[n, k] = cube.position + [0, 0, cube.size / 2]
            labels[n, k] = 1 + (colours.index(cube.colour) if by == "colour" else k)
    scale = image_size / RENDER_SIZE
    for v, name in enumerate(VIEW_NAMES):
        camera = cameras[name]
        if camera.parent == "world":
            poses = np.broadcast_to(camera.offset, (len(joints), 4, 4))
        else:
            poses = frames[:, FRAME_NAMES.index(camera.parent)] @ camera.offset
        focal = renderer.intrinsics(camera.vertical_fov_deg)[0, 0]
        centre = (RENDER_SIZE - 1) / 2.0
        local = np.einsum("nkj,nji->nki", tops - poses[:, None, :3, 3], poses[:, :3, :3])  # camera frame
        depth = local[..., 2]
        uv = local[..., :2] / np.where(depth > 1e-6, depth, 1.0)[..., None] * focal + centre
        uv = (uv + 0.5) * scale - 0.5  # pixel centres after the resize to image_size
        cell = np.floor(uv / (image_size / grid)).astype(int)
        with np.errstate(invalid="ignore"):
            visible = (depth > 1e-6) & np.all((cell >= 0) & (cell < grid), axis=-1)
        for k in range(most):
            rows = np.flatnonzero(visible[:, k])
            classes[rows, v, cell[rows, k, 1], cell[rows, k, 0]] = labels[rows, k]
    return classes.reshape(len(joints), -1)


# ------------------------------------------------------------------------------ loading
def pregrasp_yaw_errors(joints: np.ndarray, cube_yaws) -> np.ndarray:
    """Yaw error (rad, to the nearest face) between each cube and the fingers at ``joints`` (N, 6)."""
    kinematics = XArm6Kinematics()
    return np.array([yaw_error(cube_yaw, finger_yaw(kinematics, q)) for q, cube_yaw in zip(joints, cube_yaws)],
                    dtype=np.float64)


class SimDataset:
    """A recorded dataset in memory: uint8 views, normalised proprio and action chunks.

    ``chunks`` stay as recorded (absolute joint targets); ``normalized_chunks`` are the training
    targets, in ``action_frame``."""

    def __init__(self, path: str | os.PathLike, statistics: dict | None = None, action_frame: str = "absolute"):
        if action_frame not in ACTION_FRAMES:
            raise ValueError(f"action_frame={action_frame!r}: expected one of {ACTION_FRAMES}")
        if not os.path.isfile(path):
            raise ValueError(f"dataset {path}: no such file (build it with `vla-pruner train-sim`)")
        with np.load(path) as data:
            self.meta = json.loads(data["meta"].tobytes().decode())
            if self.meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"dataset {path}: format_version {self.meta.get('format_version')}, "
                                 f"expected {FORMAT_VERSION}")
            mapped = {v: stored_npz_array(path, v) for v in VIEW_NAMES}
            self.views = {v: data[v] if mapped[v] is None else mapped[v] for v in VIEW_NAMES}
            self.proprio = data["proprio"]
            self.chunks = data["chunks"]
            self.episode = data["episode"]
            self.step = data["step"]
            self.instruction = data["instruction"]
            target = data["target"] if "target" in data.files else None  # per sample (older files: per episode)
        self.path = os.fspath(path)
        self.instructions: list[str] = self.meta["instructions"]
        self.config = self.meta["config"]
        self.action_frame = action_frame
        self.statistics = statistics or dataset_statistics(self.proprio, self.chunks, len(self.meta["episodes"]),
                                                           action_frame)
        self.normalized_proprio = normalize_bounds(self.proprio, self.statistics["proprio"]).astype(np.float32)
        self.normalized_chunks = normalize_bounds(chunks_in_frame(self.chunks, self.proprio, action_frame),
                                                  self.statistics["action"]).astype(np.float32)
        # Where the named cube is, per sample, scaled to [-1, 1] over the region cubes are drawn from
        # (training-only auxiliary target; not part of the policy's inputs or outputs).
        x_min, x_max, y_min, y_max = CUBE_REGION
        task = self.config.get("task", "above")
        self.scenes = scenes = [make_episode(e["seed"], task).scene for e in self.meta["episodes"]]  # per episode
        if target is None:
            per_episode = [[c.colour for c in scene.cubes].index(e["target"])
                           for scene, e in zip(scenes, self.meta["episodes"])]
            target = np.asarray(per_episode, dtype=np.int8)[self.episode]
        self.target_cube = target.astype(np.int64)  # index in scene.cubes of the cube named at each sample
        centres = np.array([scenes[e].cubes[k].position[:2] for e, k in zip(self.episode, self.target_cube)])
        scaled = 2 * (centres - [x_min, y_min]) / [x_max - x_min, y_max - y_min] - 1
        self.target_xy = scaled.astype(np.float32)
        image_size = self.config["image_size"]
        sample_scenes = [scenes[e] for e in self.episode]
        self.patch_classes = cube_patch_classes(self.proprio[:, :6], sample_scenes, image_size, image_size // 14)
        # The target probe's labels: which patch shows which cube, and which cube is named.
        self.patch_cubes = cube_patch_classes(self.proprio[:, :6], sample_scenes, image_size, image_size // 14,
                                              by="cube")
        self.target_class = (1 + self.target_cube).astype(np.int8)
        # The yaw probe's label (pregrasp only, where the fingers must be square to the named cube):
        # the yaw error to the nearest face as (sin 4e, cos 4e), continuous across the 90-degree
        # symmetry of a cube; other tasks do not depend on yaw and get no yaw term (has_yaw False).
        self.has_yaw = np.full(len(self.chunks), task == PREGRASP)
        self.target_yaw = np.zeros((len(self.chunks), 2), dtype=np.float32)
        if task == PREGRASP:
            errors = pregrasp_yaw_errors(self.proprio[:, :6],
                                         [scenes[e].cubes[k].yaw for e, k in zip(self.episode, self.target_cube)])
            self.target_yaw = np.stack([np.sin(4 * errors), np.cos(4 * errors)], axis=1).astype(np.float32)

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def num_episodes(self) -> int:
        return len(self.meta["episodes"])

    def split_by_episode(self, validation_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Sample indices of (train, validation), split by whole episodes (scene seeds)."""
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(f"validation_fraction={validation_fraction!r}: expected in [0, 1)")
        seeds = sorted({e["seed"] for e in self.meta["episodes"]})
        rng = np.random.default_rng(seed)
        held = set(rng.permutation(seeds)[:int(round(validation_fraction * len(seeds)))].tolist())
        held_episodes = np.array([e["seed"] in held for e in self.meta["episodes"]])
        in_validation = held_episodes[self.episode]
        return np.flatnonzero(~in_validation), np.flatnonzero(in_validation)


def pixel_tensor(views: dict[str, np.ndarray], means: list, stds: list) -> torch.Tensor:
    """(B, num_views, 6, S, S) float32 from uint8 views {name: (B, S, S, 3)} already at the policy's
    size: [0, 1], then each tower's mean/std, channel-stacked (what OFTImageProcessor produces)."""
    per_view = []
    for name in VIEW_NAMES:
        pixels = torch.from_numpy(np.array(views[name], dtype=np.float32)).div_(255.0)  # (B, S, S, 3)
        towers = [(pixels - torch.tensor(m)) / torch.tensor(s) for m, s in zip(means, stds)]
        per_view.append(torch.cat(towers, dim=-1).permute(0, 3, 1, 2))
    return torch.stack(per_view, dim=1).contiguous()
