"""Every pruning method through make_pruner, the plan/select/observe protocol, and PrunerConfig."""
import re

import pytest
import torch

from vla_pruner_ros.pruning import (
    DIAGNOSTIC_KEYS,
    METHODS,
    DecayingWindow,
    EMA,
    PrunerConfig,
    dual_level_select,
    make_pruner,
    min_redundancy_filter,
    topk_indices,
)

NUM_TOKENS, NUM_LAYERS, WIDTH = 24, 8, 6
EXPECTED_GROUPS = {
    "none": (), "vla_pruner": ("vl",), "fastv": ("prefix",), "fastv_last": ("last",), "fastv_all_rows": ("all",),
    "sparsevlm": ("text",), "prefill_only": ("vl",),
    "action_only": (), "score_fusion": ("vl",), "divprune": (), "random": (),
}
HISTORY_METHODS = {"vla_pruner", "action_only", "score_fusion"}


def run_episode(pruner, steps, seed=0, num_tokens=NUM_TOKENS):
    """Drive a pruner like the model does; returns one record per step."""
    generator = torch.Generator().manual_seed(seed)
    records = []
    for _ in range(steps):
        plan = pruner.plan(num_visual_tokens=num_tokens, num_layers=NUM_LAYERS)
        features = torch.randn(num_tokens, WIDTH, generator=generator)
        scores = {group: torch.rand(num_tokens, generator=generator)
                  for group in ("vl", "prefix", "last", "all", "text")}
        action_scores = torch.rand(num_tokens, generator=generator)
        observed = torch.ones(num_tokens, dtype=torch.bool)
        selection = None
        if plan.prune:
            selection = pruner.select(features=features, prefill_scores={g: scores[g] for g in plan.prefill_groups})
            observed = torch.zeros(num_tokens, dtype=torch.bool)
            observed[selection.kept] = True
        if plan.action_layers:
            pruner.observe(action_scores=action_scores, observed=observed)
        records.append(dict(plan=plan, selection=selection, features=features, scores=scores,
                            action_scores=action_scores, observed=observed))
    return records


def test_registry_lists_every_method():
    assert set(METHODS) == set(EXPECTED_GROUPS)


@pytest.mark.parametrize("method", sorted(EXPECTED_GROUPS))
@pytest.mark.parametrize("smoothing", ["window", "ema"])
def test_every_method_runs_an_episode(method, smoothing):
    config = PrunerConfig(method=method, keep_ratio=0.25, window=3, smoothing=smoothing)
    records = run_episode(make_pruner(config), steps=7)
    warmup_steps = config.window if method in HISTORY_METHODS else 0
    for step, record in enumerate(records):
        plan = record["plan"]
        assert plan.layer == 3 and plan.num_visual_tokens == NUM_TOKENS
        assert plan.warmup == (step < warmup_steps)
        if method == "none":
            assert not plan.prune and plan.budget == NUM_TOKENS
            continue
        assert plan.budget == 6  # round(0.25 * 24)
        assert plan.prune == (step >= warmup_steps)
        if method in HISTORY_METHODS:
            assert plan.action_layers == (4, 5, 6, 7)  # latter half of T = 8
        else:
            assert plan.action_layers == ()
        if plan.prune:
            assert plan.prefill_groups == EXPECTED_GROUPS[method]
            assert plan.score_layers_vl == ((2,) if plan.prefill_groups else ())
            kept = record["selection"].kept
            assert kept.dtype == torch.long and kept.numel() == 6
            assert kept.tolist() == sorted(set(kept.tolist()))
            assert 0 <= int(kept.min()) and int(kept.max()) < NUM_TOKENS
            assert tuple(record["selection"].diagnostics) == DIAGNOSTIC_KEYS
        else:
            assert plan.prefill_groups == () and record["selection"] is None


def test_vla_pruner_equals_alg2_on_the_history_estimate():
    config = PrunerConfig(method="vla_pruner", keep_ratio=0.25, window=3, decay=0.8)
    records = run_episode(make_pruner(config), steps=8)
    shadow = DecayingWindow(3, 0.8)  # fed the same observations independently
    for record in records:
        if record["plan"].prune:
            expected = dual_level_select(record["features"], record["scores"]["vl"], shadow.estimate(), 6)
            assert torch.equal(record["selection"].kept, expected)
            diagnostics = record["selection"].diagnostics
            assert diagnostics["pool_vl"] == diagnostics["pool_act"] == 6
            assert 6 <= diagnostics["pool_dual"] <= 12
            assert diagnostics["pool_ratio"] == diagnostics["pool_dual"] / 6
            assert diagnostics["overlap_vl_act"] == (12 - diagnostics["pool_dual"]) / 6
            assert diagnostics["pruned"] and diagnostics["select_ms"] >= 0.0
        shadow.update(record["action_scores"], record["observed"])


def test_vla_pruner_with_ema_and_carry_uses_that_history():
    config = PrunerConfig(method="vla_pruner", keep_ratio=0.25, smoothing="ema", ema_alpha=0.3, unobserved="carry")
    records = run_episode(make_pruner(config), steps=6)
    shadow = EMA(0.3, unobserved="carry")
    for record in records:
        if record["plan"].prune:
            expected = dual_level_select(record["features"], record["scores"]["vl"], shadow.estimate(), 6)
            assert torch.equal(record["selection"].kept, expected)
        shadow.update(record["action_scores"], record["observed"])


@pytest.mark.parametrize("method, group", [("fastv", "prefix"), ("fastv_last", "last"), ("fastv_all_rows", "all"),
                                           ("sparsevlm", "text"), ("prefill_only", "vl")])
def test_prefill_methods_keep_the_top_of_their_group(method, group):
    records = run_episode(make_pruner(PrunerConfig(method=method, keep_ratio=0.25)), steps=3)
    for record in records:
        assert record["selection"].kept.tolist() == topk_indices(record["scores"][group], 6).tolist()
        assert record["selection"].diagnostics["pool_vl"] == 6


def test_action_only_keeps_the_top_of_the_estimate():
    pruner = make_pruner(PrunerConfig(method="action_only", keep_ratio=0.25, window=2))
    peaked = torch.zeros(NUM_TOKENS)
    peaked[[3, 5, 7, 11, 13, 17]] = 1.0
    for _ in range(2):
        assert not pruner.plan(NUM_TOKENS, NUM_LAYERS).prune
        pruner.observe(peaked)
    assert pruner.plan(NUM_TOKENS, NUM_LAYERS).prune
    assert pruner.select().kept.tolist() == [3, 5, 7, 11, 13, 17]


@pytest.mark.parametrize("weight, twin", [(1.0, "prefill_only"), (0.0, "action_only")])
def test_score_fusion_weight_extremes_match_the_single_level_ablations(weight, twin):
    fused = run_episode(make_pruner(PrunerConfig(method="score_fusion", keep_ratio=0.25, fusion_weight=weight)), 6)
    single = run_episode(make_pruner(PrunerConfig(method=twin, keep_ratio=0.25)), 6)
    pruned = [(a, b) for a, b in zip(fused, single) if a["plan"].prune and b["plan"].prune]
    assert len(pruned) == 3
    for a, b in pruned:
        assert torch.equal(a["selection"].kept, b["selection"].kept)


def test_score_fusion_mixes_min_max_normalised_scores():
    pruner = make_pruner(PrunerConfig(method="score_fusion", keep_ratio=0.5, window=1, fusion_weight=0.5))
    pruner.plan(4, NUM_LAYERS)
    pruner.observe(torch.tensor([0.0, 1.0, 2.0, 7.0]))  # normalised then min-max: 0, 1/7, 2/7, 1
    assert pruner.plan(4, NUM_LAYERS).prune
    s_vl = torch.tensor([10.0, 30.0, 20.0, 10.0])  # min-max: 0, 1, 0.5, 0
    # fused = 0.5 * (0, 1, .5, 0) + 0.5 * (0, 1/7, 2/7, 1) -> tokens 1 and 3 win
    assert pruner.select(prefill_scores={"vl": s_vl}).kept.tolist() == [1, 3]


def test_divprune_is_alg1_over_all_tokens():
    records = run_episode(make_pruner(PrunerConfig(method="divprune", keep_ratio=0.25)), steps=3)
    for record in records:
        expected = min_redundancy_filter(record["features"], torch.arange(NUM_TOKENS), 6)
        assert torch.equal(record["selection"].kept, expected)
        assert record["selection"].diagnostics["pool_dual"] == NUM_TOKENS


def test_random_is_seeded_and_reset_replays_it():
    pruner = make_pruner(PrunerConfig(method="random", keep_ratio=0.25, seed=7))
    first = [r["selection"].kept.tolist() for r in run_episode(pruner, steps=4)]
    assert len({tuple(k) for k in first}) > 1  # changes from step to step
    pruner.reset()
    assert [r["selection"].kept.tolist() for r in run_episode(pruner, steps=4)] == first
    other = make_pruner(PrunerConfig(method="random", keep_ratio=0.25, seed=8))
    assert [r["selection"].kept.tolist() for r in run_episode(other, steps=4)] != first


def test_reset_restarts_the_warmup():
    pruner = make_pruner(PrunerConfig(method="vla_pruner", window=2))
    assert [r["plan"].warmup for r in run_episode(pruner, steps=4)] == [True, True, False, False]
    pruner.reset()
    assert [r["plan"].warmup for r in run_episode(pruner, steps=3)] == [True, True, False]


def test_disabled_config_never_prunes():
    pruner = make_pruner(PrunerConfig(method="fastv", enabled=False))
    for record in run_episode(pruner, steps=3):
        assert not record["plan"].prune and record["plan"].prefill_groups == ()
    assert not pruner.plan(NUM_TOKENS, num_layers=2).prune  # no layer K: a shallow model is fine


def test_keep_ratio_one_never_prunes_and_select_returns_all():
    pruner = make_pruner(PrunerConfig(method="fastv", keep_ratio=1.0))
    plan = pruner.plan(NUM_TOKENS, NUM_LAYERS)
    assert not plan.prune and plan.budget == NUM_TOKENS
    selection = pruner.select()
    assert selection.kept.tolist() == list(range(NUM_TOKENS))
    assert tuple(selection.diagnostics) == DIAGNOSTIC_KEYS and not selection.diagnostics["pruned"]


def test_configured_layers_reach_the_plan():
    config = PrunerConfig(method="vla_pruner", prune_layer=4, score_layers_vl=[3, 1], action_layers=(7, 5), window=1)
    pruner = make_pruner(config)
    pruner.plan(NUM_TOKENS, NUM_LAYERS)
    pruner.observe(torch.rand(NUM_TOKENS))
    plan = pruner.plan(NUM_TOKENS, NUM_LAYERS)
    assert plan.layer == 4 and plan.score_layers_vl == (1, 3) and plan.action_layers == (5, 7)


def test_protocol_errors():
    pruner = make_pruner(PrunerConfig(method="vla_pruner", window=1))
    with pytest.raises(RuntimeError, match="before plan"):
        pruner.select()
    with pytest.raises(ValueError, match="num_layers=3 is invalid"):
        pruner.plan(NUM_TOKENS, 3)
    with pytest.raises(ValueError, match="num_visual_tokens=0 is invalid"):
        pruner.plan(0, NUM_LAYERS)
    pruner.plan(NUM_TOKENS, NUM_LAYERS)
    pruner.observe(torch.rand(NUM_TOKENS))
    with pytest.raises(ValueError, match="call reset"):
        pruner.plan(NUM_TOKENS + 1, NUM_LAYERS)
    assert pruner.plan(NUM_TOKENS, NUM_LAYERS).prune
    with pytest.raises(ValueError, match=r"prefill_scores\['vl'\]"):
        pruner.select(features=torch.randn(NUM_TOKENS, WIDTH), prefill_scores={"all": torch.rand(NUM_TOKENS)})
    with pytest.raises(ValueError, match=r"features is None: method 'vla_pruner' needs a \(24, d\)"):
        pruner.select(prefill_scores={"vl": torch.rand(NUM_TOKENS)})
    too_deep = make_pruner(PrunerConfig(action_layers=(8,)))
    with pytest.raises(ValueError, match="action_layers"):
        too_deep.plan(NUM_TOKENS, NUM_LAYERS)
    with pytest.raises(ValueError, match="expected a PrunerConfig"):
        make_pruner({"method": "fastv"})


def test_budget_rounds_half_up_and_keeps_at_least_one():
    assert PrunerConfig(keep_ratio=0.5).budget(5) == 3  # 2.5 -> 3 (banker's rounding would give 2)
    assert PrunerConfig(keep_ratio=0.5).budget(3) == 2
    assert PrunerConfig(keep_ratio=0.125).budget(512) == 64
    assert PrunerConfig(keep_ratio=0.01).budget(10) == 1
    assert PrunerConfig(keep_ratio=1.0).budget(7) == 7
    with pytest.raises(ValueError, match="num_visual_tokens=-1"):
        PrunerConfig().budget(-1)


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("method", "fastvv", "expected one of"),
        ("enabled", 1, "True or False"),
        ("keep_ratio", 0.0, r"\(0, 1\]"),
        ("keep_ratio", 1.5, r"\(0, 1\]"),
        ("keep_ratio", float("nan"), r"\(0, 1\]"),
        ("keep_ratio", "0.5", r"\(0, 1\]"),
        ("prune_layer", 0, r"\[1, 128\]"),
        ("prune_layer", 2.0, r"\[1, 128\]"),
        ("score_layers_vl", (3,), "< prune_layer=3"),
        ("score_layers_vl", (), "non-empty"),
        ("score_layers_vl", (1, 1), "distinct"),
        ("action_layers", (-1,), ">= 0"),
        ("action_layers", "16", "tuple"),
        ("smoothing", "kalman", "expected one of"),
        ("window", 0, r"\[1, 64\]"),
        ("window", True, r"\[1, 64\]"),
        ("decay", 1.1, r"\[0, 1\]"),
        ("decay", -0.5, r"\[0, 1\]"),
        ("ema_alpha", 2, r"\[0, 1\]"),
        ("unobserved", "drop", "expected one of"),
        ("fusion_weight", -0.01, r"\[0, 1\]"),
        ("seed", -1, r"\[0, 2147483647\]"),
        ("seed", 1.0, r"\[0, 2147483647\]"),
    ],
)
def test_config_validation_names_field_value_and_range(field, value, allowed):
    with pytest.raises(ValueError, match=rf"PrunerConfig\.{field}={re.escape(repr(value))} is invalid: .*{allowed}"):
        PrunerConfig(**{field: value})
    with pytest.raises(ValueError, match=rf"PrunerConfig\.{field}="):
        PrunerConfig().replace(**{field: value})


def test_config_replace_and_defaults():
    config = PrunerConfig()
    assert (config.method, config.keep_ratio, config.prune_layer, config.window, config.decay) == (
        "vla_pruner", 0.5, 3, 3, 0.8)
    assert (config.smoothing, config.unobserved, config.score_layers_vl, config.action_layers) == (
        "window", "zero", None, None)
    changed = config.replace(keep_ratio=0.125, action_layers=[20, 16])
    assert changed.keep_ratio == 0.125 and changed.action_layers == (16, 20) and config.keep_ratio == 0.5
