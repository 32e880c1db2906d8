"""OpenVLA-OFT checkpoint directories: presets, a writer, validation and a loader.

A checkpoint directory, as users download it for OFT (``openvla-7b-oft-finetuned-*``) and as
``make_checkpoint`` writes it:

    config.json                         OpenVLA config (see configuration_oft.py)
    model.safetensors                   or model-0000i-of-0000n.safetensors + model.safetensors.index.json
    action_head--<step>_checkpoint.pt   L1-regression head state dict, keys "module.*" (bf16)
    proprio_projector--<step>_checkpoint.pt   proprio projector, keys "module.*" (fp32); optional
    dataset_statistics.json             {unnorm_key: {"action": {q01, q99, mask, ...}, "proprio": {...}}}
    tokenizer.json, tokenizer_config.json, special_tokens_map.json (+ tokenizer.model for Llama-2)
    preprocessor_config.json, generation_config.json

Safetensors keys: ``vision_backbone.featurizer.*`` (DINOv2, LayerScale as ``ls*.scale_factor``),
``vision_backbone.fused_featurizer.*`` (SigLIP), ``projector.fc1/fc2/fc3.*``,
``language_model.model.*`` and ``language_model.lm_head.weight`` (stored, unused by the L1 head).

Project extension: ``vla_pruner_oft.json`` (absent in real checkpoints) records what real
config.json files do not hold -- chunk length, number of views, unnorm key, center crop,
normalisation type -- and is read as defaults by ``load_checkpoint``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .configuration_oft import FUSED_VISION_BACKBONES, LlamaTextConfig, OFTConfig
from .modeling_oft import OFTForActionPrediction
from .modeling_vision import checkpoint_to_timm_key, timm_to_checkpoint_key
from .processing_oft import NORMALIZATION_TYPES, resolve_unnorm_key

CONFIG_FILE = "config.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
STATISTICS_FILE = "dataset_statistics.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
SIDECAR_FILE = "vla_pruner_oft.json"
LM_HEAD_KEY = "language_model.lm_head.weight"
BACKBONE_PREFIXES = ("vision_backbone.", "projector.", "language_model.")
DDP_PREFIX = "module."
DEFAULT_CHUNK_LENGTH = 8
DEFAULT_NUM_IMAGES = 2
_SHARD_NAME = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")
_SAFETENSORS_DTYPES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                       "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


# ------------------------------------------------------------------------------------- presets
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


def _get_preset(preset: str | CheckpointPreset) -> CheckpointPreset:
    if isinstance(preset, CheckpointPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[preset]


# ----------------------------------------------------------------------------- tensor naming
def expected_backbone_shapes(model: OFTForActionPrediction) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape of every tensor the safetensors must hold for this model."""
    shapes = {
        timm_to_checkpoint_key(name): tuple(tensor.shape)
        for name, tensor in model.state_dict().items()
        if name.startswith(BACKBONE_PREFIXES)
    }
    text = model.config.text_config
    if not text.tie_word_embeddings:
        shapes[LM_HEAD_KEY] = (text.vocab_size, text.hidden_size)
    return shapes


def expected_component_shapes(module: torch.nn.Module | None) -> dict[str, tuple[int, ...]]:
    """Key (without "module.") -> shape for the action head / proprio projector state dicts."""
    if module is None:
        return {}
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def check_tensor_table(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[tuple[int, ...], str]],
                       where: str) -> None:
    """Raise a ValueError naming every missing, unexpected or misshaped tensor (and its file)."""
    problems = []
    for name in sorted(set(expected) - set(found)):
        problems.append(f"missing tensor {name!r} (expected shape {list(expected[name])})")
    for name in sorted(set(found) - set(expected)):
        problems.append(f"unexpected tensor {name!r} in {found[name][1]}")
    for name in sorted(set(expected) & set(found)):
        shape, file = found[name]
        if tuple(shape) != tuple(expected[name]):
            problems.append(f"tensor {name!r} in {file} has shape {list(shape)}, expected {list(expected[name])}")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{where}: {len(problems)} tensor problem(s):\n  {shown}{more}")


# ------------------------------------------------------------------------- safetensors files
def read_safetensors_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} from a safetensors header, checking the file is complete."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        header_len = struct.unpack("<Q", head)[0]
        if 8 + header_len > size:
            raise ValueError(f"{path}: truncated safetensors file (header of {header_len} bytes, file {size} bytes)")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: corrupt safetensors header ({exc})") from exc
    header.pop("__metadata__", None)
    tensors, data_end = {}, 0
    for name, info in header.items():
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: corrupt safetensors entry for {name!r}") from exc
        itemsize = _SAFETENSORS_DTYPES.get(dtype)
        if itemsize is not None and end - start != itemsize * math.prod(shape):
            raise ValueError(f"{path}: tensor {name!r} has {end - start} bytes for shape {list(shape)} {dtype}")
        tensors[name] = (dtype, shape)
        data_end = max(data_end, end)
    if 8 + header_len + data_end > size:
        raise ValueError(f"{path}: truncated safetensors file: its header describes "
                         f"{8 + header_len + data_end} bytes, the file has {size}")
    return tensors


def weight_file_table(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor name: (shape, file name)} over the checkpoint's safetensors (single or sharded)."""
    path = Path(path)
    index_path, single_path = path / INDEX_FILE, path / SINGLE_WEIGHTS_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{index_path}: not a safetensors index (needs a 'weight_map')") from exc
        files = sorted(set(weight_map.values()))
    elif single_path.is_file():
        weight_map, files = None, [SINGLE_WEIGHTS_FILE]
    else:
        raise ValueError(f"{path}: no {SINGLE_WEIGHTS_FILE} or {INDEX_FILE}")
    table: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in files:
        if not (path / file).is_file():
            raise ValueError(f"{index_path}: lists {file}, which does not exist")
        for name, (_, shape) in read_safetensors_header(path / file).items():
            if name in table:
                raise ValueError(f"{path}: tensor {name!r} appears in both {table[name][1]} and {file}")
            if weight_map is not None and weight_map.get(name) != file:
                raise ValueError(f"{index_path}: tensor {name!r} is in {file} but the index says "
                                 f"{weight_map.get(name)}")
            table[name] = (shape, file)
    if weight_map is not None:
        for name in sorted(set(weight_map) - set(table)):
            raise ValueError(f"{index_path}: lists tensor {name!r} in {weight_map[name]}, which does not hold it")
    return table


def find_component_file(path: str | os.PathLike, component: str, required: bool) -> Path | None:
    """The single ``<component>--*checkpoint.pt`` file (upstream's matching rule)."""
    matches = sorted(p for p in Path(path).iterdir() if component in p.name and "checkpoint" in p.name
                     and p.suffix == ".pt")
    if len(matches) > 1:
        raise ValueError(f"{path}: expected one {component} checkpoint, found {[m.name for m in matches]}")
    if not matches:
        if required:
            raise ValueError(f"{path}: no {component}--<step>_checkpoint.pt file")
        return None
    return matches[0]


def load_component_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) of a head/projector file, ``module.`` prefix stripped."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files in the legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors have many types; name the file
        raise ValueError(f"{path}: cannot be read as a weights-only torch checkpoint ({exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix(DDP_PREFIX): v for k, v in state.items()}


# ------------------------------------------------------------------------------------ loader
@dataclass
class CheckpointInfo:
    """Everything about a checkpoint directory except the tensor data."""

    path: Path
    config: OFTConfig
    chunk_length: int
    num_images: int
    action_dim: int
    proprio_dim: int | None
    num_head_blocks: int
    statistics: dict[str, Any]
    sidecar: dict[str, Any] = field(default_factory=dict)
    weight_table: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    action_head_file: Path | None = None
    proprio_file: Path | None = None
    component_states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def read_sidecar(path: Path) -> dict[str, Any]:
    sidecar_path = path / SIDECAR_FILE
    if not sidecar_path.is_file():
        return {}
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{sidecar_path}: not valid JSON ({exc})") from exc
    known = {"format_version", "preset", "seed", "chunk_length", "num_images_in_input", "unnorm_key",
             "center_crop", "normalization_type", "view_names"}
    unknown = set(sidecar) - known
    if unknown:
        raise ValueError(f"{sidecar_path}: unknown fields {sorted(unknown)}")
    return sidecar


def inspect_checkpoint(path: str | os.PathLike, chunk_length: int | None = None,
                       num_images: int | None = None) -> CheckpointInfo:
    """Read and cross-check config, sidecar, file tables and component shapes (no tensor data,
    except the small head/projector files, which have no header to read instead)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"checkpoint path {path}: not a directory")
    if not (path / CONFIG_FILE).is_file():
        raise ValueError(f"{path}: no {CONFIG_FILE}")
    config = OFTConfig.from_json_file(path / CONFIG_FILE)
    sidecar = read_sidecar(path)
    chunk_length = chunk_length if chunk_length is not None else sidecar.get("chunk_length", DEFAULT_CHUNK_LENGTH)
    num_images = num_images if num_images is not None else sidecar.get("num_images_in_input", DEFAULT_NUM_IMAGES)
    for name, value in (("chunk_length", chunk_length), ("num_images", num_images)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive integer")

    head_file = find_component_file(path, "action_head", required=True)
    proprio_file = find_component_file(path, "proprio_projector", required=False)
    head_state = load_component_state_dict(head_file)
    proprio_state = load_component_state_dict(proprio_file) if proprio_file else None
    if "model.fc2.weight" not in head_state:
        raise ValueError(f"{head_file}: missing tensor 'model.fc2.weight' (the head's output layer)")
    action_dim = int(head_state["model.fc2.weight"].shape[0])
    block_ids = {int(m.group(1)) for k in head_state if (m := re.match(r"model\.mlp_resnet_blocks\.(\d+)\.", k))}
    num_head_blocks = len(block_ids) or 2
    proprio_dim = None
    if proprio_state is not None:
        if "fc1.weight" not in proprio_state:
            raise ValueError(f"{proprio_file}: missing tensor 'fc1.weight'")
        proprio_dim = int(proprio_state["fc1.weight"].shape[1])

    with torch.device("meta"):
        skeleton = OFTForActionPrediction(config, action_dim, chunk_length, proprio_dim, num_head_blocks)
    weight_table = weight_file_table(path)
    check_tensor_table(expected_backbone_shapes(skeleton), weight_table, f"{path} (safetensors)")
    check_tensor_table(expected_component_shapes(skeleton.action_head),
                       {k: (tuple(v.shape), head_file.name) for k, v in head_state.items()}, str(head_file))
    if proprio_state is not None:
        check_tensor_table(expected_component_shapes(skeleton.proprio_projector),
                           {k: (tuple(v.shape), proprio_file.name) for k, v in proprio_state.items()},
                           str(proprio_file))
    _check_preprocessor(path, config)
    statistics = _read_statistics(path, config)
    return CheckpointInfo(
        path=path, config=config, chunk_length=chunk_length, num_images=num_images, action_dim=action_dim,
        proprio_dim=proprio_dim, num_head_blocks=num_head_blocks, statistics=statistics, sidecar=sidecar,
        weight_table=weight_table, action_head_file=head_file, proprio_file=proprio_file,
        component_states={"action_head": head_state, **({"proprio_projector": proprio_state} if proprio_state else {})},
    )


def _read_statistics(path: Path, config: OFTConfig) -> dict[str, Any]:
    stats_path = path / STATISTICS_FILE
    if stats_path.is_file():
        try:
            statistics = json.loads(stats_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{stats_path}: not valid JSON ({exc})") from exc
    elif config.norm_stats:
        warnings.warn(f"{path}: no {STATISTICS_FILE}; using config.json's norm_stats (base model statistics)",
                      stacklevel=3)
        statistics = config.norm_stats
    else:
        raise ValueError(f"{path}: no {STATISTICS_FILE} and no norm_stats in {CONFIG_FILE}")
    if not isinstance(statistics, dict) or not statistics:
        raise ValueError(f"{stats_path}: expected a non-empty object {{unnorm_key: statistics}}")
    return statistics


def _check_preprocessor(path: Path, config: OFTConfig) -> None:
    """A preprocessor_config.json, when present, must agree with what we derive from config.json."""
    pre_path = path / PREPROCESSOR_FILE
    if not pre_path.is_file():
        return
    pre = json.loads(pre_path.read_text())
    expected = preprocessor_config(config)
    for key in ("image_resize_strategy", "input_sizes", "means", "stds"):
        if key in pre and not _close(pre[key], expected[key]):
            raise ValueError(f"{pre_path}: {key}={pre[key]} is inconsistent with config.json (expects {expected[key]})")


def _close(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-6
    return a == b


@dataclass
class LoadedCheckpoint:
    model: OFTForActionPrediction
    info: CheckpointInfo


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    chunk_length: int | None = None, num_images: int | None = None) -> LoadedCheckpoint:
    """Validate the directory, then load every tensor into an ``OFTForActionPrediction``."""
    from safetensors import safe_open

    info = inspect_checkpoint(path, chunk_length=chunk_length, num_images=num_images)
    device = torch.device(device)
    with torch.device("meta"):
        model = OFTForActionPrediction(info.config, info.action_dim, info.chunk_length, info.proprio_dim,
                                       info.num_head_blocks)
    state: dict[str, torch.Tensor] = {}
    files: dict[str, list[str]] = {}
    for name, (_, file) in info.weight_table.items():
        if name != LM_HEAD_KEY:  # stored for the token head OFT does not use
            files.setdefault(file, []).append(name)
    for file, names in files.items():
        try:
            with safe_open(str(info.path / file), framework="pt", device="cpu") as handle:
                for name in names:
                    state[checkpoint_to_timm_key(name)] = handle.get_tensor(name).to(device=device, dtype=dtype)
        except Exception as exc:
            raise ValueError(f"{info.path / file}: cannot read tensors ({exc})") from exc
    for component, component_state in info.component_states.items():
        for name, tensor in component_state.items():
            state[f"{component}.{name}"] = tensor.to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.decoder.reset_rotary(device)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"tensors left uninitialised after loading: {leftover[:5]}")
    return LoadedCheckpoint(model=model.eval(), info=info)


def validate_unnorm_key(info: CheckpointInfo, unnorm_key: str | None) -> str:
    """The unnorm key to use, with the statistics' shapes checked against the heads."""
    key = resolve_unnorm_key(info.statistics, unnorm_key if unnorm_key is not None else info.sidecar.get("unnorm_key"))
    entry = info.statistics[key]
    if "action" not in entry:
        raise ValueError(f"dataset statistics[{key!r}]: no 'action' entry")
    for name, dim in (("action", info.action_dim), ("proprio", info.proprio_dim)):
        if dim is None:
            continue
        if name not in entry:
            raise ValueError(f"dataset statistics[{key!r}]: no {name!r} entry (the checkpoint has a {name} "
                             f"dimension of {dim})")
        for stat in ("q01", "q99", "min", "max"):
            if stat in entry[name] and len(entry[name][stat]) != dim:
                raise ValueError(f"dataset statistics[{key!r}][{name!r}][{stat!r}] has {len(entry[name][stat])} "
                                 f"values, the checkpoint's {name} dimension is {dim}")
    return key


# ------------------------------------------------------------------------------------ writer
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


def preprocessor_config(config: OFTConfig) -> dict[str, Any]:
    """The Prismatic preprocessor_config.json matching a config."""
    towers = config.towers
    return {
        "auto_map": {"AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
                     "AutoProcessor": "processing_prismatic.PrismaticProcessor"},
        "image_processor_type": "PrismaticImageProcessor",
        "image_resize_strategy": config.image_resize_strategy,
        "input_sizes": [[3, t.image_size, t.image_size] for t in towers],
        "interpolations": ["bicubic", "bicubic"],
        "means": [list(t.mean) for t in towers],
        "stds": [list(t.std) for t in towers],
        "processor_class": "PrismaticProcessor",
        "use_fused_vision_backbone": True,
    }


_MAKE_OVERRIDES = {"image_size", "chunk_length", "action_dim", "proprio_dim", "num_images", "unnorm_key",
                   "weights_dtype", "center_crop", "text_config", "timm_overrides", "step", "normalization_type",
                   "tokenizer_pieces"}


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
    preset = _get_preset(preset)
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
    center_crop, normalization_type, text_config (dict of Llama fields), timm_overrides, step,
    tokenizer_pieces (default 32000 with Llama-2's ids: "▁" 29871, <PAD> 32000, vocab 32064).
    """
    preset = _get_preset(preset)
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

    from .tokenization_oft import build_tokenizer

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
                           normalization_type=normalization_type, num_images=num_images)


def save_checkpoint(model: OFTForActionPrediction, out_dir: str | os.PathLike, statistics: dict[str, Any],
                    tokenizer, *, preset_name: str, seed: int = 0, shards: int | None = None, step: int = 5000,
                    unnorm_key: str = "xarm6_sim", weights_dtype: str = "bfloat16", center_crop: bool = False,
                    normalization_type: str = "bounds_q99", num_images: int = DEFAULT_NUM_IMAGES,
                    view_names: tuple[str, ...] | None = None) -> Path:
    """Write ``model``'s weights (random or trained) as a checkpoint directory in the OFT layout.

    statistics: the ``dataset_statistics.json`` content {unnorm_key: {"action": ..., "proprio": ...}};
    tokenizer: a ``tokenizers.Tokenizer`` (``tokenization_oft.build_tokenizer``). ``out_dir`` must be
    new or empty.
    """
    from .tokenization_oft import save_tokenizer_files

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"out_dir {out}: exists and is not empty")
    if weights_dtype not in _TORCH_DTYPES:
        raise ValueError(f"weights_dtype={weights_dtype!r}: expected one of {sorted(_TORCH_DTYPES)}")
    if normalization_type not in NORMALIZATION_TYPES:
        raise ValueError(f"normalization_type={normalization_type!r}: expected one of {NORMALIZATION_TYPES}")
    if unnorm_key not in statistics:
        raise ValueError(f"unnorm_key={unnorm_key!r} is not in the statistics {sorted(statistics)}")
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
    _write_json(out / SIDECAR_FILE, sidecar)
    return out


# ------------------------------------------------------------------------- real-size check
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
    preset = _get_preset(preset)
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


# ------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``vla-pruner checkpoint make|verify`` (mounted by the package CLI)."""
    sub = parser.add_subparsers(dest="checkpoint_command", required=True)
    make = sub.add_parser("make", help="write a checkpoint directory with seeded random weights")
    make.add_argument("--preset", choices=sorted(n for n, p in PRESETS.items() if p.writable), default="tiny")
    make.add_argument("--out", required=True, help="output directory (must be new or empty)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--shards", type=int, default=None, help="write N safetensors shards plus an index")
    make.add_argument("--image-size", type=int, default=None, help="per-view image size (multiple of 14)")
    make.add_argument("--chunk-length", type=int, default=None)
    make.add_argument("--action-dim", type=int, default=None, help="action dimensions (LIBERO and xArm6: 7)")
    make.add_argument("--proprio-dim", type=int, default=None, help="proprio dimensions (LIBERO: 8, xArm6: 7)")
    make.add_argument("--center-crop", choices=("on", "off"), default=None,
                      help="record that the policy uses OFT's test-time center crop")
    make.add_argument("--unnorm-key", default=None)
    make.add_argument("--weights-dtype", choices=sorted(_TORCH_DTYPES), default=None)
    verify = sub.add_parser("verify", help="check tensor names/shapes of a directory or a preset (no loading)")
    target = verify.add_mutually_exclusive_group(required=True)
    target.add_argument("--path", help="a checkpoint directory")
    target.add_argument("--preset", choices=sorted(PRESETS))


def run(args: argparse.Namespace) -> int:
    if args.checkpoint_command == "make":
        center_crop = None if args.center_crop is None else args.center_crop == "on"
        overrides = {k: v for k, v in (("image_size", args.image_size), ("chunk_length", args.chunk_length),
                                       ("action_dim", args.action_dim), ("proprio_dim", args.proprio_dim),
                                       ("center_crop", center_crop),
                                       ("unnorm_key", args.unnorm_key), ("weights_dtype", args.weights_dtype))
                     if v is not None}
        out = make_checkpoint(args.preset, args.out, seed=args.seed, shards=args.shards, **overrides)
        print(f"wrote {args.preset} checkpoint to {out}")
        return 0
    if args.path:
        info = inspect_checkpoint(args.path)
        files = sorted({file for _, file in info.weight_table.values()})
        print(f"{args.path}: OK — {len(info.weight_table)} tensors in {len(files)} file(s), action_dim "
              f"{info.action_dim}, proprio_dim {info.proprio_dim}, chunk {info.chunk_length}, "
              f"{info.config.text_config.num_hidden_layers} LLM layers, unnorm keys {sorted(info.statistics)}")
        return 0
    report = verify_against_preset(args.preset)
    print(json.dumps(report, indent=2))
    return 0
