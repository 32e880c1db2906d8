"""Configuration of a visual-token pruner, and the one place its settings are defined.

`PrunerConfig` is a frozen dataclass that validates itself on construction: every bad field
raises a `ValueError` that names the field, the value it got and what is allowed.  Use
`config.replace(keep_ratio=0.25)` to derive a changed (and re-validated) copy.

Each field is declared with `setting(default, description, range / choices, ...)`.  That
declaration is the only definition of the setting: `pruner_settings()` reads it back, and from it
come PrunerConfig's own checks, the policy node's `prune.*` parameters (name, type, default,
description, range, choices: `control/params.py`), the command-line options of replay / eval-sim /
premise (`tools/_arguments.py`) and the check of `config/policy.yaml`.  Adding an option is one
field here (plus its use in the pruner).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, Union

from .registry import method_names

SMOOTHING_KINDS = ("window", "ema")
UNOBSERVED_POLICIES = ("zero", "carry")
ACTION_SOURCES = ("temporal", "current", "fused")  # where VLA-Pruner's action level comes from
SHIFT_FALLBACKS = ("off", "current", "widen")  # what a step does when a shift is detected
MAX_SEED = 2**31 - 1  # what every seeded generator takes, and what the node publishes (int64 range is wider)
MAX_LAYER = 128  # ROS integer parameters need an upper bound; the model's depth is checked in plan()

_METADATA_KEY = "vla_pruner_setting"


def _is_int(value) -> bool:
    # bool is an int subclass; a `True` window is almost certainly a mistake
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value) -> str:
    return str(value) if _is_int(value) else f"{value:g}"


def setting(default: Any, description: str, *, minimum: Union[int, float, None] = None,
            maximum: Union[int, float, None] = None, exclusive_minimum: bool = False,
            choices: Union[Tuple[str, ...], Callable[[], Tuple[str, ...]], None] = None,
            ros_name: Optional[str] = None, node: bool = True):
    """A PrunerConfig field with what it means and accepts (see `Setting`).

    `minimum`/`maximum` are inclusive bounds (`exclusive_minimum`: the lower one is not); both or
    neither.  `choices` may be a function, for lists that are only known later (the registered
    methods).  `ros_name` is the policy node's parameter (default ``prune.<field>``); `node=False`
    keeps a field off the node's parameters."""
    if (minimum is None) != (maximum is None):
        raise ValueError(f"setting {description!r}: give both minimum and maximum, or neither")
    return dataclasses.field(default=default, metadata={_METADATA_KEY: dict(
        description=description, minimum=minimum, maximum=maximum, exclusive_minimum=exclusive_minimum,
        choices=choices, ros_name=ros_name, node=node)})


@dataclass(frozen=True)
class Setting:
    """One PrunerConfig field as declared: read with `pruner_settings()`."""

    name: str  # the PrunerConfig field
    default: Any
    description: str
    minimum: Union[int, float, None] = None
    maximum: Union[int, float, None] = None
    exclusive_minimum: bool = False
    choices_from: Union[Tuple[str, ...], Callable[[], Tuple[str, ...]], None] = None
    ros_name: Optional[str] = None  # the policy node's parameter; None: not one
    node: bool = True

    @property
    def kind(self) -> Optional[type]:
        """bool, int, float or str; None for the layer tuples (not scalar, checked by PrunerConfig)."""
        return None if self.default is None else type(self.default)

    @property
    def choices(self) -> Optional[Tuple[str, ...]]:
        return tuple(self.choices_from()) if callable(self.choices_from) else self.choices_from

    @property
    def option(self) -> str:
        """The command-line option, ``--prune-layer`` for prune_layer."""
        return "--" + self.name.replace("_", "-")

    def allowed(self) -> str:
        """What `check` accepts, in words ("an int in [1, 64]", "one of ('window', 'ema')")."""
        if self.kind is bool:
            return "True or False"
        if self.choices is not None:
            return f"one of {self.choices}"
        if self.minimum is not None:
            low = "(" if self.exclusive_minimum else "["
            what = "an int" if self.kind is int else "a number"
            return f"{what} in {low}{_number(self.minimum)}, {_number(self.maximum)}]"
        return f"a {self.kind.__name__}" if self.kind is not None else "a value"

    def check(self, value: Any) -> None:
        """ValueError "PrunerConfig.<name>=<value> is invalid: expected ..." unless `value` is of the
        declared type (an int for a float is fine), within the range and among the choices."""
        if self.kind is None:
            return  # layer tuples: PrunerConfig checks them (they depend on prune_layer)
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = _is_int(value)
        elif self.kind is float:
            ok = _is_real(value) and math.isfinite(value)
        else:
            ok = isinstance(value, self.kind)
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and self.minimum is not None:  # NaN fails every comparison
            ok = (value > self.minimum if self.exclusive_minimum else value >= self.minimum) and value <= self.maximum
        if not ok:
            raise ValueError(f"PrunerConfig.{self.name}={value!r} is invalid: expected {self.allowed()}")


def _check_layer_tuple(name: str, value) -> Optional[Tuple[int, ...]]:
    """None, or a non-empty tuple of distinct non-negative ints (a list is accepted and converted)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"PrunerConfig.{name}={value!r} is invalid: expected None or a tuple of layer indices")
    layers = tuple(value)
    if not layers or not all(_is_int(layer) and layer >= 0 for layer in layers) or len(set(layers)) != len(layers):
        raise ValueError(
            f"PrunerConfig.{name}={value!r} is invalid: expected None or a non-empty tuple of distinct "
            "0-based layer indices >= 0"
        )
    return tuple(sorted(layers))


@dataclass(frozen=True)
class PrunerConfig:
    """What to prune, how much, and where.

    Every field is declared below with its description, range and choices (the list of them is
    appended to this docstring); `pruner_settings()` returns them.
    """

    method: str = setting(
        "vla_pruner", "Pruning method (a registered one; none = unpruned).", choices=method_names)
    enabled: bool = setting(True, "Prune visual tokens (false: every step runs unpruned, whatever method says).")
    keep_ratio: float = setting(
        0.5, "Fraction r of the M visual tokens kept, in (0, 1]; 1 keeps all.",
        minimum=0.0, maximum=1.0, exclusive_minimum=True)
    prune_layer: int = setting(
        3, "LLM layer K where tokens are dropped: layers < K see all tokens, layers >= K only the kept ones; "
           "must be < the model's layer count (paper: 3).",
        minimum=1, maximum=MAX_LAYER, ros_name="prune.layer")
    score_layers_vl: Optional[Tuple[int, ...]] = setting(
        None, "0-based layers whose prefill scores are averaged for selection; None: (K-1,), the last layer "
              "before pruning (paper 4.2(c)). All must be < K.", node=False)
    action_layers: Optional[Tuple[int, ...]] = setting(
        None, "0-based layers whose action-query scores are averaged into S_act; None: the latter half of the "
              "T decoder layers, range(T // 2, T) (paper 4.2(c)).", node=False)
    smoothing: str = setting(
        "window", "Temporal estimate of action attention: window (decaying window, Eq. 7) or ema (Eq. 6).",
        choices=SMOOTHING_KINDS)
    window: int = setting(
        3, "Steps of action-attention history (decaying window w); also the warm-up length.", minimum=1, maximum=64)
    decay: float = setting(0.8, "Decay gamma of the window average (Eq. 7).", minimum=0.0, maximum=1.0)
    ema_alpha: float = setting(
        0.5, "EMA smoothing factor alpha (Eq. 6): weight of the newest observation.", minimum=0.0, maximum=1.0)
    unobserved: str = setting(
        "zero", "What a pruned (unobserved) token adds to the S_act history: zero (it received no action "
                "attention; the paper's and the authors' behaviour) or carry (its share from the history).",
        choices=UNOBSERVED_POLICIES, node=False)
    fusion_weight: float = setting(
        0.5, "Weight w of prefill scores in the score_fusion ablation: w * S_vl + (1 - w) * S_act.",
        minimum=0.0, maximum=1.0)
    seed: int = setting(0, "Seed of the random baseline's generator (restarted on reset).", minimum=0, maximum=MAX_SEED)
    action_source: str = setting(
        "temporal", "Action level of vla_pruner (and action_only, score_fusion): temporal (past steps, Eq. 6/7, "
                    "with warm-up; the paper), current (this step's action rows at the score layers < K; no "
                    "history, no warm-up) or fused (current_weight * current + (1 - current_weight) * temporal).",
        choices=ACTION_SOURCES)
    current_weight: float = setting(
        0.5, "Weight of the current-step score in action_source fused.", minimum=0.0, maximum=1.0)
    shift_fallback: str = setting(
        "off", "On a detected scene/task shift (Remark 1): off, current (that step uses the current-step score; "
               "a new instruction refills the history pruned) or widen (keep shift_widen x more tokens).",
        choices=SHIFT_FALLBACKS)
    shift_image_threshold: float = setting(
        0.05, "Image change (1 - mean token cosine to the previous step) that counts as a shift; 0 = off.",
        minimum=0.0, maximum=1.0)
    shift_overlap_threshold: float = setting(
        0.3, "Temporal/current top-k overlap below which a step counts as a shift; 0 = off.",
        minimum=0.0, maximum=1.0)
    shift_widen: float = setting(2.0, "Budget factor of the widen fallback.", minimum=1.0, maximum=100.0)
    target_ms: float = setting(
        0.0, "Latency budget: > 0 picks the keep ratio each step to meet this policy-step time in ms "
             "(keep_ratio is then the ceiling); 0 = off.", minimum=0.0, maximum=1e6)
    min_keep_ratio: float = setting(
        0.1, "Lowest keep ratio the latency budget may choose.", minimum=0.0, maximum=1.0, exclusive_minimum=True)

    def __post_init__(self):
        for declared in pruner_settings(type(self)):
            declared.check(getattr(self, declared.name))
        score_layers = _check_layer_tuple("score_layers_vl", self.score_layers_vl)
        if score_layers is not None and max(score_layers) >= self.prune_layer:
            raise ValueError(
                f"PrunerConfig.score_layers_vl={self.score_layers_vl!r} is invalid: expected layers "
                f"< prune_layer={self.prune_layer} (scores must exist before pruning)"
            )
        object.__setattr__(self, "score_layers_vl", score_layers)
        object.__setattr__(self, "action_layers", _check_layer_tuple("action_layers", self.action_layers))

    def replace(self, **changes) -> "PrunerConfig":
        """A copy with `changes` applied, validated like a new config."""
        return dataclasses.replace(self, **changes)

    def budget(self, num_visual_tokens: int) -> int:
        """M~ = max(1, round(keep_ratio * M)), rounding halves up (floor(x + 0.5), not banker's)."""
        if not _is_int(num_visual_tokens) or num_visual_tokens < 1:
            raise ValueError(f"num_visual_tokens={num_visual_tokens!r} is invalid: expected an int >= 1")
        return max(1, min(num_visual_tokens, math.floor(self.keep_ratio * num_visual_tokens + 0.5)))


@functools.lru_cache(maxsize=None)
def pruner_settings(config_class: type = None) -> Tuple[Setting, ...]:
    """Every field of PrunerConfig (or of a subclass that adds settings) as declared, in order."""
    settings = []
    for field in dataclasses.fields(config_class or PrunerConfig):
        declared = dict(field.metadata[_METADATA_KEY])
        node = declared.pop("node")
        ros_name = (declared.pop("ros_name") or f"prune.{field.name}") if node else None
        declared.pop("ros_name", None)
        choices = declared.pop("choices")
        settings.append(Setting(name=field.name, default=field.default, ros_name=ros_name, node=node,
                                choices_from=choices, **declared))
    return tuple(settings)


def pruner_setting(name: str, config_class: type = None) -> Setting:
    """The declaration of PrunerConfig field `name` (KeyError when there is none)."""
    for declared in pruner_settings(config_class):
        if declared.name == name:
            return declared
    raise KeyError(name)


PrunerConfig.__doc__ += "\n    Attributes:\n" + "".join(
    f"        {s.name}: {s.description} Default {s.default!r}"
    + ("" if s.kind in (None, str) and not isinstance(s.choices_from, tuple) else f"; {s.allowed()}") + ".\n"
    for s in pruner_settings())
