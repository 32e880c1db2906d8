"""Fused DINOv2 + SigLIP vision backbone of OpenVLA(-OFT), built with timm (no pretrained weights).

Each tower is the timm ViT named in the config, at the config's image size. The feature of a tower
is the output of block ``depth - 2`` (the second to last block), without the final norm, with the
prefix tokens (DINOv2: 1 class + 4 registers; SigLIP: none) dropped. The two towers' patch features
are concatenated on the feature axis; views are concatenated on the token axis (view-major, each view
row-major over its patch grid).

Checkpoint naming: OpenVLA renames timm's LayerScale ``gamma`` to ``scale_factor`` (transformers
mangles parameter names containing "gamma"); ``checkpoint_to_timm_key`` / ``timm_to_checkpoint_key``
translate between the two. The towers' final ``norm`` and SigLIP's ``attn_pool`` are stored in real
checkpoints and built here too (so loading is strict), but never run.
"""

from __future__ import annotations

import re

import timm
import torch
from torch import nn

from .configuration_oft import OFTConfig, TowerSpec

_CKPT_LAYERSCALE = re.compile(r"\.ls([12])\.scale_factor$")
_TIMM_LAYERSCALE = re.compile(r"\.ls([12])\.gamma$")


def checkpoint_to_timm_key(key: str) -> str:
    return _CKPT_LAYERSCALE.sub(r".ls\1.gamma", key)


def timm_to_checkpoint_key(key: str) -> str:
    return _TIMM_LAYERSCALE.sub(r".ls\1.scale_factor", key)


def create_tower(spec: TowerSpec) -> nn.Module:
    """The timm ViT of one tower, randomly initialised (weights come from the checkpoint)."""
    return timm.create_model(
        spec.timm_model_id,
        pretrained=False,
        num_classes=0,
        img_size=spec.image_size,
        act_layer=spec.act_layer,
        **spec.overrides,
    )


def tower_features(tower: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Patch features of block depth-2, no final norm, prefix tokens dropped: (B, N, D)."""
    feature_block = len(tower.blocks) - 2
    (features,) = tower.forward_intermediates(
        pixels,
        indices=[feature_block],
        norm=False,
        stop_early=True,  # the last block is not needed
        output_fmt="NLC",
        intermediates_only=True,
    )
    return features


class FusedVisionBackbone(nn.Module):
    """DINOv2 (``featurizer``) and SigLIP (``fused_featurizer``), features concatenated."""

    def __init__(self, config: OFTConfig) -> None:
        super().__init__()
        dino_spec, siglip_spec = config.towers
        self.featurizer = create_tower(dino_spec)
        self.fused_featurizer = create_tower(siglip_spec)
        self.embed_dim = self.featurizer.embed_dim + self.fused_featurizer.embed_dim
        self.grid_size = config.grid_size
        self.patches_per_view = config.patches_per_view
        for tower in (self.featurizer, self.fused_featurizer):
            if tuple(tower.patch_embed.grid_size) != (self.grid_size, self.grid_size):
                raise ValueError(f"{type(tower).__name__}: patch grid {tower.patch_embed.grid_size} does not "
                                 f"match the configured {self.grid_size}x{self.grid_size}")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: (num_views, 6, H, W), channels 0-2 normalised for DINOv2, 3-5 for SigLIP.

        Returns (1, num_views * patches_per_view, embed_dim).
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 6:
            raise ValueError(f"pixel_values: expected shape (num_views, 6, H, W), got {tuple(pixel_values.shape)}")
        # The views are independent images: run them as one batch per tower.
        dino = tower_features(self.featurizer, pixel_values[:, :3])
        siglip = tower_features(self.fused_featurizer, pixel_values[:, 3:])
        patches = torch.cat([dino, siglip], dim=2)  # (V, N, D_dino + D_siglip)
        return patches.reshape(1, -1, patches.shape[-1])
