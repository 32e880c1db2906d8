"""The policy node's parameters: one table that the node declares from (with descriptors and
ranges), and one validation function that takes a whole change set and either returns the
new settings or raises ``ValueError`` with the reason -- so a change is never half-applied."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..pruning import PrunerConfig
from ..pruning.config import pruner_settings
from .inputs import clean_instruction


@dataclass(frozen=True)
class ParameterSpec:
    name: str  # ROS parameter name
    field: str  # attribute of NodeSettings it sets, or "pruner.<PrunerConfig field>"
    default: Any
    description: str
    minimum: float | None = None  # inclusive bounds, also published in the descriptor
    maximum: float | None = None
    exclusive_minimum: bool = False  # checked by us: ROS ranges are inclusive
    choices: tuple[str, ...] | None = None
    read_only: bool = False


# The node's pruner at start-up: PrunerConfig's defaults, except keep_ratio 0.25 (the node's default
# since its first version, and the ratio the README's demo and evaluations run) instead of 0.5.
# The only place a node default differs from PrunerConfig's.
NODE_PRUNER = PrunerConfig(keep_ratio=0.25)


@dataclass(frozen=True)
class NodeSettings:
    """Everything the node can change live. Defaults match config/policy.yaml.

    ``pruner`` holds the ``prune.*`` parameters (one per PrunerConfig field declared for the node,
    see ``pruner_parameters``); the other fields are the node's own."""

    pruner: PrunerConfig = NODE_PRUNER
    control_rate: float = 10.0
    actions_per_step: int = 4
    max_input_age: float = 0.5
    max_joint_velocity: float = 3.14
    instruction: str = ""
    publish_overlays: bool = True
    max_image_pixels: int = 4_194_304

    def pruner_config(self) -> PrunerConfig:
        return self.pruner

    @property
    def control_period(self) -> float:
        return 1.0 / self.control_rate

    @property
    def step_period(self) -> float:
        """Seconds between policy steps: each step's chunk is followed for actions_per_step points."""
        return self.actions_per_step / self.control_rate


PRUNER_FIELD = "pruner."  # ParameterSpec.field prefix of the prune.* parameters


def pruner_parameters(base: PrunerConfig = NODE_PRUNER) -> tuple[ParameterSpec, ...]:
    """A parameter per PrunerConfig field declared for the node (``pruning.config.setting``): its
    name, description, range and choices as declared there, its default from ``base``."""
    specs = []
    for declared in pruner_settings(type(base)):
        if declared.ros_name is None:
            continue
        kind = declared.kind
        bounds = (None, None) if declared.minimum is None else (kind(declared.minimum), kind(declared.maximum))
        specs.append(ParameterSpec(declared.ros_name, PRUNER_FIELD + declared.name, getattr(base, declared.name),
                                   declared.description, *bounds, exclusive_minimum=declared.exclusive_minimum,
                                   choices=declared.choices))
    return tuple(specs)


PARAMETERS: tuple[ParameterSpec, ...] = (
    *pruner_parameters(),
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
    updates, pruner_updates = {}, {}
    for name, value in changes.items():
        spec = SPECS_BY_NAME.get(name)
        if spec is None:
            continue  # not a live setting (read-only start-up parameter or someone else's)
        value = check_value(spec, value)
        if spec.field == "instruction":
            value = check_instruction_change(value, settings.instruction)
        if spec.field.startswith(PRUNER_FIELD):
            pruner_updates[spec.field[len(PRUNER_FIELD):]] = value
        else:
            updates[spec.field] = value
    try:
        pruner = settings.pruner.replace(**pruner_updates)
    except ValueError as error:  # cross-field constraints live in PrunerConfig
        raise ValueError(str(error)) from None
    if num_layers is not None and pruner.prune_layer >= num_layers:
        raise ValueError(f"prune.layer: {pruner.prune_layer} must be < the model's {num_layers} LLM layers")
    return dataclasses.replace(settings, pruner=pruner, **updates)


def settings_from_parameters(values: dict[str, Any], num_layers: int | None = None) -> NodeSettings:
    """Settings from a complete {parameter name: value} map (start-up)."""
    return apply_parameter_changes(NodeSettings(), values, num_layers)
