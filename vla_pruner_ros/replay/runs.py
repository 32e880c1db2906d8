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

from ..control.params import NodeSettings
from ..control.robot_config import RobotConfig
from ..control.runner import PolicyRunner, view_grids
from ..pruning import METHODS
from .attention import ANALYSIS_LAYERS, AttentionLayers, analysis_layers, unpruned_attention
from .metrics import OVERLAP_FRACTIONS, action_deviation, fraction_label, overlap_series
from .observations import ReplayTimeline

REFERENCE = "none"
STAGES = ("preprocess", "vision", "llm_prefix", "select", "llm_suffix", "action_head", "total")


@dataclass(frozen=True)
class ReplayConfig:
    """Which runs to make and the pruner settings they share (the node's parameters)."""

    methods: tuple[str, ...] = ("none", "fastv", "vla_pruner")
    keep_ratios: tuple[float, ...] = (0.5, 0.25, 0.125)
    # The node's defaults, so that a replay runs what the node runs unless told otherwise.
    prune_layer: int = NodeSettings.prune_layer
    window: int = NodeSettings.window
    decay: float = NodeSettings.decay
    smoothing: str = NodeSettings.smoothing
    ema_alpha: float = NodeSettings.ema_alpha
    seed: int = NodeSettings.seed
    analysis_layers: str = "pruner"  # see attention.analysis_layers

    def __post_init__(self):
        methods = tuple(self.methods)
        if not methods:
            raise ValueError("methods: expected at least one pruning method")
        unknown = [m for m in methods if m not in METHODS]
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
        for spec in run_specs(self):  # PrunerConfig names a bad window/decay/layer/...
            spec.settings.pruner_config()


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
    base = NodeSettings(prune_layer=config.prune_layer, window=config.window, decay=config.decay,
                        smoothing=config.smoothing, ema_alpha=config.ema_alpha, seed=config.seed,
                        publish_overlays=False)
    specs = [RunSpec(REFERENCE, REFERENCE, 1.0, dataclasses.replace(base, prune_method=REFERENCE, keep_ratio=1.0))]
    for method in config.methods:
        if method == REFERENCE:
            continue
        for ratio in config.keep_ratios:
            settings = dataclasses.replace(base, prune_method=method, keep_ratio=ratio)
            specs.append(RunSpec(f"{method}@{ratio:g}", method, ratio, settings))
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


def run_replay(policy, robot: RobotConfig, timeline: ReplayTimeline, config: ReplayConfig = ReplayConfig(),
               progress: Callable[[RunSpec, int], None] | None = None) -> ReplayResult:
    """Every run of ``config`` over every step of ``timeline``; ``progress(spec, step)`` is called
    after each step."""
    steps = timeline.steps
    if not steps:
        raise ValueError("the timeline has no step to run")
    num_layers = int(policy.num_layers)
    if not 1 <= config.prune_layer < num_layers:
        raise ValueError(f"prune_layer={config.prune_layer}: the model has {num_layers} LLM layers, "
                         f"so K must be in 1..{num_layers - 1}")
    layers = analysis_layers(config.analysis_layers, num_layers, config.prune_layer)
    specs = run_specs(config)
    num_visual = int(policy.num_visual_tokens)
    episodes = np.array([step.episode for step in steps])
    s_vl = np.zeros((len(steps), num_visual), dtype=np.float32)
    s_act = np.zeros((len(steps), num_visual), dtype=np.float32)
    reference_actions: list[np.ndarray] = []
    reference_normalized: list[np.ndarray] = []
    rows, kept = [], {}

    # One untimed forward first: the first call of a model pays for allocations and lazy set-up.
    first = steps[0].observation
    policy.set_pruner(None)
    policy.predict(images=first.images, proprio=robot.proprio(first.joint_positions, first.gripper_position),
                   instruction=first.instruction)

    grids = None
    for spec in specs:
        runner = PolicyRunner(policy, robot)
        runner.reset()  # forget the previous run's history (and its instruction)
        kept_mask = np.zeros((len(steps), num_visual), dtype=bool)
        for step in steps:
            if step.new_episode and step.index > 0:
                runner.reset()
            result = runner.step(step.observation, spec.settings)
            out = result.output
            grids = grids or view_grids(out)
            kept_mask[step.index, np.asarray(out.kept_indices, dtype=np.int64)] = True
            if spec.is_reference:
                reference_actions.append(out.actions)
                reference_normalized.append(out.normalized_actions)
                observation = step.observation
                proprio = robot.proprio(observation.joint_positions, observation.gripper_position)
                scores = unpruned_attention(policy, observation.images, proprio, observation.instruction, layers)
                s_vl[step.index], s_act[step.index] = scores.s_vl, scores.s_act
            l1, worst = action_deviation(out.actions, reference_actions[step.index])
            l1_normalized, _ = action_deviation(out.normalized_actions, reference_normalized[step.index])
            rows.append(_row(spec, step, timeline, result, l1, worst, float(l1_normalized.mean())))
            if progress is not None:
                progress(spec, step.index)
        kept[spec.name] = kept_mask

    overlaps = overlap_series(s_vl, s_act, episodes)
    for row in rows:
        if row["config"] != REFERENCE:
            continue
        for kind, series in overlaps.items():
            for fraction in OVERLAP_FRACTIONS:
                row[f"overlap_{kind}_{fraction_label(fraction)}"] = float(series[fraction][row["step"]])
    return ReplayResult(specs=specs, rows=rows, kept=kept, s_vl=s_vl, s_act=s_act, layers=layers,
                        view_names=tuple(policy.view_names), grids=grids, crop_scale=_crop_scale(policy),
                        action_dim=int(reference_actions[0].shape[1]), overlaps=overlaps)


def _row(spec: RunSpec, step, timeline: ReplayTimeline, result, l1: np.ndarray, worst: np.ndarray,
         l1_normalized: float) -> dict:
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
    row["dev_l1"] = float(l1.mean())  # mean |a - a_ref| over the chunk and the action dimensions
    row["dev_max"] = float(worst.max())  # largest |a - a_ref| anywhere in the chunk
    row["dev_l1_normalized"] = l1_normalized  # the same L1 in the model's [-1, 1] action space
    for dim, value in enumerate(l1):
        row[f"dev_l1_d{dim}"] = float(value)
    for dim, value in enumerate(worst):
        row[f"dev_max_d{dim}"] = float(value)
    row["pool_vl"] = stats["pool_vl"]
    row["pool_act"] = stats["pool_act"]
    row["pool_dual"] = stats["pool_dual"]
    # |C_dual| / |C_vl| (Fig. 11); only VLA-Pruner's pruned steps have both pools.
    row["pool_ratio"] = stats["pool_ratio"] if stats["pool_vl"] and stats["pool_act"] else float("nan")
    row["pool_overlap"] = stats["overlap_vl_act"] if stats["pool_vl"] and stats["pool_act"] else float("nan")
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
    settings = spec.settings
    return (online["method"] == spec.method and abs(online["keep_ratio"] - spec.keep_ratio) < 1e-6
            and online["prune_layer"] == settings.prune_layer and online["smoothing"] == settings.smoothing
            and online["window"] == settings.window and abs(online["decay"] - settings.decay) < 1e-6)
