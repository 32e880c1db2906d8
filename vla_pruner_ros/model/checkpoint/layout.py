"""The OFT checkpoint directory layout: file names, tensor-name prefixes, defaults, and the
``preprocessor_config.json`` a config implies (read by the loader, written by the writer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..configuration_oft import OFTConfig

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


def read_json_object(path: Path, what: str = "a JSON object") -> dict[str, Any]:
    """The JSON object in ``path``; a ValueError naming the file for anything else (not UTF-8,
    not JSON, not an object)."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file (not UTF-8: {exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected {what}, got a JSON {type(content).__name__}")
    return content


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
