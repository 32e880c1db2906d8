"""Reading a checkpoint's weight files without loading them: safetensors headers (checked for
truncation), the sharded index, and the head/projector ``.pt`` files (weights only)."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch

from .layout import DDP_PREFIX, INDEX_FILE, SINGLE_WEIGHTS_FILE

_SAFETENSORS_DTYPES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                       "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

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
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
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
