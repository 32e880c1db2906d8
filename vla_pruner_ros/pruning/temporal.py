"""Temporal estimates of the action relevance S_act (paper §4.2(a), Eq. 6 and Eq. 7).

Action attention is only known after a step has run, but pruning happens during the prefill of the
next step, so the pruner predicts the coming step's S_act from the past ones.  Both estimators
share one protocol:

    est.update(observed_scores, observed_mask)   # after a step, scores over the ORIGINAL M tokens
    est.estimate()                               # before the next step: a float32 (M,) tensor or None
    est.reset()                                  # new episode / new instruction

How an observation is stored (identical for both estimators):

* Only entries where `observed_mask` is True are read; the others may hold anything (NaN included).
  After pruning, the action layers only see the kept tokens, so only those are observed.
* Normalisation.  The observed entries are scaled to sum to 1.  After pruning the softmax mass is
  spread over fewer tokens (and the absolute mass on visual tokens varies from step to step), so raw
  values from a pruned and an unpruned step are not comparable; as distributions they are.  An
  all-zero observation stays all zero.
* Unobserved (pruned) tokens, policy `unobserved`:
    - "zero" (default): they contribute 0.  A pruned token did receive no action attention; this is
      what physically happened and what the paper and the authors' code do.  Such a token can only
      come back through S_vl (Alg. 2 takes the union), or once the window has forgotten the step.
    - "carry": they keep their share from the history: the unobserved entry is set to the current
      weighted mean of the history (for EMA, the current estimate; for the window,
      estimate / sum of the weights in use), and the observed entries are scaled to sum to
      1 - (carried mass), so the stored observation is still a distribution.  With no history the
      carried value is 0.  For EMA this leaves a pruned token's estimate exactly unchanged.

Memory is O(w * M) for the window (one fixed ring buffer) and O(M) for EMA; neither grows.  M is
fixed by the first update after construction or `reset()`; another M raises ValueError.
"""
from __future__ import annotations

from typing import Optional

import torch

from .config import UNOBSERVED_POLICIES


class _ActionScoreHistory:
    """Shared validation and normalisation; subclasses define how observations are combined."""

    def __init__(self, unobserved: str = "zero"):
        if unobserved not in UNOBSERVED_POLICIES:
            raise ValueError(f"unobserved={unobserved!r} is invalid: expected one of {UNOBSERVED_POLICIES}")
        self.unobserved = unobserved
        self.num_tokens: Optional[int] = None  # M, fixed until reset()

    # -- protocol -------------------------------------------------------------------------------
    def update(self, observed_scores: torch.Tensor, observed_mask: Optional[torch.Tensor] = None) -> None:
        """Store the scores of the step that just ran.  `observed_mask=None` means all observed."""
        # always in inference mode: the state is then an inference tensor whether or not the caller
        # runs under torch.inference_mode(), and in-place writes to it are legal on every later call
        with torch.inference_mode():
            scores, mask = self._check(observed_scores, observed_mask)
            self._store(self._normalise(scores, mask))

    def estimate(self) -> Optional[torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        self.num_tokens = None

    @property
    def ready(self) -> bool:
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------------
    def _check(self, scores, mask):
        if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or scores.numel() == 0:
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"observed_scores has shape {got}: expected a non-empty 1-D tensor (M,)")
        num_tokens = scores.numel()
        if self.num_tokens is not None and num_tokens != self.num_tokens:
            raise ValueError(
                f"observed_scores has M={num_tokens} tokens but this history holds M={self.num_tokens}: "
                "call reset() before changing the number of visual tokens"
            )
        if mask is None:
            mask = torch.ones(num_tokens, dtype=torch.bool, device=scores.device)
        elif not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != scores.shape:
            got = (mask.dtype, tuple(mask.shape)) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"observed_mask is {got}: expected a bool tensor of shape ({num_tokens},)")
        scores = torch.where(mask.to(scores.device), scores.float(), torch.zeros((), device=scores.device))
        mask = mask.to(scores.device)
        if not bool(torch.isfinite(scores).all()) or bool((scores < 0).any()):
            raise ValueError("observed_scores must be finite and >= 0 on the observed tokens (attention probabilities)")
        self.num_tokens = num_tokens
        return scores, mask

    def _normalise(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        carried = torch.zeros_like(scores)
        if self.unobserved == "carry":
            history_mean = self._history_mean()
            if history_mean is not None:
                carried = torch.where(mask, carried, history_mean.to(scores.device))
        observed_mass = (1.0 - carried.sum()).clamp(min=0.0)
        total = scores.sum()
        scale = torch.where(total > 0, observed_mass / total.clamp(min=torch.finfo(torch.float32).tiny), 0.0)
        return scores * scale + carried

    def _history_mean(self) -> Optional[torch.Tensor]:
        raise NotImplementedError

    def _store(self, observation: torch.Tensor) -> None:
        raise NotImplementedError


class DecayingWindow(_ActionScoreHistory):
    """Decaying window average, paper Eq. 7:  Ŝ^t = Σ_{i=1..w} γ^i · S^{t-i}.

    The newest observation S^{t-1} gets the largest weight γ^1, the oldest kept one γ^w; older
    observations are forgotten.  (The authors' OpenVLA code applies the weights in the reverse order,
    newest = smallest; we follow the paper.)  Before the window is full the sum runs over the
    observations there are.  For γ > 0 the ranking equals that of Σ γ^(i-1) S^{t-i}; with γ = 0,
    Eq. 7 is identically zero (every weight γ^i, i >= 1, is 0).

    `estimate()` is None before the first update.  Storage: one (w, M) float32 ring buffer.
    """

    def __init__(self, window: int = 3, decay: float = 0.8, unobserved: str = "zero"):
        super().__init__(unobserved)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window={window!r} is invalid: expected an int >= 1")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay={decay!r} is invalid: expected a number in [0, 1]")
        self.window = window
        self.decay = float(decay)
        self.buffer: Optional[torch.Tensor] = None  # (window, M), allocated on the first update
        self._count = 0  # observations held, <= window
        self._next_slot = 0  # ring position the next observation goes to

    def __len__(self) -> int:
        return self._count

    @property
    def ready(self) -> bool:
        return self._count >= self.window

    def reset(self) -> None:
        super().reset()
        self.buffer = None
        self._count = 0
        self._next_slot = 0

    def _weights(self) -> torch.Tensor:
        """Weight of each ring slot: γ^age, age 1 = newest; 0 for empty slots."""
        age = (self._next_slot - 1 - torch.arange(self.window)) % self.window + 1
        weights = torch.tensor(self.decay, dtype=torch.float64) ** age
        weights[age > self._count] = 0.0
        return weights.to(dtype=torch.float32, device=self.buffer.device)

    def estimate(self) -> Optional[torch.Tensor]:
        if self._count == 0:
            return None
        return self._weights() @ self.buffer

    def _history_mean(self) -> Optional[torch.Tensor]:
        if self._count == 0:
            return None
        weights = self._weights()
        total = weights.sum()
        return (weights @ self.buffer) / total if total > 0 else torch.zeros_like(self.buffer[0])

    def _store(self, observation: torch.Tensor) -> None:
        if self.buffer is None:
            self.buffer = torch.zeros(self.window, observation.numel(), dtype=torch.float32, device=observation.device)
        self.buffer[self._next_slot] = observation.to(self.buffer.device)
        self._next_slot = (self._next_slot + 1) % self.window
        self._count = min(self._count + 1, self.window)


class EMA(_ActionScoreHistory):
    """Exponential moving average, paper Eq. 6:  Ŝ^t = (1 - α) Ŝ^{t-1} + α S^{t-1}.

    The initial value is the first observation (Ŝ = S after one update), so the estimate never
    starts from an arbitrary prior.  `ready` once `min_observations` updates were absorbed (the
    pruner uses the window size, so both smoothers warm up for the same number of steps).
    `estimate()` is None before the first update.  Storage: one (M,) float32 tensor.
    """

    def __init__(self, alpha: float = 0.5, min_observations: int = 1, unobserved: str = "zero"):
        super().__init__(unobserved)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha!r} is invalid: expected a number in [0, 1]")
        if isinstance(min_observations, bool) or not isinstance(min_observations, int) or min_observations < 1:
            raise ValueError(f"min_observations={min_observations!r} is invalid: expected an int >= 1")
        self.alpha = float(alpha)
        self.min_observations = min_observations
        self.state: Optional[torch.Tensor] = None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def ready(self) -> bool:
        return self._count >= self.min_observations

    def reset(self) -> None:
        super().reset()
        self.state = None
        self._count = 0

    def estimate(self) -> Optional[torch.Tensor]:
        return None if self.state is None else self.state.clone()

    def _history_mean(self) -> Optional[torch.Tensor]:
        return self.state  # the EMA weights sum to 1: the estimate is already a weighted mean

    def _store(self, observation: torch.Tensor) -> None:
        if self.state is None:
            self.state = observation.clone()
        else:
            self.state.mul_(1.0 - self.alpha).add_(observation.to(self.state.device), alpha=self.alpha)
        self._count += 1
