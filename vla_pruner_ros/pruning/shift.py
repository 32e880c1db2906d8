"""Shift-aware fallback (paper Remark 1): notice, from signals the step already has, that the temporal
action estimate is stale, and fall back for that step.

VLA-Pruner predicts the coming step's action attention from the previous steps (Eq. 6/7).  That
prediction is wrong exactly when the scene or the task shifts: a new instruction, a fast camera
motion (the wrist view moves with the arm), a target switch.  The paper names this failure mode
(Remark 1) but runs no detector; its code only resets the history on a new instruction and then
runs the whole warm-up unpruned.

`ShiftDetector.check` looks at three signals, each already computed by the step, and fires when any
crosses its threshold:

* ``instruction`` -- the instruction changed since the last step (the policy tells the pruner);
* ``image``       -- image change: 1 - the mean cosine similarity between each visual token's input
  embedding (projector output, what `select()` receives anyway) and the same token's embedding one
  step earlier.  0 for an identical frame; grows with camera motion and scene changes;
* ``overlap``     -- agreement of the temporal estimate with the current step's own action-row
  attention at the layer(s) < K (OpenVLA-OFT decodes the chunk in parallel, so those rows exist at
  prefill): |Top-k(Ŝ_act) ∩ Top-k(S_act,now)| / k.  A stale estimate disagrees with what the action
  rows look at now.

When it fires, the pruner falls back for that one step (`PrunerConfig.shift_fallback`):
"current" replaces Ŝ_act by the current-step action attention in Alg. 2; "widen" keeps
`shift_widen` times more tokens (still Alg. 2 on the temporal estimate).  The history is updated as
usual after the step, so the estimate recovers by itself.  Pure logic: no model, no ROS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch

from .selection import topk_overlap

SHIFT_REASONS = ("instruction", "image", "overlap")


@dataclass(frozen=True)
class ShiftDecision:
    """What the detector saw this step.  `fired` is True when `reasons` is not empty."""

    reasons: Tuple[str, ...] = ()
    image_change: float = float("nan")  # NaN: no previous frame to compare with
    action_overlap: float = float("nan")  # NaN: no temporal estimate or no current action scores

    @property
    def fired(self) -> bool:
        return bool(self.reasons)

    @property
    def reason(self) -> str:
        """The reasons joined by '+', '' when it did not fire (PrunerStats.shift_reason)."""
        return "+".join(self.reasons)


def image_change(features: torch.Tensor, previous: Optional[torch.Tensor]) -> float:
    """1 - mean_i cos(E_v^t[i], E_v^{t-1}[i]) over the M visual tokens; NaN without a previous step
    (or when M changed).  Zero-norm rows count as similarity 0 (torch's eps)."""
    if previous is None or previous.shape != features.shape:
        return float("nan")
    similarity = torch.nn.functional.cosine_similarity(features.float(), previous.float().to(features.device), dim=-1)
    return float(1.0 - similarity.mean())


@dataclass
class ShiftDetector:
    """Fires on an instruction change, an image change above `image_threshold`, or a temporal/current
    top-k overlap below `overlap_threshold`.  Keeps only the previous step's visual embeddings.

    A threshold of 0 (or less) disables its signal.
    """

    image_threshold: float = 0.05
    overlap_threshold: float = 0.3
    _previous: Optional[torch.Tensor] = field(default=None, repr=False)
    _instruction_changed: bool = field(default=False, repr=False)

    def instruction_changed(self) -> None:
        """The policy saw a new instruction: the next `check` fires with reason "instruction"."""
        self._instruction_changed = True

    def reset(self) -> None:
        """New episode: forget the previous frame (an episode start is not a shift)."""
        self._previous = None
        self._instruction_changed = False

    def check(self, features: Optional[torch.Tensor], temporal: Optional[torch.Tensor] = None,
              current: Optional[torch.Tensor] = None, budget: int = 1) -> ShiftDecision:
        """Decide for this step.  `features`: (M, d) visual input embeddings (None: no image signal);
        `temporal`: Ŝ_act (None during warm-up); `current`: the current-step action-row attention at the
        score layers (None when not computed); `budget`: k for the overlap."""
        reasons = []
        if self._instruction_changed:
            reasons.append("instruction")
            self._instruction_changed = False
        change = float("nan")
        if features is not None:
            change = image_change(features, self._previous)
            self._previous = features.detach().float().clone()
            if self.image_threshold > 0 and change == change and change > self.image_threshold:
                reasons.append("image")
        overlap = float("nan")
        if temporal is not None and current is not None:
            k = max(1, min(int(budget), temporal.numel()))
            overlap = topk_overlap(temporal.float(), current.float().to(temporal.device), k)
            if self.overlap_threshold > 0 and overlap < self.overlap_threshold:
                reasons.append("overlap")
        return ShiftDecision(tuple(reasons), change, overlap)
