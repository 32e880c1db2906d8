"""The policy and the inputs a benchmark runs on.

``random_policy(preset, device)`` builds a preset's model with seeded random weights straight on the
target device and dtype: the parameters are laid out on the meta device, converted to the dtype
there, and only then allocated on the device (for ``oft-7b`` on a GPU: 7.5 B bf16 parameters, never
a float32 or a CPU copy). No checkpoint files and nothing from a hub: for a speed benchmark only the
shapes matter, the weights only have to keep activations finite (the init below keeps them O(1)).
A real checkpoint directory goes through ``load_policy`` instead.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from ..model.checkpoint import PRESETS, CheckpointInfo, preset_config
from ..model.modeling_oft import OFTForActionPrediction
from ..model.policy import DEFAULT_VIEW_NAMES, Policy
from ..model.precision import resolve_dtype
from ..model.processing_oft import DEFAULT_MAX_INSTRUCTION_TOKENS, load_tokenizer
from ..model.tokenization_oft import LLAMA2_NUM_PIECES, build_tokenizer, save_tokenizer_files

UNNORM_KEY = "benchmark"
INSTRUCTION = "pick up the red block and put it in the basket"


def default_dtype(device: torch.device) -> torch.dtype:
    """What ``load_policy`` uses for ``dtype: auto``: bfloat16 on CUDA and on a CPU with native bf16,
    float32 elsewhere (``model.precision.resolve_dtype``)."""
    return resolve_dtype("auto", device).dtype


@torch.no_grad()
def init_random_(model: torch.nn.Module, seed: int) -> None:
    """Seeded random weights, drawn on the parameters' own device, that keep activations O(1).

    LayerScale 0.1-0.5; biases N(0, 0.02); norm weights N(1, 0.05); position/prefix tokens
    N(0, 0.1); token embeddings N(0, 1); every other matrix N(0, 1/fan_in).
    """
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in sorted(model.named_parameters()):
        device = param.device
        if device not in generators:
            generators[device] = torch.Generator(device=device).manual_seed(seed)
        generator = generators[device]
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("gamma", "scale_factor"):
            param.uniform_(0.1, 0.5, generator=generator)
        elif leaf == "bias":
            param.normal_(0.0, 0.02, generator=generator)
        elif param.ndim == 1:
            param.normal_(1.0, 0.05, generator=generator)
        elif any(key in name for key in ("pos_embed", "cls_token", "reg_token", "latent")):
            param.normal_(0.0, 0.1, generator=generator)
        elif "embed_tokens" in name:
            param.normal_(0.0, 1.0, generator=generator)
        else:
            param.normal_(0.0, 1.0 / math.sqrt(math.prod(param.shape[1:])), generator=generator)


def _statistics(action_dim: int, proprio_dim: int | None) -> dict:
    """Bounds in [-1, 1] (the gripper, last, passes through): enough to (un)normalise."""
    entry = {"action": {"q01": [-1.0] * action_dim, "q99": [1.0] * action_dim,
                        "mask": [True] * (action_dim - 1) + [False]}}
    if proprio_dim:
        entry["proprio"] = {"q01": [-1.0] * proprio_dim, "q99": [1.0] * proprio_dim}
    return {UNNORM_KEY: entry}


def random_policy(preset: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                  seed: int = 0, profile: bool = False) -> Policy:
    """A ``Policy`` of ``preset`` ("tiny", "scaled", "oft-7b") with random weights on ``device``."""
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}: expected one of {sorted(PRESETS)}")
    device = torch.device(device)
    choice = resolve_dtype(dtype, device)
    dtype = choice.dtype
    spec = PRESETS[preset]
    if spec.timm_overrides is None and device.type != "cuda":
        raise ValueError(f"preset={preset!r} has the real sizes (7.5 B parameters): it runs with --device cuda "
                         f"only, got device={device.type!r}")
    config = preset_config(spec)
    with torch.device("meta"):
        model = OFTForActionPrediction(config, spec.action_dim, spec.chunk_length, spec.proprio_dim,
                                       spec.num_head_blocks)
    model = model.to(dtype).to_empty(device=device)  # the only allocation: on the device, in dtype
    init_random_(model, seed)
    model.decoder.reset_rotary(device)  # non-persistent buffers: to_empty left them uninitialised
    model.eval()

    with tempfile.TemporaryDirectory() as tokenizer_dir:
        # The project's Llama-2-layout tokenizer ("▁" = 29871, <PAD> = 32000), also for oft-7b,
        # whose real tokenizer files would have to come from a hub.
        save_tokenizer_files(build_tokenizer(spec.tokenizer_pieces or LLAMA2_NUM_PIECES), tokenizer_dir,
                             model_max_length=config.llm_max_length)
        tokenizer = load_tokenizer(tokenizer_dir)
    info = CheckpointInfo(path=None, config=config, chunk_length=spec.chunk_length, num_images=spec.num_images,
                          action_dim=spec.action_dim, proprio_dim=spec.proprio_dim,
                          num_head_blocks=spec.num_head_blocks,
                          statistics=_statistics(spec.action_dim, spec.proprio_dim),
                          sidecar={"preset": preset, "seed": seed})
    view_names = DEFAULT_VIEW_NAMES[:spec.num_images] + tuple(
        f"wrist_{i}" for i in range(len(DEFAULT_VIEW_NAMES), spec.num_images))
    return Policy(model, info, tokenizer, UNNORM_KEY, device, dtype, view_names, center_crop=False,
                  normalization_type="bounds_q99", max_instruction_tokens=DEFAULT_MAX_INSTRUCTION_TOKENS,
                  profile=profile, dtype_reason=choice.reason)


@dataclass(frozen=True)
class Observation:
    images: dict[str, np.ndarray]
    proprio: np.ndarray | None
    instruction: str


def make_observations(policy: Policy, count: int, seed: int = 0,
                      instruction: str = INSTRUCTION) -> list[Observation]:
    """``count`` seeded observations (random camera images and proprio) for every configuration alike."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count={count!r}: expected an int >= 1")
    rng = np.random.default_rng(seed)
    size = policy.config.image_size
    observations = []
    for _ in range(count):
        images = {name: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for name in policy.view_names}
        proprio = rng.uniform(-0.9, 0.9, policy.proprio_dim) if policy.proprio_dim else None
        observations.append(Observation(images, proprio, instruction))
    return observations
