"""Writing checkpoint directories in the OFT layout: seeded random weights for a preset
(``make_checkpoint``), or a trained model (``save_checkpoint``)."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from ..modeling_oft import OFTForActionPrediction
from ..modeling_vision import timm_to_checkpoint_key
from ..processing_oft import ACTION_FRAMES, NORMALIZATION_TYPES
from .layout import (
    BACKBONE_PREFIXES,
    CONFIG_FILE,
    DDP_PREFIX,
    DEFAULT_NUM_IMAGES,
    INDEX_FILE,
    LM_HEAD_KEY,
    PREPROCESSOR_FILE,
    SIDECAR_FILE,
    SINGLE_WEIGHTS_FILE,
    STATISTICS_FILE,
    preprocessor_config,
)
from .presets import CheckpointPreset, get_preset, preset_config

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
_TORCH_DTYPES = TORCH_DTYPES

def _seeded_init_(model: torch.nn.Module, seed: int) -> None:
    """Deterministic random weights that keep activations O(1) through every component."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            shape, leaf = param.shape, name.rsplit(".", 1)[-1]
            normal = torch.randn(shape, generator=generator)
            if leaf in ("gamma", "scale_factor"):  # LayerScale: large enough for blocks to matter
                value = 0.1 + 0.4 * torch.rand(shape, generator=generator)
            elif leaf == "bias":
                value = 0.02 * normal
            elif param.ndim == 1:  # norm weights
                value = 1.0 + 0.05 * normal
            elif any(k in name for k in ("pos_embed", "cls_token", "reg_token", "latent")):
                value = 0.1 * normal
            elif "embed_tokens" in name:
                value = normal
            else:  # linear / conv weights: fan-in scaling
                value = normal / math.sqrt(math.prod(shape[1:]))
            param.copy_(value)


def _statistics(action_dim: int, proprio_dim: int | None) -> dict[str, Any]:
    """Plausible xArm6 statistics: joint deltas/angles, then the gripper (passed through)."""
    def block(low, high, mask):
        low, high = [float(x) for x in low], [float(x) for x in high]
        out = {"mean": [(a + b) / 2 for a, b in zip(low, high)], "std": [(b - a) / 4 for a, b in zip(low, high)],
               "min": [a * 1.2 for a in low], "max": [b * 1.2 for b in high], "q01": low, "q99": high}
        if mask is not None:
            out["mask"] = mask
        return out

    joint_bounds = [(-1.5, 1.5), (-1.0, 1.2), (-2.5, 0.0), (-1.5, 1.5), (-0.5, 2.5), (-2.0, 2.0)]
    action = block([-0.05] * (action_dim - 1) + [0.0], [0.05] * (action_dim - 1) + [1.0],
                   [True] * (action_dim - 1) + [False])
    entry = {"action": action, "num_trajectories": 200, "num_transitions": 40000}
    if proprio_dim:
        lows = [joint_bounds[i % 6][0] for i in range(proprio_dim - 1)] + [0.0]
        highs = [joint_bounds[i % 6][1] for i in range(proprio_dim - 1)] + [1.0]
        entry["proprio"] = block(lows, highs, None)
    return entry


_MAKE_OVERRIDES = {"image_size", "chunk_length", "action_dim", "proprio_dim", "num_images", "unnorm_key",
                   "weights_dtype", "center_crop", "text_config", "timm_overrides", "step", "normalization_type",
                   "tokenizer_pieces", "action_frame"}


def _write_json(path: Path, content: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, sort_keys=True)
        f.write("\n")


def _shard(names: list[str], sizes: dict[str, int], shards: int) -> list[list[str]]:
    """Split sorted names into ``shards`` contiguous groups of about equal bytes."""
    target = sum(sizes.values()) / shards
    groups, current, filled = [], [], 0
    for i, name in enumerate(names):
        remaining_names, remaining_groups = len(names) - i, shards - len(groups)
        if current and (filled >= target or remaining_names < remaining_groups) and remaining_groups > 1:
            groups.append(current)
            current, filled = [], 0
        current.append(name)
        filled += sizes[name]
    groups.append(current)
    return groups


def build_model(preset: str | CheckpointPreset, seed: int = 0) -> OFTForActionPrediction:
    """The preset's model with the writer's seeded random weights (the starting point of training)."""
    preset = get_preset(preset)
    if not preset.writable:
        raise ValueError(f"preset {preset.name!r} has the real sizes: build_model only makes reduced presets")
    model = OFTForActionPrediction(preset_config(preset), preset.action_dim, preset.chunk_length,
                                   preset.proprio_dim, preset.num_head_blocks)
    _seeded_init_(model, seed)
    return model


def make_checkpoint(preset: str | CheckpointPreset, out_dir: str | os.PathLike, seed: int = 0,
                    shards: int | None = None, **overrides: Any) -> Path:
    """Write a complete checkpoint directory in the OFT layout with seeded random weights.

    overrides: image_size, chunk_length, action_dim, proprio_dim (None: no proprio projector),
    num_images, unnorm_key, weights_dtype ("bfloat16" like real checkpoints, or "float32"),
    center_crop, normalization_type, action_frame ("absolute" or "relative"), text_config (dict of
    Llama fields), timm_overrides, step, tokenizer_pieces (default 32000 with Llama-2's ids: "▁" 29871,
    <PAD> 32000, vocab 32064).
    """
    preset = get_preset(preset)
    unknown = set(overrides) - _MAKE_OVERRIDES
    if unknown:
        raise ValueError(f"make_checkpoint: unknown overrides {sorted(unknown)}; allowed {sorted(_MAKE_OVERRIDES)}")
    if not preset.writable:
        raise ValueError(f"preset {preset.name!r} has the real sizes (~15 GB): the writer only makes reduced "
                         "presets; check its layout with verify_against_preset()")
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards < 1):
        raise ValueError(f"shards={shards!r}: expected a positive integer or None")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"out_dir {out}: exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)

    chunk_length = overrides.get("chunk_length", preset.chunk_length)
    action_dim = overrides.get("action_dim", preset.action_dim)
    proprio_dim = overrides.get("proprio_dim", preset.proprio_dim)
    num_images = overrides.get("num_images", preset.num_images)
    unnorm_key = overrides.get("unnorm_key", "xarm6_sim")
    step = overrides.get("step", 5000)
    normalization_type = overrides.get("normalization_type", "bounds_q99")
    if normalization_type not in NORMALIZATION_TYPES:
        raise ValueError(f"normalization_type={normalization_type!r}: expected one of {NORMALIZATION_TYPES}")
    weights_dtype_name = overrides.get("weights_dtype", "bfloat16")
    if weights_dtype_name not in _TORCH_DTYPES:
        raise ValueError(f"weights_dtype={weights_dtype_name!r}: expected one of {sorted(_TORCH_DTYPES)}")

    from ..tokenization_oft import build_tokenizer

    pieces = overrides.get("tokenizer_pieces", preset.tokenizer_pieces)
    config = preset_config(preset, overrides.get("image_size"), overrides.get("text_config"),
                           overrides.get("timm_overrides"), pieces)
    statistics = {unnorm_key: _statistics(action_dim, proprio_dim)}
    config.norm_stats = statistics
    tokenizer = build_tokenizer(pieces)
    if tokenizer.token_to_id("<PAD>") != config.pad_token_id:
        raise RuntimeError("tokenizer <PAD> id differs from the config's pad_token_id")

    model = OFTForActionPrediction(config, action_dim, chunk_length, proprio_dim, preset.num_head_blocks)
    _seeded_init_(model, seed)
    return save_checkpoint(model, out, statistics, tokenizer, preset_name=preset.name, seed=seed, shards=shards,
                           step=step, unnorm_key=unnorm_key, weights_dtype=weights_dtype_name,
                           center_crop=bool(overrides.get("center_crop", False)),
                           normalization_type=normalization_type, num_images=num_images,
                           action_frame=overrides.get("action_frame", "absolute"))


def save_checkpoint(model: OFTForActionPrediction, out_dir: str | os.PathLike, statistics: dict[str, Any],
                    tokenizer, *, preset_name: str, seed: int = 0, shards: int | None = None, step: int = 5000,
                    unnorm_key: str = "xarm6_sim", weights_dtype: str = "bfloat16", center_crop: bool = False,
                    normalization_type: str = "bounds_q99", num_images: int = DEFAULT_NUM_IMAGES,
                    view_names: tuple[str, ...] | None = None, action_frame: str = "absolute") -> Path:
    """Write ``model``'s weights (random or trained) as a checkpoint directory in the OFT layout.

    statistics: the ``dataset_statistics.json`` content {unnorm_key: {"action": ..., "proprio": ...}};
    tokenizer: a ``tokenizers.Tokenizer`` (``tokenization_oft.build_tokenizer``). ``out_dir`` must be
    new or empty.
    """
    from ..tokenization_oft import save_tokenizer_files

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"out_dir {out}: exists and is not empty")
    if weights_dtype not in _TORCH_DTYPES:
        raise ValueError(f"weights_dtype={weights_dtype!r}: expected one of {sorted(_TORCH_DTYPES)}")
    if normalization_type not in NORMALIZATION_TYPES:
        raise ValueError(f"normalization_type={normalization_type!r}: expected one of {NORMALIZATION_TYPES}")
    if unnorm_key not in statistics:
        raise ValueError(f"unnorm_key={unnorm_key!r} is not in the statistics {sorted(statistics)}")
    if action_frame not in ACTION_FRAMES:
        raise ValueError(f"action_frame={action_frame!r}: expected one of {ACTION_FRAMES}")
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards < 1):
        raise ValueError(f"shards={shards!r}: expected a positive integer or None")
    if tokenizer.token_to_id("<PAD>") != model.config.pad_token_id:
        raise ValueError("tokenizer <PAD> id differs from the config's pad_token_id")
    out.mkdir(parents=True, exist_ok=True)
    dtype = _TORCH_DTYPES[weights_dtype]
    config = copy.deepcopy(model.config)
    config.norm_stats = statistics
    backbone = {timm_to_checkpoint_key(name): tensor.detach().to("cpu", dtype).contiguous()
                for name, tensor in model.state_dict().items() if name.startswith(BACKBONE_PREFIXES)}
    text = config.text_config
    if not text.tie_word_embeddings:
        generator = torch.Generator().manual_seed(seed + 1)
        backbone[LM_HEAD_KEY] = (torch.randn(text.vocab_size, text.hidden_size, generator=generator)
                                 / math.sqrt(text.hidden_size)).to(dtype)

    from safetensors.torch import save_file

    names = sorted(backbone)
    sizes = {n: backbone[n].numel() * backbone[n].element_size() for n in names}
    if shards is None or shards == 1:
        save_file({n: backbone[n] for n in names}, str(out / SINGLE_WEIGHTS_FILE), metadata={"format": "pt"})
    else:
        if shards > len(names):
            raise ValueError(f"shards={shards}: more shards than tensors ({len(names)})")
        weight_map = {}
        for i, group in enumerate(_shard(names, sizes, shards), start=1):
            file = f"model-{i:05d}-of-{shards:05d}.safetensors"
            save_file({n: backbone[n] for n in group}, str(out / file), metadata={"format": "pt"})
            weight_map.update({n: file for n in group})
        _write_json(out / INDEX_FILE, {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map})

    # Heads: DDP-style "module." keys; action head in bf16, proprio projector in fp32 (as upstream saves them).
    torch.save({DDP_PREFIX + k: v.detach().to("cpu", torch.bfloat16)
                for k, v in model.action_head.state_dict().items()},
               out / f"action_head--{step}_checkpoint.pt")
    if model.proprio_projector is not None:
        torch.save({DDP_PREFIX + k: v.detach().to("cpu", torch.float32)
                    for k, v in model.proprio_projector.state_dict().items()},
                   out / f"proprio_projector--{step}_checkpoint.pt")

    config.to_json_file(out / CONFIG_FILE)
    _write_json(out / STATISTICS_FILE, statistics)
    _write_json(out / PREPROCESSOR_FILE, preprocessor_config(config))
    _write_json(out / "generation_config.json", {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                                                  "pad_token_id": config.pad_token_id,
                                                  "transformers_version": "4.40.1"})
    save_tokenizer_files(tokenizer, out, model_max_length=config.llm_max_length)
    sidecar = {
        "format_version": 1, "preset": preset_name, "seed": seed, "chunk_length": model.chunk_length,
        "num_images_in_input": num_images, "unnorm_key": unnorm_key, "center_crop": bool(center_crop),
        "normalization_type": normalization_type,
    }
    if view_names is not None:
        sidecar["view_names"] = list(view_names)
    if action_frame != "absolute":  # absent = absolute, as in every checkpoint written before
        sidecar["action_frame"] = action_frame
    _write_json(out / SIDECAR_FILE, sidecar)
    return out
