"""The Llama-2 decoder of OpenVLA-OFT, driven by our own layer loop so visual tokens can be dropped.

The layers, RMSNorm and rotary embedding are transformers' own modules (``LlamaDecoderLayer``,
``LlamaRMSNorm``, ``LlamaRotaryEmbedding``), with the checkpoint's names under
``language_model.model.*``. What the loop adds:

- OFT's attention pattern: fully bidirectional (no mask, ``is_causal=False``) so the action chunk
  is decoded in parallel. Attention runs through SDPA.
- Pruning at layer K: layers 0..K-1 see every row; before layer K the pruned visual rows are
  removed from the hidden states and layers K..T-1 run on the shorter sequence. Every remaining row
  keeps its ORIGINAL position: the rotary cos/sin are gathered at the kept positions.
- Attention scores on the side: at the layers asked for, the attention probabilities of the
  requested query rows over the visual key columns are computed from the very q/k the layer uses
  (a registered attention function sees them), in float32, chunked over rows. They equal what an
  eager attention computes; SDPA still does the attention itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import AttentionInterface
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from ..pruning.scores import QUERY_GROUPS, SequenceLayout, visual_attention_scores
from .configuration_oft import LlamaTextConfig
from .timing import StageTimer

ATTENTION_IMPLEMENTATION = "vla_pruner_sdpa"
SCORE_ROW_CHUNK = 256  # query rows per chunk when computing side scores (bounds memory)


def rows_keeping(layout: SequenceLayout, kept_visual: torch.Tensor) -> torch.Tensor:
    """Original row indices that remain when only ``kept_visual`` (0-based over M) stay."""
    visual = layout.visual
    return torch.cat([
        torch.arange(visual.start),
        visual.start + kept_visual.cpu(),
        torch.arange(visual.stop, layout.length),
    ])


def readout_rows(layout: SequenceLayout) -> torch.Tensor:
    """Rows the action head reads: one to the left of each placeholder ("▁" first)."""
    return torch.arange(layout.length)[layout.action_rows]


@dataclass
class ScoreRequest:
    """Scores one layer must compute: {name: query rows (current indices)} x the visual columns."""

    groups: dict[str, torch.Tensor]
    visual_slice: slice
    causal: bool = False
    scores: dict[str, torch.Tensor] = field(default_factory=dict)

    def compute(self, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        for name, rows in self.groups.items():
            self.scores[name] = visual_attention_scores(
                query, key, self.visual_slice, rows, scale=scaling, causal=self.causal, chunk_rows=SCORE_ROW_CHUNK)


def sdpa_with_side_scores(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                          score_request: ScoreRequest | None = None, **kwargs):
    """transformers attention function: SDPA, plus the scores a ``ScoreRequest`` asks for."""
    if score_request is not None:
        score_request.compute(query, key, module.scaling if scaling is None else scaling)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, **kwargs)


AttentionInterface.register(ATTENTION_IMPLEMENTATION, sdpa_with_side_scores)


# ----------------------------------------------------------------------------- the decoder
@dataclass
class PruneRequest:
    """Drop visual tokens before layer ``layer`` (K), keeping what ``select`` returns.

    ``select(features, prefill_scores)`` receives the visual input embeddings (M, D) (the projector
    output) and the prefill scores {group: (M,) float32} averaged over ``score_layers`` (default
    (K-1,)); it returns the kept visual indices (0-based over M, sorted, unique).
    """

    layer: int
    select: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
    prefill_groups: tuple[str, ...] = ("vl",)
    score_layers: tuple[int, ...] | None = None


@dataclass
class DecoderOutput:
    last_hidden_state: torch.Tensor  # (1, rows_after, D), after the final RMSNorm
    positions: torch.Tensor  # original position of every row of last_hidden_state
    readout: torch.Tensor  # (1, num_action, D): the rows the action head reads
    kept_visual: torch.Tensor | None  # (kept,) visual indices, None without pruning
    prefill_scores: dict[str, torch.Tensor]  # group -> (M,) float32
    action_scores: torch.Tensor | None  # (M,) float32 averaged over the action layers
    action_observed: torch.Tensor | None  # (M,) bool: the token was present in every action layer
    layer_rows: list[int]  # rows each layer ran on


class LlamaBackbone(nn.Module):
    """``language_model.model``: embeddings, decoder layers, final norm (+ rotary, no weights)."""

    def __init__(self, text_config: LlamaTextConfig) -> None:
        super().__init__()
        self.text_config = text_config
        self.llama_config = text_config.to_transformers(ATTENTION_IMPLEMENTATION)
        self.embed_tokens = nn.Embedding(text_config.vocab_size, text_config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(self.llama_config, layer_idx=i) for i in range(text_config.num_hidden_layers))
        for layer in self.layers:
            layer.self_attn.is_causal = False  # OFT attends bidirectionally
        self.norm = LlamaRMSNorm(text_config.hidden_size, eps=text_config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(self.llama_config)

    def reset_rotary(self, device: torch.device | str | None = None) -> None:
        """Recompute the (non-persistent) rotary buffers, e.g. after building on the meta device."""
        self.rotary_emb = LlamaRotaryEmbedding(self.llama_config).to(device)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        layout: SequenceLayout,
        prune: PruneRequest | None = None,
        action_layers: tuple[int, ...] = (),
        causal: bool = False,
        timer: StageTimer | None = None,
    ) -> DecoderOutput:
        """Run the decoder on one step's input embeddings (1, layout.length, D).

        ``action_layers``: layers whose "action"-group attention over the visual tokens is averaged
        into ``DecoderOutput.action_scores`` (scattered back to the original M indices).
        ``causal=True`` only exists to show that OFT's bidirectional attention matters.
        """
        timer = timer or StageTimer(enabled=False)
        num_layers, num_visual = self.num_layers, layout.num_visual
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[:2] != (1, layout.length):
            raise ValueError(f"inputs_embeds: expected (1, {layout.length}, D), got {tuple(inputs_embeds.shape)}")
        action_layers = tuple(sorted(set(action_layers)))
        for layer in action_layers:
            if not 0 <= layer < num_layers:
                raise ValueError(f"action_layers: layer {layer} outside 0..{num_layers - 1}")
        prune_layer, score_layers, prefill_groups = num_layers, (), ()
        if prune is not None:
            prune_layer = prune.layer
            if not 1 <= prune_layer < num_layers:
                raise ValueError(f"prune layer K={prune_layer}: expected 1 <= K <= {num_layers - 1} "
                                 f"(the decoder has {num_layers} layers)")
            score_layers = tuple(sorted(set(prune.score_layers or (prune_layer - 1,))))
            if any(not 0 <= layer < prune_layer for layer in score_layers):
                raise ValueError(f"score_layers={score_layers}: prefill scores must come from layers "
                                 f"0..{prune_layer - 1} (before the prune layer K={prune_layer})")
            prefill_groups = tuple(prune.prefill_groups)
            for group in prefill_groups:
                if group not in QUERY_GROUPS:
                    raise ValueError(f"prefill group {group!r}: expected one of {QUERY_GROUPS}")

        device = inputs_embeds.device
        full_positions = torch.arange(layout.length, device=device)
        cos, sin = self.rotary_emb(inputs_embeds, full_positions[None])
        state = _LoopState(hidden=inputs_embeds, cos=cos, sin=sin, rows=full_positions,
                           full_length=layout.length, num_visual=num_visual)
        prefill_sum = {g: torch.zeros(num_visual, device=device) for g in prefill_groups}
        action_sum = torch.zeros(num_visual, device=device)
        action_count = torch.zeros(num_visual, device=device)
        layer_rows: list[int] = []

        def run_layers(first: int, last: int) -> None:
            for index in range(first, last):
                groups = {}
                if index in score_layers:  # always before pruning: original row indices
                    groups.update({g: layout.rows(g) for g in prefill_groups})
                if index in action_layers:
                    groups[_ACTION_KEY] = layout.rows("action")
                request = None
                if groups:
                    current = state.current_index()
                    query_rows = {g: current[rows.to(device)] for g, rows in groups.items()}
                    if any(bool((rows < 0).any()) for rows in query_rows.values()):
                        raise RuntimeError(f"layer {index}: a score query row was pruned")
                    request = ScoreRequest(query_rows, slice(1, 1 + state.num_visual), causal)
                state.hidden = self.layers[index](
                    state.hidden,
                    attention_mask=None,
                    position_embeddings=(state.cos, state.sin),
                    is_causal=causal,
                    score_request=request,
                )
                # Cheap guard: every layer runs on exactly the rows we think it does.
                expected = layout.length - num_visual + state.num_visual
                if state.hidden.shape[1] != expected:
                    raise RuntimeError(f"layer {index}: ran on {state.hidden.shape[1]} rows, expected "
                                       f"{layout.length - num_visual} non-visual + {state.num_visual} visual")
                layer_rows.append(state.hidden.shape[1])
                if request is None:
                    continue
                if set(request.scores) != set(request.groups):
                    raise RuntimeError(f"layer {index}: attention implementation "
                                       f"{self.llama_config._attn_implementation!r} did not compute the side "
                                       f"scores; use {ATTENTION_IMPLEMENTATION!r}")
                for g in prefill_groups:
                    if index in score_layers:
                        prefill_sum[g] += request.scores[g]
                if _ACTION_KEY in request.scores:
                    present = state.visual_present()
                    action_sum[present] += request.scores[_ACTION_KEY]
                    action_count[present] += 1

        kept = None
        prefill_scores: dict[str, torch.Tensor] = {}
        with timer.stage("llm_prefix"):
            run_layers(0, prune_layer)
        if prune is not None:
            with timer.stage("select"):
                prefill_scores = {g: total / len(score_layers) for g, total in prefill_sum.items()}
                features = inputs_embeds[0, layout.visual]
                kept = _check_kept(prune.select(features, prefill_scores), num_visual).to(device)
                state.keep(rows_keeping(layout, kept).to(device), num_visual=len(kept))
            with timer.stage("llm_suffix"):
                run_layers(prune_layer, num_layers)
        hidden = self.norm(state.hidden)

        action_scores = action_observed = None
        if action_layers:
            action_observed = action_count == len(action_layers)
            action_scores = action_sum / action_count.clamp(min=1)
        readout_index = state.current_index()[readout_rows(layout).to(device)]
        return DecoderOutput(
            last_hidden_state=hidden,
            positions=state.rows,
            readout=hidden[:, readout_index],
            kept_visual=kept,
            prefill_scores=prefill_scores,
            action_scores=action_scores,
            action_observed=action_observed,
            layer_rows=layer_rows,
        )


_ACTION_KEY = "action-layers"  # request key of the action-layer scores (kept apart from prefill groups)


@dataclass
class _LoopState:
    hidden: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    rows: torch.Tensor  # ORIGINAL row index (= rotary position) of each current row
    full_length: int  # rows before any pruning
    num_visual: int  # visual rows currently in the sequence

    def current_index(self) -> torch.Tensor:
        """Map original row -> current row (-1 when pruned)."""
        index = torch.full((self.full_length,), -1, dtype=torch.long, device=self.rows.device)
        index[self.rows] = torch.arange(len(self.rows), device=self.rows.device)
        return index

    def visual_present(self) -> torch.Tensor:
        """Original visual indices (0-based over M) still in the sequence, in order."""
        return self.rows[1:1 + self.num_visual] - 1

    def keep(self, rows: torch.Tensor, num_visual: int) -> None:
        """Drop every row not in ``rows``; the kept rows keep their rotary positions."""
        self.hidden = self.hidden[:, rows]
        self.cos, self.sin = self.cos[:, rows], self.sin[:, rows]
        self.rows = self.rows[rows]
        self.num_visual = num_visual


def _check_kept(kept: torch.Tensor, num_visual: int) -> torch.Tensor:
    if not isinstance(kept, torch.Tensor) or kept.ndim != 1 or kept.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"select() must return a 1-D integer tensor of visual indices, got {kept!r}")
    kept = kept.long()
    if len(kept) == 0:
        raise ValueError("select() returned no visual tokens; at least one must be kept")
    if int(kept.min()) < 0 or int(kept.max()) >= num_visual:
        raise ValueError(f"select() returned indices outside 0..{num_visual - 1}")
    if len(kept) > 1 and not bool((kept[1:] > kept[:-1]).all()):
        raise ValueError("select() must return sorted, unique visual indices")
    return kept


class OFTLanguageModel(nn.Module):
    """``language_model``: wraps the backbone as ``.model`` so parameter names match checkpoints.

    The checkpoint's ``language_model.lm_head.weight`` is not built: OFT's L1 head reads hidden states.
    """

    def __init__(self, text_config: LlamaTextConfig) -> None:
        super().__init__()
        self.model = LlamaBackbone(text_config)
