"""The fused-backbone MLP projector of OpenVLA (``arch_specifier`` "...fused-gelu-mlp").

Maps concatenated DINOv2+SigLIP patch features to the LLM width:
fc1 (vision_dim -> 4*vision_dim), GELU, fc2 (-> llm_dim), GELU, fc3 (llm_dim -> llm_dim).
Parameter names (``projector.fc1/fc2/fc3``) are those of the checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn


class FusedMLPProjector(nn.Module):
    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.vision_dim, self.llm_dim = vision_dim, llm_dim
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim, bias=True)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim, bias=True)
        self.fc3 = nn.Linear(llm_dim, llm_dim, bias=True)
        self.act_fn1 = nn.GELU()
        self.act_fn2 = nn.GELU()

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        hidden = self.act_fn1(self.fc1(patch_features))
        hidden = self.act_fn2(self.fc2(hidden))
        return self.fc3(hidden)
