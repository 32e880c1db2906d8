"""Alg. 1 / Alg. 2 of the VLA-Pruner paper (App. A): properties and plain-Python transcriptions."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_pruner_ros.pruning import (
    cosine_distance_matrix,
    dual_level_pools,
    dual_level_select,
    min_redundancy_filter,
    topk_indices,
    topk_overlap,
)
from vla_pruner_ros.pruning.selection import _greedy_max_min_device, _greedy_max_min_host


# ---------------------------------------------------------------------------------------------
# Plain-Python transcriptions of the paper's pseudocode.  They share only the float32 distance
# matrix with the library (so "ties" are the same float32 values on both sides); every loop,
# sort and argmax is written out here.
# ---------------------------------------------------------------------------------------------
def reference_alg1(features, candidates, budget):
    pool = sorted(int(i) for i in candidates)
    if len(pool) <= budget:  # lines 1-3
        return pool
    # lines 4-6, on the features' device (CPU and GPU matmuls round differently)
    distance = cosine_distance_matrix(features[torch.tensor(pool, device=features.device)]).tolist()
    size = len(pool)
    second_nearest = []
    for i in range(size):  # lines 8-11
        others = sorted(distance[i][j] for j in range(size) if j != i)
        second_nearest.append(others[1] if len(others) >= 2 else others[0])
    best = None
    for i in range(size):  # line 12, ties -> lowest index (strict >)
        if best is None or second_nearest[i] > second_nearest[best]:
            best = i
    kept = [best]
    while len(kept) < budget:  # lines 14-20
        best_j, best_value = None, None
        for j in range(size):
            if j in kept:
                continue
            m_j = min(distance[i][j] for i in kept)
            if best_value is None or m_j > best_value:
                best_j, best_value = j, m_j
        kept.append(best_j)
    return sorted(pool[i] for i in kept)


def reference_topk(scores, k):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:k])


def reference_alg2(features, s_vl, s_act, budget):
    num_tokens = features.shape[0]
    if budget >= num_tokens:
        return list(range(num_tokens))
    pool = set(reference_topk(s_vl.tolist(), budget)) | set(reference_topk(s_act.tolist(), budget))
    return reference_alg1(features, sorted(pool), budget)


def unit_circle(degrees):
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1).float()


# integer-valued features in a tiny range: many duplicated rows, zero rows and exact distance ties
@st.composite
def filter_inputs(draw):
    num_tokens = draw(st.integers(1, 20))
    width = draw(st.integers(1, 5))
    values = draw(st.lists(st.integers(-2, 2), min_size=num_tokens * width, max_size=num_tokens * width))
    features = torch.tensor(values, dtype=torch.float32).view(num_tokens, width)
    in_pool = draw(st.lists(st.booleans(), min_size=num_tokens, max_size=num_tokens))
    candidates = torch.tensor([i for i, keep in enumerate(in_pool) if keep], dtype=torch.long)
    budget = draw(st.integers(1, num_tokens + 2))
    return features, candidates, budget


@settings(max_examples=300, deadline=None)
@given(filter_inputs())
def test_alg1_properties_and_equals_transcription_with_ties(inputs):
    features, candidates, budget = inputs
    kept = min_redundancy_filter(features, candidates, budget)
    assert kept.dtype == torch.long
    assert kept.numel() == min(budget, candidates.numel())
    assert kept.unique().numel() == kept.numel()  # no duplicates
    assert set(kept.tolist()) <= set(candidates.tolist())  # subset of the pool
    assert kept.tolist() == sorted(kept.tolist())
    assert kept.tolist() == reference_alg1(features, candidates, budget)


@pytest.mark.parametrize("seed", range(6))
def test_alg1_equals_transcription_on_random_float_features(seed):
    generator = torch.Generator().manual_seed(seed)
    num_tokens = 40 + 10 * seed
    features = torch.randn(num_tokens, 16, generator=generator)
    features[5] = features[3]  # an exact duplicate
    candidates = torch.randperm(num_tokens, generator=generator)[: num_tokens * 2 // 3]
    for budget in (1, 2, 7, len(candidates) - 1):
        kept = min_redundancy_filter(features, candidates, budget)
        assert kept.tolist() == reference_alg1(features, candidates, budget)


def test_alg1_first_pick_is_max_second_nearest_not_nearest():
    # angles 0, 5, 120, 180, 230 degrees: the tight pair (0, 5) has the largest SECOND-nearest
    # distance (120 deg for token 0), token 2 has the largest NEAREST distance (60 deg)
    features = unit_circle([0.0, 5.0, 120.0, 180.0, 230.0])
    distance = cosine_distance_matrix(features)
    distance.fill_diagonal_(float("inf"))
    assert int(distance.min(dim=1).values.argmax()) == 2  # what the authors' code would pick first
    assert min_redundancy_filter(features, torch.arange(5), 1).tolist() == [0]  # the paper's Alg. 1
    # greedy from token 0: farthest is 180 deg (token 3); then min distances 5, 60, 50 -> token 2
    assert min_redundancy_filter(features, torch.arange(5), 2).tolist() == [0, 3]
    assert min_redundancy_filter(features, torch.arange(5), 3).tolist() == [0, 2, 3]


def test_alg1_ties_go_to_the_lowest_index():
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # every s_i is 1 (second-nearest is an orthogonal row) -> token 0; then tokens 2 and 3 both at
    # distance 1 -> token 2
    assert min_redundancy_filter(features, torch.arange(4), 1).tolist() == [0]
    assert min_redundancy_filter(features, torch.arange(4), 2).tolist() == [0, 2]
    assert min_redundancy_filter(features, torch.tensor([3, 1, 2]), 2).tolist() == [1, 2]


def test_alg1_small_pools_and_returns_sorted_pool_when_within_budget():
    features = torch.randn(6, 3)
    assert min_redundancy_filter(features, torch.tensor([4, 1, 3]), 3).tolist() == [1, 3, 4]
    assert min_redundancy_filter(features, torch.tensor([4, 1, 3]), 10).tolist() == [1, 3, 4]
    assert min_redundancy_filter(features, torch.tensor([], dtype=torch.long), 2).tolist() == []
    # pool of two, budget one: s_i is the only other distance, equal for both -> lowest index
    assert min_redundancy_filter(features, torch.tensor([5, 2]), 1).tolist() == [2]


def test_alg1_low_precision_features_use_float32_distances():
    features = torch.randn(64, 32).to(torch.bfloat16)
    candidates = torch.arange(0, 64, 2)
    expected = min_redundancy_filter(features.float(), candidates, 9)
    assert torch.equal(min_redundancy_filter(features, candidates, 9), expected)


def test_zero_feature_rows_are_at_distance_one():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    distance = cosine_distance_matrix(features)
    assert distance[0].tolist() == [1.0, 1.0, 1.0]
    assert distance[1, 2].abs() < 1e-6


def test_cosine_distance_matrix_matches_float64_formula():
    features = torch.randn(30, 12, dtype=torch.float64)
    unit = features / features.norm(dim=1, keepdim=True)
    expected = 1 - unit @ unit.T
    assert torch.allclose(cosine_distance_matrix(features).double(), expected, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_device_loop_equals_host_loop_including_ties(seed):
    generator = torch.Generator().manual_seed(seed)
    distance = torch.randint(0, 4, (50, 50), generator=generator).float()  # many exact ties
    for budget in (1, 2, 20, 50):
        host = _greedy_max_min_host(distance, 7, budget)
        device = _greedy_max_min_device(distance, 7, budget)
        assert torch.equal(host, device)


@pytest.mark.parametrize(
    "features, candidates, budget, message",
    [
        (torch.randn(4), torch.tensor([0]), 1, "features has shape"),
        (torch.zeros(4, 2, dtype=torch.long), torch.tensor([0]), 1, "floating-point"),
        (torch.randn(4, 2), torch.tensor([0, 4]), 1, r"lie in \[0, 4\)"),
        (torch.randn(4, 2), torch.tensor([-1, 2]), 1, r"lie in \[0, 4\)"),
        (torch.randn(4, 2), torch.tensor([1, 1, 2]), 1, "duplicate"),
        (torch.randn(4, 2), torch.tensor([[0, 1]]), 1, "1-D integer"),
        (torch.randn(4, 2), torch.tensor([0.0, 1.0]), 1, "1-D integer"),
        (torch.randn(4, 2), torch.tensor([0, 1]), 0, "budget=0"),
        (torch.randn(4, 2), torch.tensor([0, 1]), 1.5, "budget=1.5"),
        (torch.tensor([[float("nan"), 0.0], [1.0, 0.0]]), torch.tensor([0, 1]), 1, "finite"),
    ],
)
def test_alg1_rejects_bad_input(features, candidates, budget, message):
    with pytest.raises(ValueError, match=message):
        min_redundancy_filter(features, candidates, budget)


# --------------------------------------------------------------------------------------------- Alg. 2
@st.composite
def dual_inputs(draw):
    num_tokens = draw(st.integers(1, 24))
    features = torch.tensor(
        draw(st.lists(st.integers(-2, 2), min_size=num_tokens * 3, max_size=num_tokens * 3)), dtype=torch.float32
    ).view(num_tokens, 3)
    scores = st.lists(st.integers(0, 4), min_size=num_tokens, max_size=num_tokens)  # ties in top-k
    s_vl = torch.tensor(draw(scores), dtype=torch.float32)
    s_act = torch.tensor(draw(scores), dtype=torch.float32)
    return features, s_vl, s_act, draw(st.integers(1, num_tokens + 1))


@settings(max_examples=300, deadline=None)
@given(dual_inputs())
def test_alg2_equals_transcription(inputs):
    features, s_vl, s_act, budget = inputs
    kept = dual_level_select(features, s_vl, s_act, budget)
    assert kept.tolist() == reference_alg2(features, s_vl, s_act, budget)
    assert kept.numel() == min(budget, features.shape[0])


def test_alg2_returns_all_tokens_when_budget_covers_them():
    features = torch.randn(10, 4)
    for budget in (10, 11, 100):
        assert dual_level_select(features, torch.rand(10), torch.rand(10), budget).tolist() == list(range(10))


def test_alg2_union_semantics():
    torch.manual_seed(0)
    features = torch.randn(12, 8)
    rising = torch.arange(12.0)
    # identical rankings: C_vl == C_act, the union already fits the budget, no filtering
    assert dual_level_select(features, rising, rising, 4).tolist() == [8, 9, 10, 11]
    # disjoint rankings: the union has 2 * budget tokens and Alg. 1 filters it
    pool_vl, pool_act, pool_dual = dual_level_pools(rising, -rising, 4)
    assert pool_vl.tolist() == [8, 9, 10, 11] and pool_act.tolist() == [0, 1, 2, 3]
    assert pool_dual.tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    kept = dual_level_select(features, rising, -rising, 4)
    assert torch.equal(kept, min_redundancy_filter(features, pool_dual, 4))
    assert set(kept.tolist()) <= set(pool_dual.tolist())


def test_topk_is_stable_and_sorted():
    scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])
    assert topk_indices(scores, 2).tolist() == [1, 2]  # three tied at 3.0: lowest indices win
    assert topk_indices(scores, 4).tolist() == [1, 2, 3, 4]
    assert topk_indices(torch.zeros(6), 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="NaN"):
        topk_indices(torch.tensor([0.0, float("nan")]), 1)


def test_topk_overlap_hand_values():
    a = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    assert topk_overlap(a, a.flip(0), 2) == 0.0
    assert topk_overlap(a, a.flip(0), 3) == pytest.approx(1 / 3)
    assert topk_overlap(a, a * 2, 3) == 1.0
    with pytest.raises(ValueError, match="k=6"):
        topk_overlap(a, a, 6)
    with pytest.raises(ValueError, match="scores_b has 4 entries"):
        topk_overlap(a, a[:4], 2)


def test_alg2_rejects_mismatched_scores():
    with pytest.raises(ValueError, match="s_act has 3 entries: expected M=4"):
        dual_level_select(torch.randn(4, 2), torch.rand(4), torch.rand(3), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_alg2_on_cuda_equals_transcription(dtype):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(256, 128, generator=generator).to(dtype)
    features[10] = features[3]  # exact duplicate -> exact distance ties
    s_vl, s_act = torch.rand(256, generator=generator), torch.rand(256, generator=generator)
    s_vl[:40] = 1.0  # ties in the top-k
    for budget in (32, 64, 128):
        on_gpu = dual_level_select(features.cuda(), s_vl.cuda(), s_act.cuda(), budget)
        assert on_gpu.device.type == "cuda"
        assert on_gpu.tolist() == reference_alg2(features.cuda(), s_vl, s_act, budget)
