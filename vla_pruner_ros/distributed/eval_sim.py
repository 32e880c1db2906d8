"""``vla-pruner eval-sim`` as units: one unit = one (method, keep ratio, scene seed) episode.

``evaluate_sweep`` returns exactly what ``training.evaluate.evaluate`` returns (same rows, same
episode records in the same order, so the same tables, CSV, plots and paired report), but runs the
episodes through ``run_units``: on this machine one after the other (``SerialBackend``), or on Ray
workers that each load the policy once (``RayBackend``), with every finished episode in a
``JsonlSink`` so an interrupted sweep resumes where it stopped.

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

from .core import Backend, SweepIncomplete, Unit, run_units  # noqa: F401 (SweepIncomplete: raised here)
from .sink import JsonlSink

SINK_FILE = "episodes.jsonl"
# EvalConfig fields that choose which units run rather than what one unit computes.
_NOT_IN_FINGERPRINT = ("methods", "keep_ratios", "episodes", "include_expert", "seed")


def unit_key(method: str, keep_ratio: float, seed: int) -> str:
    return f"{method}@{float(keep_ratio)!r}/seed={int(seed)}"


def sim_units(config) -> list[Unit]:
    """Configuration-major, as the serial loop runs them."""
    return [Unit(unit_key(method, ratio, config.seed + i), (method, float(ratio), config.seed + i))
            for method, ratio in config.configurations() for i in range(config.episodes)]


def fingerprint(config) -> dict:
    data = {k: v for k, v in asdict(config).items() if k not in _NOT_IN_FINGERPRINT}
    data["checkpoint"] = str(Path(config.checkpoint).expanduser().resolve())
    return data


def sink_for(config, out_dir, resume: bool = True) -> JsonlSink:
    path = Path(out_dir) / SINK_FILE
    if not resume and path.exists():
        path.unlink()
    return JsonlSink(path, fingerprint(config))


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
        policy = self.policy if self.policy is not None else load_policy(config.checkpoint, device="cpu")
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
        budget = pruner.budget(policy.num_visual_tokens) if pruner else policy.num_visual_tokens
        return {"episode": asdict(result), "budget": int(budget), "num_visual_tokens": int(policy.num_visual_tokens),
                "num_layers": int(policy.num_layers)}


def evaluate_sweep(config, backend: Backend | None = None, sink: JsonlSink | None = None, progress: bool = True,
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

        stored = sink.results() if sink is not None else {}
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
    rows, episodes_out, first = [], [], None
    for method, ratio in config.configurations():
        results = []
        for i in range(config.episodes):
            item = report.results[unit_key(method, ratio, config.seed + i)]
            first = first or item
            results.append(EpisodeResult(**item["episode"]))
        rows.append(summarize(method, ratio, results, first["num_visual_tokens"],
                              report.results[unit_key(method, ratio, config.seed)]["budget"]))
        episodes_out.extend({"method": method, "keep_ratio": ratio, **_episode_dict(r)} for r in results)
    out = {"config": asdict(config), "expert": expert, "rows": rows, "episodes": episodes_out,
           "num_visual_tokens": first["num_visual_tokens"], "num_layers": first["num_layers"],
           "wall_s": time.time() - started}
    out["units"] = {"ran": len(report.ran), "resumed": len(report.resumed),
                    "retried": {k: v for k, v in report.retried.items()}}
    return out

