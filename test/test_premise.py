"""The premise check (vla-pruner premise) on the tiny checkpoint, and its rank statistics."""
import json
import math

import numpy as np
import pytest
import torch

from vla_pruner_ros.evaluation.premise import (
    SCORES,
    SETS,
    PremiseObservation,
    PremiseProbe,
    format_summary,
    rank_average,
    run_premise,
    spearman,
    summarize,
    topk_recall,
)
from vla_pruner_ros.model import load_policy
from vla_pruner_ros.model.modeling_llama import PruneRequest


def test_rank_statistics_known_values():
    assert rank_average(np.array([10.0, 30.0, 20.0, 20.0])).tolist() == [1.0, 4.0, 2.5, 2.5]
    assert spearman(np.arange(5), np.arange(5) ** 3) == pytest.approx(1.0)
    assert spearman(np.arange(5), -np.arange(5)) == pytest.approx(-1.0)
    # ranks a = 1, 2.5, 2.5, 4 ; b = 1, 3, 2, 4 -> Pearson of the ranks = 0.9486833
    tied = spearman(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0, 4.0]))
    assert tied == pytest.approx(0.9486833, abs=1e-6)
    assert math.isnan(spearman(np.ones(4), np.arange(4)))
    assert topk_recall(np.array([0.9, 0.1, 0.8, 0.2]), np.array([5.0, 4.0, 0.0, 1.0]), 2) == 0.5
    assert topk_recall(np.array([0.9, 0.1, 0.8, 0.2]), np.array([5.0, 0.0, 4.0, 1.0]), 2) == 1.0


@pytest.fixture(scope="module")
def tiny_policy(tiny_checkpoint):
    torch.manual_seed(0)
    return load_policy(tiny_checkpoint, device="cpu", dtype=torch.float32)


def _observation(policy, episode, seed):
    rng = np.random.default_rng(seed)
    images = {view: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for view in policy.view_names}
    return PremiseObservation(images=images, proprio=rng.uniform(-0.5, 0.5, policy.proprio_dim),
                              instruction="pick up the red cube", episode=episode)


def test_probe_measures_the_model_itself(tiny_policy):
    policy = tiny_policy
    probe = PremiseProbe(policy, prune_layer=2, keep_ratio=0.25, tokens_per_step=5, seed=3)
    observations = [_observation(policy, 0, 1), _observation(policy, 0, 2), _observation(policy, 1, 3)]
    steps = run_premise(probe, observations)
    assert [(s.episode, s.step) for s in steps] == [(0, 0), (0, 1), (1, 0)]

    # the causal importance of a token is the action change when that token alone is dropped at K,
    # recomputed here from a plain pruned decoder pass and compared with the unpruned policy's actions
    policy.set_pruner(None)
    first = observations[0]
    unpruned = policy.predict(first.images, first.proprio, first.instruction).normalized_actions
    with torch.inference_mode():
        inputs_embeds, layout = probe._inputs(first)
    for token, importance in zip(steps[0].tokens, steps[0].importance):
        keep = torch.tensor([i for i in range(layout.num_visual) if i != token])
        with torch.inference_mode():
            out = policy.model.decoder(inputs_embeds, layout, prune=PruneRequest(layer=2, select=lambda f, s: keep,
                                                                                  prefill_groups=()))
            dropped = policy.model.action_head(out.readout)[0].float().numpy()
        assert importance == pytest.approx(float(np.linalg.norm(dropped - unpruned)), rel=1e-4, abs=1e-6)
    assert all(v >= 0 for s in steps for v in s.importance) and len(set(steps[0].tokens)) == 5

    for step in steps:
        assert set(step.spearman) == set(SCORES) and step.chance_recall == pytest.approx(1 / 5)
        for name in SCORES:
            if name == "s_act_temporal" and step.step == 0:  # no history on an episode's first step
                assert math.isnan(step.spearman[name]) and math.isnan(step.keep_deviation[name])
                continue
            assert -1.0 <= step.spearman[name] <= 1.0 or math.isnan(step.spearman[name])
            assert step.recall[name] in (0.0, 1.0)  # k = 1 of 5
            assert step.keep_deviation[name] > 0  # keeping a quarter of the tokens moves the actions
    assert math.isfinite(steps[1].temporal_vs_now) and math.isnan(steps[2].temporal_vs_now)  # reset per episode
    # the methods' own sets: VLA-Pruner's needs a history (not on an episode's first step)
    assert [math.isnan(s.keep_deviation["vla_pruner_set"]) for s in steps] == [True, False, True]
    assert steps[1].keep_deviation["vla_pruner_set"] > 0 and all(s.keep_deviation["divprune_set"] > 0 for s in steps)
    # issue 17: VLA-Pruner with the current step's K-1 action rows needs no history
    assert all(s.keep_deviation["vla_current_set"] > 0 for s in steps)

    summary = summarize(steps, 0.25)
    assert summary["steps"] == 3 and summary["episodes"] == 2 and summary["scores"]["s_act_temporal"]["steps"] == 1
    text = format_summary(summary)
    assert "premise check: 3 steps of 2 episode(s)" in text and "VLA-Pruner's premise" in text
    assert all(item["answer"] for item in summary["questions"])


def test_premise_command_on_tiny(tiny_checkpoint, tmp_path, capsys):
    from vla_pruner_ros.tools.cli import main

    code = main(["premise", "--checkpoint", str(tiny_checkpoint), "--sim", "1", "--max-steps", "2", "--tokens", "4",
                 "--prune-layer", "2", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "premise check: 2 steps of 1 episode(s), 4 tokens measured per step" in printed
    saved = json.loads((tmp_path / "premise.json").read_text())
    assert len(saved["steps"]) == 2 and set(saved["summary"]["scores"]) == set(SCORES) | set(SETS)
    assert (tmp_path / "premise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the token sets rank nothing: no (empty) bar for them in the rho and recall panels
    from vla_pruner_ros.evaluation.premise import panel_rows

    summary = saved["summary"]
    for key in ("spearman", "recall"):
        assert set(panel_rows(summary, key)) == set(SCORES) & {n for n, r in summary["scores"].items() if r["steps"]}
    assert set(SETS) <= set(panel_rows(summary, "keep_deviation"))
    assert main(["premise", "--checkpoint", str(tmp_path), "--sim", "1"]) == 2  # not a checkpoint
