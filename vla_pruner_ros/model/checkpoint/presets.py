"""Checkpoint presets: the sizes the writer can produce (or, for oft-7b, verify)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..configuration_oft import FUSED_VISION_BACKBONES, LlamaTextConfig, OFTConfig

@dataclass(frozen=True)
class CheckpointPreset:
    """Sizes of a checkpoint the writer can produce (or, for oft-7b, verify)."""

    name: str
    description: str
    image_size: int
    timm_overrides: tuple[dict, dict] | None  # None: the real tower sizes of the timm ids
    text_config: dict  # LlamaTextConfig fields besides vocab_size/pad_token_id
    tokenizer_pieces: int | None  # ids before <PAD> (32000: Llama-2's layout); None: the real Llama-2 tokenizer
    chunk_length: int = 8
    action_dim: int = 7
    proprio_dim: int | None = 7
    num_images: int = 2
    num_head_blocks: int = 2
    writable: bool = True


PRESETS: dict[str, CheckpointPreset] = {
    "tiny": CheckpointPreset(
        name="tiny",
        description="tests/CI/demo: 2x256 visual tokens, towers and LLM a few layers of width 64",
        image_size=224,
        timm_overrides=({"embed_dim": 64, "depth": 3, "num_heads": 2},
                        {"embed_dim": 64, "depth": 3, "num_heads": 2}),
        text_config={"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 6,
                     "num_attention_heads": 4},
        tokenizer_pieces=32000,
    ),
    "scaled": CheckpointPreset(
        name="scaled",
        description="benchmark: OFT's token counts (2x256 visual, chunk 8), OFT's proportions, narrower/shallower",
        image_size=224,
        timm_overrides=({"embed_dim": 256, "depth": 4, "num_heads": 4},
                        {"embed_dim": 288, "depth": 4, "num_heads": 4}),
        text_config={"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 16,
                     "num_attention_heads": 8},
        tokenizer_pieces=32000,
    ),
    "xarm6-sim": CheckpointPreset(
        name="xarm6-sim",
        description="the simulated xArm6 reach policy (train-sim): 2x64 visual tokens (112 px), towers 3 layers "
                    "of width 96, LLM 6 layers of width 96 with tied embeddings (no stored token head)",
        image_size=112,
        timm_overrides=({"embed_dim": 96, "depth": 3, "num_heads": 2},
                        {"embed_dim": 96, "depth": 3, "num_heads": 2}),
        text_config={"hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 6,
                     "num_attention_heads": 4, "tie_word_embeddings": True},
        tokenizer_pieces=32000,
    ),
    "xarm6-sim-deep": CheckpointPreset(
        name="xarm6-sim-deep",
        description="the simulated xArm6 pre-grasp policy (train-sim --task pregrasp): 2x144 visual tokens "
                    "(168 px), towers 3 layers of width 96, LLM 12 layers of width 96 with tied embeddings; "
                    "pruning layer K=2 of 12 is about OFT's K=3 of 32",
        image_size=168,
        timm_overrides=({"embed_dim": 96, "depth": 3, "num_heads": 2},
                        {"embed_dim": 96, "depth": 3, "num_heads": 2}),
        text_config={"hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 12,
                     "num_attention_heads": 4, "tie_word_embeddings": True},
        tokenizer_pieces=32000,
    ),
    "oft-7b": CheckpointPreset(
        name="oft-7b",
        description="the real OpenVLA-OFT 7B sizes (LIBERO: chunk 8, action 7, proprio 8); verify only",
        image_size=224,
        timm_overrides=None,
        text_config={},
        tokenizer_pieces=None,
        proprio_dim=8,
        writable=False,
    ),
}


def preset_config(preset: CheckpointPreset, image_size: int | None = None, text_overrides: dict | None = None,
                  timm_overrides: list | None = None, tokenizer_pieces: int | None = None) -> OFTConfig:
    """The OFTConfig a preset describes (vocab from its tokenizer size, padded to 64)."""
    pieces = tokenizer_pieces or preset.tokenizer_pieces or 32000
    pad_token_id = pieces  # <PAD> is appended after the real pieces
    vocab_size = math.ceil((pad_token_id + 1) / 64) * 64
    text = {**preset.text_config, **(text_overrides or {}), "vocab_size": vocab_size,
            "pad_token_id": pad_token_id}
    towers = timm_overrides if timm_overrides is not None else preset.timm_overrides
    size = image_size or preset.image_size
    if towers is None and size != preset.image_size:
        raise ValueError(f"image_size={size}: the real-size preset {preset.name!r} is fixed at {preset.image_size}")
    return OFTConfig(
        image_sizes=[size, size],
        timm_model_ids=list(FUSED_VISION_BACKBONES["dinosiglip-vit-so-224px"][0]),
        text_config=LlamaTextConfig(**text),
        pad_token_id=pad_token_id,
        timm_overrides=[dict(t) for t in towers] if towers is not None else None,
    )


def get_preset(preset: str | CheckpointPreset) -> CheckpointPreset:
    if isinstance(preset, CheckpointPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[preset]


_get_preset = get_preset  # the name it had before the split
