"""Configuration of a visual-token pruner.

`PrunerConfig` is a frozen dataclass that validates itself on construction: every bad field
raises a `ValueError` that names the field, the value it got and what is allowed.  Use
`config.replace(keep_ratio=0.25)` to derive a changed (and re-validated) copy.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Tuple

from .registry import method_names

SMOOTHING_KINDS = ("window", "ema")
UNOBSERVED_POLICIES = ("zero", "carry")
ACTION_SOURCES = ("temporal", "current", "fused")  # where VLA-Pruner's action level comes from
SHIFT_FALLBACKS = ("off", "current", "widen")  # what a step does when a shift is detected
_MAX_SEED = 2**63 - 1


def _is_int(value) -> bool:
    # bool is an int subclass; a `True` window is almost certainly a mistake
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_unit_interval(name: str, value, low_open: bool = False) -> None:
    """value in [0, 1], or in (0, 1] when low_open (NaN fails every comparison, so it is rejected)."""
    in_range = _is_real(value) and (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0)
    if not in_range:
        low = "(0" if low_open else "[0"
        raise ValueError(f"PrunerConfig.{name}={value!r} is invalid: expected a number in {low}, 1]")


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

    Attributes:
        method: name of a registered method (see `vla_pruner_ros.pruning.METHODS`).
        enabled: False runs the model unpruned whatever `method` says (method "none").
        keep_ratio: fraction r of the M visual tokens to keep, 0 < r <= 1.
        prune_layer: K; layers 0..K-1 see all tokens, layers K..T-1 only the kept ones (K >= 1,
            and K < T is checked in `plan()` where T is known).  Paper default: 3.
        score_layers_vl: 0-based layers whose prefill scores are averaged for selection.  None means
            (K-1,), "the last layer before pruning" (paper §4.2(c)).  All must be < K.
        action_layers: 0-based layers whose action-query scores are averaged into S_act.  None means
            the latter half of the T decoder layers, range(T // 2, T) (paper §4.2(c)).
        smoothing: "window" (decaying window, Eq. 7) or "ema" (Eq. 6) for the S_act estimate.
        window: w, the number of past steps the decaying window holds; also the warm-up length.
        decay: gamma in Eq. 7, in [0, 1].
        ema_alpha: alpha in Eq. 6, in [0, 1] (weight of the newest observation).
        unobserved: what a pruned (unobserved) token contributes to the S_act history: "zero" (it
            received no action attention, the paper's and the authors' behaviour) or "carry" (it keeps
            its share from the history).  See `temporal.py`.
        fusion_weight: w in the score_fusion ablation, fused = w * S_vl + (1 - w) * S_act.
        seed: seed of the `random` method's generator (restarted by `reset()`).
        action_source: where the action level of `vla_pruner` (and `action_only`, `score_fusion`)
            comes from: "temporal" (the paper: Ŝ_act from past steps, Eq. 6/7, with warm-up),
            "current" (this step's action-row attention at the score layers < K: OFT decodes the chunk
            in parallel, so those rows exist at prefill; no history, no warm-up) or "fused"
            (current_weight * current + (1 - current_weight) * temporal, both as distributions; the
            current score alone while the history fills).  See `methods.py`.
        current_weight: lambda of the "fused" action source, in [0, 1].
        shift_fallback: shift-aware fallback (Remark 1, `shift.py`): "off", "current" (a step with a
            detected shift uses the current-step action score; after an instruction change the
            history refills with pruned current-score steps instead of an unpruned warm-up) or
            "widen" (a shift step keeps `shift_widen` times more tokens).
        shift_image_threshold: image change (1 - mean token cosine) above which a step is a shift;
            0 disables the image signal.
        shift_overlap_threshold: temporal/current top-k overlap below which a step is a shift; 0
            disables the overlap signal.
        shift_widen: budget factor of the "widen" fallback, >= 1.
        target_ms: latency budget (`budget.py`): > 0 makes the keep ratio follow a per-step target
            time (keep_ratio is then the upper bound); 0 = off.
        min_keep_ratio: the lowest keep ratio the latency budget may choose, in (0, 1].
    """

    method: str = "vla_pruner"
    enabled: bool = True
    keep_ratio: float = 0.5
    prune_layer: int = 3
    score_layers_vl: Optional[Tuple[int, ...]] = None
    action_layers: Optional[Tuple[int, ...]] = None
    smoothing: str = "window"
    window: int = 3
    decay: float = 0.8
    ema_alpha: float = 0.5
    unobserved: str = "zero"
    fusion_weight: float = 0.5
    seed: int = 0
    action_source: str = "temporal"
    current_weight: float = 0.5
    shift_fallback: str = "off"
    shift_image_threshold: float = 0.05
    shift_overlap_threshold: float = 0.3
    shift_widen: float = 2.0
    target_ms: float = 0.0
    min_keep_ratio: float = 0.1

    def __post_init__(self):
        methods = method_names()
        if self.method not in methods:
            raise ValueError(f"PrunerConfig.method={self.method!r} is invalid: expected one of {methods}")
        if not isinstance(self.enabled, bool):
            raise ValueError(f"PrunerConfig.enabled={self.enabled!r} is invalid: expected True or False")
        _check_unit_interval("keep_ratio", self.keep_ratio, low_open=True)
        if not _is_int(self.prune_layer) or self.prune_layer < 1:
            raise ValueError(f"PrunerConfig.prune_layer={self.prune_layer!r} is invalid: expected an int >= 1")
        score_layers = _check_layer_tuple("score_layers_vl", self.score_layers_vl)
        if score_layers is not None and max(score_layers) >= self.prune_layer:
            raise ValueError(
                f"PrunerConfig.score_layers_vl={self.score_layers_vl!r} is invalid: expected layers "
                f"< prune_layer={self.prune_layer} (scores must exist before pruning)"
            )
        object.__setattr__(self, "score_layers_vl", score_layers)
        object.__setattr__(self, "action_layers", _check_layer_tuple("action_layers", self.action_layers))
        if self.smoothing not in SMOOTHING_KINDS:
            raise ValueError(f"PrunerConfig.smoothing={self.smoothing!r} is invalid: expected one of {SMOOTHING_KINDS}")
        if not _is_int(self.window) or self.window < 1:
            raise ValueError(f"PrunerConfig.window={self.window!r} is invalid: expected an int >= 1")
        _check_unit_interval("decay", self.decay)
        _check_unit_interval("ema_alpha", self.ema_alpha)
        if self.unobserved not in UNOBSERVED_POLICIES:
            raise ValueError(
                f"PrunerConfig.unobserved={self.unobserved!r} is invalid: expected one of {UNOBSERVED_POLICIES}"
            )
        _check_unit_interval("fusion_weight", self.fusion_weight)
        if not _is_int(self.seed) or not 0 <= self.seed <= _MAX_SEED:
            raise ValueError(f"PrunerConfig.seed={self.seed!r} is invalid: expected an int in [0, 2**63 - 1]")
        for name, choices in (("action_source", ACTION_SOURCES), ("shift_fallback", SHIFT_FALLBACKS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"PrunerConfig.{name}={getattr(self, name)!r} is invalid: expected one of {choices}")
        for name in ("current_weight", "shift_image_threshold", "shift_overlap_threshold"):
            _check_unit_interval(name, getattr(self, name))
        _check_unit_interval("min_keep_ratio", self.min_keep_ratio, low_open=True)
        if not _is_real(self.shift_widen) or not 1.0 <= self.shift_widen <= 100.0:
            raise ValueError(f"PrunerConfig.shift_widen={self.shift_widen!r} is invalid: expected a number in [1, 100]")
        if not _is_real(self.target_ms) or not 0.0 <= self.target_ms < math.inf:
            raise ValueError(f"PrunerConfig.target_ms={self.target_ms!r} is invalid: expected a finite number >= 0 "
                             "(0 = no latency budget)")

    def replace(self, **changes) -> "PrunerConfig":
        """A copy with `changes` applied, validated like a new config."""
        return dataclasses.replace(self, **changes)

    def budget(self, num_visual_tokens: int) -> int:
        """M~ = max(1, round(keep_ratio * M)), rounding halves up (floor(x + 0.5), not banker's)."""
        if not _is_int(num_visual_tokens) or num_visual_tokens < 1:
            raise ValueError(f"num_visual_tokens={num_visual_tokens!r} is invalid: expected an int >= 1")
        return max(1, min(num_visual_tokens, math.floor(self.keep_ratio * num_visual_tokens + 0.5)))
