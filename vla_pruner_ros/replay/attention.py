"""The unpruned model's attention over the visual tokens, for the paper's Fig. 2 analysis.

``Policy.predict`` without a pruner scores nothing (nothing needs it), so the analysis runs
one extra, untimed forward per step: the same inputs as ``predict`` (same image processor,
prompt and proprio normalisation), with a "prune" request at the end of the scored layers
that keeps every token -- so the sequence is never shortened -- and action-layer scoring on.
It yields

* ``s_vl``: the ``vl``-group prefill attention (Eq. 2) averaged over ``score_layers``;
* ``s_act``: the ``action``-group attention (Eq. 4) averaged over ``action_layers``,

both over the original M visual tokens, and the actions of that forward (which equal the
unpruned policy's: keeping every token changes nothing).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model.modeling_llama import PruneRequest
from ..model.processing_oft import normalize_proprio

ANALYSIS_LAYERS = ("pruner", "all")


@dataclass(frozen=True)
class AttentionLayers:
    score_layers: tuple[int, ...]  # layers whose prefill ("vl") scores are averaged into S_vl
    action_layers: tuple[int, ...]  # layers whose action-query scores are averaged into S_act


def analysis_layers(kind: str, num_layers: int, prune_layer: int) -> AttentionLayers:
    """``pruner``: what VLA-Pruner itself reads -- S_vl at layer K-1, S_act over the latter half
    (paper §4.2(c)). ``all``: the paper's Fig. 2 averaging over the layers -- S_vl over layers
    0..T-2 (prefill scores must come before the point where tokens could be dropped, so the
    last layer is left out), S_act over all T layers."""
    if kind not in ANALYSIS_LAYERS:
        raise ValueError(f"analysis_layers={kind!r}: expected one of {', '.join(ANALYSIS_LAYERS)}")
    if not 1 <= prune_layer < num_layers:
        raise ValueError(f"prune_layer={prune_layer}: expected 1 <= K <= {num_layers - 1} "
                         f"for a {num_layers}-layer model")
    if kind == "pruner":
        return AttentionLayers((prune_layer - 1,), tuple(range(num_layers // 2, num_layers)))
    return AttentionLayers(tuple(range(num_layers - 1)), tuple(range(num_layers)))


@dataclass
class AttentionScores:
    s_vl: np.ndarray  # (M,) float32
    s_act: np.ndarray  # (M,) float32
    normalized_actions: np.ndarray  # (chunk, action_dim) of this unpruned forward


@torch.inference_mode()
def unpruned_attention(policy, images: dict[str, np.ndarray], proprio: np.ndarray | None, instruction: str,
                       layers: AttentionLayers) -> AttentionScores:
    """S_vl and S_act of one step, from an unpruned forward of ``policy`` (a model.Policy)."""
    views = [(name, images[name]) for name in policy.view_names]
    input_ids, _ = policy.prompt_builder(policy.prompt_builder.normalize_instruction(instruction))
    pixel_values = policy.image_processor(views).to(device=policy.device, dtype=policy.dtype)
    proprio_tensor = None
    if policy.model.proprio_projector is not None:
        normalized = normalize_proprio(np.asarray(proprio, dtype=np.float64), policy.proprio_stats,
                                       policy.normalization_type)
        proprio_tensor = torch.as_tensor(normalized, dtype=policy.dtype, device=policy.device)

    def keep_every_token(features: torch.Tensor, prefill_scores: dict) -> torch.Tensor:
        return torch.arange(features.shape[0], device=features.device)

    keep_all = PruneRequest(layer=max(layers.score_layers) + 1, select=keep_every_token, prefill_groups=("vl",),
                            score_layers=layers.score_layers)
    prediction = policy.model(pixel_values, input_ids.to(policy.device), policy.stop_token_id, proprio=proprio_tensor,
                              prune=keep_all, action_layers=layers.action_layers)
    decoder = prediction.decoder
    return AttentionScores(
        s_vl=decoder.prefill_scores["vl"].float().cpu().numpy(),
        s_act=decoder.action_scores.float().cpu().numpy(),
        normalized_actions=prediction.normalized_actions.cpu().numpy().astype(np.float64),
    )
