"""Token selection: the paper's Alg. 1 (min-redundancy filtering) and Alg. 2 (dual-level selection).

All functions are pure, run in torch on the device of their inputs, and are deterministic:

* Top-k ties go to the lowest index (a stable sort; `torch.topk` does not promise an order).
* Alg. 1 computes cosine distances in float32 whatever the feature dtype; two distances tie when
  their float32 values are exactly equal, and a tie goes to the lowest original token index.
* Every returned index set is a sorted (ascending) LongTensor of 0-based visual-token indices.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def _check_budget(budget, name: str = "budget") -> int:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"{name}={budget!r} is invalid: expected an int >= 1")
    return budget


def _check_scores(name: str, scores: torch.Tensor, num_tokens: Optional[int] = None) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or scores.numel() == 0:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"{name} has shape {got}: expected a non-empty 1-D tensor of scores")
    if num_tokens is not None and scores.numel() != num_tokens:
        raise ValueError(f"{name} has {scores.numel()} entries: expected M={num_tokens}")
    if bool(torch.isnan(scores).any()):
        raise ValueError(f"{name} contains NaN")


def _check_features(features: torch.Tensor) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] == 0:
        got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features has shape {got}: expected a (M, d) tensor with M >= 1")
    if not features.is_floating_point():
        raise ValueError(f"features has dtype {features.dtype}: expected a floating-point tensor")


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, ties to the lowest index, returned sorted ascending."""
    _check_scores("scores", scores)
    k = min(_check_budget(k, name="k"), scores.numel())
    # a stable descending sort keeps equal scores in index order, so the lowest index wins
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k].sort().values


def topk_overlap(scores_a: torch.Tensor, scores_b: torch.Tensor, k: int) -> float:
    """|Top-k(a) ∩ Top-k(b)| / k: the overlap ratio of the paper's Fig. 2."""
    _check_scores("scores_a", scores_a)
    _check_scores("scores_b", scores_b, scores_a.numel())
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= scores_a.numel():
        raise ValueError(f"k={k!r} is invalid: expected an int in [1, {scores_a.numel()}]")
    shared = torch.isin(topk_indices(scores_a, k), topk_indices(scores_b, k).to(scores_a.device))
    return int(shared.sum()) / k


@torch.no_grad()
def cosine_distance_matrix(features: torch.Tensor) -> torch.Tensor:
    """D_ij = 1 - u_i·u_j with u = v / ||v||, in float32 (Alg. 1 line 6).

    A zero feature row normalises to the zero vector, so its distance to every token is 1.
    """
    _check_features(features)
    unit = F.normalize(features.float(), dim=-1)
    return 1.0 - unit @ unit.T


@torch.no_grad()
def min_redundancy_filter(features: torch.Tensor, candidates: torch.Tensor, budget: int) -> torch.Tensor:
    """Alg. 1 (redundancy-minimisation filtering): a greedy max-min diverse subset of `candidates`.

    Args:
        features: (M, d) visual embeddings E_v (the LLM input embeddings of the visual tokens).
        candidates: 1-D LongTensor of distinct indices into the M tokens (the pool C_dual).
        budget: M~, the number of tokens to keep.

    Returns the kept indices, sorted ascending: the whole pool when |pool| <= budget, otherwise
    `budget` of them chosen as in the paper:
      1. first token = argmax_i s_i, s_i = the second smallest distance from i to the OTHER pool
         tokens (self excluded; the authors' code includes self and so takes the nearest other token
         -- we follow the paper).  With a single other token s_i is the distance to it.
      2. repeatedly add the token whose minimum distance to the kept set is largest.
    argmax ties go to the lowest original index.  The min-distance vector is updated with one row of
    D per step, so the loop is O(budget * |pool|) after the O(|pool|^2 d) distance matrix.
    """
    _check_features(features)
    budget = _check_budget(budget)
    num_tokens = features.shape[0]
    if not isinstance(candidates, torch.Tensor) or candidates.dim() != 1 or candidates.is_floating_point() \
            or candidates.dtype == torch.bool:
        raise ValueError(f"candidates must be a 1-D integer tensor of token indices, got {candidates!r}")
    if candidates.numel() == 0:
        return candidates.to(device=features.device, dtype=torch.long)
    pool = candidates.to(device=features.device, dtype=torch.long).sort().values
    if int(pool[0]) < 0 or int(pool[-1]) >= num_tokens:
        raise ValueError(f"candidates must lie in [0, {num_tokens}), got min={int(pool[0])} max={int(pool[-1])}")
    if pool.numel() > 1 and bool((pool[1:] == pool[:-1]).any()):
        raise ValueError("candidates contains duplicate indices")
    pool_features = features.index_select(0, pool)  # same rows as features[pool], ~5x faster on CPU
    # Finite iff the largest magnitude is below inf: NaN propagates through amax and fails the
    # comparison. One reduction instead of isfinite's four elementwise passes (~10x cheaper).
    if not bool(pool_features.abs().amax() < float("inf")):
        raise ValueError("features of the candidate tokens must be finite")
    if pool.numel() <= budget:
        return pool

    # pool positions are in ascending original-index order, so "first maximum" (torch.argmax
    # returns the first maximal element) means "lowest original index"
    distances = cosine_distance_matrix(pool_features)
    pool_size = pool.numel()
    others = distances.clone()
    others.fill_diagonal_(float("inf"))
    nearest = torch.topk(others, k=min(2, pool_size - 1), dim=1, largest=False, sorted=True).values
    second_nearest = nearest[:, -1]

    first = int(torch.argmax(second_nearest))
    if distances.device.type == "cpu":
        picked = _greedy_max_min_host(distances, first, budget)
    else:
        picked = _greedy_max_min_device(distances, first, budget)
    return pool[picked].sort().values


def _greedy_max_min_device(distances: torch.Tensor, first: int, budget: int) -> torch.Tensor:
    """Alg. 1 lines 14-20 with torch ops only: no host sync inside the loop (for accelerators)."""
    picked = torch.empty(budget, dtype=torch.long, device=distances.device)
    picked[0] = first
    min_distance = distances[first].clone()
    min_distance[first] = float("-inf")  # -inf marks "already kept"
    for step in range(1, budget):
        pick = torch.argmax(min_distance).view(1)  # first maximum = lowest index
        picked[step] = pick[0]
        torch.minimum(min_distance, distances.index_select(0, pick)[0], out=min_distance)
        min_distance.index_fill_(0, pick, float("-inf"))
    return picked


def _greedy_max_min_host(distances: torch.Tensor, first: int, budget: int) -> torch.Tensor:
    """The same loop in NumPy on a zero-copy view: on CPU a torch op costs microseconds of dispatch,
    ~10x the arithmetic of one step.  np.argmax, like torch.argmax, returns the first maximum."""
    matrix = distances.numpy()
    picked = np.empty(budget, dtype=np.int64)
    picked[0] = first
    min_distance = matrix[first].copy()
    min_distance[first] = -np.inf
    for step in range(1, budget):
        pick = int(min_distance.argmax())
        picked[step] = pick
        np.minimum(min_distance, matrix[pick], out=min_distance)
        min_distance[pick] = -np.inf
    return torch.from_numpy(picked)


def dual_level_pools(
    s_vl: torch.Tensor, s_act: torch.Tensor, budget: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Alg. 2 lines 4-6: C_vl = Top-M~(S_vl), C_act = Top-M~(Ŝ_act), C_dual = C_vl ∪ C_act (sorted)."""
    _check_scores("s_vl", s_vl)
    _check_scores("s_act", s_act, s_vl.numel())
    pool_vl = topk_indices(s_vl, budget)
    pool_act = topk_indices(s_act, budget).to(pool_vl.device)
    in_pool = torch.zeros(s_vl.numel(), dtype=torch.bool, device=pool_vl.device)
    in_pool[pool_vl] = True
    in_pool[pool_act] = True
    return pool_vl, pool_act, in_pool.nonzero().flatten()


def dual_level_select(features: torch.Tensor, s_vl: torch.Tensor, s_act: torch.Tensor, budget: int) -> torch.Tensor:
    """Alg. 2 (combine-then-filter): Alg. 1 over Top-M~(S_vl) ∪ Top-M~(Ŝ_act), down to M~ tokens.

    Returns all M indices when budget >= M (no pruning).  Sorted LongTensor on the features' device.
    """
    _check_features(features)
    budget = _check_budget(budget)
    num_tokens = features.shape[0]
    _check_scores("s_vl", s_vl, num_tokens)
    _check_scores("s_act", s_act, num_tokens)
    if budget >= num_tokens:
        return torch.arange(num_tokens, device=features.device)
    _, _, pool_dual = dual_level_pools(s_vl, s_act, budget)
    return min_redundancy_filter(features, pool_dual, budget)
