"""Pruning methods, selectable by name, behind one small stateful interface.

    pruner = make_pruner(PrunerConfig(method="vla_pruner", keep_ratio=0.25))
    plan = pruner.plan(num_visual_tokens=M, num_layers=T)      # start of every step
    if plan.prune:
        sel = pruner.select(features=E_v, prefill_scores={g: S_g for g in plan.prefill_groups})
    pruner.observe(action_scores=S_act, observed=kept_mask)      # after the step (history methods)
    pruner.reset()                                               # new episode / instruction

A method is one subclass of `Pruner` that sets a few class attributes and implements `_choose`;
decorating it with `@register("name")` makes it selectable.  Adding a method touches this file only
(the name table itself lives in `registry.py`, which `config.py` reads to validate names).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

from .budget import LatencyBudget
from .config import PrunerConfig
from .registry import method_class, method_names, register
from .selection import dual_level_pools, min_redundancy_filter, topk_indices
from .shift import ShiftDecision, ShiftDetector
from .temporal import EMA, DecayingWindow

# every Selection.diagnostics has exactly these keys, so rows of any method tabulate together
DIAGNOSTIC_KEYS = (
    "method", "pruned", "warmup", "num_visual", "budget", "num_kept",
    "pool_vl", "pool_act", "pool_dual", "pool_ratio", "overlap_vl_act", "select_ms",
    # issue 17: where the action level came from, the shift detector, the latency budget
    "action_source", "shift", "shift_reason", "fallback", "image_change", "action_overlap",
    "target_ms", "predicted_ms", "chosen_keep_ratio",
)


@dataclass(frozen=True)
class PrunePlan:
    """What the model must do in the coming step (see docs/CONTRACTS.md)."""

    prune: bool  # drop tokens when entering layer `layer`
    layer: int  # K
    budget: int  # M~
    num_visual_tokens: int  # M
    prefill_groups: Tuple[str, ...] = ()  # query groups to score at `score_layers_vl`, for select()
    score_layers_vl: Tuple[int, ...] = ()  # 0-based layers (< K) whose prefill scores are averaged
    action_layers: Tuple[int, ...] = ()  # layers whose `action`-group scores go to observe(); () = none
    warmup: bool = False  # the step runs unpruned to fill the action-attention history


@dataclass
class Selection:
    kept: torch.Tensor  # sorted LongTensor of 0-based visual indices
    diagnostics: Dict[str, object] = field(default_factory=dict)


class Pruner:
    """Base class.  Subclasses set the attributes below and implement `_choose`."""

    name = "base"
    prefill_groups: Tuple[str, ...] = ()  # query groups the selection reads
    needs_features = False  # reads the visual embeddings (diversity)
    needs_history = False  # reads the temporal S_act estimate (warm-up, observe)
    uses_action_level = False  # has an action level that `PrunerConfig.action_source` may re-source

    def __init__(self, config: PrunerConfig):
        self.config = config
        # issue 17: the action level from the current step ("current"), the history, or both
        self.action_source = config.action_source if self.uses_action_level else "temporal"
        if self.uses_action_level and self.action_source == "current":
            self.needs_history = False
        self.shift = None
        if self.uses_action_level and self.needs_history and config.shift_fallback != "off":
            self.shift = ShiftDetector(config.shift_image_threshold, config.shift_overlap_threshold)
        if self.uses_action_level and (self.action_source != "temporal" or self.shift is not None):
            self.prefill_groups = tuple(dict.fromkeys((*self.prefill_groups, "action")))
        self.latency = None
        if config.target_ms > 0 and self.name != "none":
            self.latency = LatencyBudget(config.target_ms, min(config.min_keep_ratio, config.keep_ratio),
                                         config.keep_ratio)
        self.history = self._make_history() if self.needs_history else None
        self._plan: Optional[PrunePlan] = None
        self._refill = False  # the history refills after an instruction change (shift fallback)
        self._decision: Optional[ShiftDecision] = None
        self._fallback = ""

    def _make_history(self):
        cfg = self.config
        if cfg.smoothing == "ema":
            return EMA(cfg.ema_alpha, min_observations=cfg.window, unobserved=cfg.unobserved)
        return DecayingWindow(cfg.window, cfg.decay, unobserved=cfg.unobserved)

    # -- protocol -------------------------------------------------------------------------------
    def plan(self, num_visual_tokens: int, num_layers: int) -> PrunePlan:
        """Decide the coming step.  `num_layers` is T, the decoder's layer count."""
        cfg = self.config
        budget = cfg.budget(num_visual_tokens)  # validates num_visual_tokens
        if self.latency is not None:  # the latency budget picks the count, keep_ratio is its ceiling
            self.latency.max_keep_ratio = cfg.keep_ratio
            self.latency.min_keep_ratio = min(cfg.min_keep_ratio, cfg.keep_ratio)
            budget = min(budget, self.latency.choose(num_visual_tokens))
        # method "none" has no layer K, so any decoder depth (a tiny test model too) is fine
        min_layers = 1 if self.name == "none" else cfg.prune_layer + 1
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < min_layers:
            raise ValueError(f"num_layers={num_layers!r} is invalid: expected an int >= {min_layers} "
                             f"(T must exceed prune_layer={cfg.prune_layer} for method {self.name!r})")
        action_layers = cfg.action_layers or tuple(range(num_layers // 2, num_layers))
        if self.needs_history and max(action_layers) >= num_layers:
            raise ValueError(
                f"PrunerConfig.action_layers={cfg.action_layers!r} is invalid: expected layers < T={num_layers}"
            )
        if self.history is not None and self.history.num_tokens not in (None, num_visual_tokens):
            raise ValueError(
                f"num_visual_tokens={num_visual_tokens} differs from the M={self.history.num_tokens} of the "
                "action-score history: call reset() before changing the number of visual tokens"
            )
        warmup = self.history is not None and not self.history.ready
        if warmup and self.action_source == "fused":
            warmup = False  # fused: the current-step score alone while the history fills
        if self._refill and self.history is not None and self.history.ready:
            self._refill = False
        if warmup and self._refill:
            warmup = False  # after an instruction change: pruned current-score steps, no unpruned warm-up
        prune = self.name != "none" and not warmup and budget < num_visual_tokens
        self._plan = PrunePlan(
            prune=prune,
            layer=cfg.prune_layer,
            budget=num_visual_tokens if self.name == "none" else budget,
            num_visual_tokens=num_visual_tokens,
            prefill_groups=self.prefill_groups if prune else (),
            score_layers_vl=(cfg.score_layers_vl or (cfg.prune_layer - 1,)) if prune and self.prefill_groups else (),
            action_layers=action_layers if self.needs_history else (),
            warmup=warmup,
        )
        return self._plan

    def select(self, features: Optional[torch.Tensor] = None,
               prefill_scores: Optional[Dict[str, torch.Tensor]] = None) -> Selection:
        """Choose the kept tokens for the step planned last.  Without pruning: all M tokens."""
        plan = self._plan
        if plan is None:
            raise RuntimeError("select() called before plan(): call plan() at the start of each step")
        num_tokens = plan.num_visual_tokens
        prefill_scores = prefill_scores or {}
        device = _device_of(features, prefill_scores)
        if plan.prune:
            features, scores = self._check_inputs(features, prefill_scores, num_tokens)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        self._decision, self._fallback = None, ""
        budget = plan.budget
        if plan.prune:
            self._scores = scores
            budget = self._check_shift(features, scores, budget, num_tokens, device)
            kept, pools = self._choose(features, scores, budget, num_tokens, device)
        else:
            kept, pools = torch.arange(num_tokens, device=device), {}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        select_ms = (time.perf_counter() - start) * 1e3
        return Selection(kept=kept, diagnostics=self._diagnostics(plan, kept, pools, select_ms))

    def observe(self, action_scores: torch.Tensor, observed: Optional[torch.Tensor] = None) -> None:
        """After a step: the `action`-group scores over the original M tokens (None-safe for methods
        without history, which ignore it)."""
        if self.history is not None:
            self.history.update(action_scores, observed)

    def reset(self, reason: Optional[str] = None) -> None:
        """New episode or instruction: forget the history and the last plan.

        `reason="instruction"` (the policy saw a new instruction mid-run): with a shift fallback the
        history still restarts, but the steps that refill it prune with the current-step action
        score instead of running unpruned (and the shift is reported on the next step)."""
        if self.history is not None:
            self.history.reset()
        self._plan = None
        self._refill = reason == "instruction" and self.shift is not None
        if self.shift is not None:
            self.shift.reset()
            if self._refill:
                self.shift.instruction_changed()

    def record_step(self, total_ms: float, variable_ms: float, kept: int, units=None) -> None:
        """After a step, for the latency budget: its total time, the time of the layers after K and
        the kept token count (`units`: kept -> cost units, see budget.py).  No-op without a target."""
        if self.latency is not None:
            if units is not None:
                self.latency.units = units
            self.latency.observe(kept, total_ms, variable_ms)

    # -- action level (issue 17) ----------------------------------------------------------------
    def _check_shift(self, features, scores, budget, num_tokens, device) -> int:
        """Run the shift detector (when configured) and set this step's fallback; the budget to use."""
        if self.shift is None:
            return budget
        temporal = self.history.estimate() if self.history is not None and self.history.ready else None
        feats = features if isinstance(features, torch.Tensor) and features.dim() == 2 else None
        self._decision = self.shift.check(feats, temporal, scores.get("action"), budget)
        if self._refill:
            self._fallback = "current"
        elif self._decision.fired:
            self._fallback = self.config.shift_fallback
        if self._fallback == "widen" or (self._refill and self.config.shift_fallback == "widen"):
            widened = min(num_tokens, int(math.ceil(budget * self.config.shift_widen)))
            if self.latency is not None:  # a latency target holds on fallback steps too
                widened = max(budget, min(widened, self.latency.affordable(num_tokens)))
            return widened
        return budget

    def _action_level(self, scores, device) -> torch.Tensor:
        """The action-level score of Alg. 2 for this step, from `action_source` and any fallback.

        temporal: Ŝ_act of the history (Eq. 6/7, the paper).  current: this step's action-row
        attention at the score layers < K (prefill group "action").  fused: λ·p_now + (1-λ)·p_temp
        with both normalised to sum 1 (the history stores distributions, temporal.py), λ =
        current_weight; the current score alone while the history is empty."""
        current = scores.get("action")
        if current is not None and (self.action_source == "current" or self._fallback == "current"):
            return current.float()
        estimate = self.history.estimate() if self.history is not None else None
        if self.action_source == "fused" and current is not None:
            now = _as_distribution(current.float())
            if estimate is None or not self.history.ready:
                return now
            weight = self.config.current_weight
            return weight * now + (1.0 - weight) * _as_distribution(estimate.to(device))
        return estimate.to(device)

    # -- for subclasses -------------------------------------------------------------------------
    def _choose(self, features, scores, budget, num_tokens, device) -> Tuple[torch.Tensor, Dict[str, object]]:
        """Return (sorted kept indices, pool diagnostics) for a step that prunes."""
        raise NotImplementedError

    def _action_estimate(self, device) -> torch.Tensor:
        return self._action_level(self._scores, device)

    # -- helpers --------------------------------------------------------------------------------
    def _check_inputs(self, features, prefill_scores, num_tokens):
        if self.needs_features:
            if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] != num_tokens:
                got = tuple(features.shape) if isinstance(features, torch.Tensor) else features
                raise ValueError(f"features is {got}: method {self.name!r} needs a ({num_tokens}, d) tensor")
        scores = {}
        for group in self.prefill_groups:
            score = prefill_scores.get(group)
            if not isinstance(score, torch.Tensor) or score.shape != (num_tokens,):
                got = tuple(score.shape) if isinstance(score, torch.Tensor) else score
                raise ValueError(
                    f"prefill_scores[{group!r}] is {got}: method {self.name!r} needs a ({num_tokens},) tensor "
                    f"for each of the plan's prefill_groups {self.prefill_groups}"
                )
            scores[group] = score
        return features, scores

    def _diagnostics(self, plan, kept, pools, select_ms) -> Dict[str, object]:
        pool_vl = pools.get("pool_vl", 0)
        diagnostics = {
            "method": self.name,
            "pruned": plan.prune,
            "warmup": plan.warmup,
            "num_visual": plan.num_visual_tokens,
            "budget": plan.budget,
            "num_kept": int(kept.numel()),
            "pool_vl": pool_vl,
            "pool_act": pools.get("pool_act", 0),
            "pool_dual": pools.get("pool_dual", 0),
            "pool_ratio": pools["pool_dual"] / pool_vl if pool_vl else 0.0,
            "overlap_vl_act": pools.get("overlap_vl_act", 0.0),
            "select_ms": select_ms,
            "action_source": self.action_source,
            "shift": bool(self._decision is not None and (self._decision.fired or self._refill)),
            "shift_reason": self._decision.reason if self._decision is not None else "",
            "fallback": self._fallback,
            "image_change": self._decision.image_change if self._decision is not None else float("nan"),
            "action_overlap": self._decision.action_overlap if self._decision is not None else float("nan"),
        }
        latency = self.latency.diagnostics(plan.num_visual_tokens) if self.latency is not None else {}
        diagnostics["target_ms"] = latency.get("target_ms", 0.0)
        diagnostics["predicted_ms"] = latency.get("predicted_ms", float("nan"))
        diagnostics["chosen_keep_ratio"] = latency.get("chosen_keep_ratio", float("nan"))
        return diagnostics


def _device_of(features, prefill_scores) -> torch.device:
    if isinstance(features, torch.Tensor):
        return features.device
    for score in prefill_scores.values():
        if isinstance(score, torch.Tensor):
            return score.device
    return torch.device("cpu")


def _dual_pool_diagnostics(s_vl, s_act, budget):
    """C_vl, C_act, C_dual of Alg. 2 and their sizes/overlap, for methods that have both scores."""
    pool_vl, pool_act, pool_dual = dual_level_pools(s_vl, s_act, budget)
    overlap = pool_vl.numel() + pool_act.numel() - pool_dual.numel()
    return pool_dual, {
        "pool_vl": int(pool_vl.numel()),
        "pool_act": int(pool_act.numel()),
        "pool_dual": int(pool_dual.numel()),
        "overlap_vl_act": overlap / budget,
    }


@register("none")
class NoPruning(Pruner):
    """Vanilla: every step runs with all visual tokens."""


@register("vla_pruner")
class VLAPruner(Pruner):
    """VLA-Pruner (paper Alg. 2): Alg. 1 over Top-M~(S_vl) ∪ Top-M~(Ŝ_act).

    Ŝ_act comes from the temporal history (decaying window by default); the first `window` steps of
    an episode run unpruned to fill it (paper §4.2(c)).
    """

    prefill_groups = ("vl",)
    needs_features = True
    needs_history = True
    uses_action_level = True

    def _choose(self, features, scores, budget, num_tokens, device):
        pool_dual, pools = _dual_pool_diagnostics(scores["vl"], self._action_estimate(device), budget)
        return min_redundancy_filter(features, pool_dual, budget), pools


class _TopKByPrefill(Pruner):
    """Keep the Top-M~ tokens of one prefill score group."""

    def _choose(self, features, scores, budget, num_tokens, device):
        kept = topk_indices(scores[self.prefill_groups[0]], budget)
        return kept, {"pool_vl": budget, "pool_dual": budget}


@register("fastv")
class FastV(_TopKByPrefill):
    """FastV as the paper and the authors' OFT code run it: Top-M~ of the attention each visual token
    receives at layer K-1 from the rows BEFORE the action rows (query group "prefix": BOS, visual,
    proprio, prompt without its final `▁`).  A purely semantic selector: no action row is read."""

    prefill_groups = ("prefix",)


@register("fastv_last")
class FastVLast(_TopKByPrefill):
    """FastV's official score: Top-M~ of the attention of the LAST token before the action rows (the
    prompt row before `▁`; query group "last") at layer K-1."""

    prefill_groups = ("last",)


@register("fastv_all_rows")
class FastVAllRows(_TopKByPrefill):
    """OFT-specific, NOT FastV: Top-M~ of the attention from ALL rows at layer K-1 (query group
    "all").  OFT attends bidirectionally, so the 56 action placeholders are among the rows and this
    score already holds the current step's action-to-vision attention: an action-aware selector
    (this was `fastv` before the baselines were renamed)."""

    prefill_groups = ("all",)


@register("sparsevlm")
class SparseVLM(_TopKByPrefill):
    """SparseVLM, simple variant: Top-M~ of text-to-vision attention (prompt rows) at layer K-1.

    Only the ranking by text-to-vision relevance; SparseVLM's rater-token selection, adaptive
    per-layer ratios and token recycling are not implemented.
    """

    prefill_groups = ("text",)


@register("prefill_only")
class PrefillOnly(_TopKByPrefill):
    """Ablation: Top-M~ of S_vl (vision-language prefill attention), no action level, no diversity.

    S_vl's rows ("vl") are `fastv`'s ("prefix") plus the `</s>` row, so the two rank almost alike."""

    prefill_groups = ("vl",)


@register("action_only")
class ActionOnly(Pruner):
    """Ablation: Top-M~ of the temporal action estimate Ŝ_act alone."""

    needs_history = True
    uses_action_level = True

    def _choose(self, features, scores, budget, num_tokens, device):
        return topk_indices(self._action_estimate(device), budget), {"pool_act": budget, "pool_dual": budget}


@register("score_fusion")
class ScoreFusion(Pruner):
    """Ablation: Top-M~ of w * norm(S_vl) + (1 - w) * norm(Ŝ_act), norm = min-max to [0, 1].

    A constant score vector normalises to zeros.  The pool diagnostics describe C_vl / C_act as in
    Alg. 2, for comparison; the selection itself is the fused top-k.
    """

    prefill_groups = ("vl",)
    needs_history = True
    uses_action_level = True

    def _choose(self, features, scores, budget, num_tokens, device):
        s_vl, s_act = scores["vl"].float(), self._action_estimate(device)
        weight = self.config.fusion_weight
        fused = weight * _min_max(s_vl) + (1.0 - weight) * _min_max(s_act)
        _, pools = _dual_pool_diagnostics(s_vl, s_act, budget)
        return topk_indices(fused, budget), pools


def _as_distribution(scores: torch.Tensor) -> torch.Tensor:
    """scores / sum (all zeros stay zeros), as the history normalises its observations."""
    total = scores.sum()
    return scores / total if float(total) > 0 else scores


def _min_max(scores: torch.Tensor) -> torch.Tensor:
    low, high = scores.min(), scores.max()
    span = high - low
    return torch.where(span > 0, (scores - low) / torch.where(span > 0, span, 1.0), 0.0)


@register("divprune")
class DivPrune(Pruner):
    """DivPrune: Alg. 1 over all M visual tokens (diversity only, no relevance scores)."""

    needs_features = True

    def _choose(self, features, scores, budget, num_tokens, device):
        kept = min_redundancy_filter(features, torch.arange(num_tokens, device=device), budget)
        return kept, {"pool_dual": num_tokens}


@register("random")
class RandomPruning(Pruner):
    """Sanity floor: a uniformly random M~-subset from a seeded CPU generator.

    `reset()` restarts the generator from `seed`, so replaying an episode gives the same choices.
    """

    def __init__(self, config: PrunerConfig):
        super().__init__(config)
        self.generator = torch.Generator().manual_seed(config.seed)

    def reset(self, reason: Optional[str] = None) -> None:
        super().reset(reason)
        self.generator.manual_seed(self.config.seed)

    def _choose(self, features, scores, budget, num_tokens, device):
        kept = torch.randperm(num_tokens, generator=self.generator)[:budget].sort().values
        return kept.to(device), {}


METHODS: Tuple[str, ...] = method_names()  # the built-in methods (the registry may grow later)


def make_pruner(config: Optional[PrunerConfig] = None) -> Pruner:
    """The pruner for `config` (default PrunerConfig()); `enabled=False` gives method "none"."""
    config = PrunerConfig() if config is None else config
    if not isinstance(config, PrunerConfig):
        raise ValueError(f"config={config!r} is invalid: expected a PrunerConfig")
    return method_class("none" if not config.enabled else config.method)(config)
