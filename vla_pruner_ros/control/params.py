"""The policy node's parameters: one table that the node declares from (with descriptors and
ranges), and one validation function that takes a whole change set and either returns the
new settings or raises ``ValueError`` with the reason -- so a change is never half-applied."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..pruning import METHODS, PrunerConfig
from .inputs import clean_instruction


@dataclass(frozen=True)
class ParameterSpec:
    name: str  # ROS parameter name
    field: str  # attribute of NodeSettings it sets
    default: Any
    description: str
    minimum: float | None = None  # inclusive bounds, also published in the descriptor
    maximum: float | None = None
    exclusive_minimum: bool = False  # checked by us: ROS ranges are inclusive
    choices: tuple[str, ...] | None = None
    read_only: bool = False


@dataclass(frozen=True)
class NodeSettings:
    """Everything the node can change live. Defaults match config/policy.yaml."""

    prune_enabled: bool = True
    prune_method: str = "vla_pruner"
    keep_ratio: float = 0.25
    prune_layer: int = 3
    window: int = 3
    decay: float = 0.8
    smoothing: str = "window"
    ema_alpha: float = 0.5
    fusion_weight: float = 0.5
    seed: int = 0
    action_source: str = "temporal"  # issue 17: the PrunerConfig fields of the same names
    current_weight: float = 0.5
    shift_fallback: str = "off"
    shift_image_threshold: float = 0.05
    shift_overlap_threshold: float = 0.3
    shift_widen: float = 2.0
    target_ms: float = 0.0
    min_keep_ratio: float = 0.1
    control_rate: float = 10.0
    actions_per_step: int = 4
    max_input_age: float = 0.5
    max_joint_velocity: float = 3.14
    instruction: str = ""
    publish_overlays: bool = True
    max_image_pixels: int = 4_194_304

    def pruner_config(self) -> PrunerConfig:
        return PrunerConfig(
            method=self.prune_method,
            enabled=self.prune_enabled,
            keep_ratio=self.keep_ratio,
            prune_layer=self.prune_layer,
            window=self.window,
            decay=self.decay,
            smoothing=self.smoothing,
            ema_alpha=self.ema_alpha,
            fusion_weight=self.fusion_weight,
            seed=self.seed,
            action_source=self.action_source,
            current_weight=self.current_weight,
            shift_fallback=self.shift_fallback,
            shift_image_threshold=self.shift_image_threshold,
            shift_overlap_threshold=self.shift_overlap_threshold,
            shift_widen=self.shift_widen,
            target_ms=self.target_ms,
            min_keep_ratio=self.min_keep_ratio,
        )

    @property
    def control_period(self) -> float:
        return 1.0 / self.control_rate

    @property
    def step_period(self) -> float:
        """Seconds between policy steps: each step's chunk is followed for actions_per_step points."""
        return self.actions_per_step / self.control_rate


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("prune.enabled", "prune_enabled", True, "Prune visual tokens (false: every step runs unpruned)."),
    ParameterSpec("prune.method", "prune_method", "vla_pruner",
                  f"Pruning method, one of: {', '.join(METHODS)}.", choices=tuple(METHODS)),
    ParameterSpec("prune.keep_ratio", "keep_ratio", 0.25,
                  "Fraction of visual tokens kept, in (0, 1]; 1 keeps all.", 0.0, 1.0, exclusive_minimum=True),
    ParameterSpec("prune.layer", "prune_layer", 3,
                  "LLM layer K where tokens are dropped (layers < K see all); must be < the model's layer count.",
                  1, 128),
    ParameterSpec("prune.window", "window", 3,
                  "Steps of action-attention history (decaying window w); also the warm-up length.", 1, 64),
    ParameterSpec("prune.decay", "decay", 0.8, "Decay gamma of the window average (Eq. 7).", 0.0, 1.0),
    ParameterSpec("prune.smoothing", "smoothing", "window",
                  "Temporal estimate of action attention: window (Eq. 7) or ema (Eq. 6).", choices=("window", "ema")),
    ParameterSpec("prune.ema_alpha", "ema_alpha", 0.5, "EMA smoothing factor alpha (Eq. 6).", 0.0, 1.0),
    ParameterSpec("prune.fusion_weight", "fusion_weight", 0.5,
                  "Weight of prefill scores in the score_fusion ablation.", 0.0, 1.0),
    ParameterSpec("prune.seed", "seed", 0, "Seed of the random baseline.", 0, 2**31 - 1),
    ParameterSpec("prune.action_source", "action_source", "temporal",
                  "Action level of vla_pruner: temporal (past steps, the paper), current (this step's action rows "
                  "at layer K-1, no warm-up) or fused.", choices=("temporal", "current", "fused")),
    ParameterSpec("prune.current_weight", "current_weight", 0.5,
                  "Weight of the current-step score in action_source fused.", 0.0, 1.0),
    ParameterSpec("prune.shift_fallback", "shift_fallback", "off",
                  "On a detected scene/task shift: off, current (that step uses the current-step score; a new "
                  "instruction refills the history pruned) or widen (keep shift_widen x more tokens).",
                  choices=("off", "current", "widen")),
    ParameterSpec("prune.shift_image_threshold", "shift_image_threshold", 0.05,
                  "Image change (1 - mean token cosine to the previous step) that counts as a shift; 0 = off.",
                  0.0, 1.0),
    ParameterSpec("prune.shift_overlap_threshold", "shift_overlap_threshold", 0.3,
                  "Temporal/current top-k overlap below which a step counts as a shift; 0 = off.", 0.0, 1.0),
    ParameterSpec("prune.shift_widen", "shift_widen", 2.0, "Budget factor of the widen fallback.", 1.0, 100.0),
    ParameterSpec("prune.target_ms", "target_ms", 0.0,
                  "Latency budget: > 0 picks the keep ratio each step to meet this policy-step time (keep_ratio "
                  "is the ceiling); 0 = off.", 0.0, 1e6),
    ParameterSpec("prune.min_keep_ratio", "min_keep_ratio", 0.1,
                  "Lowest keep ratio the latency budget may choose.", 0.0, 1.0, exclusive_minimum=True),
    ParameterSpec("control_rate", "control_rate", 10.0,
                  "Rate (Hz) of the trajectory points sent to the arm, 1 to 100; the chunk's points are "
                  "1/control_rate apart.", 1.0, 100.0),
    ParameterSpec("actions_per_step", "actions_per_step", 4,
                  "Points of each chunk followed before the next policy step (the rest is a fallback).", 1, 64),
    ParameterSpec("max_input_age", "max_input_age", 0.5,
                  "Seconds: a step runs only when every camera frame and joint state is newer than this.",
                  0.0, 60.0, exclusive_minimum=True),
    ParameterSpec("max_joint_velocity", "max_joint_velocity", 3.14,
                  "Upper bound (rad/s) on commanded joint speed; never above the robot config's limit.",
                  0.0, 10.0, exclusive_minimum=True),
    ParameterSpec("instruction", "instruction", "",
                  "Task instruction; the instruction topic overrides it. A change starts a new episode. "
                  "Refused: empty, control or invisible format characters, too long."),
    ParameterSpec("publish_overlays", "publish_overlays", True,
                  "Publish camera frames with the pruned patches dimmed (for RViz)."),
    ParameterSpec("max_image_pixels", "max_image_pixels", 4_194_304,
                  "Largest camera frame accepted (width*height pixels); a compressed frame declaring more is "
                  "refused before it is decoded.", 4096, 50_000_000),
)
SPECS_BY_NAME = {spec.name: spec for spec in PARAMETERS}
# Float parameters: an integer value (what people type: `prune.keep_ratio 1`) is taken as that float.
FLOAT_PARAMETERS = frozenset(spec.name for spec in PARAMETERS if isinstance(spec.default, float))


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_value(spec: ParameterSpec, value: Any) -> Any:
    """The value coerced to the spec's type, or ValueError saying what was expected."""
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(f"{spec.name}: expected a {expected.__name__}, got {value!r} ({_type_name(value)})")
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f"{spec.name}: {value!r} is not one of {', '.join(spec.choices)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{spec.name}: {value!r} is not a finite number")
    if spec.minimum is not None:
        low_ok = value > spec.minimum if spec.exclusive_minimum else value >= spec.minimum
        if not low_ok or value > spec.maximum:
            bracket = "(" if spec.exclusive_minimum else "["
            raise ValueError(f"{spec.name}: {value!r} is outside {bracket}{spec.minimum}, {spec.maximum}]")
    return value


def check_instruction_change(value: str, current: str) -> str:
    """The instruction the policy gets for a new parameter value (``clean_instruction``: the same
    checks as the instruction topic), or ValueError. '' means "no instruction yet": allowed only
    where there is none already (the start-up default); to stop the arm, disable motion."""
    if value == "" and current == "":
        return ""
    try:
        return clean_instruction(value)
    except ValueError as error:
        if value.strip() == "":
            raise ValueError(f"{error} (to stop the arm call ~/enable_motion with false)") from None
        raise


def apply_parameter_changes(
    settings: NodeSettings, changes: dict[str, Any], num_layers: int | None = None
) -> NodeSettings:
    """New settings with every change applied, or ValueError naming the first bad one.

    ``num_layers`` (the model's LLM depth) bounds ``prune.layer`` when known.
    """
    updates = {}
    for name, value in changes.items():
        spec = SPECS_BY_NAME.get(name)
        if spec is None:
            continue  # not a live setting (read-only start-up parameter or someone else's)
        value = check_value(spec, value)
        if spec.field == "instruction":
            value = check_instruction_change(value, settings.instruction)
        updates[spec.field] = value
    new = dataclasses.replace(settings, **updates)
    if num_layers is not None and new.prune_layer >= num_layers:
        raise ValueError(f"prune.layer: {new.prune_layer} must be < the model's {num_layers} LLM layers")
    try:
        new.pruner_config()
    except ValueError as error:  # cross-field constraints live in PrunerConfig
        raise ValueError(str(error)) from None
    return new


def settings_from_parameters(values: dict[str, Any], num_layers: int | None = None) -> NodeSettings:
    """Settings from a complete {parameter name: value} map (start-up)."""
    return apply_parameter_changes(NodeSettings(), values, num_layers)
