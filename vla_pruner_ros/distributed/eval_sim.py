"""``vla-pruner eval-sim`` as units: one unit = one (method, keep ratio, scene seed) episode.

``evaluate_sweep`` returns exactly what ``training.evaluate.evaluate`` returns (same rows, same
episode records in the same order, so the same tables, CSV, plots and paired report), but runs the
episodes through ``run_units``: on this machine one after the other (``SerialBackend``), or on Ray
workers that each load the policy once (``RayBackend``). Finished episodes go to the serial run's
own ``EpisodeLog`` (--out/episodes.jsonl, through ``EpisodeLogSink``), so a sweep resumes where it
stopped whichever way it ran before. Units are seed-major as in the serial loop: a sweep stopped
early holds (nearly) the same scenes for every configuration.

Per-episode results do not depend on the worker or the order: each episode starts from
``env.reset(seed)`` and ``policy.reset()`` (which also restarts the random method's generator), so
an episode is a function of (checkpoint, settings, method, keep ratio, seed). Equality with the
serial run holds bit for bit for the same --threads, torch build and CPU type; on other CPUs
(another vector unit) or with CUDA (kernels and reductions chosen per GPU) floating-point results
may differ in the last bits, which can flip an episode that ends at the success boundary.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .core import Backend, SweepIncomplete, Unit, run_units

SINK_FILE = "episodes.jsonl"  # the serial run's EpisodeLog


def unit_key(method: str, keep_ratio: float, seed: int) -> str:
    return f"{method}@{float(keep_ratio)!r}/seed={int(seed)}"


def sim_units(config) -> list[Unit]:
    """Seed-major, as the serial loop runs them: every configuration's scene i before scene i + 1."""
    return [Unit(unit_key(method, ratio, config.seed + i), (method, float(ratio), config.seed + i))
            for i in range(config.episodes) for method, ratio in config.configurations()]


class EpisodeLogSink:
    """``run_units``' sink over eval-sim's ``EpisodeLog``: the same file and resume rule as the serial run."""

    def __init__(self, log, config):
        self.log = log
        self.config = config

    @property
    def path(self) -> Path:
        return self.log.path

    def results(self) -> dict:
        from ..training.evaluate import EpisodeResult  # noqa: F401 (the log's records)

        return {unit_key(method, ratio, seed): {"episode": asdict(result)}
                for (method, ratio, seed), result in self.log.done.items()}

    def __contains__(self, key: str) -> bool:
        return key in self.results()

    def add(self, key: str, result: dict) -> None:
        from ..training.evaluate import EpisodeResult

        method, ratio, seed = _unit_args(key)
        episode = EpisodeResult(**result["episode"])
        self.log.add(method, ratio, episode)
        self.log.done[(method, round(ratio, 6), seed)] = episode


def sink_for(config, out_dir, resume: bool = True) -> EpisodeLogSink:
    """The serial run's episode log in ``out_dir`` (ValueError if it was written with other settings)."""
    from ..training.evaluate import EpisodeLog

    path = Path(out_dir) / SINK_FILE
    if not resume and path.exists():
        path.unlink()
    return EpisodeLogSink(EpisodeLog(path, config), config)


def _unit_args(key: str) -> tuple[str, float, int]:
    label, seed = key.rsplit("/seed=", 1)
    method, ratio = label.rsplit("@", 1)
    return method, float(ratio), int(seed)


@dataclass
class SimEpisodeWork:
    """One worker's part of eval-sim: ``setup`` loads the policy, the robot and the env once."""

    config: Any  # training.evaluate.EvalConfig
    make_env: Callable | None = None  # picklable (a module-level function) for Ray
    policy: Any = field(default=None, repr=False, compare=False)  # an already loaded policy (this process only)

    def __getstate__(self):  # a loaded policy never travels: remote workers load the checkpoint
        state = dict(self.__dict__)
        state["policy"] = None
        return state

    def setup(self) -> dict:
        import torch

        from ..control.robot_config import load_robot_config
        from ..model import load_policy
        from ..training.evaluate import default_env

        config = self.config
        torch.set_num_threads(config.threads)
        dtype = getattr(config, "dtype", "auto")
        policy = self.policy if self.policy is not None else \
            load_policy(config.checkpoint, device="cpu", dtype=None if dtype == "auto" else dtype)
        for method, _ in config.configurations():
            if method != "none" and config.prune_layer >= policy.num_layers:
                raise ValueError(f"EvalConfig.prune_layer={config.prune_layer}: the checkpoint's LLM has "
                                 f"{policy.num_layers} layers")
        return {"policy": policy, "robot": load_robot_config(), "env": (self.make_env or default_env)(config),
                "pair": None}

    def run(self, state: dict, args, tick=None) -> dict:
        from ..training.evaluate import run_episode

        method, ratio, seed = args
        config, policy = self.config, state["policy"]
        pruner = config.pruner(method, ratio)
        if state["pair"] != (method, ratio):
            policy.set_pruner(pruner)
            state["pair"] = (method, ratio)
        result = run_episode(policy, state["env"], seed, state["robot"], config.actions_per_step,
                             config.max_joint_velocity, task=config.task)
        return {"episode": asdict(result), "num_visual_tokens": int(policy.num_visual_tokens),
                "num_layers": int(policy.num_layers)}


def evaluate_sweep(config, backend: Backend | None = None, sink: EpisodeLogSink | None = None, progress: bool = True,
                   policy=None, make_env: Callable | None = None,
                   on_result: Callable[[str, dict], None] | None = None) -> dict:
    """``training.evaluate.evaluate`` through ``run_units`` (see the module doc). Raises
    ``SweepIncomplete`` when a unit failed twice (after every other unit finished)."""
    from ..training.evaluate import EpisodeResult, _episode_dict, evaluate_expert, summarize

    started = time.time()
    units = sim_units(config)
    args_of = {unit.key: unit.args for unit in units}
    expert = evaluate_expert(config) if config.include_expert and make_env is None else None
    bar = None
    rates: dict[tuple, list[bool]] = {}
    if progress:
        from tqdm import tqdm

        stored = sink.results() if sink is not None else {}  # resumed episodes count in the bar
        done = 0
        for unit in units:
            if unit.key in stored:
                done += 1
                rates.setdefault(unit.args[:2], []).append(bool(stored[unit.key]["episode"]["success"]))
        bar = tqdm(total=len(units), initial=done, desc="eval-sim", unit="ep", dynamic_ncols=True)

    def finished(key: str, result: dict) -> None:
        if bar is not None:
            episode = result["episode"]
            method, ratio, _ = args_of[key]
            rates.setdefault((method, ratio), []).append(bool(episode["success"]))
            rate = sum(rates[(method, ratio)]) / len(rates[(method, ratio)])
            bar.update(1)
            bar.set_postfix({"config": f"{method}@{ratio:g}", "success": f"{rate:.0%}"})
        if on_result is not None:
            on_result(key, result)

    def failed(key: str, signature: str, final: bool) -> None:
        text = f"eval-sim: {key}: {signature} ({'given up: failed the same way twice' if final else 'retrying'})"
        (bar.write if bar is not None else print)(text)

    work = SimEpisodeWork(config, make_env, policy)
    try:
        report = run_units(work, units, backend=backend, sink=sink, on_result=finished, on_failure=failed)
    finally:
        if bar is not None:
            bar.close()
        if policy is not None:
            policy.set_pruner(None)
    if report.failed:
        raise SweepIncomplete(report)
    num_visual, num_layers = _model_shape(config, report.results.values())
    rows, episodes_out = [], []
    for method, ratio in config.configurations():
        results = [EpisodeResult(**report.results[unit_key(method, ratio, config.seed + i)]["episode"])
                   for i in range(config.episodes)]
        pruner = config.pruner(method, ratio)
        rows.append(summarize(method, ratio, results, num_visual, pruner.budget(num_visual) if pruner else num_visual))
        episodes_out.extend({"method": method, "keep_ratio": ratio, **_episode_dict(r)} for r in results)
    out = {"config": asdict(config), "expert": expert, "rows": rows, "episodes": episodes_out,
           "num_visual_tokens": num_visual, "num_layers": num_layers, "wall_s": time.time() - started}
    out["units"] = {"ran": len(report.ran), "resumed": len(report.resumed),
                    "retried": {k: v for k, v in report.retried.items()}}
    return out



def _model_shape(config, results) -> tuple[int, int]:
    """(visual tokens, LLM layers): from a unit that ran, else from the checkpoint's config (every
    episode was resumed: nothing loaded the policy)."""
    for result in results:
        if "num_visual_tokens" in result:
            return int(result["num_visual_tokens"]), int(result["num_layers"])
    from ..model import inspect_checkpoint

    info = inspect_checkpoint(config.checkpoint)
    return int(info.config.patches_per_view * info.num_images), int(info.config.text_config.num_hidden_layers)


def evaluate_command(config, args, log_path) -> dict:
    """What ``vla-pruner eval-sim`` runs: the serial loop (``training.evaluate.evaluate``) without
    --ray, the units on Ray with it; both resume from the same episode log."""
    from ..training.evaluate import evaluate

    if getattr(args, "ray", None) is None:
        return evaluate(config, log_path=log_path)
    from .cli import backend_from_args

    backend = backend_from_args(args, threads=config.threads)
    return evaluate_sweep(config, backend=backend, sink=sink_for(config, Path(log_path).parent))
