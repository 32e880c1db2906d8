"""Closed-loop evaluation in the simulator: success rate per pruning method and keep ratio.

Every configuration (method x keep ratio, plus the unpruned policy) runs the same episodes: scene
seeds ``seed .. seed + episodes - 1`` give the same cubes, target, instruction and start pose to
every configuration. A policy step goes the way the ROS demo goes: the 224x224 views and the
proprio (6 joints + gripper 0..1) go into ``Policy.predict``; the chunk is made safe exactly as the
policy node does (``make_safe_chunk`` with the robot config's joint limits and the node's
``max_joint_velocity``), and the first ``actions_per_step`` points are executed open loop, one per
control period, before the next query. An episode succeeds when the sim's success test holds
within its step limit.

Reported per configuration: success rate with a 95 % Wilson interval, mean control steps of the
successful episodes, median ms per policy step (``PolicyOutput.timings["total"]``), the share of
policy steps that actually ran pruned (methods with a temporal history run unpruned during their
warm-up) and the LLM FLOPs the configuration really spent: the analytic FLOPs of every policy
step of every episode, warm-up steps included, over those of the same steps unpruned.  The paired
protocol (McNemar against a reference, success on episodes with a pruned call, success against
radius, error histogram) is in ``vla_pruner_ros.evaluation.report``.

Tasks plug in through ``evaluate(config, make_env=...)``: ``make_env(config)`` returns an
environment with ``reset(seed=, task=) -> obs``, ``step(joint targets (7,)) -> (obs, reached, done,
info)``, ``done``, ``step_count``, ``control_period`` and ``episode.target``; ``obs`` holds
"images" {view: HxWx3 uint8}, "proprio", "joints", "instruction".  ``info["final_error"]`` (m), when
the task gives it, is the error the radius curve uses; otherwise ``info["horizontal_distance"]``.
The default factory is ``SimEnv`` with ``config.task``.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..control.robot_config import RobotConfig, load_robot_config
from ..control.safety import make_safe_chunk
from ..distributed.sink import describe_changes
from ..evaluation.report import DEFAULT_RADII, EpisodeOutcome, config_label, format_paired_report, \
    write_paired_report
from ..evaluation.stats import WILSON_Z, wilson_interval  # noqa: F401  (re-exported)
from ..pruning import METHODS, PrunerConfig
from ..pruning.config import pruner_setting
from ..pruning.variants import variant_config
from ..sim import SimEnv, make_expert, run_expert_episode
from ..sim.task import TASKS

DEFAULT_METHODS = ("none", "fastv", "fastv_last", "fastv_all_rows", "sparsevlm", "divprune", "random", "vla_pruner")
DEFAULT_KEEP_RATIOS = (0.5, 0.25, 0.125)
RENDER_SIZE = (224, 224)  # the sim cameras of the ROS demo


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: str
    methods: tuple[str, ...] = DEFAULT_METHODS
    keep_ratios: tuple[float, ...] = DEFAULT_KEEP_RATIOS
    episodes: int = 50
    task: str = "above"
    seed: int = 0  # first scene seed
    actions_per_step: int = 4  # the node's default
    control_period: float = 0.1  # 1 / the node's control_rate
    max_joint_velocity: float = 1.0  # rad/s, the node's default (config/policy.yaml)
    # K and VLA-Pruner's w (also its warm-up length): PrunerConfig's declared defaults (one home)
    prune_layer: int = pruner_setting("prune_layer").default
    window: int = pruner_setting("window").default
    include_expert: bool = True
    threads: int = 2
    dtype: str = "float32"  # load_policy's dtype ("auto" may pick bf16 on a CPU with native bf16)

    def __post_init__(self):
        if not self.methods:
            raise ValueError("EvalConfig.methods: expected at least one method")
        unknown = [m for m in self.methods if m.split(":")[0] not in METHODS]  # variants: pruning/variants.py
        if unknown:
            raise ValueError(f"EvalConfig.methods: unknown {unknown}; expected names from {METHODS}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"EvalConfig.methods={self.methods}: listed twice")
        if any(m != "none" for m in self.methods) and not self.keep_ratios:
            raise ValueError("EvalConfig.keep_ratios: expected at least one ratio for the pruning methods")
        for ratio in self.keep_ratios:
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
                raise ValueError(f"EvalConfig.keep_ratios: {ratio!r} is not in (0, 1]")
        if isinstance(self.episodes, bool) or not isinstance(self.episodes, int) or self.episodes < 1:
            raise ValueError(f"EvalConfig.episodes={self.episodes!r}: expected a positive integer")
        if self.task not in TASKS:
            raise ValueError(f"EvalConfig.task={self.task!r}: expected one of {sorted(TASKS)}")
        if not isinstance(self.actions_per_step, int) or self.actions_per_step < 1:
            raise ValueError(f"EvalConfig.actions_per_step={self.actions_per_step!r}: expected a positive integer")
        for name in ("control_period", "max_joint_velocity"):
            if not getattr(self, name) > 0:
                raise ValueError(f"EvalConfig.{name}={getattr(self, name)!r}: expected > 0")

    def configurations(self) -> list[tuple[str, float]]:
        """(method, keep ratio) pairs in run order; "none" runs once, at ratio 1."""
        pairs = [("none", 1.0)] if "none" in self.methods else []
        pairs += [(m, float(r)) for m in self.methods if m != "none" for r in self.keep_ratios]
        return pairs

    def pruner(self, method: str, keep_ratio: float) -> PrunerConfig | None:
        if method == "none":
            return None
        return variant_config(method, keep_ratio, prune_layer=self.prune_layer, window=self.window)


@dataclass
class EpisodeResult:
    seed: int
    target: str
    success: bool
    steps: int  # control steps until success or the limit
    policy_steps: int
    pruned_steps: int
    step_ms: list[float] = field(default_factory=list)
    flops_ratio: list[float] = field(default_factory=list)
    final_horizontal_distance: float = float("nan")
    final_height_above_target: float = float("nan")
    final_error: float = float("nan")  # the task's error at the end (m): info["final_error"] or the distance
    warmup_steps: int = 0  # policy steps the pruner ran unpruned to fill its history
    flops_spent: float = 0.0  # analytic LLM FLOPs of every policy step, as run (warm-up included)
    flops_full: float = 0.0  # the same steps unpruned

    @property
    def flops_spent_ratio(self) -> float:
        return self.flops_spent / self.flops_full if self.flops_full else float("nan")


def executed_actions(actions: np.ndarray, joints: np.ndarray, robot: RobotConfig, control_period: float,
                     max_joint_velocity: float, actions_per_step: int) -> list[np.ndarray]:
    """The sim actions (6 joint targets + gripper) of one policy call, as the node would send them:
    the chunk made safe from where the arm is (``make_safe_chunk``), its first ``actions_per_step``
    points, the gripper column clipped to [0, 1] (0 where the robot has no gripper action)."""
    safe = make_safe_chunk(actions, joints, robot, control_period, max_joint_velocity)
    gripper = np.clip(actions[:, robot.gripper_action_index], 0.0, 1.0) \
        if robot.gripper_action_index is not None else np.zeros(len(actions))
    return [np.concatenate([safe.joint_positions[i], [gripper[i]]])
            for i in range(min(actions_per_step, len(safe.joint_positions)))]


def run_episode(policy, env: SimEnv, seed: int, robot: RobotConfig, actions_per_step: int = 4,
                max_joint_velocity: float = 1.0, task: str | None = None) -> EpisodeResult:
    """One closed-loop episode of ``policy`` (its pruner already set) from scene ``seed``."""
    obs = env.reset(seed=seed, task=task)
    policy.reset()
    result = EpisodeResult(seed=seed, target=env.episode.target, success=False, steps=0, policy_steps=0,
                           pruned_steps=0)
    info: dict = {}
    while not env.done:
        out = policy.predict(images=obs["images"], proprio=obs["proprio"], instruction=obs["instruction"])
        result.policy_steps += 1
        result.pruned_steps += int(out.pruned)
        result.warmup_steps += int(bool(getattr(out, "warmup", False)))
        result.step_ms.append(float(out.timings["total"]))
        result.flops_ratio.append(float(out.flops["ratio"]))
        full = float(out.flops.get("full", 1.0))
        result.flops_full += full
        result.flops_spent += float(out.flops.get("pruned", full * float(out.flops["ratio"])))
        for action in executed_actions(out.actions, obs["joints"], robot, env.control_period, max_joint_velocity,
                                       actions_per_step):
            obs, reached, done, info = env.step(action)
            result.success = result.success or bool(reached)
            if done:
                break
    result.steps = env.step_count
    result.final_horizontal_distance = float(info.get("horizontal_distance", float("nan")))
    result.final_height_above_target = float(info.get("height_above_target", float("nan")))
    result.final_error = float(info.get("final_error", result.final_horizontal_distance))
    return result


def summarize(method: str, keep_ratio: float, episodes: list[EpisodeResult], num_visual_tokens: int,
              budget: int) -> dict:
    """One table row from a configuration's episodes."""
    successes = sum(e.success for e in episodes)
    low, high = wilson_interval(successes, len(episodes))
    success_steps = [e.steps for e in episodes if e.success]
    step_ms = [ms for e in episodes for ms in e.step_ms]
    spent, full = sum(e.flops_spent for e in episodes), sum(e.flops_full for e in episodes)
    policy_steps = sum(e.policy_steps for e in episodes)
    by_target: dict[str, list[bool]] = {}
    for e in episodes:
        by_target.setdefault(e.target, []).append(e.success)
    return {
        "method": method,
        "keep_ratio": keep_ratio,
        "kept_tokens": budget,
        "visual_tokens": num_visual_tokens,
        "episodes": len(episodes),
        "successes": successes,
        "success_rate": successes / len(episodes),
        "ci95_low": low,
        "ci95_high": high,
        "mean_steps_to_success": float(np.mean(success_steps)) if success_steps else float("nan"),
        "median_ms_per_step": float(np.median(step_ms)) if step_ms else float("nan"),
        "pruned_step_fraction": sum(e.pruned_steps for e in episodes) / max(1, policy_steps),
        # FLOPs really spent over the episodes (warm-up steps count in full) / the same steps unpruned
        "mean_flops_ratio": spent / full if full else float("nan"),
        "warmup_step_fraction": sum(e.warmup_steps for e in episodes) / max(1, policy_steps),
        "episodes_with_pruned_call": sum(e.pruned_steps > 0 for e in episodes),
        "mean_policy_steps": policy_steps / len(episodes),
        "success_by_target": {t: float(np.mean(v)) for t, v in sorted(by_target.items())},
    }


def evaluate_expert(config: EvalConfig) -> dict:
    """The scripted expert (as used for the demonstrations) on the same scene seeds."""
    env = SimEnv(seed=config.seed, image_size=None, control_period=config.control_period, task=config.task)
    expert = make_expert(config.task, env.kinematics, control_period=config.control_period,
                         max_joint_speed=config.max_joint_velocity)
    runs = [run_expert_episode(env, seed=config.seed + i, task=config.task, expert=expert)
            for i in range(config.episodes)]
    successes = sum(r["success"] for r in runs)
    low, high = wilson_interval(successes, len(runs))
    steps = [r["num_steps"] for r in runs if r["success"]]
    return {"method": "expert", "episodes": len(runs), "successes": successes, "success_rate": successes / len(runs),
            "ci95_low": low, "ci95_high": high,
            "mean_steps_to_success": float(np.mean(steps)) if steps else float("nan")}


def default_env(config: EvalConfig) -> SimEnv:
    """The sim reach environment of ``config.task`` with the demo's camera size."""
    return SimEnv(seed=config.seed, image_size=RENDER_SIZE, control_period=config.control_period, task=config.task)


def checkpoint_content_id(path: str | os.PathLike, sample_bytes: int = 1 << 20) -> str:
    """An id of a checkpoint's files that does not depend on where they lie: sha256 over each
    file's relative name, size, first and last ``sample_bytes``. A sim checkpoint is read whole; a
    15 GB OFT one costs a few MiB of reads, and retrained weights of equal shapes still differ in
    the sampled bytes. A path that is not a directory is its own id."""
    root = Path(path)
    if not root.is_dir():
        return str(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root).as_posix()}\0{size}\0".encode())
        with open(file, "rb") as f:
            digest.update(f.read(sample_bytes))
            if size > sample_bytes:
                f.seek(max(sample_bytes, size - sample_bytes))
                digest.update(f.read())
    return digest.hexdigest()


class EpisodeLog:
    """Append-only JSON lines of finished episodes, so a long evaluation survives being stopped:
    a rerun with the same settings skips the episodes already logged.  The first line holds the
    settings; a log written under other settings (other checkpoint files, task, seeds, ...) is
    refused. The checkpoint counts by content (``checkpoint_content_id``), not by path: the same
    files copied elsewhere resume the log, new weights written over the old path do not."""

    IDENTITY = ("task", "seed", "actions_per_step", "control_period", "max_joint_velocity",
                "prune_layer", "window", "dtype")

    def __init__(self, path: str | os.PathLike, config: EvalConfig):
        self.path = Path(path)
        self.done: dict[tuple[str, float, int], EpisodeResult] = {}
        identity = {"checkpoint_content": checkpoint_content_id(config.checkpoint),
                    **{key: getattr(config, key) for key in self.IDENTITY}}
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            header = json.loads(lines[0])
            old, new = header.get("settings") or {}, json.loads(json.dumps(identity))
            if old != new:
                raise ValueError(f"{self.path} was written with other settings ({describe_changes(old, new)}); "
                                 "use another --out or delete the log")
            names = {f.name for f in dataclasses.fields(EpisodeResult)}
            for line in lines[1:]:
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                key = (data.pop("method"), round(float(data.pop("keep_ratio")), 6), int(data["seed"]))
                self.done[key] = EpisodeResult(**{k: v for k, v in data.items() if k in names})
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The path is noted for people reading the log; only the settings are compared.
            self.path.write_text(json.dumps({"settings": identity, "checkpoint": str(config.checkpoint)}) + "\n",
                                 encoding="utf-8")

    def get(self, method: str, keep_ratio: float, seed: int) -> EpisodeResult | None:
        return self.done.get((method, round(float(keep_ratio), 6), int(seed)))

    def add(self, method: str, keep_ratio: float, result: EpisodeResult) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"method": method, "keep_ratio": keep_ratio, **asdict(result)}, default=float) + "\n")


def evaluate(config: EvalConfig, progress: bool = True, policy=None,
             make_env: Callable[[EvalConfig], object] | None = None,
             log_path: str | os.PathLike | None = None) -> dict:
    """Run every configuration; returns {"config", "expert", "rows", "episodes", "wall_s"}.
    ``policy``: an already loaded policy (default: ``load_policy(config.checkpoint)``).
    ``make_env``: the task's environment factory (default ``default_env``; see the module doc);
    the scripted-expert row is only computed for the default environment.
    ``log_path``: an ``EpisodeLog`` (JSON lines): every finished episode is appended, and episodes
    already there are reused instead of run again (resume)."""
    import torch

    from ..model import load_policy

    started = time.time()
    torch.set_num_threads(config.threads)
    if policy is None:
        policy = load_policy(config.checkpoint, device="cpu", dtype=None if config.dtype == "auto" else config.dtype)
    for method, _ in config.configurations():
        if method != "none" and config.prune_layer >= policy.num_layers:
            raise ValueError(f"EvalConfig.prune_layer={config.prune_layer}: the checkpoint's LLM has "
                             f"{policy.num_layers} layers")
    robot = load_robot_config()
    env = (make_env or default_env)(config)
    expert = evaluate_expert(config) if config.include_expert and make_env is None else None
    pairs = config.configurations()
    log = EpisodeLog(log_path, config) if log_path is not None else None
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(pairs) * config.episodes, desc="eval-sim", unit="ep", dynamic_ncols=True)
    rows, episodes_out = [], []
    resumed = 0  # episodes taken from the log instead of run now
    by_config: dict[tuple[str, float], list[EpisodeResult]] = {pair: [] for pair in pairs}
    try:
        # Seed-major: every configuration runs scene i before any runs scene i + 1, so a run stopped
        # early (see EpisodeLog) still holds the same episodes for every configuration (paired).
        for i in range(config.episodes):
            for method, ratio in pairs:
                results = by_config[(method, ratio)]
                result = log.get(method, ratio, config.seed + i) if log is not None else None
                if result is None:
                    policy.set_pruner(config.pruner(method, ratio))
                    result = run_episode(policy, env, config.seed + i, robot, config.actions_per_step,
                                         config.max_joint_velocity, task=config.task)
                    if log is not None:
                        log.add(method, ratio, result)
                else:
                    resumed += 1
                results.append(result)
                if bar is not None:
                    bar.update(1)
                    rate = sum(r.success for r in results) / len(results)
                    bar.set_postfix({"config": f"{method}@{ratio:g}", "success": f"{rate:.0%}"})
        for (method, ratio), results in by_config.items():
            pruner = config.pruner(method, ratio)
            budget = pruner.budget(policy.num_visual_tokens) if pruner else policy.num_visual_tokens
            rows.append(summarize(method, ratio, results, policy.num_visual_tokens, budget))
            episodes_out.extend({"method": method, "keep_ratio": ratio, **_episode_dict(r)} for r in results)
    finally:
        if bar is not None:
            bar.close()
        policy.set_pruner(None)
    return {"config": asdict(config), "expert": expert, "rows": rows, "episodes": episodes_out,
            "num_visual_tokens": policy.num_visual_tokens, "num_layers": policy.num_layers,
            "wall_s": time.time() - started, "resumed_episodes": resumed}


def _episode_dict(result: EpisodeResult) -> dict:
    out = asdict(result)
    out["median_ms_per_step"] = float(np.median(out.pop("step_ms"))) if result.step_ms else float("nan")
    out.pop("flops_ratio")
    out["flops_spent_ratio"] = result.flops_spent_ratio
    return out


# ------------------------------------------------------------------------------------ output
def outcomes(results: dict) -> list[EpisodeOutcome]:
    """The episodes of ``results`` as the paired protocol's records (episode id = scene seed)."""
    return [EpisodeOutcome(config=config_label(e["method"], e["keep_ratio"]), episode=int(e["seed"]),
                           success=bool(e["success"]), final_error=float(e.get("final_error", float("nan"))),
                           pruned_calls=int(e["pruned_steps"]), policy_calls=int(e["policy_steps"]),
                           flops_spent=float(e.get("flops_spent", float("nan"))),
                           flops_full=float(e.get("flops_full", float("nan"))))
            for e in results["episodes"]]


def format_table(results: dict) -> str:
    """The printed table: one line per configuration, the expert first."""
    header = (f"{'method':<14} {'keep':>6} {'tokens':>7} {'success':>8} {'95% CI':>15} {'steps':>6} "
              f"{'ms/step':>8} {'pruned':>7} {'FLOPs':>6}")
    lines = [header, "-" * len(header)]
    expert = results.get("expert")
    if expert:
        lines.append(f"{'expert':<14} {'':>6} {'':>7} {expert['success_rate']:>8.1%} "
                     f"{_ci(expert):>15} {expert['mean_steps_to_success']:>6.1f} {'':>8} {'':>7} {'':>6}")
    for row in results["rows"]:
        lines.append(
            f"{row['method']:<14} {row['keep_ratio']:>6.3f} {row['kept_tokens']:>3}/{row['visual_tokens']:<3} "
            f"{row['success_rate']:>8.1%} {_ci(row):>15} {row['mean_steps_to_success']:>6.1f} "
            f"{row['median_ms_per_step']:>8.1f} {row['pruned_step_fraction']:>7.0%} {row['mean_flops_ratio']:>6.2f}")
    return "\n".join(lines)


def _ci(row: dict) -> str:
    return f"[{row['ci95_low'] * 100:.1f}, {row['ci95_high'] * 100:.1f}]"


CSV_FIELDS = ("method", "keep_ratio", "kept_tokens", "visual_tokens", "episodes", "successes", "success_rate",
              "ci95_low", "ci95_high", "mean_steps_to_success", "median_ms_per_step", "pruned_step_fraction",
              "mean_flops_ratio")


def write_results(results: dict, out_dir: str | os.PathLike, command: str | None = None,
                  references: tuple[str, ...] = ("none",), radii: tuple[float, ...] = DEFAULT_RADII) -> dict[str, str]:
    """results.json (everything), results.csv (one row per configuration, the expert included),
    table.txt, success_vs_keep_ratio.png, and the paired protocol (``evaluation.report``):
    paired.json, paired.txt, radius_curve.png, final_error_hist.png. Returns {kind: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "table": out / "table.txt",
             "plot": out / "success_vs_keep_ratio.png"}
    report, paired_paths = write_paired_report(
        outcomes(results), out, references=references, radii=radii,
        title=f"sim task {results['config'].get('task', '')!r}, {results['config'].get('episodes')} paired episodes")
    results["paired"] = report
    payload = dict(results)
    if command:
        payload["command"] = command
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, default=float)
        f.write("\n")
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        if results.get("expert"):
            writer.writerow({**results["expert"], "keep_ratio": ""})
        for row in results["rows"]:
            writer.writerow(row)
    table = format_table(results) + "\n\n" + format_paired_report(report)
    resumed = results.get("resumed_episodes", 0)
    lines = [table, "", f"wall time: {results['wall_s']:.0f} s"
             + (f" (this run; {resumed} episodes were read from the log of an earlier run)" if resumed else "")]
    if command:
        lines.append(f"command: {command}")
    paths["table"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot_success(results, paths["plot"])
    return {**{k: str(v) for k, v in paths.items()}, **paired_paths}


def plot_success(results: dict, path: str | os.PathLike) -> None:
    """Success rate vs keep ratio per method (95 % intervals as error bars); the unpruned policy
    and the expert as horizontal references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    rows = results["rows"]
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "none"]
    ratios = sorted({r["keep_ratio"] for r in rows if r["method"] != "none"})
    offsets = np.linspace(-0.03, 0.03, max(1, len(methods)))  # log-x jitter so error bars do not overlap
    for method, offset in zip(methods, offsets):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["keep_ratio"])
        x = np.array([r["keep_ratio"] for r in mine]) * 10 ** offset
        y = np.array([r["success_rate"] for r in mine]) * 100
        err = np.array([[r["success_rate"] - r["ci95_low"], r["ci95_high"] - r["success_rate"]] for r in mine]).T * 100
        err = np.clip(err, 0.0, None)  # an interval end equal to the rate may round a hair past it
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, linewidth=1.6 if method == "vla_pruner" else 1.0,
                    label=method)
    for row in rows:
        if row["method"] == "none":
            ax.axhline(row["success_rate"] * 100, color="black", linestyle="--", linewidth=1,
                       label=f"unpruned ({row['success_rate']:.0%})")
            ax.axhspan(row["ci95_low"] * 100, row["ci95_high"] * 100, color="black", alpha=0.07)
    if results.get("expert"):
        ax.axhline(results["expert"]["success_rate"] * 100, color="tab:gray", linestyle=":", linewidth=1,
                   label=f"expert ({results['expert']['success_rate']:.0%})")
    if ratios:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ratios)
        ax.set_xticklabels([f"{r:g}" for r in ratios])
        ax.set_xlim(min(ratios) / 1.4, max(ratios) * 1.4)
    ax.set_xlabel("keep ratio (fraction of the visual tokens kept)")
    ax.set_ylabel("success rate (%)")
    episodes = rows[0]["episodes"] if rows else 0
    ax.set_title(f"closed-loop success in the sim reach task ({episodes} episodes per point, 95% Wilson CI)",
                 fontsize=9)
    ax.set_ylim(-3, 103)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
