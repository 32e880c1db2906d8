"""OFT's proprio projector and L1-regression action head, with the checkpoints' parameter names.

Both are stored outside the safetensors, as ``proprio_projector--<step>_checkpoint.pt`` and
``action_head--<step>_checkpoint.pt`` (state dicts saved from DDP, keys prefixed ``module.``).

- ``ProprioProjector``: fc1 (proprio_dim -> llm_dim), GELU, fc2 (llm_dim -> llm_dim); its output is
  one extra token placed right after the visual tokens.
- ``L1RegressionActionHead``: an MLP-ResNet over the hidden states of one chunk step's
  ``action_dim`` readout rows concatenated (action_dim * llm_dim features):
  LayerNorm -> fc1 -> ReLU -> num_blocks x [x + ReLU(Linear(LayerNorm(x)))] -> LayerNorm -> fc2.
"""

from __future__ import annotations

import torch
from torch import nn


class ProprioProjector(nn.Module):
    def __init__(self, proprio_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.proprio_dim, self.llm_dim = proprio_dim, llm_dim
        self.fc1 = nn.Linear(proprio_dim, llm_dim, bias=True)
        self.fc2 = nn.Linear(llm_dim, llm_dim, bias=True)
        self.act_fn1 = nn.GELU()

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn1(self.fc1(proprio)))


class MLPResNetBlock(nn.Module):
    """Pre-LayerNorm residual MLP block; ``ffn`` indices 0 (LayerNorm) and 1 (Linear) hold the weights."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(MLPResNetBlock(hidden_dim) for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """Continuous actions from the LLM's action readout rows (OFT's L1-regression head)."""

    def __init__(self, llm_dim: int, action_dim: int, num_blocks: int = 2) -> None:
        super().__init__()
        self.llm_dim, self.action_dim = llm_dim, action_dim
        self.model = MLPResNet(num_blocks, input_dim=llm_dim * action_dim, hidden_dim=llm_dim,
                               output_dim=action_dim)

    def forward(self, readout_hidden: torch.Tensor) -> torch.Tensor:
        """readout_hidden: (B, chunk * action_dim, llm_dim) -> normalised actions (B, chunk, action_dim).

        Chunk step t reads rows action_dim*t ... action_dim*t + action_dim - 1, concatenated.
        """
        batch, rows, width = readout_hidden.shape
        if rows % self.action_dim or width != self.llm_dim:
            raise ValueError(f"readout_hidden: expected (B, chunk*{self.action_dim}, {self.llm_dim}), "
                             f"got {tuple(readout_hidden.shape)}")
        per_step = readout_hidden.reshape(batch, rows // self.action_dim, self.action_dim * width)
        return self.model(per_step)
