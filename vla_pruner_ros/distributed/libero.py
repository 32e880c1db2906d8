"""``vla-pruner eval-libero`` as units: one unit = one (configuration, task, episode).

``evaluate_units`` is ``libero.runner.evaluate`` with the episodes handed to ``run_units`` (Ray
workers that each load the policy and LIBERO once), written to the same ``ResultsStore``
(episodes.jsonl: resumable, finished episodes are not run again), with the same progress bar and
the same rule for configurations whose episodes all raise (``EvaluationAborted``). It takes a
``LiberoSource`` (how a worker loads the policy and the suite) instead of a loaded policy.

An episode is a function of its unit: ``SceneSeeds`` gives episode k of a task the scene OFT's
episode k gets whatever ran before it on that worker (a worker that starts at episode k resets
the environment through the earlier ones first), and ``policy.reset()`` starts the pruner's history
afresh. So per-episode results equal the serial run's on CPU; on CUDA, equal only up to the GPU's
kernel choices (cuBLAS/cuDNN pick algorithms per GPU model and workspace; two workers on two GPU
models can differ in the last bits, which can change a trajectory). Videos (--video) are written
by the worker into the results folder: on a multi-node cluster that folder must be on a shared
file system (or leave --video at 0).
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .core import Backend, SweepIncomplete, Unit, WorkerSetupError, run_units


@dataclass(frozen=True)
class LiberoSource:
    """How a worker loads the policy and the suite (``model.load_policy`` + ``LiberoSuite``)."""

    checkpoint: str
    suite: str
    device: str | None = None
    dtype: str | None = None
    unnorm_key: str | None = None
    center_crop: bool | None = None
    seed: int = 7  # torch/numpy/random, as eval-libero seeds the serial run

    def load_policy(self):
        import torch

        from ..model import load_policy

        dtype = getattr(torch, self.dtype) if self.dtype else None
        return load_policy(self.checkpoint, device=self.device, dtype=dtype,
                           unnorm_key=self.unnorm_key, center_crop=self.center_crop)

    def load_suite(self):
        from ..libero.env import LiberoSuite

        return LiberoSuite(self.suite)


def unit_key(method: str, keep_ratio: float, task_id: int, episode: int) -> str:
    return f"{method}@{float(keep_ratio)!r}/task={int(task_id)}/episode={int(episode)}"


class StoreSink:
    """``run_units``' sink over the LIBERO ``ResultsStore``: the same episodes.jsonl as the serial run.
    A unit's result is {"record": EpisodeRecord fields, "traceback": ...}; the driver decides when
    a record is added (errored episodes are held back, as in the serial loop)."""

    def __init__(self, store):
        self.store = store

    def results(self) -> dict[str, Any]:
        return {unit_key(*record.key): {"record": asdict(record), "traceback": None}
                for record in self.store.records.values()}

    def add(self, key: str, result: Any) -> None:  # run_units calls this; evaluate_units adds records itself
        pass


@dataclass
class LiberoEpisodeWork:
    source: LiberoSource
    settings: Any  # libero.runner.EpisodeSettings
    pruner_config: Callable  # configuration -> PrunerConfig | None (picklable: cloudpickle takes closures)
    videos_per_task: int = 0
    video_format: str = "mp4"
    out_dir: str = "."
    policy: Any = field(default=None, repr=False, compare=False)  # already loaded here (never shipped)
    suite: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["policy"], state["suite"] = None, None
        return state

    def setup(self) -> dict:
        if self.policy is None:  # a worker of its own: seeded as eval-libero seeds the serial run
            from ..tools.eval_libero import seed_everything

            seed_everything(self.source.seed)
        policy = self.policy if self.policy is not None else self.source.load_policy()
        if self.policy is None:  # the serial driver checks its own policy
            from ..libero.protocol import ACTION_DIM, PROPRIO_DIM

            if policy.action_dim != ACTION_DIM:
                raise ValueError(f"--checkpoint: action dimension {policy.action_dim}; LIBERO needs {ACTION_DIM}")
            if policy.proprio_dim not in (None, PROPRIO_DIM):
                raise ValueError(f"--checkpoint: proprio dimension {policy.proprio_dim}; LIBERO's proprio has "
                                 f"{PROPRIO_DIM}")
        return {"policy": policy, "suite": self.suite if self.suite is not None else self.source.load_suite(),
                "task": None, "env": None, "scenes": None, "configuration": None, "warmed": set()}

    def run(self, state: dict, args, tick=None) -> dict:
        from pathlib import Path

        from ..libero.results import EpisodeRecord
        from ..libero.runner import EpisodeSettings, SceneSeeds, _video_name, run_episode
        from ..libero.video import write_video

        configuration, task_id, episode = args
        suite, policy, settings = state["suite"], state["policy"], self.settings
        if state["task"] != task_id:  # one LIBERO environment per worker at a time
            if state["env"] is not None:
                state["env"].close()
            state["env"] = None
            state["env"] = suite.make_env(task_id)
            state["scenes"] = SceneSeeds(state["env"], settings.env_seed)
            state["task"] = task_id
        if state["configuration"] != configuration:
            policy.set_pruner(self.pruner_config(configuration))
            state["configuration"] = configuration
        warmup = 0 if configuration.key in state["warmed"] else settings.warmup_calls
        state["warmed"].add(configuration.key)
        episode_settings = EpisodeSettings(settings.max_steps, settings.num_steps_wait, settings.open_loop_steps,
                                           settings.env_seed, warmup)
        instruction = suite.instruction(task_id)
        record_frames = episode < self.videos_per_task
        scenes = state["scenes"]
        start = time.perf_counter()
        outcome = run_episode(state["env"], policy, instruction, suite.initial_states(task_id)[episode],
                              episode_settings, record_frames, reset=lambda: scenes.reset(episode))
        video = None
        if record_frames and outcome.frames:
            out_dir = Path(self.out_dir)
            path = out_dir / "videos" / _video_name(configuration, task_id, episode, outcome.success)
            video = str(write_video(outcome.frames, path, video_format=self.video_format).relative_to(out_dir))
        calls = len(outcome.chunk_ms)
        record = EpisodeRecord(
            method=configuration.method, keep_ratio=configuration.keep_ratio, suite=suite.name, task_id=task_id,
            task=instruction, episode=episode, success=outcome.success, steps=outcome.steps,
            chunk_ms=[round(ms, 3) for ms in outcome.chunk_ms],
            flops_ratio=float(np.mean(outcome.flops_ratios)) if calls else 1.0,
            pruned_fraction=outcome.pruned_calls / calls if calls else 0.0,
            wall_s=round(time.perf_counter() - start, 3), error=outcome.error, video=video)
        return {"record": asdict(record), "traceback": outcome.traceback}


def evaluate_units(source: LiberoSource, configurations: Sequence, task_ids: Sequence[int], episodes_per_task: int,
                   settings, store, pruner_config: Callable | None = None, videos_per_task: int = 0,
                   video_format: str = "mp4", progress: bool = True, abort_after_errors: int | None = None,
                   backend: Backend | None = None, policy=None, suite=None, num_tasks: int | None = None) -> int:
    """``libero.runner.evaluate`` through ``run_units`` (see the module doc); returns how many
    episodes ran. ``policy`` / ``suite``: already loaded in this process (serial backend only);
    ``num_tasks``: the suite's size for checking ``task_ids`` without loading LIBERO here."""
    from ..libero.results import EpisodeRecord
    from ..libero.runner import ABORT_AFTER_ERRORS, EvaluationAborted, _log_error, default_pruner_config

    abort_after_errors = ABORT_AFTER_ERRORS if abort_after_errors is None else abort_after_errors
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task={episodes_per_task}: expected >= 1")
    if abort_after_errors < 1:
        raise ValueError(f"abort_after_errors={abort_after_errors}: expected >= 1")
    num_tasks = suite.num_tasks if suite is not None and num_tasks is None else num_tasks
    for task_id in task_ids:
        if num_tasks is not None and not 0 <= task_id < num_tasks:
            raise ValueError(f"task id {task_id}: the suite {source.suite} has tasks 0..{num_tasks - 1}")
    if suite is not None:
        for task_id in task_ids:
            if len(suite.initial_states(task_id)) < episodes_per_task:
                raise ValueError(f"episodes_per_task={episodes_per_task}: task {task_id} of {suite.name} has only "
                                 f"{len(suite.initial_states(task_id))} initial states")
    units = [Unit(unit_key(c.method, c.keep_ratio, t, e), (c, t, e))
             for t in task_ids for c in configurations for e in range(episodes_per_task)]
    by_key = {unit.key: unit for unit in units}
    sink = StoreSink(store)
    total = len(units)
    pending = sum(1 for unit in units if unit.key not in sink.results())
    from tqdm import tqdm

    bar = tqdm(total=total, initial=total - pending, unit="ep", disable=not progress, dynamic_ncols=True,
               desc=source.suite)
    clean: dict[tuple, int] = {}
    held: dict[tuple, list] = {}
    ran = 0

    def abort(configuration) -> EvaluationAborted:
        records = held[configuration.key]
        first = records[0]
        return EvaluationAborted(
            f"{configuration.label}: all {len(records)} episode(s) it ran raised an exception (first: task "
            f"{first.task_id} episode {first.episode}: {first.error}); this looks like a set-up problem, not "
            f"the policy failing, so the run stops. Those episodes are not recorded and run again next time")

    def finished(key: str, result: dict) -> None:
        nonlocal ran
        configuration, task_id, episode = by_key[key].args
        record = EpisodeRecord.from_dict(result["record"])
        if record.error:
            bar.write(f"task {task_id} episode {episode} ({configuration.label}): episode failed with {record.error}")
            _log_error(store.out_dir, configuration, task_id, episode, result.get("traceback") or record.error)
            if not clean.get(configuration.key):
                held.setdefault(configuration.key, []).append(record)
                if len(held[configuration.key]) >= abort_after_errors:
                    raise abort(configuration)
                return
        else:
            clean[configuration.key] = clean.get(configuration.key, 0) + 1
        for earlier in held.pop(configuration.key, []):
            store.add(earlier)
            ran += 1
            bar.update(1)
        store.add(record)
        ran += 1
        done = store.select(configuration.method, configuration.keep_ratio)
        rate = sum(r.success for r in done) / len(done)
        bar.set_postfix_str(f"{configuration.label} task {task_id} success {100 * rate:.1f}% ({len(done)} ep)")
        bar.update(1)

    def failed(key: str, signature: str, final: bool) -> None:
        bar.write(f"{key}: {signature} ({'given up: failed the same way twice' if final else 'retrying'})")

    work = LiberoEpisodeWork(source, settings, pruner_config or default_pruner_config, videos_per_task,
                             video_format, str(store.out_dir), policy=policy, suite=suite)
    try:
        report = run_units(work, units, backend=backend, sink=sink, on_result=finished, on_failure=failed)
        for configuration in configurations:
            if held.get(configuration.key):
                raise abort(configuration)
    finally:
        bar.close()
    if report.failed:
        raise SweepIncomplete(report)
    return ran


def run_on_ray(args, suite, checkpoint, unnorm_key: str, center_crop: bool, device: str, configurations,
               task_ids, settings, store, metadata, out, started: float) -> int:
    """The rest of ``vla-pruner eval-libero --ray`` once the driver has checked its arguments and
    opened the results folder: the episodes as units on Ray workers (each loads the policy once),
    then the serial run's reports. ``suite`` (loaded here) gives the task list and initial states."""
    from ..libero.results import write_reports
    from ..pruning import PrunerConfig
    from .cli import backend_from_args

    prune_layer = args.prune_layer

    def pruner_config(configuration):
        if configuration.method == "none":
            return None
        extra = {"prune_layer": prune_layer} if prune_layer is not None else {}
        return PrunerConfig(method=configuration.method, keep_ratio=configuration.keep_ratio, **extra)

    for task_id in task_ids:
        if len(suite.initial_states(task_id)) < args.episodes_per_task:
            raise ValueError(f"--episodes-per-task={args.episodes_per_task}: task {task_id} of {suite.name} has "
                             f"only {len(suite.initial_states(task_id))} initial states")
    source = LiberoSource(str(checkpoint), suite.name, device=device, dtype=args.dtype, unnorm_key=unnorm_key,
                          center_crop=center_crop, seed=args.seed)
    backend = backend_from_args(args, device=device)
    print(f"policy: {checkpoint} on {device} in each Ray worker; unnorm_key {unnorm_key}; center crop "
          f"{'on' if center_crop else 'off'}")
    print(f"suite {suite.name}: tasks {list(task_ids)}, {args.episodes_per_task} episode(s) each, "
          f"{len(configurations)} configuration(s): {', '.join(c.label for c in configurations)}; "
          f"max {settings.max_steps} steps + {settings.num_steps_wait} settle; results in {out}")
    paths: dict = {}
    try:
        ran = evaluate_units(source, configurations, task_ids, args.episodes_per_task, settings, store,
                             pruner_config=pruner_config, videos_per_task=args.video, video_format=args.video_format,
                             progress=not args.no_progress, backend=backend, num_tasks=suite.num_tasks)
    except (SweepIncomplete, WorkerSetupError, ConnectionError) as exc:  # finished episodes stay in the store
        print(f"vla-pruner eval-libero: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if store.records:
            paths = write_reports(store, metadata, title=f"{suite.name}: {checkpoint.name}")
    from ..tools.eval_libero import print_run_summary

    print_run_summary(store, ran, time.perf_counter() - started, args.per_task, paths)
    return 0
