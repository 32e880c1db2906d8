"""The OFT forward pass with the pruning hook (tiny preset, float32 on CPU)."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vla_pruner_ros.model import llm_flops, load_policy, make_checkpoint
from vla_pruner_ros.model.modeling_llama import PruneRequest, readout_rows, rows_keeping
from vla_pruner_ros.model.modeling_vision import tower_features
from vla_pruner_ros.model.processing_oft import (
    center_crop,
    normalize_proprio,
    tf_crop_and_resize,
    unnormalize_actions,
)
from vla_pruner_ros.pruning import PrunerConfig
from vla_pruner_ros.pruning.scores import visual_attention_scores_from_probs

INSTRUCTION = "pick up the red block and put it in the basket"


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return load_policy(make_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=1))


@pytest.fixture(scope="module")
def observation():
    rng = np.random.default_rng(0)
    images = {"fixed": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
              "wrist": rng.integers(0, 256, (180, 320, 3), dtype=np.uint8)}
    return images, np.array([0.3, -0.2, -1.2, 0.4, 1.1, -0.5, 1.0])


@pytest.fixture(scope="module")
def inputs(policy, observation):
    """Model inputs of one step: (pixel_values, input_ids, proprio tensor)."""
    images, proprio = observation
    ids, _ = policy.prompt_builder(INSTRUCTION)
    pixels = policy.image_processor([(v, images[v]) for v in policy.view_names])
    return pixels, ids, policy._proprio_tensor(proprio)


def run(policy, inputs, **kwargs):
    pixels, ids, proprio = inputs
    with torch.inference_mode():
        return policy.model(pixels, ids, policy.stop_token_id, proprio=proprio, **kwargs)


def top_vl(budget):
    return lambda features, scores: torch.topk(scores["vl"], budget).indices.sort().values


# ------------------------------------------------------------------------- vanilla equivalence
def test_keep_all_is_exactly_vanilla(policy, inputs):
    vanilla = run(policy, inputs)
    keep_all = run(policy, inputs, prune=PruneRequest(layer=3, select=lambda f, s: torch.arange(512)))
    assert torch.equal(vanilla.normalized_actions, keep_all.normalized_actions)
    assert keep_all.decoder.layer_rows == vanilla.decoder.layer_rows


def test_keep_ratio_one_and_method_none_give_the_vanilla_actions(policy, observation):
    images, proprio = observation
    policy.set_pruner(None)
    vanilla = policy.predict(images, proprio, INSTRUCTION).actions
    for config in (PrunerConfig(method="vla_pruner", keep_ratio=1.0, window=1),
                   PrunerConfig(method="fastv", keep_ratio=1.0),
                   PrunerConfig(method="none", keep_ratio=0.25)):
        policy.set_pruner(config)
        policy.reset()
        for _ in range(3):  # past any warm-up
            out = policy.predict(images, proprio, INSTRUCTION)
            assert not out.pruned and np.array_equal(out.actions, vanilla)
            assert out.kept_indices.tolist() == list(range(512))
    policy.set_pruner(None)


# ------------------------------------------------------------------------------ pruned shapes
def test_pruned_sequence_really_is_shorter_inside_the_loop(policy, inputs):
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
             for layer in policy.model.decoder.layers]
    try:
        out = run(policy, inputs, prune=PruneRequest(layer=3, select=top_vl(128)), action_layers=(3, 4, 5))
    finally:
        for hook in hooks:
            hook.remove()
    full = out.layout.length
    non_visual = full - 512
    assert seen == [full] * 3 + [non_visual + 128] * 3 == out.decoder.layer_rows
    assert out.decoder.last_hidden_state.shape == (1, non_visual + 128, 64)
    assert out.normalized_actions.shape == (8, 7) and torch.isfinite(out.normalized_actions).all()
    # the action scores only see kept tokens in layers >= K: pruned ones are marked unobserved
    observed = out.decoder.action_observed
    assert observed.sum() == 128 and torch.equal(torch.nonzero(observed)[:, 0], out.decoder.kept_visual)


def test_kept_tokens_keep_their_original_positions(policy, inputs):
    out = run(policy, inputs, prune=PruneRequest(layer=2, select=top_vl(64)))
    kept = out.decoder.kept_visual
    positions = out.decoder.positions
    assert torch.equal(positions[1:65], kept + 1)  # visual token i sits at row 1 + i
    assert torch.equal(positions, rows_keeping(out.layout, kept))
    assert positions[-1] == out.layout.length - 1  # </s> keeps its position too


def _masked_reference(policy, inputs, kept, prune_layer, compact_positions=False):
    """Reference for pruning: every row stays, but from layer K on the pruned visual rows are
    masked out as keys (additive -inf) and every row keeps its full-sequence rotary position."""
    pixels, ids, proprio = inputs
    model, decoder = policy.model, policy.model.decoder
    with torch.inference_mode():
        visual = model.embed_visual(pixels)
        embeds, layout = model.build_inputs(visual, ids, policy.stop_token_id, proprio)
        length = layout.length
        keep_rows = rows_keeping(layout, kept)
        positions = torch.arange(length)
        cos, sin = decoder.rotary_emb(embeds, positions[None])
        hidden = embeds
        for layer in decoder.layers[:prune_layer]:
            hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin))
        if compact_positions:  # the bug the real loop must not have: renumber the kept rows
            positions = torch.zeros(length, dtype=torch.long)
            positions[keep_rows] = torch.arange(len(keep_rows))
            cos, sin = decoder.rotary_emb(embeds, positions[None])
        mask = torch.full((1, 1, length, length), torch.finfo(hidden.dtype).min)
        mask[..., keep_rows] = 0.0
        for layer in decoder.layers[prune_layer:]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin))
        return decoder.norm(hidden)[:, keep_rows]


def test_dropping_rows_equals_masking_them_out(policy, inputs):
    out = run(policy, inputs, prune=PruneRequest(layer=3, select=top_vl(100)))
    kept = out.decoder.kept_visual
    reference = _masked_reference(policy, inputs, kept, prune_layer=3)
    torch.testing.assert_close(out.decoder.last_hidden_state, reference, atol=1e-5, rtol=1e-5)
    # control: the same reference with renumbered positions is clearly different
    wrong = _masked_reference(policy, inputs, kept, prune_layer=3, compact_positions=True)
    assert (out.decoder.last_hidden_state - wrong).abs().max() > 1e-2


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_dropping_equals_masking_for_any_kept_set_and_layer(policy, inputs, data):
    prune_layer = data.draw(st.integers(1, 5), label="K")
    kept = sorted(data.draw(st.sets(st.integers(0, 511), min_size=1, max_size=200), label="kept"))
    kept = torch.tensor(kept)
    out = run(policy, inputs, prune=PruneRequest(layer=prune_layer, select=lambda f, s: kept))
    reference = _masked_reference(policy, inputs, kept, prune_layer=prune_layer)
    torch.testing.assert_close(out.decoder.last_hidden_state, reference, atol=1e-5, rtol=1e-5)
    assert out.decoder.layer_rows == [out.layout.length] * prune_layer + \
        [out.layout.length - 512 + len(kept)] * (6 - prune_layer)


# ----------------------------------------------------------------------------- side scores
def test_captured_scores_equal_eager_attention(policy, inputs):
    decoder = policy.model.decoder
    score_layers, prune_layer, action_layers = (1, 2), 3, (2, 4, 5)
    groups = ("vl", "all", "text", "action")
    sdpa = run(policy, inputs, action_layers=action_layers,
               prune=PruneRequest(layer=prune_layer, select=top_vl(96), prefill_groups=groups,
                                  score_layers=score_layers))
    kept = sdpa.decoder.kept_visual

    probs = {}
    hooks = [layer.self_attn.register_forward_hook(lambda m, a, out, i=i: probs.__setitem__(i, out[1]))
             for i, layer in enumerate(decoder.layers)]
    decoder.llama_config._attn_implementation = "eager"
    try:
        eager = run(policy, inputs, action_layers=(),
                    prune=PruneRequest(layer=prune_layer, select=lambda f, s: kept, prefill_groups=(),
                                       score_layers=score_layers))
    finally:
        decoder.llama_config._attn_implementation = "vla_pruner_sdpa"
        for hook in hooks:
            hook.remove()
    assert probs[0].shape[-1] == sdpa.layout.length and probs[5].shape[-1] == sdpa.layout.length - 512 + 96

    layout, m = sdpa.layout, 512
    for group in groups:
        expected = sum(visual_attention_scores_from_probs(probs[i], slice(1, 1 + m), layout.rows(group))
                       for i in score_layers) / len(score_layers)
        torch.testing.assert_close(sdpa.decoder.prefill_scores[group], expected, atol=1e-5, rtol=0)
    # action rows after pruning: same rows shifted left by the pruned count
    shifted = torch.arange(layout.length)[layout.action_rows]
    expected_act = torch.zeros(m)
    for i in action_layers:
        rows = shifted if i < prune_layer else shifted - (m - len(kept))
        columns = slice(1, 1 + m) if i < prune_layer else slice(1, 1 + len(kept))
        score = visual_attention_scores_from_probs(probs[i], columns, rows)
        if i < prune_layer:
            expected_act += score
        else:
            expected_act[kept] += score
    observed = sdpa.decoder.action_observed
    torch.testing.assert_close(sdpa.decoder.action_scores[observed], expected_act[observed] / len(action_layers),
                               atol=1e-5, rtol=0)
    # the scores are probabilities: the visual share of one row's attention is within [0, 1]
    assert 0 < float(sdpa.decoder.prefill_scores["all"].sum()) <= 1
    # and SDPA (no mask, non-causal) computes the same attention as eager without a mask
    torch.testing.assert_close(sdpa.normalized_actions, eager.normalized_actions, atol=1e-5, rtol=1e-5)


def test_attention_is_bidirectional(policy, inputs):
    bidirectional = run(policy, inputs)
    causal = run(policy, inputs, causal=True)
    assert (bidirectional.normalized_actions - causal.normalized_actions).abs().max() > 1e-2


# --------------------------------------------------------------------------- action readout
def test_head_reads_one_row_left_of_the_placeholders(policy, inputs):
    out = run(policy, inputs)
    layout, hidden = out.layout, out.decoder.last_hidden_state
    ids = inputs[1]
    rows = readout_rows(layout)
    assert rows[0] == layout.prompt.stop - 1  # the "▁" row ...
    assert ids[-1] == policy.prompt_builder.word_start_id  # ... which holds the appended "▁"
    assert torch.equal(rows[1:], torch.arange(layout.placeholders.start, layout.placeholders.stop - 1))
    with torch.inference_mode():
        from_readout = policy.model.action_head(hidden[:, rows])[0]
        from_placeholders = policy.model.action_head(hidden[:, layout.placeholders])[0]
    assert torch.equal(out.normalized_actions, from_readout)
    assert (from_placeholders - from_readout).abs().max() > 1e-3


def test_placeholders_are_zero_and_stop_token_is_real(policy, inputs):
    pixels, ids, proprio = inputs
    with torch.inference_mode():
        visual = policy.model.embed_visual(pixels)
        embeds, layout = policy.model.build_inputs(visual, ids, policy.stop_token_id, proprio)
        embed = policy.model.decoder.embed_tokens
        assert torch.equal(embeds[0, layout.placeholders], torch.zeros(layout.num_action, 64))
        assert torch.equal(embeds[0, -1], embed.weight[policy.stop_token_id])
        assert torch.equal(embeds[0, 0], embed.weight[1])
        assert torch.equal(embeds[0, layout.visual], visual[0])
        assert torch.equal(embeds[0, 513], policy.model.proprio_projector(proprio))


def test_vision_feature_is_block_depth_minus_2_without_norm(policy, inputs):
    tower = policy.model.vision_backbone.featurizer
    pixels = inputs[0][:, :3]
    with torch.inference_mode():
        x = tower.norm_pre(tower._pos_embed(tower.patch_embed(pixels)))
        for block in tower.blocks[:-1]:
            x = block(x)
        expected = x[:, tower.num_prefix_tokens:]
        assert tower.num_prefix_tokens == 5 and expected.shape == (2, 256, 64)
        torch.testing.assert_close(tower_features(tower, pixels), expected)


# ------------------------------------------------------------------------------------ policy
def test_policy_output_with_vla_pruner(policy, observation):
    images, proprio = observation
    policy.set_pruner(PrunerConfig(method="vla_pruner", keep_ratio=0.25, window=2))
    policy.reset()
    outs = [policy.predict(images, proprio, INSTRUCTION) for _ in range(3)]
    assert [o.warmup for o in outs] == [True, True, False] and [o.pruned for o in outs] == [False, False, True]
    out = outs[-1]
    assert out.actions.shape == (8, 7) and out.actions.dtype == np.float64 and np.isfinite(out.actions).all()
    assert len(out.kept_indices) == 128 and np.all(np.diff(out.kept_indices) > 0)
    assert 0 <= out.kept_indices.min() and out.kept_indices.max() < 512
    assert out.grid == (16, 16) and out.view_names == ("fixed", "wrist") and out.num_visual_tokens == 512
    assert out.seq_len_after == out.seq_len_before - 384 and out.prune_layer == 3
    assert out.s_vl.shape == (512,) and out.s_act.shape == (512,) and out.s_act_observed.sum() == 128
    assert {"pool_vl", "pool_act", "pool_dual", "select_ms"} <= set(out.pruner) and out.pruner["num_kept"] == 128
    assert set(out.timings) == {"preprocess", "vision", "llm_prefix", "select", "llm_suffix", "action_head", "total"}
    assert out.timings["total"] >= out.timings["llm_prefix"] + out.timings["llm_suffix"]
    assert 0.3 < out.flops["ratio"] < 0.7
    # the gripper (mask False) passes through; joints map [-1, 1] onto their q01..q99 = [-0.05, 0.05]
    assert np.array_equal(out.actions[:, 6], out.normalized_actions[:, 6])
    assert np.allclose(out.actions[:, :6], 0.05 * out.normalized_actions[:, :6], atol=1e-7)
    policy.set_pruner(None)


@pytest.mark.parametrize("method", ["fastv", "sparsevlm", "prefill_only", "divprune", "random", "action_only",
                                    "score_fusion"])
def test_every_pruning_method_runs_through_the_hook(policy, observation, method):
    images, proprio = observation
    policy.set_pruner(PrunerConfig(method=method, keep_ratio=0.25, window=1))
    policy.reset()
    outs = [policy.predict(images, proprio, INSTRUCTION) for _ in range(2)]
    out = outs[-1]
    assert out.pruned and len(out.kept_indices) == 128 and np.isfinite(out.actions).all()
    assert out.seq_len_after == out.seq_len_before - 384 and out.pruner["method"] == method
    policy.set_pruner(None)


def test_set_pruner_keep_ratio_keeps_history_other_changes_reset(policy, observation):
    images, proprio = observation
    config = PrunerConfig(method="vla_pruner", keep_ratio=0.5, window=2)
    policy.set_pruner(config)
    policy.reset()
    for _ in range(3):
        out = policy.predict(images, proprio, INSTRUCTION)
    assert out.pruned and len(out.kept_indices) == 256
    policy.set_pruner(config.replace(keep_ratio=0.25))
    out = policy.predict(images, proprio, INSTRUCTION)
    assert out.pruned and not out.warmup and len(out.kept_indices) == 128
    policy.set_pruner(config.replace(keep_ratio=0.25, decay=0.5))
    assert policy.predict(images, proprio, INSTRUCTION).warmup
    # a new instruction is a new task: the history starts again
    for _ in range(2):
        policy.predict(images, proprio, INSTRUCTION)
    assert not policy.predict(images, proprio, INSTRUCTION).warmup
    assert policy.predict(images, proprio, "open the top drawer").warmup
    assert policy.predict(images, proprio, "OPEN the top drawer ").warmup  # same after lower-casing: no reset
    policy.set_pruner(None)


def test_instruction_is_lowercased_and_long_ones_truncated(policy, observation):
    images, proprio = observation
    ids_upper, used = policy.prompt_builder("Pick Up The RED Block")
    ids_lower, _ = policy.prompt_builder("pick up the red block")
    assert used == "pick up the red block" and torch.equal(ids_upper, ids_lower)
    essay = " ".join(["carefully move the green bowl next to the black mug"] * 60)
    with pytest.warns(UserWarning, match="truncated"):
        out = policy.predict(images, proprio, essay)
    template = len(policy.prompt_builder._encode(
        "In: What action should the robot take to ?\nOut:"))
    with pytest.warns(UserWarning, match="truncated"):
        assert len(policy.prompt_builder(essay)[0]) <= template + 128 + 1
    assert essay.startswith(out.instruction) and len(out.instruction) < len(essay)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy.predict(images, proprio, "push the box")  # short: no warning


def test_bad_inputs_raise_clear_errors(policy, observation):
    images, proprio = observation
    with pytest.raises(ValueError, match=r"missing \['wrist'\]"):
        policy.predict({"fixed": images["fixed"]}, proprio, INSTRUCTION)
    with pytest.raises(ValueError, match=r"images\['wrist'\]: expected an HxWx3 uint8"):
        policy.predict({**images, "wrist": images["wrist"].astype(np.float32)}, proprio, INSTRUCTION)
    with pytest.raises(ValueError, match=r"proprio: expected shape \(7,\)"):
        policy.predict(images, proprio[:6], INSTRUCTION)
    with pytest.raises(ValueError, match="instruction"):
        policy.predict(images, proprio, "   ")
    with pytest.raises(ValueError, match="prune_layer=6"):
        policy.set_pruner(PrunerConfig(prune_layer=6))


# ------------------------------------------------------------------------------- processing
def test_proprio_and_action_normalisation():
    stats = {"q01": [0.0, -2.0, 0.0], "q99": [1.0, 2.0, 1.0], "mask": [True, True, False]}
    normalized = normalize_proprio([0.25, 4.0, 0.7], stats)
    assert np.allclose(normalized, [-0.5, 1.0, 0.7])  # clipped to 1; masked dim passes through
    actions = unnormalize_actions(np.array([[-1.0, 0.0, 0.3], [1.0, 1.0, -2.0]]), stats)
    assert np.allclose(actions, [[0.0, 0.0, 0.3], [1.0, 2.0, -2.0]])  # no clipping of the pass-through


def test_center_crop_follows_tensorflow_crop_and_resize():
    ramp = np.tile(np.arange(10, dtype=np.float32), (10, 1))[..., None]  # value = x coordinate
    out = tf_crop_and_resize(ramp, (0.1, 0.2, 0.9, 0.6), 5)
    # TF samples x = x1 (W-1) + j (x2 - x1)(W-1)/(size-1): 1.8 .. 5.4
    assert np.allclose(out[0, :, 0], 1.8 + np.arange(5) * 0.9)
    flat = np.full((224, 224, 3), 200, dtype=np.uint8)
    assert np.array_equal(center_crop(flat), flat)  # floor(200/255 * 255.5) = 200


def test_llm_flops_matches_eq_10_to_12():
    cost = lambda n, d=8, m=16: 4 * n * d * d + 2 * n * n * d + 2 * n * d * m  # noqa: E731
    flops = llm_flops(num_layers=4, hidden_size=8, intermediate_size=16, seq_len=100,
                      pruned_seq_len=40, prune_layer=1)
    assert flops["full"] == 4 * cost(100) and flops["pruned"] == cost(100) + 3 * cost(40)
    assert flops["ratio"] == pytest.approx(flops["pruned"] / flops["full"])
