"""Numbers the replay reports: action deviation, top-k overlaps, robust latency statistics."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..pruning import topk_overlap

# Fig. 2's k: 12.5 %, 25 % and 50 % of the M visual tokens.
OVERLAP_FRACTIONS = (0.125, 0.25, 0.5)


def fraction_label(fraction: float) -> str:
    """Column-safe name of a fraction of M: 0.125 -> "k12_5", 0.25 -> "k25"."""
    return "k" + f"{fraction * 100:g}".replace(".", "_")


def action_deviation(actions: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L1, max) per action dimension over the chunk: mean and max over the chunk's points of
    |actions - reference|. Both arrays are (chunk, action_dim)."""
    actions, reference = np.asarray(actions, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if actions.shape != reference.shape or actions.ndim != 2:
        raise ValueError(f"actions {actions.shape} and reference {reference.shape}: "
                         "expected equal (chunk, action_dim) shapes")
    difference = np.abs(actions - reference)
    return difference.mean(axis=0), difference.max(axis=0)


def topk_count(fraction: float, num_tokens: int) -> int:
    """k = max(1, round(fraction * M)), halves up like the pruner's budget."""
    return max(1, min(num_tokens, math.floor(fraction * num_tokens + 0.5)))


def overlap_series(s_vl: np.ndarray, s_act: np.ndarray, episodes: np.ndarray,
                   fractions: tuple[float, ...] = OVERLAP_FRACTIONS) -> dict[str, dict[float, np.ndarray]]:
    """Per step, for each fraction: Top-k(S_vl) vs Top-k(S_act) at the same step ("vl_act"), and
    Top-k(S_act at t) vs Top-k(S_act at t-1) ("act_prev"; NaN at the first step of an episode).

    s_vl, s_act: (steps, M); episodes: (steps,) episode index of each step.
    """
    s_vl, s_act = np.asarray(s_vl), np.asarray(s_act)
    if s_vl.shape != s_act.shape or s_vl.ndim != 2:
        raise ValueError(f"s_vl {s_vl.shape} and s_act {s_act.shape}: expected equal (steps, M) shapes")
    steps, num_tokens = s_vl.shape
    if len(episodes) != steps:
        raise ValueError(f"episodes has {len(episodes)} entries; expected one per step ({steps})")
    vl_act = {f: np.full(steps, np.nan) for f in fractions}
    act_prev = {f: np.full(steps, np.nan) for f in fractions}
    vl, act = torch.from_numpy(s_vl), torch.from_numpy(s_act)
    for fraction in fractions:
        k = topk_count(fraction, num_tokens)
        for t in range(steps):
            vl_act[fraction][t] = topk_overlap(vl[t], act[t], k)
            if t > 0 and episodes[t] == episodes[t - 1]:
                act_prev[fraction][t] = topk_overlap(act[t], act[t - 1], k)
    return {"vl_act": vl_act, "act_prev": act_prev}


def robust_stats(values) -> dict[str, float | int]:
    """median, quartiles, IQR, mean, min, max and n of the finite values (NaN when none)."""
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        nan = float("nan")
        return {"median": nan, "q1": nan, "q3": nan, "iqr": nan, "mean": nan, "min": nan, "max": nan, "n": 0}
    q1, median, q3 = np.percentile(data, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
            "mean": float(data.mean()), "min": float(data.min()), "max": float(data.max()), "n": int(data.size)}
