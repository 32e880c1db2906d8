"""The real-size check: the tensor table of a real openvla-7b-oft checkpoint, written down
independently of the model code, against what the model code demands (on the meta device)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..modeling_oft import OFTForActionPrediction
from .layout import DEFAULT_NUM_IMAGES, LM_HEAD_KEY
from .presets import CheckpointPreset, get_preset, preset_config
from .tensors import check_tensor_table, expected_backbone_shapes, expected_component_shapes

def reference_oft7b_shapes(proprio_dim: int = 8, action_dim: int = 7) -> dict[str, dict[str, tuple[int, ...]]]:
    """The tensor table of a real openvla-7b-oft checkpoint, written down from the published
    architecture (ViT-L/14 DINOv2 with 4 registers, SigLIP so400m/14, fused projector
    2176->8704->4096->4096, Llama-2 7B with a 32064-row vocabulary, L1 head on 7x4096 features).
    Independent of the model code, so the two can be checked against each other."""
    table: dict[str, tuple[int, ...]] = {}

    def vit(prefix: str, width: int, depth: int, mlp: int, dino: bool) -> None:
        if dino:
            table[f"{prefix}.cls_token"] = (1, 1, width)
            table[f"{prefix}.reg_token"] = (1, 4, width)
        table[f"{prefix}.pos_embed"] = (1, 256, width)
        table[f"{prefix}.patch_embed.proj.weight"] = (width, 3, 14, 14)
        table[f"{prefix}.patch_embed.proj.bias"] = (width,)
        for b in range(depth):
            p = f"{prefix}.blocks.{b}"
            for norm in ("norm1", "norm2"):
                table[f"{p}.{norm}.weight"] = table[f"{p}.{norm}.bias"] = (width,)
            table[f"{p}.attn.qkv.weight"], table[f"{p}.attn.qkv.bias"] = (3 * width, width), (3 * width,)
            table[f"{p}.attn.proj.weight"], table[f"{p}.attn.proj.bias"] = (width, width), (width,)
            table[f"{p}.mlp.fc1.weight"], table[f"{p}.mlp.fc1.bias"] = (mlp, width), (mlp,)
            table[f"{p}.mlp.fc2.weight"], table[f"{p}.mlp.fc2.bias"] = (width, mlp), (width,)
            if dino:
                table[f"{p}.ls1.scale_factor"] = table[f"{p}.ls2.scale_factor"] = (width,)
        table[f"{prefix}.norm.weight"] = table[f"{prefix}.norm.bias"] = (width,)
        if not dino:
            pool = f"{prefix}.attn_pool"
            table[f"{pool}.latent"] = (1, 1, width)
            for lin, out_features in (("q", width), ("kv", 2 * width), ("proj", width)):
                table[f"{pool}.{lin}.weight"], table[f"{pool}.{lin}.bias"] = (out_features, width), (out_features,)
            table[f"{pool}.norm.weight"] = table[f"{pool}.norm.bias"] = (width,)
            table[f"{pool}.mlp.fc1.weight"], table[f"{pool}.mlp.fc1.bias"] = (mlp, width), (mlp,)
            table[f"{pool}.mlp.fc2.weight"], table[f"{pool}.mlp.fc2.bias"] = (width, mlp), (width,)

    vit("vision_backbone.featurizer", 1024, 24, 4096, dino=True)
    vit("vision_backbone.fused_featurizer", 1152, 27, 4304, dino=False)
    for name, (out_f, in_f) in {"fc1": (8704, 2176), "fc2": (4096, 8704), "fc3": (4096, 4096)}.items():
        table[f"projector.{name}.weight"], table[f"projector.{name}.bias"] = (out_f, in_f), (out_f,)
    table["language_model.model.embed_tokens.weight"] = (32064, 4096)
    for layer in range(32):
        p = f"language_model.model.layers.{layer}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            table[f"{p}.self_attn.{proj}.weight"] = (4096, 4096)
        table[f"{p}.mlp.gate_proj.weight"] = table[f"{p}.mlp.up_proj.weight"] = (11008, 4096)
        table[f"{p}.mlp.down_proj.weight"] = (4096, 11008)
        table[f"{p}.input_layernorm.weight"] = table[f"{p}.post_attention_layernorm.weight"] = (4096,)
    table["language_model.model.norm.weight"] = (4096,)
    table[LM_HEAD_KEY] = (32064, 4096)

    head = {"model.layer_norm1.weight": (4096 * action_dim,), "model.layer_norm1.bias": (4096 * action_dim,),
            "model.fc1.weight": (4096, 4096 * action_dim), "model.fc1.bias": (4096,),
            "model.layer_norm2.weight": (4096,), "model.layer_norm2.bias": (4096,),
            "model.fc2.weight": (action_dim, 4096), "model.fc2.bias": (action_dim,)}
    for b in range(2):
        head.update({f"model.mlp_resnet_blocks.{b}.ffn.0.weight": (4096,),
                     f"model.mlp_resnet_blocks.{b}.ffn.0.bias": (4096,),
                     f"model.mlp_resnet_blocks.{b}.ffn.1.weight": (4096, 4096),
                     f"model.mlp_resnet_blocks.{b}.ffn.1.bias": (4096,)})
    proprio = {"fc1.weight": (4096, proprio_dim), "fc1.bias": (4096,), "fc2.weight": (4096, 4096),
               "fc2.bias": (4096,)}
    return {"safetensors": table, "action_head": head, "proprio_projector": proprio}


def verify_against_preset(preset: str | CheckpointPreset = "oft-7b") -> dict[str, Any]:
    """Build the preset's model on the meta device (nothing allocated) and check every tensor name
    and shape the loader would demand. For oft-7b the reference is ``reference_oft7b_shapes``;
    for reduced presets it is the model itself (a self-consistency check of the naming).
    Returns a small report; raises ValueError on any mismatch."""
    preset = get_preset(preset)
    config = preset_config(preset)
    with torch.device("meta"):
        model = OFTForActionPrediction(config, preset.action_dim, preset.chunk_length, preset.proprio_dim,
                                       preset.num_head_blocks)
    expected = {
        "safetensors": expected_backbone_shapes(model),
        "action_head": expected_component_shapes(model.action_head),
        "proprio_projector": expected_component_shapes(model.proprio_projector),
    }
    reference = reference_oft7b_shapes(preset.proprio_dim, preset.action_dim) if preset.name == "oft-7b" else expected
    for part in ("safetensors", "action_head", "proprio_projector"):
        check_tensor_table(expected[part], {k: (v, f"<{preset.name} reference>") for k, v in reference[part].items()},
                           f"{preset.name} {part}")
    allocated = [n for n, t in model.named_parameters() if not t.is_meta]
    if allocated:
        raise RuntimeError(f"verify_against_preset allocated real tensors: {allocated[:3]}")
    counts = {part: sum(math.prod(s) for s in table.values()) for part, table in expected.items()}
    return {
        "preset": preset.name,
        "num_tensors": {part: len(table) for part, table in expected.items()},
        "num_parameters": counts,
        "num_visual_tokens": DEFAULT_NUM_IMAGES * config.patches_per_view,
        "llm_layers": config.text_config.num_hidden_layers,
    }
