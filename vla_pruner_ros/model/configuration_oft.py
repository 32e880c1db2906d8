"""Configuration of an OpenVLA-OFT checkpoint, parsed from its ``config.json``.

The file written by OpenVLA/OFT is a Prismatic ``OpenVLAConfig``: a fused DINOv2 + SigLIP vision
backbone named by ``vision_backbone_id`` / ``timm_model_ids``, a Llama-2 ``text_config`` that holds
only the fields differing from ``LlamaConfig()`` defaults (transformers 4.40, the version OFT pins),
and the base model's ``norm_stats``. We read it without the upstream code, reject unknown fields
and inconsistent combinations with a ``ValueError`` that names the field.

Project extension (absent in real checkpoints): ``vla_pruner_timm_overrides`` is a list with one
dict per tower of ``timm.create_model`` size arguments (``embed_dim``, ``depth``, ``num_heads``,
``mlp_ratio``). Our reduced presets (``tiny``, ``scaled``) need it; without it the towers have the
real sizes of the timm model ids.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

# Known fused backbones: id -> (timm model ids, image sizes). Upstream derives both from the id.
FUSED_VISION_BACKBONES: dict[str, tuple[tuple[str, str], tuple[int, int]]] = {
    "dinosiglip-vit-so-224px": (
        ("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"),
        (224, 224),
    ),
    "dinosiglip-vit-so-384px": (
        ("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_384"),
        (384, 384),
    ),
}

# Per-tower pixel normalisation (what timm's data config gives for these model ids).
DINOV2_MEAN, DINOV2_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

PATCH_SIZE = 14  # both towers are /14 models; overrides cannot change it
TOWER_OVERRIDE_KEYS = frozenset({"embed_dim", "depth", "num_heads", "mlp_ratio"})
IMAGE_RESIZE_STRATEGIES = ("resize-naive", "resize-crop", "letterbox")
LLAMA_BACKBONE_PREFIXES = ("llama2-", "vicuna-")
EXTENSION_FIELD = "vla_pruner_timm_overrides"

# Fields of any transformers config that do not change inference: accepted and ignored.
GENERIC_CONFIG_FIELDS = frozenset({
    "_name_or_path", "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version",
    "use_cache", "pretraining_tp", "initializer_range", "return_dict", "output_hidden_states",
    "output_attentions", "torchscript", "use_bfloat16", "tf_legacy_loss", "pruned_heads",
    "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "tie_encoder_decoder", "id2label", "label2id", "problem_type", "tokenizer_class",
    "_attn_implementation_autoset", "bos_token_id", "eos_token_id", "sep_token_id",
    "decoder_start_token_id", "task_specific_params", "finetuning_task",
})


def _check_type(owner: str, name: str, value: Any, types: type | tuple[type, ...]) -> None:
    # bool is an int in Python; never accept it where a number is meant.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ValueError(f"{owner}.{name}={value!r}: expected {types}, got bool")
    if not isinstance(value, types):
        raise ValueError(f"{owner}.{name}={value!r}: expected {types}, got {type(value).__name__}")


@dataclass
class LlamaTextConfig:
    """Llama-2 fields of ``text_config``; defaults are transformers-4.40 ``LlamaConfig()`` defaults."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    model_type: str = "llama"

    _INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                   "num_attention_heads", "max_position_embeddings")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LlamaTextConfig":
        if not isinstance(data, dict):
            raise ValueError(f"text_config: expected a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        kwargs = {}
        for key, value in data.items():
            if key in known:
                kwargs[key] = value
            elif key in GENERIC_CONFIG_FIELDS:
                continue
            else:
                raise ValueError(f"text_config.{key}: unknown Llama config field (value {value!r})")
        config = cls(**kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        owner = "text_config"
        for name in self._INT_FIELDS:
            value = getattr(self, name)
            _check_type(owner, name, value, int)
            if value <= 0:
                raise ValueError(f"{owner}.{name}={value}: expected a positive integer")
        if self.model_type != "llama":
            raise ValueError(f"{owner}.model_type={self.model_type!r}: only 'llama' is supported")
        if self.hidden_act != "silu":
            raise ValueError(f"{owner}.hidden_act={self.hidden_act!r}: Llama-2 uses 'silu'")
        if self.rope_scaling is not None:
            raise ValueError(f"{owner}.rope_scaling={self.rope_scaling!r}: only plain RoPE is supported")
        kv_heads = self.num_kv_heads
        if self.num_attention_heads % kv_heads:
            raise ValueError(f"{owner}.num_key_value_heads={kv_heads} must divide "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{owner}.hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.attention_head_dim % 2:
            raise ValueError(f"{owner}: head dim {self.attention_head_dim} must be even for RoPE")
        _check_type(owner, "rms_norm_eps", self.rms_norm_eps, (int, float))
        _check_type(owner, "rope_theta", self.rope_theta, (int, float))

    @property
    def num_kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that differ from the defaults, as OFT's config.json stores them."""
        defaults = LlamaTextConfig()
        out = {"model_type": self.model_type}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "model_type" and value != getattr(defaults, f.name):
                out[f.name] = value
        return out

    def to_transformers(self, attn_implementation: str):
        """A ``transformers.LlamaConfig`` for the installed transformers version."""
        from transformers import LlamaConfig

        config = LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.attention_head_dim,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=float(self.rms_norm_eps),
            rope_parameters={"rope_type": "default", "rope_theta": float(self.rope_theta)},
            attention_bias=self.attention_bias,
            attention_dropout=self.attention_dropout,
            mlp_bias=self.mlp_bias,
            pad_token_id=self.pad_token_id,
            tie_word_embeddings=self.tie_word_embeddings,
        )
        config._attn_implementation = attn_implementation
        return config


@dataclass(frozen=True)
class TowerSpec:
    """One vision tower: what to ask timm for, and how its pixels are normalised."""

    timm_model_id: str
    image_size: int
    act_layer: str | None
    overrides: dict[str, Any]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def grid_size(self) -> int:
        return self.image_size // PATCH_SIZE


@dataclass
class OFTConfig:
    """The fields of an OpenVLA(-OFT) ``config.json`` that this implementation understands."""

    vision_backbone_id: str = "dinosiglip-vit-so-224px"
    llm_backbone_id: str = "llama2-7b-pure"
    arch_specifier: str = "no-align+fused-gelu-mlp"
    use_fused_vision_backbone: bool = True
    image_resize_strategy: str = "resize-naive"
    image_sizes: list[int] = field(default_factory=lambda: [224, 224])
    timm_model_ids: list[str] = field(default_factory=lambda: list(
        FUSED_VISION_BACKBONES["dinosiglip-vit-so-224px"][0]))
    timm_override_act_layers: list[str | None] = field(default_factory=lambda: [None, None])
    text_config: LlamaTextConfig = field(default_factory=lambda: LlamaTextConfig(
        vocab_size=32064, pad_token_id=32000))
    llm_max_length: int = 2048
    pad_token_id: int = 32000
    pad_to_multiple_of: int = 64
    n_action_bins: int = 256
    norm_stats: dict[str, Any] | None = None
    output_projector_states: bool = False
    hf_llm_id: str | None = "meta-llama/Llama-2-7b-hf"
    model_type: str = "openvla"
    # Project extension: per-tower timm size overrides (None for real checkpoints).
    timm_overrides: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OFTConfig":
        if not isinstance(data, dict):
            raise ValueError(f"config.json: expected a JSON object, got {type(data).__name__}")
        data = copy.deepcopy(data)
        known = {f.name for f in fields(cls)} - {"timm_overrides", "text_config"}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "text_config":
                kwargs["text_config"] = LlamaTextConfig.from_dict(value if value is not None else {})
            elif key == EXTENSION_FIELD:
                kwargs["timm_overrides"] = value
            elif key in known:
                kwargs[key] = value
            elif key in GENERIC_CONFIG_FIELDS:
                continue
            else:
                raise ValueError(f"config.json: unknown field {key!r} (value {str(value)[:80]!r})")
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "OFTConfig":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The config.json content, in the layout OpenVLA writes (plus our extension when used)."""
        out: dict[str, Any] = {
            "arch_specifier": self.arch_specifier,
            "architectures": ["OpenVLAForActionPrediction"],
            "auto_map": {
                "AutoConfig": "configuration_prismatic.OpenVLAConfig",
                "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
            },
            "hf_llm_id": self.hf_llm_id,
            "image_resize_strategy": self.image_resize_strategy,
            "image_sizes": list(self.image_sizes),
            "llm_backbone_id": self.llm_backbone_id,
            "llm_max_length": self.llm_max_length,
            "model_type": self.model_type,
            "n_action_bins": self.n_action_bins,
            "norm_stats": self.norm_stats,
            "output_projector_states": self.output_projector_states,
            "pad_to_multiple_of": self.pad_to_multiple_of,
            "pad_token_id": self.pad_token_id,
            "text_config": {**self.text_config.to_dict(), "torch_dtype": "bfloat16"},
            "timm_model_ids": list(self.timm_model_ids),
            "timm_override_act_layers": list(self.timm_override_act_layers),
            "torch_dtype": "bfloat16",
            "transformers_version": "4.40.1",
            "use_fused_vision_backbone": self.use_fused_vision_backbone,
            "vision_backbone_id": self.vision_backbone_id,
        }
        if self.timm_overrides is not None:
            out[EXTENSION_FIELD] = [dict(o) for o in self.timm_overrides]
        return out

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        if self.model_type != "openvla":
            raise ValueError(f"model_type={self.model_type!r}: expected 'openvla'")
        if self.use_fused_vision_backbone is not True:
            raise ValueError(f"use_fused_vision_backbone={self.use_fused_vision_backbone!r}: only the "
                             "fused DINOv2+SigLIP backbone (true) is supported")
        if not self.arch_specifier.endswith("fused-gelu-mlp"):
            raise ValueError(f"arch_specifier={self.arch_specifier!r}: a fused backbone needs the "
                             "'fused-gelu-mlp' projector (e.g. 'no-align+fused-gelu-mlp')")
        if not self.llm_backbone_id.startswith(LLAMA_BACKBONE_PREFIXES):
            raise ValueError(f"llm_backbone_id={self.llm_backbone_id!r}: only Llama-2 backbones "
                             f"({', '.join(p + '*' for p in LLAMA_BACKBONE_PREFIXES)}) are supported")
        if self.image_resize_strategy not in IMAGE_RESIZE_STRATEGIES:
            raise ValueError(f"image_resize_strategy={self.image_resize_strategy!r}: expected one of "
                             f"{IMAGE_RESIZE_STRATEGIES}")
        for name in ("image_sizes", "timm_model_ids", "timm_override_act_layers"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ValueError(f"{name}={value!r}: expected a list of 2 entries (DINOv2, SigLIP)")
        for size in self.image_sizes:
            _check_type("config", "image_sizes", size, int)
        if self.image_sizes[0] != self.image_sizes[1]:
            raise ValueError(f"image_sizes={self.image_sizes}: both towers must see the same size "
                             "(their patch tokens are concatenated on features)")
        if self.image_sizes[0] < PATCH_SIZE or self.image_sizes[0] % PATCH_SIZE:
            raise ValueError(f"image_sizes={self.image_sizes}: must be a positive multiple of the "
                             f"patch size {PATCH_SIZE}")
        dino_id, siglip_id = self.timm_model_ids
        if "dinov2" not in dino_id or "reg" not in dino_id:
            raise ValueError(f"timm_model_ids[0]={dino_id!r}: expected a DINOv2 ViT with registers")
        if "siglip" not in siglip_id:
            raise ValueError(f"timm_model_ids[1]={siglip_id!r}: expected a SigLIP ViT")
        if f"patch{PATCH_SIZE}" not in dino_id or f"patch{PATCH_SIZE}" not in siglip_id:
            raise ValueError(f"timm_model_ids={self.timm_model_ids}: both towers must be /{PATCH_SIZE} models")
        known = FUSED_VISION_BACKBONES.get(self.vision_backbone_id)
        if known is None:
            raise ValueError(f"vision_backbone_id={self.vision_backbone_id!r}: expected one of "
                             f"{sorted(FUSED_VISION_BACKBONES)}")
        if list(self.timm_model_ids) != list(known[0]):
            raise ValueError(f"timm_model_ids={self.timm_model_ids} is inconsistent with "
                             f"vision_backbone_id={self.vision_backbone_id!r} (expects {list(known[0])})")
        if self.timm_overrides is None and list(self.image_sizes) != list(known[1]):
            # Real checkpoints: upstream derives the size from the id. Only our reduced presets
            # (which carry the extension field) may use another size.
            raise ValueError(f"image_sizes={self.image_sizes} is inconsistent with "
                             f"vision_backbone_id={self.vision_backbone_id!r} (expects {list(known[1])})")
        if self.timm_overrides is not None:
            if not isinstance(self.timm_overrides, (list, tuple)) or len(self.timm_overrides) != 2:
                raise ValueError(f"{EXTENSION_FIELD}={self.timm_overrides!r}: expected a list of 2 dicts")
            for i, override in enumerate(self.timm_overrides):
                if not isinstance(override, dict):
                    raise ValueError(f"{EXTENSION_FIELD}[{i}]={override!r}: expected a dict")
                unknown = set(override) - TOWER_OVERRIDE_KEYS
                if unknown:
                    raise ValueError(f"{EXTENSION_FIELD}[{i}]: unknown keys {sorted(unknown)}; "
                                     f"allowed {sorted(TOWER_OVERRIDE_KEYS)}")
                if "embed_dim" in override and "num_heads" in override and (
                        override["embed_dim"] % override["num_heads"]):
                    raise ValueError(f"{EXTENSION_FIELD}[{i}]: embed_dim={override['embed_dim']} is not "
                                     f"divisible by num_heads={override['num_heads']}")
                if override.get("depth", 2) < 2:
                    raise ValueError(f"{EXTENSION_FIELD}[{i}].depth={override['depth']}: the feature is "
                                     "taken from block depth-2, so depth must be >= 2")
        if not isinstance(self.text_config, LlamaTextConfig):
            raise ValueError("text_config: expected a LlamaTextConfig")
        self.text_config.validate()
        vocab = self.text_config.vocab_size
        _check_type("config", "pad_token_id", self.pad_token_id, int)
        _check_type("config", "pad_to_multiple_of", self.pad_to_multiple_of, int)
        if not 0 <= self.pad_token_id < vocab:
            raise ValueError(f"pad_token_id={self.pad_token_id} is outside text_config.vocab_size={vocab}")
        if self.pad_to_multiple_of <= 0 or vocab % self.pad_to_multiple_of:
            raise ValueError(f"text_config.vocab_size={vocab} is not a multiple of "
                             f"pad_to_multiple_of={self.pad_to_multiple_of}")
        if self.text_config.pad_token_id not in (None, self.pad_token_id):
            raise ValueError(f"text_config.pad_token_id={self.text_config.pad_token_id} differs from "
                             f"pad_token_id={self.pad_token_id}")
        if self.norm_stats is not None and not isinstance(self.norm_stats, dict):
            raise ValueError(f"norm_stats: expected a dict or null, got {type(self.norm_stats).__name__}")

    # ------------------------------------------------------------ derived views
    @property
    def towers(self) -> tuple[TowerSpec, TowerSpec]:
        overrides = self.timm_overrides or [{}, {}]
        means_stds = ((DINOV2_MEAN, DINOV2_STD), (SIGLIP_MEAN, SIGLIP_STD))
        return tuple(
            TowerSpec(
                timm_model_id=self.timm_model_ids[i],
                image_size=self.image_sizes[i],
                act_layer=self.timm_override_act_layers[i],
                overrides=dict(overrides[i]),
                mean=means_stds[i][0],
                std=means_stds[i][1],
            )
            for i in range(2)
        )

    @property
    def image_size(self) -> int:
        return self.image_sizes[0]

    @property
    def grid_size(self) -> int:
        """Patch rows (= cols) per view."""
        return self.image_size // PATCH_SIZE

    @property
    def patches_per_view(self) -> int:
        return self.grid_size ** 2
