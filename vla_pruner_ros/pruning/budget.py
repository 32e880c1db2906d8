"""Latency budget: choose the keep ratio each step so that the step meets a target time.

Robot users think in control periods, not keep ratios.  With `PrunerConfig.target_ms > 0` the
pruner asks a `LatencyBudget` for the number of visual tokens to keep in the coming step: the
largest count whose *predicted* step time meets the target, never below `min_keep_ratio`.

Cost model (the shape of the paper's App. A.2, Eq. 10-13): a step is a fixed part (preprocessing,
vision towers, the K layers before pruning, selection, action head: none of them depend on how many
tokens are kept) plus the T-K layers after pruning, whose cost is (T-K) * C(n) with
C(n) = 4 n d^2 + 2 n^2 d + 2 n d m and n the rows left after pruning.  So

    step_ms(kept) = fixed_ms + rate * units(kept),     units(kept) = (T-K) * C(n(kept)) / 1e9

`units` is given by the caller (the policy knows d, m, T, K and the sequence layout; without it,
units = kept tokens, i.e. linear).  `fixed_ms` and `rate` are fitted online from the measured stage
times of every step: the `llm_suffix` stage is the variable part, the rest of the total is the fixed
part (an unpruned step times all layers as `llm_prefix`: its variable part is that time's (T-K)/T
share).  Both are exponentially weighted averages (`alpha`), so the model follows a change of load
within a few steps.  Because the two parts are measured separately, one operating point identifies
the model: no ratio sweep (no excitation) is needed.

Noise: the goal is a share of steps (`quantile`, 95 %) within the target, so the headroom is that
quantile of the model's recent overshoots (measured - predicted, the last `residual_window` steps):
the controller aims at `limit = target - headroom`. A lone preempted step is the largest of the
window and does not count at 95 % of 20. Until `min_residuals` steps are measured, the headroom is
`noise_margin` x the mean absolute prediction error (`spread_ms`, an EWMA). On a steady machine
both go to 0 and the limit is the target itself.

Hysteresis (no oscillation): the count goes *down* as soon as the prediction at the current count
misses the limit (to the largest count predicted within it); it goes *up* (to the largest count
predicted within the limit) only when the current count is predicted below
`limit - target * hysteresis` for `patience` consecutive steps.  A prediction between those two bounds
keeps the count unchanged, so measurement noise smaller than the band moves it one way only.  Pure logic: no model, no ROS.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Optional


@dataclass
class LatencyBudget:
    target_ms: float
    min_keep_ratio: float = 0.1
    max_keep_ratio: float = 1.0
    alpha: float = 0.3  # EWMA weight of the newest measurement
    hysteresis: float = 0.08  # go up only when the current count is predicted this far below the target
    patience: int = 2  # consecutive steps that must allow going up
    noise_margin: float = 1.0  # until min_residuals: aim this many mean absolute errors below the target
    quantile: float = 0.95  # share of steps that should meet the target: headroom = this quantile of overshoots
    residual_window: int = 20  # recent steps whose overshoots set the headroom
    min_residuals: int = 8
    units: Optional[Callable[[int], float]] = None  # kept tokens -> cost units (default: kept tokens)

    fixed_ms: Optional[float] = field(default=None, init=False)
    rate: Optional[float] = field(default=None, init=False)  # ms per cost unit
    kept: Optional[int] = field(default=None, init=False)  # the count chosen last
    predicted_ms: float = field(default=float("nan"), init=False)  # prediction for the count chosen last
    spread_ms: float = field(default=0.0, init=False)  # EWMA of |measured - predicted| step time
    _up_votes: int = field(default=0, init=False)
    _residuals: Deque[float] = field(default=None, init=False, repr=False)  # measured - predicted (ms)

    def __post_init__(self):
        if not (isinstance(self.target_ms, (int, float)) and math.isfinite(self.target_ms) and self.target_ms > 0):
            raise ValueError(f"target_ms={self.target_ms!r} is invalid: expected a number > 0")
        if not 0 < self.min_keep_ratio <= self.max_keep_ratio <= 1:
            raise ValueError(f"keep ratio bounds ({self.min_keep_ratio!r}, {self.max_keep_ratio!r}) are invalid: "
                             "expected 0 < min_keep_ratio <= max_keep_ratio <= 1")
        if not 0 < self.alpha <= 1 or not 0 <= self.hysteresis < 1 or self.patience < 1:
            raise ValueError("alpha must be in (0, 1], hysteresis in [0, 1), patience >= 1")
        if not 0 < self.quantile < 1 or self.residual_window < 1 or not 1 <= self.min_residuals <= self.residual_window:
            raise ValueError("quantile must be in (0, 1), residual_window >= 1, 1 <= min_residuals <= residual_window")
        self._residuals = deque(maxlen=self.residual_window)

    # -- model ----------------------------------------------------------------------------------
    def _units(self, kept: int) -> float:
        return float(self.units(kept)) if self.units is not None else float(kept)

    @property
    def fitted(self) -> bool:
        return self.fixed_ms is not None and self.rate is not None

    def predict(self, kept: int) -> float:
        """Predicted step time (ms) keeping `kept` visual tokens; NaN before the first observation."""
        if not self.fitted:
            return float("nan")
        return self.fixed_ms + self.rate * self._units(kept)

    def observe(self, kept: int, total_ms: float, variable_ms: float) -> None:
        """Fit the model to one finished step: `kept` tokens, its total time and the time of the part
        that scales with the kept tokens (the layers after K)."""
        if not (math.isfinite(total_ms) and math.isfinite(variable_ms)) or total_ms <= 0:
            return
        variable_ms = min(max(variable_ms, 0.0), total_ms)
        units = self._units(kept)
        fixed = total_ms - variable_ms
        rate = variable_ms / units if units > 0 else None
        if self.fitted:
            # how far off the model is: the controller keeps that much headroom (one preempted step
            # counts at most a quarter of the target, so a lone spike does not pin the ratio down)
            residual = total_ms - self.predict(kept)
            self._residuals.append(min(residual, 0.25 * self.target_ms))
            error = min(abs(residual), 0.25 * self.target_ms)
            self.spread_ms = (1 - self.alpha) * self.spread_ms + self.alpha * error
            # a single measurement moves each part at most x1.5 (a sustained load change still gets
            # through in a few steps: 1.5^n; a lone spike does not)
            fixed = min(fixed, 1.5 * self.fixed_ms) if self.fixed_ms > 0 else fixed
            if rate is not None and self.rate > 0:
                rate = min(rate, 1.5 * self.rate)
        a = self.alpha
        self.fixed_ms = fixed if self.fixed_ms is None else (1 - a) * self.fixed_ms + a * fixed
        if rate is not None:
            self.rate = rate if self.rate is None else (1 - a) * self.rate + a * rate

    @property
    def headroom_ms(self) -> float:
        """How far below the target the controller aims (see the module doc: Noise)."""
        if len(self._residuals) < self.min_residuals:
            return self.noise_margin * self.spread_ms
        ordered = sorted(self._residuals)
        return max(0.0, ordered[min(len(ordered) - 1, math.ceil(self.quantile * len(ordered)) - 1)])

    # -- controller -----------------------------------------------------------------------------
    def bounds(self, num_tokens: int) -> tuple[int, int]:
        low = max(1, math.ceil(self.min_keep_ratio * num_tokens - 1e-9))
        high = max(low, min(num_tokens, math.floor(self.max_keep_ratio * num_tokens + 1e-9)))
        return low, high

    def _largest_within(self, limit_ms: float, low: int, high: int) -> int:
        """The largest count in [low, high] predicted within `limit_ms` (low when none is): the
        prediction grows with the count, so a bisection finds it."""
        if self.predict(low) > limit_ms:
            return low
        while low < high:
            mid = (low + high + 1) // 2
            if self.predict(mid) <= limit_ms:
                low = mid
            else:
                high = mid - 1
        return low

    def choose(self, num_tokens: int) -> int:
        """Visual tokens to keep in the coming step (of `num_tokens`)."""
        low, high = self.bounds(num_tokens)
        if not self.fitted:  # nothing measured yet: start from the top, the first step measures it
            self.kept = high if self.kept is None else min(max(self.kept, low), high)
            self.predicted_ms = float("nan")
            return self.kept
        current = high if self.kept is None else min(max(self.kept, low), high)
        limit = self.target_ms - self.headroom_ms
        if self.predict(current) > limit:  # missing the target: go down now
            current = self._largest_within(limit, low, current)
            self._up_votes = 0
        else:
            up = self._largest_within(limit, low, high)
            if up > current and self.predict(current) < limit - self.target_ms * self.hysteresis:
                self._up_votes += 1
                if self._up_votes >= self.patience:
                    current, self._up_votes = up, 0
            else:
                self._up_votes = 0
        self.kept = current
        self.predicted_ms = self.predict(current)
        return current

    def affordable(self, num_tokens: int) -> int:
        """The largest count up to every token (keep_ratio's ceiling ignored) predicted within the
        target: what a fallback that widens the budget may still use.  Every token before the first
        measurement."""
        if not self.fitted:
            return num_tokens
        low = self.bounds(num_tokens)[0]
        return self._largest_within(self.target_ms - self.headroom_ms, low, num_tokens)

    def diagnostics(self, num_tokens: int) -> Dict[str, float]:
        return {
            "target_ms": float(self.target_ms),
            "predicted_ms": float(self.predicted_ms),
            "chosen_keep_ratio": (self.kept / num_tokens) if self.kept is not None else float("nan"),
        }


def suffix_units(num_layers: int, prune_layer: int, hidden_size: int, intermediate_size: int,
                 other_rows: int) -> Callable[[int], float]:
    """kept tokens -> GFLOPs of the T-K layers after pruning, (T-K) * C(other_rows + kept) with
    C(n) = 4 n d^2 + 2 n^2 d + 2 n d m (paper Eq. 10-12); `other_rows` = every non-visual row."""
    def units(kept: int) -> float:
        n = other_rows + kept
        per_layer = 4 * n * hidden_size ** 2 + 2 * n ** 2 * hidden_size + 2 * n * hidden_size * intermediate_size
        return (num_layers - prune_layer) * per_layer / 1e9
    return units
