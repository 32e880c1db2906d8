"""Inputs and outputs of an OFT step, processed as OpenVLA-OFT does.

Images (per view, HxWx3 uint8):
1. if not already image_size x image_size: JPEG round trip (quality 95) and an antialiased
   Lanczos resize to image_size (OFT's ``resize_image_for_policy``; OFT does both with TensorFlow,
   we use Pillow, so this step is close but not bit-exact: TF decodes the JPEG with libjpeg's fast
   integer IDCT, Pillow with the accurate one, and the Lanczos kernels differ; on 640x480 camera-like
   images ~1/4 of the pixels end up 1-6 levels off, see test_model_upstream);
2. optional center crop (models trained with image augmentation): the central 90 % of the area,
   bilinear ``crop_and_resize`` back to image_size with TensorFlow's sampling grid, in float32 as
   TF computes it, back to uint8 as floor(x * 255.5) (TF ``convert_image_dtype``): bit-exact;
3. the Prismatic processor: ``image_resize_strategy`` (resize-naive: bicubic resize to the square;
   resize-crop: shorter side then center crop; letterbox: pad to square first), to [0, 1], then per
   tower normalisation (DINOv2: ImageNet mean/std; SigLIP: 0.5/0.5), channel-stacked (6, S, S).

Prompt: ``In: What action should the robot take to {instruction.lower()}?\\nOut:`` tokenised with
BOS, then the "▁" id appended (looked up in the tokenizer; 29871 for Llama-2).

Proprio / actions: BOUNDS_Q99 (default) or BOUNDS normalisation with the dataset statistics; the
statistics' ``mask`` leaves masked-out dimensions (e.g. the gripper) untouched.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .configuration_oft import OFTConfig

PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
NORMALIZATION_TYPES = ("bounds_q99", "bounds")
CENTER_CROP_AREA = 0.9
# A checkpoint that does not say (no vla_pruner_oft.json, as downloaded OFT checkpoints) gets
# upstream's choice: OFT's LIBERO eval and deploy crop by default (trained with crop augmentation).
DEFAULT_CENTER_CROP = True
JPEG_QUALITY = 95
DEFAULT_MAX_INSTRUCTION_TOKENS = 128
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


# ------------------------------------------------------------------------------------ tokenizer
def load_tokenizer(path: str | os.PathLike):
    """The checkpoint directory's tokenizer, through transformers, never from a hub."""
    # The Llama tokenizer class directly: AutoTokenizer would consult config.json, whose OpenVLA
    # auto_map points at remote code.
    from transformers import LlamaTokenizerFast

    has_files = any(os.path.isfile(os.path.join(path, name)) for name in ("tokenizer.json", "tokenizer.model"))
    if not has_files:
        raise ValueError(f"{path}: no tokenizer.json or tokenizer.model in the checkpoint directory")
    for name in TOKENIZER_JSON_FILES:  # name the broken file, not just "utf-8 codec can't decode"
        file = os.path.join(path, name)
        if os.path.isfile(file):
            try:
                with open(file, encoding="utf-8") as handle:
                    json.load(handle)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{file}: not a tokenizer file (not valid UTF-8 JSON: {exc})") from None
    try:
        tokenizer = LlamaTokenizerFast.from_pretrained(os.fspath(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - sentencepiece/tokenizers raise many types; name the files
        files = [n for n in ("tokenizer.json", "tokenizer.model") if os.path.isfile(os.path.join(path, n))]
        raise ValueError(f"{path}: the tokenizer files {files} cannot be loaded "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    for name in ("bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name) is None:
            raise ValueError(f"{path}: the tokenizer has no {name.removesuffix('_id')}")
    return tokenizer


def word_start_token_id(tokenizer) -> int:
    """Id of the bare "▁" piece that OFT appends to the prompt (29871 for Llama-2)."""
    token_id = tokenizer.convert_tokens_to_ids("▁")
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError("the tokenizer has no '▁' piece; OFT's prompt needs it")
    return int(token_id)


# ---------------------------------------------------------------------------------------- images
def check_image(name: str, image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}"
        raise ValueError(f"images[{name!r}]: expected an HxWx3 uint8 numpy array, got {got}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"images[{name!r}]: image of shape {image.shape} is too small")
    return np.ascontiguousarray(image)  # e.g. BGR->RGB views have negative strides


def resize_for_policy(image: np.ndarray, size: int) -> np.ndarray:
    """JPEG round trip + antialiased Lanczos resize to size x size (only when needed)."""
    if image.shape[:2] == (size, size):
        return image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    decoded = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(decoded.resize((size, size), Image.Resampling.LANCZOS))


def tf_crop_and_resize(image: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """TensorFlow ``crop_and_resize`` (bilinear) of one float image (H, W, C), normalised box
    (y1, x1, y2, x2), output (size, size, C).

    All arithmetic in float32, in the CPU kernel's order: the sampling grid, the lerp weights and
    the two lerps. In float64 a few pixels land on the other side of a uint8 rounding boundary.
    """
    f32 = np.float32
    height, width = image.shape[:2]
    y1, x1, y2, x2 = (f32(v) for v in box)
    image = image.astype(f32, copy=False)

    def grid(start: np.float32, stop: np.float32, extent: int) -> np.ndarray:
        if size == 1:
            return np.array([f32(0.5) * (start + stop) * f32(extent - 1)], dtype=f32)
        step = (stop - start) * f32(extent - 1) / f32(size - 1)
        return start * f32(extent - 1) + np.arange(size, dtype=f32) * step

    ys, xs = grid(y1, y2, height), grid(x1, x2, width)
    top, left = np.floor(ys).astype(int), np.floor(xs).astype(int)
    bottom, right = np.minimum(np.ceil(ys).astype(int), height - 1), np.minimum(np.ceil(xs).astype(int), width - 1)
    dy, dx = (ys - top).astype(f32)[:, None, None], (xs - left).astype(f32)[None, :, None]
    top_row = image[top][:, left] + (image[top][:, right] - image[top][:, left]) * dx
    bottom_row = image[bottom][:, left] + (image[bottom][:, right] - image[bottom][:, left]) * dx
    return top_row + (bottom_row - top_row) * dy


def center_crop(image: np.ndarray, area: float = CENTER_CROP_AREA) -> np.ndarray:
    """OFT's test-time center crop: central ``area`` of the image, resized back, uint8.

    Float32 throughout like TF: the box from sqrt(area) in float32, uint8 -> float as x * (1/255),
    float -> uint8 as a truncating cast of x * 255.5 (``convert_image_dtype``). Bit-exact with
    upstream's TF ``center_crop_image`` on the images we checked (test_model_upstream).
    """
    f32 = np.float32
    side = np.clip(np.sqrt(f32(area)), f32(0.0), f32(1.0))
    offset = (f32(1.0) - side) / f32(2.0)
    as_float = image.astype(f32) * f32(1.0 / 255)
    cropped = tf_crop_and_resize(as_float, (offset, offset, offset + side, offset + side), image.shape[0])
    cropped = np.clip(cropped, f32(0.0), f32(1.0))
    return np.minimum(cropped * f32(255.5), f32(255.0)).astype(np.uint8)  # the cast truncates, as TF's


class OFTImageProcessor:
    """Turns views (HxWx3 uint8) into the (num_views, 6, S, S) tensor the vision backbone takes."""

    def __init__(self, config: OFTConfig, center_crop: bool = False) -> None:
        self.size = config.image_size
        self.resize_strategy = config.image_resize_strategy
        self.center_crop = center_crop
        towers = config.towers
        self.means = [np.asarray(t.mean, dtype=np.float32) for t in towers]
        self.stds = [np.asarray(t.std, dtype=np.float32) for t in towers]
        # Upstream letterboxes once, with the fill of the last tower's mean.
        self.letterbox_fill = tuple(int(x * 255) for x in towers[-1].mean)

    def _prismatic_transform(self, image: np.ndarray) -> np.ndarray:
        pil = Image.fromarray(image)
        if self.resize_strategy == "letterbox":  # symmetric constant padding towards a square
            width, height = pil.size
            pad_x, pad_y = int((max(width, height) - width) / 2), int((max(width, height) - height) / 2)
            canvas = Image.new("RGB", (width + 2 * pad_x, height + 2 * pad_y), self.letterbox_fill)
            canvas.paste(pil, (pad_x, pad_y))
            pil = canvas
        if self.resize_strategy == "resize-naive":
            pil = pil.resize((self.size, self.size), Image.Resampling.BICUBIC)
        else:  # shorter side to size, then center crop (torchvision Resize(int) + CenterCrop)
            width, height = pil.size
            short, long = min(width, height), max(width, height)
            new_long = int(self.size * long / short)
            new_w, new_h = (self.size, new_long) if width <= height else (new_long, self.size)
            pil = pil.resize((new_w, new_h), Image.Resampling.BICUBIC)
            left, top = int(round((new_w - self.size) / 2.0)), int(round((new_h - self.size) / 2.0))
            pil = pil.crop((left, top, left + self.size, top + self.size))
        return np.asarray(pil, dtype=np.float32) / 255.0

    def __call__(self, views: Sequence[tuple[str, np.ndarray]]) -> torch.Tensor:
        stacked = []
        for name, image in views:
            image = resize_for_policy(check_image(name, image), self.size)
            if self.center_crop:
                image = center_crop(image)
            pixels = self._prismatic_transform(image)
            per_tower = [(pixels - mean) / std for mean, std in zip(self.means, self.stds)]
            stacked.append(np.concatenate(per_tower, axis=2).transpose(2, 0, 1))
        return torch.from_numpy(np.ascontiguousarray(np.stack(stacked)))


# ---------------------------------------------------------------------------------------- prompt
class PromptBuilder:
    """Instruction -> input ids (<s> + prompt + "▁"), with a cap on instruction tokens.

    OFT has no limit; a robot node must not fail on a pasted essay, so instructions longer than
    ``max_instruction_tokens`` are cut (at a character boundary, so the template stays intact) with
    a warning.
    """

    def __init__(self, tokenizer, max_instruction_tokens: int = DEFAULT_MAX_INSTRUCTION_TOKENS) -> None:
        if not isinstance(max_instruction_tokens, int) or max_instruction_tokens < 1:
            raise ValueError(f"max_instruction_tokens={max_instruction_tokens!r}: expected a positive integer")
        self.tokenizer = tokenizer
        self.max_instruction_tokens = max_instruction_tokens
        self.word_start_id = word_start_token_id(tokenizer)
        self._template_tokens = len(self._encode(PROMPT_TEMPLATE.format(instruction="")))

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def normalize_instruction(self, instruction: str) -> str:
        if not isinstance(instruction, str):
            raise ValueError(f"instruction: expected a string, got {type(instruction).__name__}")
        instruction = instruction.strip().lower()
        if not instruction:
            raise ValueError("instruction: expected a non-empty string")
        return instruction

    def instruction_tokens(self, instruction: str) -> int:
        """Tokens the (normalised) instruction takes in the prompt: what ``max_instruction_tokens`` caps."""
        prompt = PROMPT_TEMPLATE.format(instruction=self.normalize_instruction(instruction))
        return len(self._encode(prompt)) - self._template_tokens

    def __call__(self, instruction: str) -> tuple[torch.Tensor, str]:
        """Returns (input_ids (1 + P,), the instruction actually used)."""
        instruction = self.normalize_instruction(instruction)
        limit = self._template_tokens + self.max_instruction_tokens
        ids = self._encode(PROMPT_TEMPLATE.format(instruction=instruction))
        if len(ids) > limit:
            low, high = 0, len(instruction)  # longest prefix (in characters) whose prompt fits
            while low < high:
                middle = (low + high + 1) // 2
                if len(self._encode(PROMPT_TEMPLATE.format(instruction=instruction[:middle]))) <= limit:
                    low = middle
                else:
                    high = middle - 1
            warnings.warn(f"instruction of {len(ids) - self._template_tokens} tokens truncated to "
                          f"{self.max_instruction_tokens} (max_instruction_tokens)", stacklevel=2)
            instruction = instruction[:low].rstrip()
            ids = self._encode(PROMPT_TEMPLATE.format(instruction=instruction))
        if ids[0] != self.tokenizer.bos_token_id:
            ids = [self.tokenizer.bos_token_id] + ids
        if ids[-1] != self.word_start_id:
            ids.append(self.word_start_id)
        return torch.tensor(ids, dtype=torch.long), instruction


# ------------------------------------------------------------------------------- normalisation
def _bounds(stats: dict, kind: str, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    low_key, high_key = ("q01", "q99") if kind == "bounds_q99" else ("min", "max")
    for key in (low_key, high_key):
        if key not in stats:
            raise ValueError(f"dataset statistics for {what}: missing {key!r} (needed by {kind})")
    low = np.asarray(stats[low_key], dtype=np.float64)
    high = np.asarray(stats[high_key], dtype=np.float64)
    mask = np.asarray(stats.get("mask", np.ones_like(low, dtype=bool)), dtype=bool)
    if not (low.shape == high.shape == mask.shape) or low.ndim != 1:
        raise ValueError(f"dataset statistics for {what}: {low_key}/{high_key}/mask shapes "
                         f"{low.shape}/{high.shape}/{mask.shape} differ")
    return low, high, mask


def normalize_proprio(proprio, stats: dict, kind: str = "bounds_q99") -> np.ndarray:
    """To [-1, 1]: clip(2 (p - low) / (high - low + 1e-8) - 1, -1, 1) where mask, p elsewhere."""
    low, high, mask = _bounds(stats, kind, "proprio")
    proprio = np.asarray(proprio, dtype=np.float64)
    if proprio.shape != low.shape:
        raise ValueError(f"proprio: expected shape {low.shape}, got {proprio.shape}")
    if not np.isfinite(proprio).all():
        raise ValueError(f"proprio: expected finite values, got {proprio}")
    return np.clip(np.where(mask, 2 * (proprio - low) / (high - low + 1e-8) - 1, proprio), -1.0, 1.0)


def unnormalize_actions(actions: np.ndarray, stats: dict, kind: str = "bounds_q99") -> np.ndarray:
    """From [-1, 1]: 0.5 (a + 1)(high - low + 1e-8) + low where mask, a elsewhere; no clipping."""
    low, high, mask = _bounds(stats, kind, "action")
    actions = np.asarray(actions, dtype=np.float64)
    if actions.shape[-1] != low.shape[0]:
        raise ValueError(f"actions: last dim {actions.shape[-1]} differs from the statistics' {low.shape[0]}")
    return np.where(mask, 0.5 * (actions + 1) * (high - low + 1e-8) + low, actions)


# ------------------------------------------------------------------------------- action frame
# What the action head's chunk means. "absolute": joint targets, as OFT's checkpoints (and the
# xArm6 node's commands) are. "relative": every action of the chunk is an offset from the proprio
# the chunk was predicted from (the gripper, which normalisation masks out, stays absolute). The
# offsets span a few tenths of a radian where absolute targets span the whole workspace, so the
# same normalised error is a finer error in the joints (the pregrasp policy's last centimetre).
ACTION_FRAMES = ("absolute", "relative")


def action_mask(stats: dict, action_dim: int) -> np.ndarray:
    """The statistics' normalisation mask (True: normalised, and an offset in the relative frame)."""
    mask = np.asarray(stats.get("mask", [True] * action_dim), dtype=bool)
    if mask.shape != (action_dim,):
        raise ValueError(f"action statistics: mask has shape {mask.shape}, the actions {action_dim} values")
    return mask


def _check_frame(frame: str, proprio, action_dim: int) -> np.ndarray | None:
    if frame not in ACTION_FRAMES:
        raise ValueError(f"action_frame={frame!r}: expected one of {ACTION_FRAMES}")
    if frame == "absolute":
        return None
    if proprio is None:
        raise ValueError("action_frame 'relative': the proprio is needed to turn offsets into targets")
    proprio = np.asarray(proprio, dtype=np.float64)
    if proprio.shape[-1] != action_dim:
        raise ValueError(f"action_frame 'relative': proprio has {proprio.shape[-1]} values, the actions "
                         f"{action_dim}: they must be equal")
    return proprio


def actions_to_frame(actions: np.ndarray, proprio, frame: str, mask) -> np.ndarray:
    """Absolute action chunks (..., T, D) taken at proprio (..., D), in ``frame``; ``mask`` (D,):
    the dimensions that are offsets in the relative frame (the normalised ones)."""
    actions = np.asarray(actions, dtype=np.float64)
    proprio = _check_frame(frame, proprio, actions.shape[-1])
    if proprio is None:
        return actions
    return np.where(np.asarray(mask, dtype=bool), actions - proprio[..., None, :], actions)


def actions_from_frame(actions: np.ndarray, proprio, frame: str, mask) -> np.ndarray:
    """The inverse of ``actions_to_frame``: chunks in ``frame`` as absolute targets."""
    actions = np.asarray(actions, dtype=np.float64)
    proprio = _check_frame(frame, proprio, actions.shape[-1])
    if proprio is None:
        return actions
    return np.where(np.asarray(mask, dtype=bool), actions + proprio[..., None, :], actions)


def resolve_unnorm_key(statistics: dict, unnorm_key: str | None) -> str:
    keys = sorted(statistics)
    if not keys:
        raise ValueError("dataset statistics: no entries")
    if unnorm_key is None:
        if len(keys) > 1:
            raise ValueError(f"unnorm_key: the checkpoint has statistics for several datasets {keys}; "
                             "pass unnorm_key to choose one")
        return keys[0]
    if unnorm_key not in statistics:
        raise ValueError(f"unnorm_key={unnorm_key!r} is not in the dataset statistics; choose one of {keys}")
    return unnorm_key
