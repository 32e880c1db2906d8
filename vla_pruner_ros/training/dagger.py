"""DAgger for the sim tasks: roll a trained policy out in closed loop the way the node runs it,
label every state it visits with the scripted expert's chunk, and append those samples to a
recorded dataset.

Behaviour cloning only ever sees states near the expert's own paths (DART noise widens them a
little); a policy that drifts off them (hovering 2 cm off the cube, stalled after the instruction
changed) finds no labels there. The expert of every task is a function of the arm state and the
instruction of the moment, so any visited state can be labelled after the fact: that is DAgger
(Ross et al., 2011), with the policy executing its own chunks (``actions_per_step`` of each, made
safe as the node does) and, on a share ``expert_probability`` of the policy calls, the expert's
actions instead, so the later stages of the task are visited too.

Samples are stored exactly as ``build_dataset`` stores them (views at the policy's size, proprio,
the expert's chunk from the state the views show, the instruction and named cube of the moment);
the appended episodes carry ``"source": "dagger"`` in the dataset's metadata.

Run: ``python -m vla_pruner_ros.training.dagger --checkpoint CKPT --dataset IN.npz --out OUT.npz``.

When the expert changes, every stored state can be labelled again the same way (``relabel``:
``python -m vla_pruner_ros.training.dagger --relabel --dataset IN.npz --out OUT.npz``): the views
and proprio stay, the chunks become the current expert's from each stored state.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass

import numpy as np

from ..sim import SimEnv
from ..sim.task import MAX_STEPS, make_episode, make_expert
from .dataset import RENDER_SIZE, VIEW_NAMES, EpisodeRecord, read_meta, read_npy_header


@dataclass(frozen=True)
class DaggerConfig:
    checkpoint: str
    dataset: str  # the dataset to extend (its task, image size, chunk length and control period are used)
    out: str  # the merged dataset (may equal ``dataset``: it is replaced only once the new file is written)
    episodes: int = 40
    first_seed: int = 200_000  # far from the evaluation seeds (0..) and the recorded scenes (100 000..)
    expert_probability: float = 0.3  # per policy call: execute the expert's actions instead (DAgger's beta)
    actions_per_step: int = 4  # the node's default
    max_joint_velocity: float = 1.0  # rad/s, the node's default
    init_joint_noise: float = 0.1  # rad around HOME (eval: 0.05, expert data: 0.15)
    hover_steps: int = 4  # steps recorded after success
    max_steps: int | None = None  # control steps per episode (None: the task's limit)
    seed: int = 0
    threads: int = 1

    def __post_init__(self):
        for name in ("episodes", "actions_per_step", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DaggerConfig.{name}={value!r}: expected a positive integer")
        if not 0.0 <= self.expert_probability <= 1.0:
            raise ValueError(f"DaggerConfig.expert_probability={self.expert_probability!r}: expected in [0, 1]")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"DaggerConfig.max_steps={self.max_steps!r}: expected a positive integer or None")
        if not self.max_joint_velocity > 0 or not self.init_joint_noise >= 0 or self.hover_steps < 0:
            raise ValueError("DaggerConfig: max_joint_velocity must be > 0, init_joint_noise and hover_steps >= 0")


def recording_env(data_config: dict, task: str, seed: int, **env_options) -> tuple[SimEnv, object]:
    """A rendering SimEnv and the task's expert with a recorded dataset's control period and joint
    speed, so that samples added to it are made exactly like its own."""
    env = SimEnv(seed=seed, image_size=(RENDER_SIZE, RENDER_SIZE), control_period=data_config["control_period"],
                 task=task, **env_options)
    expert = make_expert(task, env.kinematics, control_period=data_config["control_period"],
                         max_joint_speed=data_config["max_joint_speed"])
    return env, expert


def record_policy_episode(env: SimEnv, policy, expert, robot, seed: int, task: str, image_size: int,
                          chunk_length: int, rng: np.random.Generator, config: DaggerConfig) -> EpisodeRecord:
    """One closed-loop episode of ``policy`` (expert actions on a share of its calls); every
    control step stores the views, proprio and the expert's chunk from that state."""
    from .evaluate import executed_actions

    obs = env.reset(seed=seed, task=task)
    policy.reset()
    record = EpisodeRecord(seed=seed, target=env.episode.target, instruction=env.episode.instruction,
                           success=False, num_steps=0, action_noise=0.0, detour=0)
    limit = config.max_steps or MAX_STEPS[task]
    hover_left = config.hover_steps
    finished = False
    while not finished:
        by_expert = bool(rng.random() < config.expert_probability)
        planned = None
        if not by_expert:
            out = policy.predict(images=obs["images"], proprio=obs["proprio"], instruction=obs["instruction"])
            planned = executed_actions(out.actions, obs["joints"], robot, env.control_period,
                                       config.max_joint_velocity, config.actions_per_step)
        for i in range(config.actions_per_step if planned is None else len(planned)):
            current = env.current
            chunk = expert.action_chunk(current, env.arm.joints, env.arm.gripper, chunk_length)
            record.add_sample(obs, chunk, current, image_size)
            action = chunk[0] if planned is None else planned[i]
            obs, reached, _, _ = env.step(action)
            env.done = False  # the recording decides when to stop
            if not record.success:
                record.num_steps += 1
                record.success = bool(reached)
            if record.success:
                if hover_left == 0:
                    finished = True
                    break
                hover_left -= 1
            elif record.num_steps >= limit:
                finished = True
                break
    return record


def collect(config: DaggerConfig, progress: bool = True) -> tuple[list[EpisodeRecord], list[dict]]:
    """Roll out ``config.episodes`` episodes; returns the records and their metadata entries."""
    import torch

    from ..control.robot_config import load_robot_config
    from ..model import load_policy

    torch.set_num_threads(config.threads)
    data_config = read_meta(config.dataset)["config"]
    task = data_config.get("task", "above")
    policy = load_policy(config.checkpoint, device="cpu", dtype="float32", announce=False)
    robot = load_robot_config()
    env, expert = recording_env(data_config, task, config.seed, init_joint_noise=config.init_joint_noise,
                                max_steps=10**6)
    rng = np.random.default_rng([config.seed, 53])
    records, episodes = [], []
    seeds = range(config.first_seed, config.first_seed + config.episodes)
    iterator = seeds
    if progress:
        from tqdm import tqdm
        iterator = tqdm(seeds, desc="dagger", unit="ep", dynamic_ncols=True)
    for seed in iterator:
        record = record_policy_episode(env, policy, expert, robot, seed, task, data_config["image_size"],
                                       data_config["chunk_length"], rng, config)
        records.append(record)
        episodes.append({"seed": record.seed, "target": record.target, "instruction": record.instruction,
                         "success": record.success, "num_steps": record.num_steps, "action_noise": 0.0,
                         "detour": 0, "start_above": None, "switch_step": env.episode.switch_step,
                         "next_target": env.episode.next_target, "source": "dagger"})
    return records, episodes


def _write(out: str | os.PathLike, arrays: dict, meta: dict, compress: bool) -> str:
    """Write a dataset file atomically (replaced only once the new file is complete)."""
    out = os.fspath(out)
    tmp = out + ".tmp.npz"
    save = np.savez_compressed if compress else np.savez
    save(tmp, **arrays, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    os.replace(tmp, out)
    return out


def relabel(dataset: str | os.PathLike, out: str | os.PathLike, expert=None, compress: bool = True) -> dict:
    """Label every stored state of a pregrasp dataset (expert and DAgger samples) again with
    ``expert`` (default: the task's current ``make_expert``): each sample's chunk becomes the
    expert's chunk from its stored joints and gripper, for the cube it named (its ``target``).
    Views, proprio and all other arrays are kept; the metadata records the relabelling."""
    with np.load(dataset) as data:
        arrays = {name: data[name] for name in data.files if name != "meta"}
        meta = json.loads(data["meta"].tobytes().decode())
    config = meta["config"]
    task = config.get("task", "above")
    if task != "pregrasp":
        raise ValueError(f"relabel supports the pregrasp task's datasets, not {task!r}")
    if expert is None:
        expert = make_expert(task, control_period=config["control_period"], max_joint_speed=config["max_joint_speed"])
    proprio, chunks = arrays["proprio"], arrays["chunks"]
    episodes = {}
    labels = np.empty_like(chunks)
    for i in range(len(proprio)):
        number = int(arrays["episode"][i])
        if number not in episodes:
            episodes[number] = make_episode(meta["episodes"][number]["seed"], task)
        episode = episodes[number]
        named = episode._replace(target=episode.scene.names[int(arrays["target"][i])], switch_step=None)
        labels[i] = expert.action_chunk(named, proprio[i, :6].astype(np.float64), float(proprio[i, 6]),
                                        chunks.shape[1])
    change = np.abs(labels - chunks)
    arrays["chunks"] = labels.astype(chunks.dtype)
    meta.setdefault("relabelled", []).append({"from": os.fspath(dataset), "samples": int(len(labels)),
                                              "expert": type(expert).__name__})
    path = _write(out, arrays, meta, compress)
    return {"path": path, "samples": int(len(labels)), "mean_joint_change": float(change[..., :6].mean()),
            "mean_gripper_change": float(change[..., 6].mean()),
            "gripper_closed_share": [float(chunks[..., 6].mean()), float(labels[..., 6].mean())]}


def _stream_npz(out: str | os.PathLike, source: str | os.PathLike, additions: dict, meta: dict,
                compress: bool) -> str:
    """Write ``source``'s arrays with ``additions[name]`` appended along the first axis, and ``meta``,
    to ``out``, one array at a time and without holding any array in memory: each stored array's
    bytes are copied block by block behind a header with the new length, then the new rows follow.
    A dataset can outgrow the machine's memory once its views are held twice (a 14.5 GB dataset
    could not be loaded and concatenated in 23 GB). Atomic like ``_write``."""
    out = os.fspath(out)
    tmp = out + ".tmp.npz"
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    try:
        _stream_members(source, tmp, additions, meta, method)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, out)
    return out


def _stream_members(source, tmp: str, additions: dict, meta: dict, method: int) -> None:
    fmt = np.lib.format
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(tmp, "w", compression=method, allowZip64=True) as dst:
        missing = set(additions) - {member[:-len(".npy")] for member in src.namelist()}
        if missing:
            raise ValueError(f"{source} has no array(s) {sorted(missing)} to append to")
        for member in src.namelist():
            name = member[:-len(".npy")]
            if name == "meta":
                continue
            with src.open(member) as stored:
                shape, fortran, dtype = read_npy_header(stored)
                if fortran:
                    raise ValueError(f"{source}: {name} is stored in Fortran order; expected C order")
                extra = additions.get(name)
                if extra is not None:
                    if extra.shape[1:] != tuple(shape[1:]):
                        raise ValueError(f"{name}: new samples have shape {extra.shape[1:]}, the dataset "
                                         f"{tuple(shape[1:])}")
                    extra = np.ascontiguousarray(extra, dtype=dtype)
                    shape = (shape[0] + len(extra),) + tuple(shape[1:])
                with dst.open(member, "w", force_zip64=True) as target:
                    fmt.write_array_header_2_0(target, {"descr": fmt.dtype_to_descr(dtype),
                                                        "fortran_order": False, "shape": tuple(shape)})
                    shutil.copyfileobj(stored, target, 64 << 20)
                    if extra is not None and extra.size:
                        target.write(extra.reshape(-1).view(np.uint8).data)
        with dst.open("meta.npy", "w", force_zip64=True) as target:
            fmt.write_array(target, np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def append_records(dataset: str | os.PathLike, records: list[EpisodeRecord], episodes: list[dict],
                   out: str | os.PathLike, note: dict | None = None, compress: bool = True) -> dict:
    """Write ``dataset`` plus ``records`` (one episode each, metadata ``episodes``) to ``out``.
    The stored arrays are streamed, not loaded (see ``_stream_npz``)."""
    if len(records) != len(episodes):
        raise ValueError(f"{len(records)} records but {len(episodes)} episode entries")
    meta = read_meta(dataset)
    with np.load(dataset) as data:
        stored_samples = len(data["proprio"])
        target_dtype = data["target"].dtype
    known = {e["seed"] for e in meta["episodes"]}
    clash = sorted(known & {e["seed"] for e in episodes})
    if clash:
        raise ValueError(f"scene seeds {clash[:5]} are already in {dataset}; use other seeds")
    instructions = list(meta["instructions"])
    first_episode = len(meta["episodes"])
    new = {v: [] for v in VIEW_NAMES}
    proprio, chunks, episode_index, step_index, instruction_index, target_index = [], [], [], [], [], []
    for number, record in enumerate(records):
        for text in [record.instruction] + record.instructions:
            if text not in instructions:
                instructions.append(text)
        for view in VIEW_NAMES:
            new[view].extend(record.images[view])
        proprio.extend(record.proprio)
        chunks.extend(record.chunks)
        instruction_index.extend(instructions.index(text) for text in record.instructions)
        target_index.extend(record.targets)
        episode_index.extend([first_episode + number] * len(record.chunks))
        step_index.extend(range(len(record.chunks)))
    additions = {}
    if proprio:
        additions = {
            "fixed": np.stack(new["fixed"]), "wrist": np.stack(new["wrist"]),
            "proprio": np.stack(proprio).astype(np.float32), "chunks": np.stack(chunks).astype(np.float32),
            "episode": np.asarray(episode_index, dtype=np.int32), "step": np.asarray(step_index, dtype=np.int32),
            "instruction": np.asarray(instruction_index, dtype=np.int32),
            "target": np.asarray(target_index, dtype=target_dtype)}
    meta["instructions"] = instructions
    meta["episodes"] = meta["episodes"] + episodes
    meta.setdefault("dagger_rounds", []).append({**(note or {}), "episodes": len(episodes),
                                                 "samples": len(proprio)})
    out = _stream_npz(out, dataset, additions, meta, compress)
    return {"path": out, "episodes": len(meta["episodes"]), "samples": stored_samples + len(proprio),
            "added_samples": len(proprio), "added_success": float(np.mean([e["success"] for e in episodes]))
            if episodes else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="the policy to roll out (not with --relabel)")
    parser.add_argument("--relabel", action="store_true",
                        help="only label every stored state again with the current expert (no roll-outs)")
    parser.add_argument("--no-compress", action="store_true",
                        help="write the .npz uncompressed (several times larger, much faster to write and load)")
    parser.add_argument("--dataset", required=True, help="the recorded dataset to extend")
    parser.add_argument("--out", required=True, help="the merged dataset (.npz)")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--first-seed", type=int, default=200_000)
    parser.add_argument("--expert-probability", type=float, default=0.3)
    parser.add_argument("--actions-per-step", type=int, default=4,
                        help="chunk points the policy follows per call (default 4, policy.yaml's); roll out at "
                             "the horizon the policy is deployed with (config/sim_pregrasp.yaml: 7)")
    parser.add_argument("--max-steps", type=int, default=None, help="control steps per episode (default: the task's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.relabel:
        print(json.dumps(relabel(args.dataset, args.out, compress=not args.no_compress)))
        return 0
    if not args.checkpoint:
        parser.error("--checkpoint is required (except with --relabel)")
    try:
        config = DaggerConfig(checkpoint=args.checkpoint, dataset=args.dataset, out=args.out, episodes=args.episodes,
                              first_seed=args.first_seed, expert_probability=args.expert_probability, seed=args.seed,
                              actions_per_step=args.actions_per_step, max_steps=args.max_steps, threads=args.threads)
    except ValueError as error:
        parser.error(str(error))  # one line and exit status 2, before anything is rolled out
    started = time.time()
    records, episodes = collect(config)
    print(f"dagger: {len(records)} episodes, {sum(len(r.chunks) for r in records)} samples, policy+expert "
          f"success {np.mean([e['success'] for e in episodes]):.0%} ({time.time() - started:.0f} s)")
    summary = append_records(config.dataset, records, episodes, config.out, note=asdict(config),
                             compress=not args.no_compress)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
