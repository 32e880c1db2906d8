"""Near-cube states at random yaw errors for the pregrasp task, labelled by the expert.

Why: the expert squares up before it descends, so in its own data (and in DAgger data, which
starts from a policy trained on it) the arm near the named cube is nearly always square already:
the wrist view rarely shows a turned cube close up, and a policy trained on it neither learns to
read the yaw there nor what to do when it is off (measured: on run9's features the yaw error is
not linearly decodable better than a constant, while the same vision towers trained on wrist views
with a uniform yaw error read it to 3.6 degrees in 400 steps).

Each sample puts the arm, by inverse kinematics, at a random state near the cube named at that
moment — up to ``max_offset`` off its axis, ``heights`` above its top, the fingers ``yaw_range`` off
square, the gripper open (or, on a share ``closed_share``, partly closed: the state a policy that
closed too early is in) — renders both views and stores the expert's chunk from there (it rises,
turns, opens as needed). Stored exactly as the recorded datasets are (``"source": "near_yaw"``).

Run: ``python -m vla_pruner_ros.training.near_states --dataset IN.npz --out OUT.npz --scenes 200``.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..sim import pregrasp as pg
from ..sim.kinematics import HOME_JOINTS
from .dagger import append_records, recording_env
from .dataset import EpisodeRecord, read_meta


@dataclass(frozen=True)
class NearStatesConfig:
    dataset: str  # the pregrasp dataset to extend (its image size, chunk length and control period are used)
    out: str
    scenes: int = 200
    per_scene: int = 40
    first_seed: int = 300_000  # away from evaluation (0..), recording (100 000..) and DAgger (200 000..) seeds
    max_offset: float = 0.02  # m, TCP to the cube's axis (uniform over the disc)
    heights: tuple[float, float] = (0.005, 0.10)  # m, TCP above the cube's top
    yaw_range: float = np.pi / 4  # rad, |yaw error| drawn uniformly up to this
    closed_share: float = 0.3
    seed: int = 0

    def __post_init__(self):
        for name in ("scenes", "per_scene"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"NearStatesConfig.{name}={value!r}: expected a positive integer")
        if not (0 < self.max_offset and 0 <= self.heights[0] < self.heights[1] and 0 < self.yaw_range <= np.pi / 4
                and 0 <= self.closed_share <= 1):
            raise ValueError(f"NearStatesConfig: bad ranges in {self!r}")


def place_near(kinematics, cube, offset_xy, height: float, yaw_err: float):
    """Joints with the TCP ``height`` above the cube's top, ``offset_xy`` off its axis, pointing down
    and ``yaw_err`` off square (the quarter turn nearest the arm's natural yaw there); None if
    inverse kinematics does not reach it."""
    goal = np.asarray(cube.position, dtype=np.float64) + np.r_[offset_xy, cube.size / 2 + height]
    natural = kinematics.inverse_kinematics(goal, HOME_JOINTS, orientation="down")
    if not bool(natural.success):
        return None
    yaw_now = pg.finger_yaw(kinematics, natural.joints)
    quarter = np.pi / 2
    fingers = cube.yaw - yaw_err  # yaw_error(cube.yaw, fingers) == yaw_err (mod 90 degrees)
    fingers += quarter * np.round((yaw_now - fingers) / quarter)
    placed = kinematics.inverse_kinematics(goal, natural.joints, orientation=pg.down_rotation(fingers))
    return placed.joints if bool(placed.success) else None


def collect(config: NearStatesConfig, progress: bool = True) -> tuple[list[EpisodeRecord], list[dict]]:
    data_config = read_meta(config.dataset)["config"]
    if data_config.get("task") != pg.TASK_NAME:
        raise ValueError(f"dataset {config.dataset}: task {data_config.get('task')!r}; near states are for "
                         f"{pg.TASK_NAME!r}")
    env, expert = recording_env(data_config, pg.TASK_NAME, config.seed)
    rng = np.random.default_rng([config.seed, 71])
    records, episodes = [], []
    seeds = range(config.first_seed, config.first_seed + config.scenes)
    iterator = seeds
    if progress:
        from tqdm import tqdm
        iterator = tqdm(seeds, desc="near-states", unit="scene", dynamic_ncols=True)
    for seed in iterator:
        env.reset(seed=seed, task=pg.TASK_NAME)
        episode = env.episode
        record = EpisodeRecord(seed=seed, target=episode.target, instruction=episode.instruction, success=True,
                               num_steps=0, action_noise=0.0, detour=0)
        attempts = 0
        while len(record.chunks) < config.per_scene and attempts < 4 * config.per_scene:
            attempts += 1
            # the instruction before or after the switch: either cube may be the named one
            moment = episode.at(0 if rng.random() < 0.5 or episode.switch_step is None else episode.switch_step)
            cube = moment.scene.cube(moment.target)
            radius = config.max_offset * np.sqrt(rng.random())
            angle = rng.uniform(0, 2 * np.pi)
            joints = place_near(env.kinematics, cube, radius * np.array([np.cos(angle), np.sin(angle)]),
                                rng.uniform(*config.heights), rng.uniform(-config.yaw_range, config.yaw_range))
            if joints is None:
                continue
            gripper = float(rng.uniform(0.0, 1.0)) if rng.random() < config.closed_share else 0.0
            env.arm.reset(joints, gripper=gripper)
            chunk = expert.action_chunk(moment, env.arm.joints, env.arm.gripper, data_config["chunk_length"])
            record.add_sample(env.observation(), chunk, moment, data_config["image_size"])
        records.append(record)
        episodes.append({"seed": seed, "target": episode.target, "instruction": episode.instruction,
                         "success": True, "num_steps": 0, "action_noise": 0.0, "detour": 0, "start_above": None,
                         "switch_step": None, "next_target": episode.next_target, "source": "near_yaw"})
    return records, episodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="the pregrasp dataset to extend")
    parser.add_argument("--out", required=True, help="the merged dataset (.npz)")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--per-scene", type=int, default=40)
    parser.add_argument("--first-seed", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compress", action="store_true",
                        help="write the .npz uncompressed (several times larger, much faster to write and load)")
    args = parser.parse_args(argv)
    config = NearStatesConfig(dataset=args.dataset, out=args.out, scenes=args.scenes, per_scene=args.per_scene,
                              first_seed=args.first_seed, seed=args.seed)
    started = time.time()
    records, episodes = collect(config)
    print(f"near-states: {len(records)} scenes, {sum(len(r.chunks) for r in records)} samples "
          f"({time.time() - started:.0f} s)")
    print(json.dumps(append_records(config.dataset, records, episodes, config.out, note=asdict(config),
                                    compress=not args.no_compress)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
