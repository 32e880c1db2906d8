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
# Query rows per chunk when computing side scores. A 64-row chunk's logits (8 heads x ~600 keys,
# ~1 MB) stay in cache between the matmul, softmax and sum passes; 256-row chunks made the capture
# about 2x slower on CPU.
SCORE_ROW_CHUNK = 64
SCORE_CAPTURE_EVENT = "vla_pruner::score_capture"  # profiler range around the side-score computation


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


def current_rows(layout: SequenceLayout, rows: torch.Tensor, num_visual_now: int) -> slice | torch.Tensor:
    """Where the ORIGINAL rows ``rows`` (ascending, on the CPU) sit once only ``num_visual_now``
    visual tokens remain, computed on the host: dropping visual tokens moves every later row up by
    the number dropped. Consecutive rows come back as a slice, so reading them takes views, not
    gathers, and no index ever has to be read back from an accelerator (a host sync per layer).
    """
    dropped = layout.num_visual - num_visual_now
    if dropped:
        visual = layout.visual
        if bool(((rows >= visual.start) & (rows < visual.stop)).any()):
            raise RuntimeError(f"rows include visual rows, and {dropped} of the visual rows were dropped")
        rows = torch.where(rows >= visual.stop, rows - dropped, rows)
    first, last = int(rows[0]), int(rows[-1])
    return slice(first, last + 1) if last - first + 1 == len(rows) else rows


@dataclass
class ScoreRequest:
    """Scores one layer must compute: {name: query rows (current indices)} x the visual columns."""

    groups: dict[str, slice | torch.Tensor]
    visual_slice: slice
    causal: bool = False
    scores: dict[str, torch.Tensor] = field(default_factory=dict)

    def compute(self, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        # Named range for torch.profiler (the benchmark reports the capture cost from it).
        with torch.profiler.record_function(SCORE_CAPTURE_EVENT):
            for name, rows in self.groups.items():
                self.scores[name] = visual_attention_scores(
                    query, key, self.visual_slice, rows, scale=scaling, causal=self.causal,
                    chunk_rows=SCORE_ROW_CHUNK)


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

    def forward_batch(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Every layer on a batch (B, S, D) of equally laid-out sequences, no pruning, no scores;
        differentiable (training). Same positions and bidirectional attention as ``forward``.
        Returns the hidden states after the final norm, (B, S, D)."""
        if inputs_embeds.ndim != 3:
            raise ValueError(f"inputs_embeds: expected (B, S, D), got {tuple(inputs_embeds.shape)}")
        positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
        cos, sin = self.rotary_emb(inputs_embeds, positions[None])
        hidden = inputs_embeds
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), is_causal=False)
        return self.norm(hidden)

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
        state = _LoopState(hidden=inputs_embeds, cos=cos, sin=sin, rows=full_positions, num_visual=num_visual)
        prefill_sum = {g: torch.zeros(num_visual, device=device) for g in prefill_groups}
        action_sum = torch.zeros(num_visual, device=device)
        action_count = torch.zeros(num_visual, device=device)
        layer_rows: list[int] = []
        # Current rows of each query group; they only change when tokens are dropped, so they are
        # worked out once per stretch of layers instead of once per layer.
        query_row_cache: dict[str, slice | torch.Tensor] = {}

        def query_rows(group: str, index: int) -> slice | torch.Tensor:
            if group not in query_row_cache:
                try:
                    query_row_cache[group] = current_rows(layout, layout.rows(group), state.num_visual)
                except RuntimeError as error:
                    raise RuntimeError(f"layer {index}: score query group {group!r}: {error}") from None
            return query_row_cache[group]

        def run_layers(first: int, last: int) -> None:
            for index in range(first, last):
                groups = {}
                if index in score_layers:  # always before pruning: original row indices
                    groups.update({g: query_rows(g, index) for g in prefill_groups})
                if index in action_layers:
                    groups[_ACTION_KEY] = query_rows("action", index)
                request = ScoreRequest(groups, slice(1, 1 + state.num_visual), causal) if groups else None
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
                    present = state.visual_present()  # unique indices: index_add_ adds each once
                    action_sum.index_add_(0, present, request.scores[_ACTION_KEY])
                    action_count.index_add_(0, present, torch.ones_like(request.scores[_ACTION_KEY]))

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
                query_row_cache.clear()
            with timer.stage("llm_suffix"):
                run_layers(prune_layer, num_layers)
        hidden = self.norm(state.hidden)

        action_scores = action_observed = None
        if action_layers:
            action_observed = action_count == len(action_layers)
            action_scores = action_sum / action_count.clamp(min=1)
        readout_index = current_rows(layout, readout_rows(layout), state.num_visual)
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
    num_visual: int  # visual rows currently in the sequence

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
