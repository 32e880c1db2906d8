"""Fused q/k/v and gate/up projections: same state dict, same numbers, training untouched."""
import copy

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP

from vla_pruner_ros.model.checkpoint import PRESETS, preset_config
from vla_pruner_ros.model.modeling_llama import (
    FusedLlamaAttention,
    FusedLlamaMLP,
    LlamaBackbone,
    _views_intact,
    fuse_projections_,
)


@pytest.fixture(scope="module")
def backbones():
    torch.manual_seed(0)
    text = preset_config(PRESETS["tiny"]).text_config
    plain = LlamaBackbone(text).eval()
    for p in plain.parameters():
        p.data.normal_(0, 0.2)
    fused = fuse_projections_(copy.deepcopy(plain))
    return plain, fused


def test_the_state_dict_keeps_its_names_and_values(backbones):
    plain, fused = backbones
    before, after = plain.state_dict(), fused.state_dict()
    assert list(before) == list(after)
    assert all(torch.equal(before[name], after[name]) for name in before)
    layer = fused.layers[0]
    assert type(layer.self_attn) is FusedLlamaAttention and type(layer.mlp) is FusedLlamaMLP
    # the projections are views into the fused matrix: nothing is stored twice
    qkv = layer.self_attn.qkv_weight
    assert layer.self_attn.k_proj.weight.data_ptr() == qkv[layer.self_attn.qkv_sizes[0]:].data_ptr()
    assert layer.mlp.up_proj.weight.data_ptr() == layer.mlp.gate_up_weight[text_m(fused):].data_ptr()
    assert fuse_projections_(fused) is fused and layer.self_attn.qkv_weight is qkv  # idempotent


def text_m(backbone):
    return backbone.text_config.intermediate_size


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_layers_compute_what_the_plain_ones_do(backbones, dtype):
    plain, fused = (copy.deepcopy(b).to(dtype) for b in backbones)
    fuse_projections_(fused)  # .to() replaced the views: fuse again on the final dtype
    for layer in fused.layers:  # the fused path runs (not the fallback)
        assert _views_intact(layer.self_attn, ("q_proj", "k_proj", "v_proj"), "qkv_weight")
        assert _views_intact(layer.mlp, ("gate_proj", "up_proj"), "gate_up_weight")
        assert layer.self_attn.qkv_weight.dtype == dtype
    x = torch.randn(2, 37, plain.text_config.hidden_size).to(dtype)
    with torch.inference_mode():
        expected, got = plain.forward_batch(x), fused.forward_batch(x)
    assert torch.equal(expected, got) if dtype == torch.bfloat16 else torch.allclose(expected, got, atol=1e-6)


def test_a_later_to_or_new_parameter_falls_back_to_the_plain_forward(backbones):
    plain, fused = (copy.deepcopy(b) for b in backbones)
    attention = fused.layers[0].self_attn
    with torch.no_grad():
        attention.q_proj.weight = torch.nn.Parameter(attention.q_proj.weight * 2)  # no longer a view
        plain.layers[0].self_attn.q_proj.weight.mul_(2)
    x = torch.randn(1, 20, plain.text_config.hidden_size)
    with torch.inference_mode():
        assert torch.allclose(plain.forward_batch(x), fused.forward_batch(x), atol=1e-6)


def test_training_still_reaches_every_projection(backbones):
    _, fused = (copy.deepcopy(b) for b in backbones)
    for p in fused.parameters():
        p.requires_grad_(True)
    fused.train()
    fused.forward_batch(torch.randn(1, 12, fused.text_config.hidden_size)).square().mean().backward()
    layer = fused.layers[1]
    for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj,
                   layer.mlp.up_proj):
        assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0
    assert type(LlamaAttention) is type(FusedLlamaAttention) and issubclass(FusedLlamaMLP, LlamaMLP)
