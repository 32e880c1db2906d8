"""The evaluation loop: episodes of a LIBERO suite for every (method, keep ratio), one policy.

Works on anything with LIBERO's environment interface (``seed``, ``reset``, ``set_init_state``,
``step`` -> (obs, reward, done, info), ``close``) and the project's ``Policy`` interface
(``set_pruner``, ``reset``, ``predict``, ``view_names``, ``proprio_dim``, ``chunk_length``), so the
loop is tested without LIBERO installed.
"""
from __future__ import annotations

import hashlib
import struct
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from .protocol import (
    ENV_SEED,
    NOOP_ACTION,
    NUM_STEPS_WAIT,
    EvalConfiguration,
    images_from_obs,
    postprocess_action,
    proprio_from_obs,
)
from .results import EpisodeRecord, ResultsStore
from .video import write_video

PROTOCOL_VERSION = 2  # run.json: 2 = OFT's scene seeding and open-loop selection (1 had neither)
ERRORS_LOG = "errors.log"
ABORT_AFTER_ERRORS = 3  # a configuration whose first episodes in a run all raise stops the run


class EvaluationAborted(RuntimeError):
    """Every episode of a configuration raised so far: a set-up problem, not the policy's failures."""


def rng_state_digest(state=None) -> str:
    """Short digest of numpy's global (legacy MT19937) random state: keys, position, cached gaussian."""
    _, keys, pos, has_gauss, cached = np.random.get_state() if state is None else state
    data = np.asarray(keys, dtype="<u4").tobytes() + struct.pack("<iid", int(pos), int(has_gauss), float(cached))
    return hashlib.sha256(data).hexdigest()[:16]


class SceneSeeds:
    """OpenVLA-OFT's scene seeding for one task, the same for every configuration.

    OFT seeds LIBERO once per task, right after making the environment (``env.seed(0)``, which is
    ``np.random.seed(0)``), then runs episodes 0, 1, 2, ... in order. Every ``env.reset()`` places the
    fixtures (cabinet, stove, ...) from the global ``np.random``, and ``set_init_state`` restores
    the robot and the objects but not those fixtures, so episode k's scene depends on the random
    state that k resets after the seed left. Nothing else in OFT's loop draws from ``np.random``
    (set_init_state, settle and policy steps leave it unchanged; measured on LIBERO).

    This class keeps the global random state found before each reset in that order and sets it
    again before episode k's reset, so episode k of every configuration gets the scene OFT's episode
    k got, whatever ran before it here (other configurations, a policy that draws from
    ``np.random``, an interrupted run resumed mid-task: missing states are made by resetting the
    environment in order, as OFT would have).
    """

    def __init__(self, env, seed: int = ENV_SEED) -> None:
        self.env = env
        env.seed(seed)
        self.states: list[tuple] = [np.random.get_state()]

    def _reset_from(self, index: int) -> Any:
        np.random.set_state(self.states[index])
        obs = self.env.reset()
        if len(self.states) == index + 1:
            self.states.append(np.random.get_state())
        return obs

    def reset(self, episode: int) -> Any:
        """``env.reset()`` from the random state OFT's episode ``episode`` of this task starts from."""
        if episode < 0:
            raise ValueError(f"episode={episode}: expected >= 0")
        while len(self.states) <= episode:  # fast-forward through episodes that do not run here
            self._reset_from(len(self.states) - 1)
        return self._reset_from(episode)


class SuiteLike(Protocol):
    name: str
    num_tasks: int

    def instruction(self, task_id: int) -> str: ...
    def initial_states(self, task_id: int) -> Sequence[Any]: ...
    def make_env(self, task_id: int) -> Any: ...


@dataclass(frozen=True)
class EpisodeSettings:
    """How one episode runs (the OFT protocol unless changed for a smoke test)."""

    max_steps: int  # policy actions before the episode counts as failed
    num_steps_wait: int = NUM_STEPS_WAIT  # settle steps with the no-op action first
    open_loop_steps: int | None = None  # actions kept per chunk (OFT: the last n); None: the whole chunk
    env_seed: int = ENV_SEED  # the simulator's numpy seed, set once per task (see SceneSeeds)
    warmup_calls: int = 0  # untimed policy calls on the first observation (then the policy is reset)

    def __post_init__(self) -> None:
        for name, minimum in (("max_steps", 1), ("num_steps_wait", 0), ("warmup_calls", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"EpisodeSettings.{name}={value!r}: expected an integer >= {minimum}")
        steps = self.open_loop_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"EpisodeSettings.open_loop_steps={steps!r}: expected None or an integer >= 1")


@dataclass
class EpisodeOutcome:
    success: bool
    steps: int
    chunk_ms: list[float] = field(default_factory=list)
    flops_ratios: list[float] = field(default_factory=list)
    pruned_calls: int = 0
    frames: list[np.ndarray] = field(default_factory=list)
    error: str | None = None  # "Type: message (at file:line)" of an exception that ended the episode
    traceback: str | None = None


def run_episode(env, policy, instruction: str, initial_state, settings: EpisodeSettings,
                record_frames: bool = False, reset: Callable[[], Any] | None = None) -> EpisodeOutcome:
    """One episode from a fixed initial state: settle, then query the policy for a chunk whenever
    the queue of actions is empty, until the task reports success or ``max_steps`` actions ran.

    ``reset`` resets the environment (``evaluate`` passes its ``SceneSeeds``); by default the
    environment is seeded and reset as for OFT's first episode of a task. An exception anywhere in
    the episode (simulator, policy, observation) ends it as a failure with ``error`` set, as OFT
    counts it; KeyboardInterrupt and other non-``Exception`` errors still propagate.
    """
    outcome = EpisodeOutcome(success=False, steps=0)
    try:
        _run_episode(env, policy, instruction, initial_state, settings, record_frames,
                     reset or (lambda: SceneSeeds(env, settings.env_seed).reset(0)), outcome)
    except Exception as exc:  # noqa: BLE001 (OFT: a failed episode, the run goes on)
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        location = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
        outcome.error = f"{type(exc).__name__}: {exc}{location}"
        outcome.traceback = "".join(traceback.format_exception(exc))
        outcome.success = False
    return outcome


def _run_episode(env, policy, instruction, initial_state, settings, record_frames, reset, outcome) -> None:
    reset()
    obs = env.set_init_state(initial_state)
    for _ in range(settings.num_steps_wait):  # let the objects come to rest; success is not checked here
        obs, _, _, _ = env.step(list(NOOP_ACTION))

    view_names, proprio_dim = tuple(policy.view_names), policy.proprio_dim
    open_loop = settings.open_loop_steps or policy.chunk_length

    def observe(current):
        images = images_from_obs(current, view_names)
        return images, (proprio_from_obs(current) if proprio_dim is not None else None)

    if settings.warmup_calls:
        images, proprio = observe(obs)
        for _ in range(settings.warmup_calls):
            policy.predict(images=images, proprio=proprio, instruction=instruction)
    policy.reset()  # new episode: the pruner's action-attention history starts empty

    # OFT: deque(maxlen=num_open_loop_steps).extend(chunk) keeps the LAST n actions of the chunk.
    queue: deque = deque(maxlen=open_loop)
    while outcome.steps < settings.max_steps:
        images, proprio = observe(obs)
        if record_frames:
            outcome.frames.append(np.concatenate([images[v] for v in view_names], axis=1))
        if not queue:
            prediction = policy.predict(images=images, proprio=proprio, instruction=instruction)
            outcome.chunk_ms.append(float(prediction.timings["total"]))
            outcome.flops_ratios.append(float(prediction.flops["ratio"]))
            outcome.pruned_calls += bool(prediction.pruned)
            queue.extend(np.asarray(prediction.actions))
        action = postprocess_action(queue.popleft())
        obs, _, done, _ = env.step(action.tolist())
        outcome.steps += 1
        if done:
            outcome.success = True
            break


def default_pruner_config(configuration: EvalConfiguration):
    """PrunerConfig for a configuration (None for the unpruned reference, so it pays no scoring)."""
    from vla_pruner_ros.pruning import PrunerConfig

    if configuration.method == "none":
        return None
    return PrunerConfig(method=configuration.method, keep_ratio=configuration.keep_ratio)


def _video_name(configuration: EvalConfiguration, task_id: int, episode: int, success: bool) -> str:
    keep = f"{configuration.keep_ratio:g}".replace(".", "p")
    return f"{configuration.method}_keep{keep}_task{task_id:02d}_ep{episode:02d}_{'success' if success else 'failure'}"


def evaluate(policy, suite: SuiteLike, configurations: Sequence[EvalConfiguration], task_ids: Sequence[int],
             episodes_per_task: int, settings: EpisodeSettings, store: ResultsStore,
             pruner_config: Callable[[EvalConfiguration], Any] = default_pruner_config,
             videos_per_task: int = 0, video_format: str = "mp4", progress: bool = True,
             abort_after_errors: int = ABORT_AFTER_ERRORS) -> int:
    """Run every (configuration, task, episode) not yet in ``store``; returns how many ran.

    Tasks are the outer loop so each task's environment is built once for all configurations;
    within a task the episodes run in OFT's order and every configuration gets OFT's scenes
    (``SceneSeeds``). An episode that raises is a failure with its error recorded (and the
    traceback appended to errors.log), and the run goes on, as in OFT. But when the first
    ``abort_after_errors`` episodes a configuration runs here all raise (or all of them do, if it
    runs fewer), the run stops with ``EvaluationAborted``: those episodes are not recorded, so a
    rerun after the fix runs them again.
    """
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task={episodes_per_task}: expected >= 1")
    if abort_after_errors < 1:
        raise ValueError(f"abort_after_errors={abort_after_errors}: expected >= 1")
    for task_id in task_ids:
        if not 0 <= task_id < suite.num_tasks:
            raise ValueError(f"task id {task_id}: the suite {suite.name} has tasks 0..{suite.num_tasks - 1}")
    todo = {task_id: [(c, e) for c in configurations for e in range(episodes_per_task)
                      if (c.method, c.keep_ratio, task_id, e) not in store]
            for task_id in task_ids}
    total = len(configurations) * len(task_ids) * episodes_per_task
    pending = sum(len(items) for items in todo.values())
    from tqdm import tqdm

    bar = tqdm(total=total, initial=total - pending, unit="ep", disable=not progress, dynamic_ncols=True,
               desc=suite.name)
    warmed: set[tuple] = set()
    clean: dict[tuple, int] = {}  # configuration key -> episodes run here without an exception
    held: dict[tuple, list[EpisodeRecord]] = {}  # errored records kept back until the configuration runs cleanly
    ran = 0

    def abort(configuration: EvalConfiguration) -> EvaluationAborted:
        records = held[configuration.key]
        first = records[0]
        return EvaluationAborted(
            f"{configuration.label}: all {len(records)} episode(s) it ran raised an exception (first: task "
            f"{first.task_id} episode {first.episode}: {first.error}); this looks like a set-up problem, not "
            f"the policy failing, so the run stops. Those episodes are not recorded and run again next time; "
            f"tracebacks in {store.out_dir / ERRORS_LOG}")

    try:
        for task_id in task_ids:
            if not todo[task_id]:
                continue
            instruction = suite.instruction(task_id)
            initial_states = suite.initial_states(task_id)
            if len(initial_states) < episodes_per_task:
                raise ValueError(f"episodes_per_task={episodes_per_task}: task {task_id} of {suite.name} has only "
                                 f"{len(initial_states)} initial states")
            env = suite.make_env(task_id)
            try:
                scenes = SceneSeeds(env, settings.env_seed)  # once per task, as OFT seeds
                current = None
                for configuration, episode in todo[task_id]:
                    if configuration != current:
                        policy.set_pruner(pruner_config(configuration))
                        current = configuration
                    warmup = 0 if configuration.key in warmed else settings.warmup_calls
                    warmed.add(configuration.key)
                    episode_settings = EpisodeSettings(settings.max_steps, settings.num_steps_wait,
                                                       settings.open_loop_steps, settings.env_seed, warmup)
                    record_frames = episode < videos_per_task
                    start = time.perf_counter()
                    outcome = run_episode(env, policy, instruction, initial_states[episode], episode_settings,
                                          record_frames, reset=lambda: scenes.reset(episode))
                    video = None
                    if record_frames and outcome.frames:
                        path = store.out_dir / "videos" / _video_name(configuration, task_id, episode, outcome.success)
                        video = str(write_video(outcome.frames, path, video_format=video_format)
                                    .relative_to(store.out_dir))
                    calls = len(outcome.chunk_ms)
                    record = EpisodeRecord(
                        method=configuration.method, keep_ratio=configuration.keep_ratio, suite=suite.name,
                        task_id=task_id, task=instruction, episode=episode, success=outcome.success,
                        steps=outcome.steps, chunk_ms=[round(ms, 3) for ms in outcome.chunk_ms],
                        flops_ratio=float(np.mean(outcome.flops_ratios)) if calls else 1.0,
                        pruned_fraction=outcome.pruned_calls / calls if calls else 0.0,
                        wall_s=round(time.perf_counter() - start, 3), error=outcome.error, video=video)
                    key = configuration.key
                    if outcome.error:
                        bar.write(f"task {task_id} episode {episode} ({configuration.label}): episode failed with "
                                  f"{outcome.error}")
                        _log_error(store.out_dir, configuration, task_id, episode, outcome.traceback or outcome.error)
                    if outcome.error and not clean.get(key):
                        held.setdefault(key, []).append(record)
                        if len(held[key]) >= abort_after_errors:
                            raise abort(configuration)
                        continue
                    if not outcome.error:
                        clean[key] = clean.get(key, 0) + 1
                    for earlier in held.pop(key, []):  # the configuration works: earlier errors count
                        store.add(earlier)
                        ran += 1
                        bar.update(1)
                    store.add(record)
                    ran += 1
                    done = store.select(configuration.method, configuration.keep_ratio)
                    rate = sum(r.success for r in done) / len(done)
                    bar.set_postfix_str(f"{configuration.label} task {task_id} success {100 * rate:.1f}% "
                                        f"({len(done)} ep)")
                    bar.update(1)
            finally:
                env.close()
        for configuration in configurations:
            if held.get(configuration.key):
                raise abort(configuration)
    finally:
        bar.close()
    return ran


def _log_error(out_dir: Path, configuration: EvalConfiguration, task_id: int, episode: int, text: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ERRORS_LOG, "a") as f:
        f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {configuration.label} task {task_id} episode {episode}\n"
                f"{text.rstrip()}\n")


def make_metadata(checkpoint: str | Path, suite: str, unnorm_key: str, settings: EpisodeSettings,
                  center_crop: bool, extra: dict | None = None) -> dict[str, Any]:
    """What the results depend on (compared on resume)."""
    return {
        "checkpoint": str(Path(checkpoint).resolve()),
        "suite": suite,
        "unnorm_key": unnorm_key,
        "max_steps": settings.max_steps,
        "num_steps_wait": settings.num_steps_wait,
        "open_loop_steps": settings.open_loop_steps,
        "env_seed": settings.env_seed,
        "protocol": PROTOCOL_VERSION,
        "center_crop": center_crop,
        **(extra or {}),
    }
