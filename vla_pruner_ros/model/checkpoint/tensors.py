"""Tensor naming: which tensors (names and shapes) a checkpoint must hold for a model, and the
check that names every missing, unexpected or misshaped one."""

from __future__ import annotations

import torch

from ..modeling_oft import OFTForActionPrediction
from ..modeling_vision import timm_to_checkpoint_key
from .layout import BACKBONE_PREFIXES, LM_HEAD_KEY

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
