"""Run the policy over a rebuilt episode once per pruning method x keep ratio.

Each run goes through ``control.PolicyRunner`` -- the very code the node calls each step --
with a fresh runner, the policy reset, and the pruner set from ``NodeSettings``; steps run in
order, so the pruner's temporal state (warm-up, action-attention window) is carried from step
to step exactly as online, and reset where the online episode was (new instruction, or an
online ``~/reset_episode``). The unpruned run (``none``) always comes first: it is the
reference for the action deviation and, with one extra untimed forward per step, the source
of the paper's Fig. 2 attention analysis.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..control.params import NODE_PRUNER, NodeSettings
from ..control.robot_config import RobotConfig
from ..control.runner import PolicyRunner, view_grids
from ..pruning import METHODS, PrunerConfig
from ..pruning.variants import split_method
from .attention import ANALYSIS_LAYERS, AttentionLayers, analysis_layers, unpruned_attention
from .metrics import OVERLAP_FRACTIONS, action_deviation, fraction_label, overlap_series
from .observations import ReplayTimeline, ReplayTopics, load_timeline

REFERENCE = "none"
STAGES = ("preprocess", "vision", "llm_prefix", "select", "llm_suffix", "action_head", "total")


@dataclass(frozen=True)
class ReplayConfig:
    """Which runs to make and the pruner settings they share (the node's parameters)."""

    methods: tuple[str, ...] = ("none", "fastv", "vla_pruner")
    keep_ratios: tuple[float, ...] = (0.5, 0.25, 0.125)
    # The settings every run shares (its method and keep ratio come from the lists above, a variant's
    # fields from its name): the node's, so that a replay runs what the node runs unless told otherwise.
    pruner: PrunerConfig = NODE_PRUNER
    analysis_layers: str = "pruner"  # see attention.analysis_layers

    def __post_init__(self):
        methods = tuple(self.methods)
        if not methods:
            raise ValueError("methods: expected at least one pruning method")
        unknown = [m for m in methods if m.split(":")[0] not in METHODS]  # variants: pruning/variants.py
        if unknown:
            raise ValueError(f"methods: {', '.join(map(repr, unknown))} unknown; expected some of {', '.join(METHODS)}")
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods: {list(methods)} has duplicates")
        ratios = tuple(self.keep_ratios)
        if not ratios:
            raise ValueError("keep_ratios: expected at least one keep ratio")
        bad = [r for r in ratios if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r <= 1.0]
        if bad:
            raise ValueError(f"keep_ratios: {bad} outside (0, 1]")
        if len(set(ratios)) != len(ratios):
            raise ValueError(f"keep_ratios: {list(ratios)} has duplicates")
        if self.analysis_layers not in ANALYSIS_LAYERS:
            raise ValueError(f"analysis_layers={self.analysis_layers!r}: expected one of {', '.join(ANALYSIS_LAYERS)}")
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "keep_ratios", tuple(float(r) for r in ratios))
        if not isinstance(self.pruner, PrunerConfig) or not self.pruner.enabled:
            raise ValueError(f"pruner: expected an enabled PrunerConfig, got {self.pruner!r}")
        run_specs(self)  # PrunerConfig names a bad variant field


@dataclass(frozen=True)
class RunSpec:
    name: str  # "none", "fastv@0.25", ...
    method: str
    keep_ratio: float
    settings: NodeSettings

    @property
    def is_reference(self) -> bool:
        return self.method == REFERENCE


def run_specs(config: ReplayConfig) -> list[RunSpec]:
    """The unpruned reference first, then every other method x keep ratio."""
    base = NodeSettings(pruner=config.pruner, publish_overlays=False)

    def settings(**changes) -> NodeSettings:
        return dataclasses.replace(base, pruner=base.pruner.replace(**changes))

    specs = [RunSpec(REFERENCE, REFERENCE, 1.0, settings(method=REFERENCE, keep_ratio=1.0))]
    for method in config.methods:
        if method == REFERENCE:
            continue
        for ratio in config.keep_ratios:
            name, overrides = split_method(method)  # PrunerConfig fields
            specs.append(RunSpec(f"{method}@{ratio:g}", method, ratio, settings(method=name, keep_ratio=ratio,
                                                                                **overrides)))
    return specs


@dataclass
class ReplayResult:
    specs: list[RunSpec]
    rows: list[dict]  # one per run x step, in run order
    kept: dict[str, np.ndarray]  # run name -> (steps, M) bool: the visual tokens kept at each step
    s_vl: np.ndarray  # (steps, M) unpruned prefill attention (Eq. 2) of each step
    s_act: np.ndarray  # (steps, M) unpruned action attention (Eq. 4) of each step
    layers: AttentionLayers  # where s_vl / s_act were read
    view_names: tuple[str, ...]
    grids: list[tuple[int, int]]  # patch (rows, cols) of each view
    crop_scale: float  # the part of each image side the patch grid covers (OFT's centre crop)
    action_dim: int
    overlaps: dict[str, dict[float, np.ndarray]] = field(default_factory=dict)  # see metrics.overlap_series

    def rows_of(self, name: str) -> list[dict]:
        return [row for row in self.rows if row["config"] == name]


def _crop_scale(policy) -> float:
    from ..model.processing_oft import CENTER_CROP_AREA

    processor = getattr(policy, "image_processor", None)
    return math.sqrt(CENTER_CROP_AREA) if getattr(processor, "center_crop", False) else 1.0


@dataclass
class SpecRun:
    """One run (method x keep ratio) over every step of a timeline: what a replay unit returns.
    The rows' action deviations are NaN until ``assemble`` compares them with the reference run."""

    name: str
    rows: list[dict]
    kept: np.ndarray  # (steps, M) bool
    actions: np.ndarray  # (steps, chunk, action_dim), robot units
    normalized_actions: np.ndarray  # (steps, chunk, action_dim), the model's [-1, 1] space
    grids: list  # patch (rows, cols) of each view
    view_names: tuple
    crop_scale: float
    num_layers: int
    s_vl: np.ndarray | None = None  # (steps, M): the reference run only
    s_act: np.ndarray | None = None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "SpecRun":
        # own, writable arrays (Ray hands back read-only views of its object store)
        data = {k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in data.items()}
        data["grids"] = [tuple(int(v) for v in grid) for grid in data["grids"]]
        data["view_names"] = tuple(data["view_names"])
        return cls(**data)


def check_layers(config: ReplayConfig, num_layers: int) -> AttentionLayers:
    """The analysis layers, after checking that the prune layer K exists in the model."""
    layer = config.pruner.prune_layer
    if not 1 <= layer < num_layers:
        raise ValueError(f"prune_layer={layer}: the model has {num_layers} LLM layers, "
                         f"so K must be in 1..{num_layers - 1}")
    return analysis_layers(config.analysis_layers, num_layers, layer)


def warm_up(policy, robot: RobotConfig, timeline: ReplayTimeline) -> None:
    """One untimed forward: the first call of a model pays for allocations and lazy set-up."""
    first = timeline.steps[0].observation
    policy.set_pruner(None)
    policy.predict(images=first.images, proprio=robot.proprio(first.joint_positions, first.gripper_position),
                   instruction=first.instruction)


def run_spec(policy, robot: RobotConfig, timeline: ReplayTimeline, spec: RunSpec, layers: AttentionLayers,
             progress: Callable[[RunSpec, int], None] | None = None) -> SpecRun:
    """One run over every step, with a fresh runner: the pruner's temporal state is carried from step
    to step as online and reset where the online episode was. The reference run also reads the
    unpruned attention scores (one extra untimed forward per step)."""
    steps = timeline.steps
    num_visual = int(policy.num_visual_tokens)
    runner = PolicyRunner(policy, robot)
    runner.reset()  # forget the previous run's history (and its instruction)
    kept_mask = np.zeros((len(steps), num_visual), dtype=bool)
    s_vl = np.zeros((len(steps), num_visual), dtype=np.float32) if spec.is_reference else None
    s_act = np.zeros((len(steps), num_visual), dtype=np.float32) if spec.is_reference else None
    actions, normalized, rows, grids = [], [], [], None
    for step in steps:
        if step.new_episode and step.index > 0:
            runner.reset()
        result = runner.step(step.observation, spec.settings)
        out = result.output
        grids = grids or view_grids(out)
        kept_mask[step.index, np.asarray(out.kept_indices, dtype=np.int64)] = True
        actions.append(np.asarray(out.actions))
        normalized.append(np.asarray(out.normalized_actions))
        if spec.is_reference:
            observation = step.observation
            proprio = robot.proprio(observation.joint_positions, observation.gripper_position)
            scores = unpruned_attention(policy, observation.images, proprio, observation.instruction, layers)
            s_vl[step.index], s_act[step.index] = scores.s_vl, scores.s_act
        rows.append(_row(spec, step, timeline, result, actions[-1].shape[1]))
        if progress is not None:
            progress(spec, step.index)
    return SpecRun(name=spec.name, rows=rows, kept=kept_mask, actions=np.stack(actions),
                   normalized_actions=np.stack(normalized), grids=list(grids), view_names=tuple(policy.view_names),
                   crop_scale=_crop_scale(policy), num_layers=int(policy.num_layers), s_vl=s_vl, s_act=s_act)


def assemble(config: ReplayConfig, timeline: ReplayTimeline, runs: dict[str, SpecRun]) -> ReplayResult:
    """The replay's result from its runs (any order, from any worker): the action deviation of every
    step from the reference run's, and the attention overlap series."""
    specs = run_specs(config)
    missing = [spec.name for spec in specs if spec.name not in runs]
    if missing:
        raise ValueError(f"assemble: no run for {missing}")
    reference = runs[REFERENCE]
    layers = check_layers(config, reference.num_layers)
    episodes = np.array([step.episode for step in timeline.steps])
    rows = []
    for spec in specs:
        run = runs[spec.name]
        for index, row in enumerate(run.rows):
            l1, worst = action_deviation(run.actions[index], reference.actions[index])
            l1_normalized, _ = action_deviation(run.normalized_actions[index], reference.normalized_actions[index])
            row = dict(row)
            row["dev_l1"] = float(l1.mean())  # mean |a - a_ref| over the chunk and the action dimensions
            row["dev_max"] = float(worst.max())  # largest |a - a_ref| anywhere in the chunk
            row["dev_l1_normalized"] = float(l1_normalized.mean())  # the same L1 in the model's [-1, 1] space
            for dim, value in enumerate(l1):
                row[f"dev_l1_d{dim}"] = float(value)
            for dim, value in enumerate(worst):
                row[f"dev_max_d{dim}"] = float(value)
            rows.append(row)
    overlaps = overlap_series(reference.s_vl, reference.s_act, episodes)
    for row in rows:
        if row["config"] != REFERENCE:
            continue
        for kind, series in overlaps.items():
            for fraction in OVERLAP_FRACTIONS:
                row[f"overlap_{kind}_{fraction_label(fraction)}"] = float(series[fraction][row["step"]])
    return ReplayResult(specs=specs, rows=rows, kept={spec.name: runs[spec.name].kept for spec in specs},
                        s_vl=reference.s_vl, s_act=reference.s_act, layers=layers, view_names=reference.view_names,
                        grids=[tuple(grid) for grid in reference.grids], crop_scale=reference.crop_scale,
                        action_dim=int(reference.actions.shape[2]), overlaps=overlaps)


def run_replay(policy, robot: RobotConfig, timeline: ReplayTimeline, config: ReplayConfig = ReplayConfig(),
               progress: Callable[[RunSpec, int], None] | None = None) -> ReplayResult:
    """Every run of ``config`` over every step of ``timeline``, here, one after the other;
    ``progress(spec, step)`` is called after each step. (``ReplayWork`` runs the same runs as units.)"""
    if not timeline.steps:
        raise ValueError("the timeline has no step to run")
    layers = check_layers(config, int(policy.num_layers))
    warm_up(policy, robot, timeline)
    runs = {spec.name: run_spec(policy, robot, timeline, spec, layers, progress) for spec in run_specs(config)}
    return assemble(config, timeline, runs)


def _row(spec: RunSpec, step, timeline: ReplayTimeline, result, action_dim: int) -> dict:
    """One CSV row: what the step was, what it cost, how far its actions are from unpruned."""
    out, stats = result.output, result.stats_fields()
    row = {
        "config": spec.name,
        "method": spec.method,
        "keep_ratio": spec.keep_ratio,
        "step": step.index,
        "time_s": round(timeline.seconds(step.time_ns), 6),
        "episode": step.episode,
        "episode_step": result.step_index,
        "instruction": step.observation.instruction,
        "warmup": bool(out.warmup),
        "pruned": bool(out.pruned),
        "visual_tokens": int(out.num_visual_tokens),
        "kept_tokens": int(len(out.kept_indices)),
        "sequence_length_before": int(out.seq_len_before),
        "sequence_length_after": int(out.seq_len_after),
        "flops_ratio": float(out.flops["ratio"]),
    }
    timings = out.timings or {}
    for stage in STAGES:
        row[f"{stage}_ms"] = float(timings.get(stage, float("nan")))
    row["runner_ms"] = float(result.wall_ms)
    # Filled by assemble() from the reference run; here only their places in the row.
    for name in ("dev_l1", "dev_max", "dev_l1_normalized"):
        row[name] = float("nan")
    for dim in range(action_dim):
        row[f"dev_l1_d{dim}"] = float("nan")
    for dim in range(action_dim):
        row[f"dev_max_d{dim}"] = float("nan")
    row["pool_vl"] = stats["pool_vl"]
    row["pool_act"] = stats["pool_act"]
    row["pool_dual"] = stats["pool_dual"]
    # |C_dual| / |C_vl| (Fig. 11); only VLA-Pruner's pruned steps have both pools.
    row["pool_ratio"] = stats["pool_ratio"] if stats["pool_vl"] and stats["pool_act"] else float("nan")
    row["pool_overlap"] = stats["overlap_vl_act"] if stats["pool_vl"] and stats["pool_act"] else float("nan")
    # issue 17: action source, shift fallback, latency budget of this step
    for name in ("action_source", "shift", "shift_reason", "fallback", "image_change", "action_overlap",
                 "target_ms", "predicted_ms", "chosen_keep_ratio"):
        row[name] = stats[name]
    for kind in ("vl_act", "act_prev"):
        for fraction in OVERLAP_FRACTIONS:
            row[f"overlap_{kind}_{fraction_label(fraction)}"] = float("nan")  # the reference run fills these
    online = step.online or {}
    row["online_method"] = online.get("method", "")
    row["online_keep_ratio"] = online.get("keep_ratio", float("nan"))
    row["online_total_ms"] = online.get("total_ms", float("nan"))
    # Did the online step run this very configuration, and then keep the same tokens?
    same_config = bool(online) and same_pruner_settings(online, spec)
    row["online_same_config"] = same_config
    online_kept = online.get("kept_indices") if same_config else None
    row["online_same_kept"] = ("" if online_kept is None else
                               bool(np.array_equal(np.sort(online_kept), np.asarray(out.kept_indices))))
    return row


def same_pruner_settings(online: dict, spec: RunSpec) -> bool:
    """True when the recorded online step ran the pruner configuration of ``spec`` (float32
    fields of the message compared with a tolerance)."""
    if spec.is_reference or online["method"] == REFERENCE:
        return spec.is_reference and online["method"] == REFERENCE
    settings = spec.settings.pruner
    return (online["method"] == spec.method and abs(online["keep_ratio"] - spec.keep_ratio) < 1e-6
            and online["prune_layer"] == settings.prune_layer and online["smoothing"] == settings.smoothing
            and online["window"] == settings.window and abs(online["decay"] - settings.decay) < 1e-6)


# ----------------------------------------------------------------------------- units (Ray)
@dataclass(frozen=True)
class PolicySource:
    """How a worker loads the policy (``model.load_policy``'s arguments, and torch threads)."""

    checkpoint: str
    device: str | None = None  # None: auto
    dtype: str | None = None  # "float32", "bfloat16", "float16"; None: auto
    unnorm_key: str | None = None
    center_crop: bool | None = None
    threads: int | None = None

    def load(self):
        import torch

        from ..model import load_policy

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        dtype = getattr(torch, self.dtype) if self.dtype else None
        return load_policy(self.checkpoint, device=self.device, dtype=dtype,
                           unnorm_key=self.unnorm_key, center_crop=self.center_crop)


@dataclass(frozen=True)
class TimelineSource:
    """How a worker rebuilds a bag's timeline (``observations.load_timeline``'s arguments)."""

    bag: str
    topics: ReplayTopics = ReplayTopics()
    step_source: str = "auto"
    step_period: float = NodeSettings().step_period
    max_input_age: float = NodeSettings().max_input_age
    instruction: str | None = None
    max_steps: int | None = None

    def load(self, robot: RobotConfig) -> ReplayTimeline:
        return load_timeline(self.bag, robot, self.topics, step_source=self.step_source,
                             step_period=self.step_period, max_input_age=self.max_input_age,
                             instruction=self.instruction, max_steps=self.max_steps)


def replay_units(config: ReplayConfig, bag_keys) -> list:
    """One unit per (bag, run), bag by bag, the reference run of each bag first."""
    from ..distributed import Unit

    return [Unit(f"{bag}/{spec.name}", (bag, spec.name)) for bag in bag_keys for spec in run_specs(config)]


@dataclass
class ReplayWork:
    """A worker's part of a replay: ``setup`` loads the policy once; a unit is one run over one bag
    (``run_spec``) and returns ``SpecRun.to_dict()``. A worker reads a bag once and keeps only the
    bag it is on. ``loaded`` / ``timelines``: what this process already has (never shipped to Ray)."""

    policy: PolicySource
    robot: RobotConfig
    config: ReplayConfig
    bags: dict  # bag key -> TimelineSource
    loaded: object = field(default=None, repr=False, compare=False)
    timelines: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["loaded"], state["timelines"] = None, {}
        return state

    def setup(self) -> dict:
        policy = self.loaded if self.loaded is not None else self.policy.load()
        return {"policy": policy, "layers": check_layers(self.config, int(policy.num_layers)),
                "timelines": dict(self.timelines), "warmed": set(),
                "specs": {spec.name: spec for spec in run_specs(self.config)}}

    def run(self, state: dict, args, tick=None) -> dict:
        bag, name = args
        timelines = state["timelines"]
        if bag not in timelines:
            for other in [key for key in timelines if key not in self.timelines]:
                del timelines[other]  # one bag read here at a time
            timelines[bag] = self.bags[bag].load(self.robot)
        timeline = timelines[bag]
        if not timeline.steps:
            raise ValueError(f"{self.bags[bag].bag}: every step was held, nothing to run")
        policy = state["policy"]
        if bag not in state["warmed"]:
            warm_up(policy, self.robot, timeline)
            state["warmed"].add(bag)
        progress = (lambda spec, step: tick(1)) if tick is not None else None
        return run_spec(policy, self.robot, timeline, state["specs"][name], state["layers"], progress).to_dict()
