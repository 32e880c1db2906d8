"""run_replay on the tiny checkpoint: the pruner's temporal state is carried as online, episodes
reset it as online, and the Fig. 2 analysis reads the same S_vl the pruner uses."""
import numpy as np
import pytest
import torch

from vla_pruner_ros.control.params import NODE_PRUNER, NodeSettings
from vla_pruner_ros.control.robot_config import load_robot_config
from vla_pruner_ros.control.runner import PolicyRunner
from vla_pruner_ros.model import load_policy, make_checkpoint
from vla_pruner_ros.pruning import topk_indices
from vla_pruner_ros.replay import ReplayConfig, load_timeline, run_replay, unpruned_attention
from vla_pruner_ros.replay.attention import analysis_layers
from vla_pruner_ros.replay.simbag import SimBagSpec, write_sim_bag

ROBOT = load_robot_config()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than two on a shared 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=0, image_size=112)


@pytest.fixture(scope="module")
def timeline(tmp_path_factory):
    """Two episodes: steps at 0.001, 0.401, 0.801 s (red cube) | 1.201 .. 2.401 s (blue cube)."""
    spec = SimBagSpec(duration_s=2.8, instructions=((0.0, "move the gripper above the red cube"),
                                                    (1.0, "move the gripper above the blue cube")))
    bag = write_sim_bag(tmp_path_factory.mktemp("bag") / "two_episodes", "mcap", spec)
    timeline = load_timeline(bag.path, ROBOT, step_period=0.4)
    assert [s.episode for s in timeline.steps] == [0, 0, 0, 1, 1, 1, 1]
    return timeline


def test_temporal_state_is_carried_exactly_as_an_online_loop(checkpoint, timeline):
    config = ReplayConfig(methods=("vla_pruner",), keep_ratios=(0.25, 0.5), pruner=NODE_PRUNER.replace(window=2))
    calls = []
    result = run_replay(load_policy(checkpoint), ROBOT, timeline, config,
                        progress=lambda spec, step: calls.append((spec.name, step)))
    assert calls == [(name, i) for name in ("none", "vla_pruner@0.25", "vla_pruner@0.5") for i in range(7)]

    # The node's loop, on a fresh policy: one runner, the same settings every step, nothing reset by hand.
    for ratio in (0.25, 0.5):
        runner = PolicyRunner(load_policy(checkpoint), ROBOT)
        settings = NodeSettings(pruner=NODE_PRUNER.replace(method="vla_pruner", keep_ratio=ratio, window=2))
        online = [runner.step(step.observation, settings) for step in timeline.steps]
        rows = result.rows_of(f"vla_pruner@{ratio:g}")
        # warm-up restarts with the second instruction: two unpruned steps in each episode
        assert [r.output.warmup for r in online] == [True, True, False, True, True, False, False]
        assert [row["warmup"] for row in rows] == [r.output.warmup for r in online]
        assert [row["episode_step"] for row in rows] == [0, 1, 2, 0, 1, 2, 3]
        for step, r in enumerate(online):
            assert np.array_equal(np.flatnonzero(result.kept[f"vla_pruner@{ratio:g}"][step]), r.output.kept_indices)
            assert np.array_equal(rows[step]["pool_dual"], r.stats_fields()["pool_dual"])
        assert sum(row["pruned"] for row in rows) == 3


def test_the_analysis_reads_the_prefill_scores_the_pruner_uses(checkpoint, timeline):
    """prefill_only keeps Top-M~(S_vl at layer K-1): the analysis' S_vl must rank the same way."""
    policy = load_policy(checkpoint)
    config = ReplayConfig(methods=("prefill_only",), keep_ratios=(0.25,), pruner=NODE_PRUNER.replace(prune_layer=2))
    result = run_replay(policy, ROBOT, timeline, config)
    assert result.layers.score_layers == (1,) and result.layers.action_layers == (3, 4, 5)
    budget = round(0.25 * result.s_vl.shape[1])
    for step in range(len(timeline.steps)):
        expected = topk_indices(torch.from_numpy(result.s_vl[step]), budget).numpy()
        assert np.array_equal(np.flatnonzero(result.kept["prefill_only@0.25"][step]), expected)
    assert np.isfinite(result.s_act).all() and (result.s_act >= 0).all() and result.s_act.sum() > 0
    # the Fig. 2 series: one value per step, the act_prev one NaN where an episode starts
    act_prev = result.overlaps["act_prev"][0.25]
    within = act_prev[[1, 2, 4, 5, 6]]
    assert np.isnan(act_prev[[0, 3]]).all() and ((within >= 0) & (within <= 1)).all()
    reference = result.rows_of("none")
    assert [row["overlap_vl_act_k50"] for row in reference] == list(result.overlaps["vl_act"][0.5])


def test_the_keep_everything_forward_is_the_unpruned_policy(checkpoint, timeline):
    policy = load_policy(checkpoint)
    step = timeline.steps[1].observation
    proprio = ROBOT.proprio(step.joint_positions, step.gripper_position)
    unpruned = policy.predict(images=step.images, proprio=proprio, instruction=step.instruction)
    for kind in ("pruner", "all"):
        layers = analysis_layers(kind, policy.num_layers, 3)
        scores = unpruned_attention(policy, step.images, proprio, step.instruction, layers)
        np.testing.assert_allclose(scores.normalized_actions, unpruned.normalized_actions, atol=1e-5)
        assert scores.s_vl.shape == scores.s_act.shape == (policy.num_visual_tokens,)
    assert analysis_layers("all", 6, 3).score_layers == (0, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="analysis_layers='some'"):
        analysis_layers("some", 6, 3)


def test_a_prune_layer_beyond_the_model_is_refused(checkpoint, timeline):
    with pytest.raises(ValueError, match="prune_layer=6: the model has 6 LLM layers"):
        run_replay(load_policy(checkpoint), ROBOT, timeline, ReplayConfig(methods=("fastv",), pruner=NODE_PRUNER.replace(prune_layer=6)))
