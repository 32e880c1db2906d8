"""Issue 17: the current-step action source, the shift-aware fallback and the latency budget."""
import math

import numpy as np
import pytest
import torch

from vla_pruner_ros.pruning import PrunerConfig, SequenceLayout, make_pruner, visual_attention_scores
from vla_pruner_ros.pruning.budget import LatencyBudget, suffix_units
from vla_pruner_ros.pruning.shift import ShiftDetector, image_change

M = 8


# ------------------------------------------------------------------ 1. current-step action source
def test_current_step_score_equals_eager_attention_on_a_hand_made_case():
    """The 'action' group at a layer < K: mean over heads and the action rows of softmax(q k^T / sqrt(d))
    restricted to the visual columns, computed by hand."""
    layout = SequenceLayout(num_visual=4, num_prompt=3, num_action=3, has_proprio=True)
    torch.manual_seed(0)
    heads, dim = 2, 4
    query = torch.randn(heads, layout.length, dim)
    key = torch.randn(heads, layout.length, dim)
    rows = layout.rows("action")
    assert rows.tolist() == [layout.prompt.stop - 1, layout.prompt.stop, layout.prompt.stop + 1]
    expected = torch.zeros(layout.num_visual, dtype=torch.float64)
    for h in range(heads):
        for r in rows.tolist():
            logits = [float(query[h, r] @ key[h, c]) / math.sqrt(dim) for c in range(layout.length)]
            peak = max(logits)
            weights = [math.exp(v - peak) for v in logits]
            total = sum(weights)
            for i in range(layout.num_visual):
                expected[i] += weights[1 + i] / total
    expected /= heads * len(rows)
    got = visual_attention_scores(query, key, layout.visual, rows)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)


def _scores():
    s_vl = torch.tensor([9.0, 8.0, 1, 1, 1, 1, 1, 1])  # semantic level: tokens 0, 1
    now = torch.tensor([0.0, 0, 0, 0, 0, 5, 6, 0])  # this step's action rows: tokens 5, 6
    past = torch.tensor([0.0, 0, 7, 6, 0, 0, 0, 0])  # the history: tokens 2, 3
    features = torch.eye(M)  # all tokens equally diverse: Alg. 1 keeps the pool order
    return s_vl, now, past, features


def _run(config, steps=1, features=None):
    s_vl, now, past, eye = _scores()
    pruner = make_pruner(config)
    for _ in range(config.window):
        pruner.plan(M, 6)
        pruner.observe(past)
    plan = pruner.plan(M, 6)
    selection = pruner.select(features=eye if features is None else features,
                              prefill_scores={"vl": s_vl, "action": now})
    return plan, selection


@pytest.mark.parametrize("source, expected", [("temporal", {0, 1, 2, 3}), ("current", {0, 1, 5, 6})])
def test_action_source_picks_the_action_level(source, expected):
    plan, selection = _run(PrunerConfig(keep_ratio=0.25, action_source=source, prune_layer=2))
    assert plan.prune
    assert ("action" in plan.prefill_groups) == (source != "temporal")
    assert selection.diagnostics["pool_dual"] == 4 and selection.diagnostics["action_source"] == source
    # the dual pool is C_vl ∪ C_act; with a budget of 2 the filter keeps 2 of it
    assert set(selection.kept.tolist()) <= expected


def test_current_source_needs_no_history_and_no_warm_up():
    pruner = make_pruner(PrunerConfig(keep_ratio=0.25, action_source="current", prune_layer=2))
    plan = pruner.plan(M, 6)
    assert plan.prune and not plan.warmup and plan.action_layers == () and pruner.history is None


def test_fused_is_a_weighted_sum_of_distributions_and_prunes_during_warm_up():
    s_vl, now, past, eye = _scores()
    pruner = make_pruner(PrunerConfig(method="action_only", keep_ratio=0.25, action_source="fused",
                                      current_weight=0.5, window=2))
    plan = pruner.plan(M, 6)
    assert plan.prune and not plan.warmup  # history empty: the current score alone
    assert set(pruner.select(prefill_scores={"action": now}).kept.tolist()) == {5, 6}
    for _ in range(2):
        pruner.observe(past)
        pruner.plan(M, 6)
    level = pruner._action_level({"action": now}, torch.device("cpu"))
    estimate = pruner.history.estimate()
    torch.testing.assert_close(level, 0.5 * now / now.sum() + 0.5 * estimate / estimate.sum())
    # lambda = 1 is the current source, lambda = 0 the temporal one
    for weight, tokens in ((1.0, {5, 6}), (0.0, {2, 3})):
        pruner.config = pruner.config.replace(current_weight=weight)
        assert set(pruner.select(prefill_scores={"action": now}).kept.tolist()) == tokens


def test_config_rejects_bad_issue17_fields():
    for bad in (dict(action_source="future"), dict(current_weight=1.5), dict(shift_fallback="panic"),
                dict(shift_widen=0.5), dict(target_ms=-1.0), dict(target_ms=float("inf")), dict(min_keep_ratio=0.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            PrunerConfig(**bad)


# ------------------------------------------------------------------ 2. shift detector and fallback
def test_shift_detector_static_scene_instruction_change_and_image_jump():
    torch.manual_seed(1)
    frame = torch.randn(M, 16)
    detector = ShiftDetector(image_threshold=0.05, overlap_threshold=0.0)
    for _ in range(5):  # a static scene (plus sensor-level noise) never fires
        decision = detector.check(frame + 1e-3 * torch.randn(M, 16))
        assert not decision.fired
    assert detector.check(frame).image_change < 0.01
    jump = torch.randn(M, 16)  # a new view: unrelated embeddings
    decision = detector.check(jump)
    assert decision.fired and decision.reasons == ("image",) and decision.image_change > 0.5
    assert not detector.check(jump).fired  # the next step sees the new scene as static again
    detector.instruction_changed()
    decision = detector.check(jump)
    assert decision.reasons == ("instruction",) and not detector.check(jump).fired
    assert math.isnan(image_change(frame, None))


def test_shift_detector_overlap_signal():
    detector = ShiftDetector(image_threshold=0.0, overlap_threshold=0.5)
    _, now, past, _ = _scores()
    assert detector.check(None, past, now, budget=2).reasons == ("overlap",)
    assert not detector.check(None, now + 0.1, now, budget=2).fired


def test_image_jump_makes_the_pruner_fall_back_to_the_current_score():
    config = PrunerConfig(keep_ratio=0.25, prune_layer=2, shift_fallback="current", shift_overlap_threshold=0.0)
    s_vl, now, past, eye = _scores()
    pruner = make_pruner(config)
    for _ in range(config.window):
        pruner.plan(M, 6)
        pruner.observe(past)
    kept = []
    for features in (eye, eye, torch.roll(eye, 3, dims=1) * -1.0, torch.roll(eye, 3, dims=1) * -1.0):
        pruner.plan(M, 6)
        selection = pruner.select(features=features, prefill_scores={"vl": s_vl, "action": now})
        kept.append((selection.diagnostics["shift"], selection.diagnostics["fallback"],
                     selection.diagnostics["shift_reason"]))
        pruner.observe(past)
    assert kept == [(False, "", ""), (False, "", ""), (True, "current", "image"), (False, "", "")]


def test_instruction_change_refills_the_history_with_pruned_steps():
    """Reset-and-warm-up (fallback off) runs `window` unpruned steps; with the fallback the refill
    steps prune with the current-step score and report the shift."""
    s_vl, now, past, eye = _scores()

    def unpruned_steps(fallback):
        pruner = make_pruner(PrunerConfig(keep_ratio=0.25, prune_layer=2, window=3, shift_fallback=fallback))
        for _ in range(3):
            pruner.plan(M, 6)
            pruner.observe(past)
        pruner.reset(reason="instruction")
        unpruned, reasons = 0, []
        for _ in range(5):
            plan = pruner.plan(M, 6)
            if plan.prune:
                diagnostics = pruner.select(features=eye, prefill_scores={"vl": s_vl, "action": now}).diagnostics
                reasons.append((diagnostics["shift_reason"], diagnostics["fallback"]))
            else:
                unpruned += 1
            pruner.observe(now)  # the new task's action attention: the history agrees with it
        return unpruned, reasons

    assert unpruned_steps("off") == (3, [("", "")] * 2)
    unpruned, reasons = unpruned_steps("current")
    assert unpruned == 0
    assert reasons[0] == ("instruction", "current") and reasons[1:3] == [("", "current")] * 2
    assert reasons[3:] == [("", "")] * 2  # history full again: plain VLA-Pruner


def test_widen_fallback_keeps_more_tokens():
    config = PrunerConfig(keep_ratio=0.25, prune_layer=2, shift_fallback="widen", shift_widen=2.0,
                          shift_image_threshold=0.0, shift_overlap_threshold=0.5)
    _, selection = _run(config)  # history says 2, 3; the action rows say 5, 6: overlap 0
    assert selection.diagnostics["fallback"] == "widen" and selection.diagnostics["num_kept"] == 4


def test_widen_fallback_stays_within_a_latency_target():
    """With prune.target_ms set, a widened step may use what the target still allows, not more."""
    config = PrunerConfig(keep_ratio=0.25, prune_layer=2, shift_fallback="widen", shift_widen=4.0,
                          shift_image_threshold=0.0, shift_overlap_threshold=0.5, target_ms=30.0,
                          min_keep_ratio=0.125)
    s_vl, now, past, eye = _scores()
    pruner = make_pruner(config)
    for _ in range(config.window + 3):  # fill the history and fit the cost model: 10 ms + 5 ms per token
        plan = pruner.plan(M, 6)
        pruner.observe(past)
        kept = plan.budget if plan.prune else M
        pruner.record_step(10.0 + 5.0 * kept, 5.0 * kept, kept)
    assert pruner.latency.affordable(M) == 4  # 30 ms at 4 tokens; the budget is keep_ratio 0.25 of 8 = 2
    plan = pruner.plan(M, 6)
    selection = pruner.select(features=eye, prefill_scores={"vl": s_vl, "action": now})
    assert selection.diagnostics["fallback"] == "widen"
    assert selection.diagnostics["num_kept"] == 4  # not 4 x 2 = 8 tokens: that would take 50 ms
    pruner.latency.target_ms = 50.0  # a looser target leaves room: 8 tokens
    plan = pruner.plan(M, 6)
    selection = pruner.select(features=eye, prefill_scores={"vl": s_vl, "action": now})
    assert selection.diagnostics["fallback"] == "widen" and selection.diagnostics["num_kept"] == 8


# ------------------------------------------------------------------ 3. latency budget
def _simulate(budget, fixed, rate, steps, num_tokens=256, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    chosen, times = [], []
    for step in range(steps):
        f, r = (fixed(step), rate(step)) if callable(fixed) else (fixed, rate)
        kept = budget.choose(num_tokens)
        variable = r * kept * (1 + noise * rng.standard_normal())
        total = f * (1 + noise * rng.standard_normal()) + variable
        budget.observe(kept, total, variable)
        chosen.append(kept)
        times.append(total)
    return np.array(chosen), np.array(times)


def test_budget_converges_on_a_synthetic_cost_model_and_does_not_oscillate():
    budget = LatencyBudget(target_ms=50.0, min_keep_ratio=0.05)
    chosen, times = _simulate(budget, fixed=20.0, rate=0.25, steps=40)  # 50 ms at 120 tokens
    assert chosen[-1] == 120 and np.all(chosen[5:] == 120)
    assert abs(times[-1] - 50.0) < 1e-6 and budget.predicted_ms == pytest.approx(50.0)
    # noisy measurements: few changes (hysteresis), the mean step near the target
    budget = LatencyBudget(target_ms=50.0, min_keep_ratio=0.05)
    chosen, times = _simulate(budget, fixed=20.0, rate=0.25, steps=200, noise=0.02, seed=3)
    changes = int(np.count_nonzero(np.diff(chosen[20:])))
    assert changes < 30 and abs(np.mean(times[20:]) - 50.0) < 3.0
    assert np.mean(times[20:] <= 1.05 * 50.0) > 0.9


def test_budget_follows_a_load_change_and_respects_the_minimum_ratio():
    budget = LatencyBudget(target_ms=50.0, min_keep_ratio=0.25)
    slow = lambda step: 1.0 if step < 30 else (2.0 if step < 80 else 3.0)  # noqa: E731 - load steps up
    chosen, times = _simulate(budget, fixed=lambda s: 10.0 * slow(s), rate=lambda s: 0.2 * slow(s), steps=110)
    assert chosen[29] == 200  # 10 + 0.2 * 200 = 50
    # 2x slower: 20 + 0.4 * 75 = 50. The overshoots of the steps right after the load change are the
    # headroom while they are in the window (20 steps), then it climbs back; the hysteresis may leave
    # it a token or two short
    assert np.all(times[40:80] <= 50.0 + 1e-9)
    assert 70 <= chosen[79] <= 75 and 20 + 0.4 * chosen[79] <= 50
    assert chosen[-1] == 64  # 3x slower: 50 ms needs 33 tokens, below the minimum 0.25 * 256 = 64
    assert np.all(chosen >= 64)
    budget = LatencyBudget(target_ms=5.0, min_keep_ratio=0.5)  # unreachable: stays at the minimum
    chosen, _ = _simulate(budget, fixed=20.0, rate=0.25, steps=10)
    assert np.all(chosen[1:] == 128)


def test_suffix_units_follow_eq_10_to_12():
    units = suffix_units(num_layers=6, prune_layer=2, hidden_size=8, intermediate_size=16, other_rows=10)
    n = 14
    assert units(4) == pytest.approx(4 * (4 * n * 64 + 2 * n * n * 8 + 2 * n * 8 * 16) / 1e9)


def test_pruner_with_a_target_chooses_the_budget_and_reports_it():
    pruner = make_pruner(PrunerConfig(method="fastv", keep_ratio=0.5, target_ms=30.0, min_keep_ratio=0.125))
    num_tokens = 64
    for _ in range(10):
        plan = pruner.plan(num_tokens, 6)
        kept = plan.budget if plan.prune else num_tokens
        pruner.record_step(10.0 + 0.5 * kept, 0.5 * kept, kept)  # 30 ms at 40 tokens
    assert plan.budget == 32  # keep_ratio is the ceiling
    pruner.config = pruner.config.replace(keep_ratio=1.0)
    for _ in range(10):
        plan = pruner.plan(num_tokens, 6)
        pruner.record_step(10.0 + 0.5 * plan.budget, 0.5 * plan.budget, plan.budget)
    assert plan.budget == 40
    diagnostics = pruner.select(prefill_scores={"prefix": torch.rand(num_tokens)}).diagnostics
    assert diagnostics["target_ms"] == 30.0 and diagnostics["predicted_ms"] == pytest.approx(30.0)
    assert diagnostics["chosen_keep_ratio"] == pytest.approx(40 / 64)


# ------------------------------------------------------------------ on the tiny model
def test_policy_runs_every_new_option(tiny_checkpoint):
    from vla_pruner_ros.model import load_policy

    policy = load_policy(tiny_checkpoint, announce=False)
    rng = np.random.default_rng(0)
    size = policy.config.image_sizes[0] if hasattr(policy.config, "image_sizes") else 224
    images = {v: rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for v in policy.view_names}
    proprio = np.zeros(policy.proprio_dim) if policy.proprio_dim else None
    layers = policy.num_layers
    for config in (PrunerConfig(keep_ratio=0.5, prune_layer=1, action_source="current"),
                   PrunerConfig(keep_ratio=0.5, prune_layer=1, action_source="fused"),
                   PrunerConfig(keep_ratio=0.5, prune_layer=1, window=2, shift_fallback="current"),
                   PrunerConfig(keep_ratio=0.5, prune_layer=1, target_ms=1e6)):
        assert config.prune_layer < layers
        policy.set_pruner(config)
        policy.reset()
        outs = [policy.predict(images, proprio, "pick up the cube") for _ in range(3)]
        outs.append(policy.predict(images, proprio, "put it down"))
        pruned = [o.pruned for o in outs]
        if config.action_source != "temporal":
            assert all(pruned)
        elif config.shift_fallback == "current":
            assert pruned == [False, False, True, True]  # warm-up, then the new instruction is pruned
            assert outs[-1].pruner["shift_reason"] == "instruction"
        else:
            assert outs[-1].pruner["target_ms"] == 1e6
            assert outs[-1].pruner["predicted_ms"] > 0


# ------------------------------------------------------------------ method variants on the command line
def test_method_variants_parse_type_and_validate():
    import argparse

    from vla_pruner_ros.pruning.variants import split_method, variant_config
    from vla_pruner_ros.tools._arguments import method_list

    assert split_method("vla_pruner") == ("vla_pruner", {})
    assert split_method("vla_pruner:action_source=fused:current_weight=0.25:window=2") == (
        "vla_pruner", {"action_source": "fused", "current_weight": 0.25, "window": 2})
    config = variant_config("vla_pruner:target_ms=40:min_keep_ratio=0.2", 0.5, window=4)
    assert (config.target_ms, config.min_keep_ratio, config.keep_ratio, config.window) == (40.0, 0.2, 0.5, 4)
    for bad in ("nope", "vla_pruner:keep_ratio=0.5", "vla_pruner:action_source=future", "vla_pruner:window",
                "vla_pruner:window=two"):
        with pytest.raises(ValueError):
            split_method(bad)
    assert method_list("none, vla_pruner:action_source=current") == ("none", "vla_pruner:action_source=current")
    with pytest.raises(argparse.ArgumentTypeError, match="action_source"):
        method_list("vla_pruner:action_source=future")


def test_eval_and_replay_configs_take_variants():
    from vla_pruner_ros.replay.runs import ReplayConfig, run_specs
    from vla_pruner_ros.training.evaluate import EvalConfig

    eval_config = EvalConfig(checkpoint="x", methods=("none", "vla_pruner:action_source=current"), keep_ratios=(0.25,))
    assert eval_config.pruner("vla_pruner:action_source=current", 0.25).action_source == "current"
    specs = run_specs(ReplayConfig(methods=("vla_pruner:shift_fallback=current",), keep_ratios=(0.25,)))
    assert specs[-1].settings.pruner_config().shift_fallback == "current"
    assert specs[-1].settings.pruner_config().method == "vla_pruner"


def test_runner_stats_fill_every_new_pruner_stats_field(tiny_checkpoint):
    """The node publishes stats_fields() onto PrunerStats: the new fields exist in the message and
    carry the shift fallback of an instruction change."""
    from vla_pruner_ros.control.params import NodeSettings
    from vla_pruner_ros.control.robot_config import load_robot_config
    from vla_pruner_ros.control.runner import Observation, PolicyRunner
    from vla_pruner_ros.model import load_policy

    msg_module = pytest.importorskip("vla_pruner_ros.msg", reason="needs the colcon-built messages")
    robot = load_robot_config()
    policy = load_policy(tiny_checkpoint, announce=False)
    runner = PolicyRunner(policy, robot)
    rng = np.random.default_rng(0)
    size = policy.config.image_size
    images = {v: rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for v in policy.view_names}
    settings = NodeSettings(pruner=PrunerConfig(keep_ratio=0.5, prune_layer=1, window=1, shift_fallback="current",
                                           target_ms=1e5))
    results = []
    for instruction in ("pick up the cube", "pick up the cube", "put it down"):
        observation = Observation(images, np.zeros(len(robot.joints)), 0.0, instruction, 0.0)
        results.append(runner.step(observation, NodeSettings(**{**settings.__dict__, "instruction": instruction})))
    fields = results[-1].stats_fields()
    message = msg_module.PrunerStats()
    for key, value in fields.items():
        setattr(message, key, value)
    assert message.shift and message.shift_reason == "instruction" and message.fallback == "current"
    assert message.action_source == "temporal" and message.target_ms == pytest.approx(1e5)
    assert 0 < message.chosen_keep_ratio <= 0.5 and message.predicted_ms > 0
    assert [r.output.pruned for r in results] == [False, True, True]  # warm-up 1, then pruned, no new warm-up


def test_budget_shrugs_off_a_lone_spike():
    budget = LatencyBudget(target_ms=50.0, min_keep_ratio=0.05)
    spike = lambda step: 10.0 if step == 20 else 1.0  # noqa: E731 - one step 10x slower (preempted)
    chosen, _ = _simulate(budget, fixed=lambda s: 20.0 * spike(s), rate=lambda s: 0.25 * spike(s), steps=40)
    assert chosen[19] == 120 and chosen[-1] >= 110  # back near 120 once the headroom decays
    assert min(chosen[20:]) >= 60  # the spike did not send it to the minimum (13 tokens)


def test_budget_meets_the_target_in_the_share_of_steps_it_aims_for():
    """10 % measurement noise: the headroom is the 95 % quantile of recent overshoots, so >= 95 % of
    the steps meet the target itself (the goal allows +5 %); aiming at the median misses ~1/3."""
    for seed in range(3):
        budget = LatencyBudget(target_ms=50.0, min_keep_ratio=0.05)
        chosen, times = _simulate(budget, fixed=20.0, rate=0.25, steps=400, noise=0.1, seed=seed)
        assert np.mean(times[40:] <= 50.0) >= 0.95 and np.mean(times[40:] <= 52.5) >= 0.98
        assert chosen[40:].mean() > 80  # not pinned low: 120 tokens meet 50 ms without noise
        median = LatencyBudget(target_ms=50.0, min_keep_ratio=0.05, quantile=0.5)
        _, times = _simulate(median, fixed=20.0, rate=0.25, steps=400, noise=0.1, seed=seed)
        assert np.mean(times[40:] <= 50.0) < 0.75
    with pytest.raises(ValueError, match="quantile"):
        LatencyBudget(target_ms=50.0, quantile=1.0)
