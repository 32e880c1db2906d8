"""Loading a checkpoint directory: cross-check config, sidecar, statistics and tensor tables
(``inspect_checkpoint``), then read every tensor into the model (``load_checkpoint``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..configuration_oft import OFTConfig
from ..modeling_oft import OFTForActionPrediction
from ..modeling_vision import checkpoint_to_timm_key
from ..processing_oft import resolve_unnorm_key
from .files import find_component_file, load_component_state_dict, weight_file_table
from .layout import (
    CONFIG_FILE,
    DEFAULT_CHUNK_LENGTH,
    DEFAULT_NUM_IMAGES,
    LM_HEAD_KEY,
    PREPROCESSOR_FILE,
    SIDECAR_FILE,
    STATISTICS_FILE,
    preprocessor_config,
    read_json_object,
)
from .tensors import check_tensor_table, expected_backbone_shapes, expected_component_shapes

# Where the statistics may come from: the fine-tuning run's dataset_statistics.json (default), or,
# only when asked for by name, config.json's norm_stats (in real OFT checkpoints those are the
# *base* model's statistics: using them silently would un-normalise actions wrongly).
STATISTICS_SOURCES = (STATISTICS_FILE, CONFIG_FILE)


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
    statistics_file: Path | None = None  # the file the statistics were read from

    @property
    def center_crop(self) -> bool:
        """The checkpoint's test-time center crop: its sidecar's choice, else upstream's default
        (on: OFT's LIBERO eval and deploy crop, as the checkpoints are trained with crop augmentation)."""
        from ..processing_oft import DEFAULT_CENTER_CROP

        return bool(self.sidecar.get("center_crop", DEFAULT_CENTER_CROP))


def read_sidecar(path: Path) -> dict[str, Any]:
    sidecar_path = path / SIDECAR_FILE
    if not sidecar_path.is_file():
        return {}
    sidecar = read_json_object(sidecar_path)
    known = {"format_version", "preset", "seed", "chunk_length", "num_images_in_input", "unnorm_key",
             "center_crop", "normalization_type", "view_names", "action_frame"}
    unknown = set(sidecar) - known
    if unknown:
        raise ValueError(f"{sidecar_path}: unknown fields {sorted(unknown)}")
    return sidecar


def inspect_checkpoint(path: str | os.PathLike, chunk_length: int | None = None,
                       num_images: int | None = None, statistics_source: str = STATISTICS_FILE) -> CheckpointInfo:
    """Read and cross-check config, sidecar, file tables and component shapes (no tensor data,
    except the small head/projector files, which have no header to read instead).

    statistics_source: ``dataset_statistics.json`` (default; required) or ``config.json`` (its
    ``norm_stats``, only when asked for: in real OFT checkpoints they are the base model's)."""
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
    statistics, statistics_file = read_statistics(path, config, statistics_source)
    return CheckpointInfo(
        path=path, config=config, chunk_length=chunk_length, num_images=num_images, action_dim=action_dim,
        proprio_dim=proprio_dim, num_head_blocks=num_head_blocks, statistics=statistics, sidecar=sidecar,
        weight_table=weight_table, action_head_file=head_file, proprio_file=proprio_file,
        component_states={"action_head": head_state, **({"proprio_projector": proprio_state} if proprio_state else {})},
        statistics_file=statistics_file,
    )


def read_statistics(path: Path, config: OFTConfig,
                    source: str = STATISTICS_FILE) -> tuple[dict[str, Any], Path]:
    """The un-normalisation statistics and the file they came from. Never a silent fallback:
    a missing or unreadable dataset_statistics.json is refused, whatever config.json holds."""
    if source not in STATISTICS_SOURCES:
        raise ValueError(f"statistics source {source!r}: expected one of {list(STATISTICS_SOURCES)}")
    if source == CONFIG_FILE:
        statistics, where = config.norm_stats, path / CONFIG_FILE
        if not isinstance(statistics, dict) or not statistics:
            raise ValueError(f"{where}: no norm_stats (asked for the statistics from {CONFIG_FILE})")
        return statistics, where
    where = path / STATISTICS_FILE
    if not where.is_file():
        hint = (f"; {CONFIG_FILE}'s norm_stats are not used in its place (in OFT checkpoints they are the "
                f"base model's statistics)" if config.norm_stats else "")
        raise ValueError(f"{where}: missing: the un-normalisation statistics of the fine-tuning run are "
                         f"required{hint}")
    statistics = read_json_object(where, "an object {unnorm_key: statistics}")
    if not statistics:
        raise ValueError(f"{where}: expected a non-empty object {{unnorm_key: statistics}}")
    return statistics, where


def check_statistics(info: CheckpointInfo, key: str) -> None:
    """statistics[key] has what un-normalisation needs, finite, with the heads' dimensions."""
    import math

    where = f"{info.statistics_file or STATISTICS_FILE} [{key!r}]"
    entry = info.statistics[key]
    if not isinstance(entry, dict) or not isinstance(entry.get("action"), dict):
        raise ValueError(f"{where}: no 'action' entry")
    for name, dim in (("action", info.action_dim), ("proprio", info.proprio_dim)):
        if dim is None:
            continue
        if not isinstance(entry.get(name), dict):
            raise ValueError(f"{where}: no {name!r} entry (the checkpoint has a {name} dimension of {dim})")
        block = entry[name]
        if not ({"q01", "q99"} <= set(block) or {"min", "max"} <= set(block)):
            raise ValueError(f"{where}[{name!r}]: needs q01/q99 (bounds_q99) or min/max (bounds)")
        for stat in ("q01", "q99", "min", "max", "mask"):
            if stat not in block:
                continue
            values = block[stat]
            if not isinstance(values, list) or len(values) != dim:
                length = len(values) if isinstance(values, list) else type(values).__name__
                raise ValueError(f"{where}[{name!r}][{stat!r}] has {length} values, the checkpoint's {name} "
                                 f"dimension is {dim}")
            if stat != "mask" and not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise ValueError(f"{where}[{name!r}][{stat!r}] holds values that are not finite numbers: {values}")
        for low, high in (("q01", "q99"), ("min", "max")):
            if low in block and high in block and any(a > b for a, b in zip(block[low], block[high])):
                raise ValueError(f"{where}[{name!r}]: {low} is above {high} in some dimension")


def _check_preprocessor(path: Path, config: OFTConfig) -> None:
    """A preprocessor_config.json, when present, must agree with what we derive from config.json."""
    pre_path = path / PREPROCESSOR_FILE
    if not pre_path.is_file():
        return
    pre = read_json_object(pre_path)
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
                    chunk_length: int | None = None, num_images: int | None = None,
                    statistics_source: str = STATISTICS_FILE) -> LoadedCheckpoint:
    """Validate the directory, then load every tensor into an ``OFTForActionPrediction``."""
    from safetensors import safe_open

    info = inspect_checkpoint(path, chunk_length=chunk_length, num_images=num_images,
                              statistics_source=statistics_source)
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
    """The unnorm key to use, with the statistics checked against the heads (finite, shapes)."""
    key = resolve_unnorm_key(info.statistics, unnorm_key if unnorm_key is not None else info.sidecar.get("unnorm_key"))
    check_statistics(info, key)
    return key
