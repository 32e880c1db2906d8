"""OpenVLA-OFT for action prediction: vision towers -> projector -> Llama-2 (prunable) -> L1 head.

One step (batch 1), as upstream's ``predict_action`` with an L1-regression head:

1. views -> fused DINOv2+SigLIP patch features -> projector: M visual embeddings;
2. normalised proprio -> proprio projector: one token after the visual tokens (if the checkpoint
   has a proprio projector);
3. the sequence <s> | visual | proprio | prompt (ending in "▁") | chunk*action_dim zero
   placeholders | </s> goes through the decoder, bidirectionally;
4. the head reads the final-norm hidden states one row to the left of the placeholders and
   returns chunk x action_dim normalised actions.

Module names follow the checkpoint keys: ``vision_backbone.*``, ``projector.*``,
``language_model.model.*``; ``action_head.*`` and ``proprio_projector.*`` hold the weights of the
two ``.pt`` files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..pruning.scores import SequenceLayout
from .configuration_oft import OFTConfig
from .modeling_heads import L1RegressionActionHead, ProprioProjector
from .modeling_llama import DecoderOutput, OFTLanguageModel, PruneRequest, readout_rows
from .modeling_projector import FusedMLPProjector
from .modeling_vision import FusedVisionBackbone
from .timing import StageTimer


@dataclass
class ActionPrediction:
    normalized_actions: torch.Tensor  # (chunk, action_dim), float32
    visual_embeddings: torch.Tensor  # (M, D): projector output (the pruner's diversity features)
    layout: SequenceLayout
    decoder: DecoderOutput


class OFTForActionPrediction(nn.Module):
    def __init__(self, config: OFTConfig, action_dim: int, chunk_length: int,
                 proprio_dim: int | None, num_head_blocks: int = 2) -> None:
        super().__init__()
        for name, value in (("action_dim", action_dim), ("chunk_length", chunk_length),
                            ("num_head_blocks", num_head_blocks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive integer")
        if proprio_dim is not None and (not isinstance(proprio_dim, int) or proprio_dim < 1):
            raise ValueError(f"proprio_dim={proprio_dim!r}: expected a positive integer or None")
        self.config = config
        self.action_dim, self.chunk_length, self.proprio_dim = action_dim, chunk_length, proprio_dim
        llm_dim = config.text_config.hidden_size
        self.vision_backbone = FusedVisionBackbone(config)
        self.projector = FusedMLPProjector(self.vision_backbone.embed_dim, llm_dim)
        self.language_model = OFTLanguageModel(config.text_config)
        self.proprio_projector = ProprioProjector(proprio_dim, llm_dim) if proprio_dim else None
        self.action_head = L1RegressionActionHead(llm_dim, action_dim, num_head_blocks)

    @property
    def decoder(self):
        return self.language_model.model

    @property
    def num_action_tokens(self) -> int:
        return self.chunk_length * self.action_dim

    def embed_visual(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(num_views, 6, H, W) -> (1, num_views * patches_per_view, llm_dim)."""
        return self.projector(self.vision_backbone(pixel_values))

    def build_inputs(self, visual: torch.Tensor, input_ids: torch.Tensor, stop_token_id: int,
                     proprio: torch.Tensor | None) -> tuple[torch.Tensor, SequenceLayout]:
        """The decoder input (1, S, D) and its layout.

        input_ids: (P+1,) = <s> + prompt tokens ending in "▁"; proprio: (proprio_dim,) normalised.
        """
        if input_ids.ndim != 1 or len(input_ids) < 2:
            raise ValueError(f"input_ids: expected (1 + P,) with BOS first, got shape {tuple(input_ids.shape)}")
        embed = self.decoder.embed_tokens
        token_embeds = embed(input_ids)[None]
        parts = [token_embeds[:, :1], visual]
        if self.proprio_projector is not None:
            if proprio is None:
                raise ValueError("proprio: this checkpoint has a proprio projector, so a proprio vector is required")
            if proprio.shape != (self.proprio_dim,):
                raise ValueError(f"proprio: expected shape ({self.proprio_dim},), got {tuple(proprio.shape)}")
            parts.append(self.proprio_projector(proprio.to(visual.dtype))[None, None])
        parts.append(token_embeds[:, 1:])
        # Placeholders are zero vectors (upstream multiplies their embeddings by 0); </s> is real.
        parts.append(visual.new_zeros(1, self.num_action_tokens, visual.shape[-1]))
        parts.append(embed(torch.tensor([stop_token_id], device=input_ids.device))[None])
        layout = SequenceLayout(num_visual=visual.shape[1], num_prompt=len(input_ids) - 1,
                                num_action=self.num_action_tokens,
                                has_proprio=self.proprio_projector is not None)
        return torch.cat(parts, dim=1), layout

    def forward_batch(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, stop_token_id: int,
                      proprio: torch.Tensor | None = None,
                      return_details: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """Batched, differentiable, unpruned step for training: the sequence of ``forward`` for each
        sample, run as one batch.

        pixel_values: (B, num_views, 6, H, W); input_ids: (B, 1 + P), every row <s> + prompt ending
        in "▁" (equal P across the batch: no padding, so positions match inference exactly);
        proprio: (B, proprio_dim) normalised. Returns normalised actions (B, chunk, action_dim); with
        ``return_details`` a dict of them ("actions") and, for training-time probes, "visual" (B, M, D)
        projector outputs, "visual_hidden" (B, M, D) final-norm hidden states of the visual rows and
        "readout" (B, chunk * action_dim, D) the rows the head read.
        """
        if pixel_values.ndim != 5:
            raise ValueError(f"pixel_values: expected (B, num_views, 6, H, W), got {tuple(pixel_values.shape)}")
        batch = pixel_values.shape[0]
        if input_ids.ndim != 2 or input_ids.shape[0] != batch or input_ids.shape[1] < 2:
            raise ValueError(f"input_ids: expected ({batch}, 1 + P) with BOS first, got {tuple(input_ids.shape)}")
        # The backbone treats all views of all samples as one batch of images (view-major per sample).
        patches = self.vision_backbone(pixel_values.flatten(0, 1)).reshape(batch, -1, self.vision_backbone.embed_dim)
        visual = self.projector(patches)
        token_embeds = self.decoder.embed_tokens(input_ids)
        parts = [token_embeds[:, :1], visual]
        if self.proprio_projector is not None:
            if proprio is None or proprio.shape != (batch, self.proprio_dim):
                got = None if proprio is None else tuple(proprio.shape)
                raise ValueError(f"proprio: expected shape ({batch}, {self.proprio_dim}), got {got}")
            parts.append(self.proprio_projector(proprio.to(visual.dtype))[:, None])
        parts.append(token_embeds[:, 1:])
        parts.append(visual.new_zeros(batch, self.num_action_tokens, visual.shape[-1]))
        stop = torch.full((batch, 1), stop_token_id, dtype=input_ids.dtype, device=input_ids.device)
        parts.append(self.decoder.embed_tokens(stop))
        inputs_embeds = torch.cat(parts, dim=1)
        layout = SequenceLayout(num_visual=visual.shape[1], num_prompt=input_ids.shape[1] - 1,
                                num_action=self.num_action_tokens, has_proprio=self.proprio_projector is not None)
        hidden = self.decoder.forward_batch(inputs_embeds)
        readout = hidden[:, readout_rows(layout).to(hidden.device)]
        actions = self.action_head(readout).float()
        if not return_details:
            return actions
        return {"actions": actions, "visual": visual, "visual_hidden": hidden[:, layout.visual], "readout": readout}

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        stop_token_id: int,
        proprio: torch.Tensor | None = None,
        prune: PruneRequest | None = None,
        action_layers: tuple[int, ...] = (),
        causal: bool = False,
        timer: StageTimer | None = None,
    ) -> ActionPrediction:
        """One step, optionally pruned (see ``PruneRequest``)."""
        timer = timer or StageTimer(enabled=False)
        with timer.stage("vision"):
            visual = self.embed_visual(pixel_values)
            inputs_embeds, layout = self.build_inputs(visual, input_ids, stop_token_id, proprio)
        decoder_out = self.decoder(inputs_embeds, layout, prune=prune, action_layers=action_layers,
                                   causal=causal, timer=timer)
        with timer.stage("action_head"):
            actions = self.action_head(decoder_out.readout)[0]
        return ActionPrediction(
            normalized_actions=actions.float(),
            visual_embeddings=visual[0],
            layout=layout,
            decoder=decoder_out,
        )
