"""Relevance scores of the visual tokens: S_vl (paper Eq. 2) and S_act (Eq. 3/4).

A score is the attention that a group of query rows pays to each visual key column, taken from the
softmax over ALL keys (so it is the real attention probability, not a softmax restricted to the
visual span), averaged over heads and over the group's rows.  Two entry points:

* `visual_attention_scores_from_probs(probs, visual_slice, query_rows)` when the layer already
  returns attention probabilities (eager attention, `output_attentions=True`);
* `visual_attention_scores(query, key, visual_slice, query_rows)` from the layer's (post-RoPE)
  query/key tensors when it runs a fused kernel (SDPA / flash) that never forms the probabilities.
  It computes the softmax rows of the chosen queries only, a chunk of rows at a time, so it never
  holds more than heads x chunk_rows x keys floats.

Which query rows count (`SequenceLayout.rows(group)`, sequence layout of docs/CONTRACTS.md):

* "vl"  -- Eq. 2's vision-language queries: BOS, the M visual rows, the proprio row and the prompt
  rows, plus `</s>`; NOT the rows the action head reads (the final prompt row `▁` and the first
  chunk*action_dim - 1 placeholders) and not the last placeholder.  The paper treats the proprio
  token as part of the vision-language context (§3.1); the action-reading rows are S_act's queries,
  and counting them in S_vl too would blur the two levels the method keeps apart.  The last
  placeholder row is read by nothing (its output is discarded), so it belongs to neither level.
* "action" -- Eq. 4's action queries: the rows whose last-layer outputs the OFT head reads, i.e. the
  `▁` row and the first chunk*action_dim - 1 placeholders (OFT reads one position to the left).
  OFT attention is bidirectional, so these rows see the visual tokens in every layer; the paper
  averages S_act over the latter half of the layers (PrunerConfig.action_layers).
* "prefix" -- every row BEFORE the action rows: BOS, the M visual rows, the proprio row and the
  prompt without its final `▁`.  FastV as the paper and the authors' OFT code define it for OFT
  (their prefill score averages the rows before the action readout positions).  Equals "vl" minus
  the `</s>` row.
* "last" -- the single last row before the action rows (the prompt row before `▁`): FastV's own
  score, the attention of the last prompt token (in a causal LLM, the token that generates).
* "all" -- every row, the action rows included.  NOT FastV for OFT: attention is bidirectional, so
  the placeholder rows already attend to the visual tokens in layer K-1 and this score holds the
  current step's action-to-vision attention (method `fastv_all_rows`, an OFT-specific selector).
* "text" -- the P prompt rows (without BOS): SparseVLM-style text-to-vision relevance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

QUERY_GROUPS = ("vl", "prefix", "last", "all", "text", "action")
RowsLike = Union[torch.Tensor, slice, Sequence[int]]


@dataclass(frozen=True)
class SequenceLayout:
    """Row positions of one OFT step (batch 1): BOS, M visual, [proprio], P prompt, A placeholders, </s>.

    `num_prompt` counts the prompt rows without BOS and including the final `▁` (id 29871);
    `num_action` = chunk * action_dim placeholder rows.
    """

    num_visual: int
    num_prompt: int
    num_action: int
    has_proprio: bool = True

    def __post_init__(self):
        for name, low in (("num_visual", 1), ("num_prompt", 1), ("num_action", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"SequenceLayout.{name}={value!r} is invalid: expected an int >= {low}")

    @property
    def visual(self) -> slice:
        return slice(1, 1 + self.num_visual)

    @property
    def prompt(self) -> slice:
        start = 1 + self.num_visual + int(self.has_proprio)
        return slice(start, start + self.num_prompt)

    @property
    def placeholders(self) -> slice:
        start = self.prompt.stop
        return slice(start, start + self.num_action)

    @property
    def length(self) -> int:
        return self.placeholders.stop + 1  # + </s>

    @property
    def action_rows(self) -> slice:
        """The rows the action head reads: `▁` and the first num_action - 1 placeholders."""
        start = self.prompt.stop - 1
        return slice(start, start + self.num_action)

    def rows(self, group: str) -> torch.Tensor:
        """0-based query row indices (LongTensor, ascending) of a query group."""
        every_row = torch.arange(self.length)
        if group == "all":
            return every_row
        if group == "prefix":
            return every_row[: self.action_rows.start]
        if group == "last":
            return every_row[self.action_rows.start - 1: self.action_rows.start]
        if group == "text":
            return every_row[self.prompt]
        if group == "action":
            return every_row[self.action_rows]
        if group == "vl":
            is_vl = torch.ones(self.length, dtype=torch.bool)
            is_vl[self.action_rows] = False
            is_vl[self.placeholders] = False
            return every_row[is_vl]
        raise ValueError(f"group={group!r} is invalid: expected one of {QUERY_GROUPS}")


def _row_index(query_rows: RowsLike, num_rows: int, device) -> torch.Tensor:
    if isinstance(query_rows, slice):
        rows = torch.arange(num_rows)[query_rows]
    else:
        rows = torch.as_tensor(query_rows)
    if rows.dim() != 1 or rows.numel() == 0 or rows.dtype in (torch.bool, torch.float16, torch.float32, torch.float64):
        raise ValueError(f"query_rows must select a non-empty 1-D set of integer row indices, got {query_rows!r}")
    if int(rows.min()) < 0 or int(rows.max()) >= num_rows:
        raise ValueError(f"query_rows must lie in [0, {num_rows}), got min={int(rows.min())} max={int(rows.max())}")
    return rows.to(device=device, dtype=torch.long)


def _row_chunks(query_rows: RowsLike, num_rows: int, device, chunk_rows: int) -> tuple[list, int]:
    """The query rows as chunks of at most `chunk_rows`, and how many rows there are in all.

    A contiguous slice (step 1) stays a slice: its chunks are views of the query, and checking it
    needs no device read, so a caller on an accelerator does not stall on a host sync. Anything else
    becomes a validated index tensor, split into index chunks.
    """
    if isinstance(query_rows, slice) and query_rows.step in (None, 1):
        start, stop, _ = query_rows.indices(num_rows)
        if stop <= start:
            raise ValueError(f"query_rows must select a non-empty 1-D set of integer row indices, got {query_rows!r}")
        return [slice(low, min(low + chunk_rows, stop)) for low in range(start, stop, chunk_rows)], stop - start
    rows = _row_index(query_rows, num_rows, device)
    return list(rows.split(chunk_rows)), rows.numel()


def _check_visual_slice(visual_slice: slice, num_keys: int) -> None:
    if not isinstance(visual_slice, slice) or visual_slice.step not in (None, 1):
        raise ValueError(f"visual_slice={visual_slice!r} is invalid: expected a contiguous slice(start, stop)")
    start, stop, _ = visual_slice.indices(num_keys)
    if stop <= start:
        raise ValueError(f"visual_slice={visual_slice!r} selects no key column out of {num_keys}")


def _drop_batch(tensor: torch.Tensor, name: str, dims: int) -> torch.Tensor:
    """Accept (1, ...) batched tensors; the pruner works on batch 1 (CONTRACTS: no padding)."""
    if tensor.dim() == dims + 1:
        if tensor.shape[0] != 1:
            raise ValueError(f"{name} has batch size {tensor.shape[0]}: only batch 1 is supported")
        tensor = tensor[0]
    if tensor.dim() != dims:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}: expected {dims} dims (or {dims + 1} with batch 1)")
    return tensor


def visual_attention_scores_from_probs(
    probs: torch.Tensor, visual_slice: slice, query_rows: RowsLike, chunk_rows: int = 128
) -> torch.Tensor:
    """Mean over heads and `query_rows` of `probs[h, row, visual_slice]`, float32 of shape (M,).

    `probs` is (heads, S_q, S_k) or (1, heads, S_q, S_k): softmax over all S_k keys, as returned by
    attention layers with output_attentions.  Rows are averaged in float32, chunk by chunk.
    """
    probs = _drop_batch(probs, "probs", 3)
    _check_visual_slice(visual_slice, probs.shape[-1])
    rows = _row_index(query_rows, probs.shape[1], probs.device)
    total = None
    for chunk in rows.split(chunk_rows):
        part = probs[:, chunk, visual_slice].float().sum(dim=(0, 1))
        total = part if total is None else total + part
    return total / (probs.shape[0] * rows.numel())


def visual_attention_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    visual_slice: slice,
    query_rows: RowsLike,
    *,
    scale: Optional[float] = None,
    causal: bool = False,
    chunk_rows: int = 128,
) -> torch.Tensor:
    """Attention probabilities paid by `query_rows` to the visual keys, from q/k; float32 (M,).

    Args:
        query: (heads, S_q, head_dim) or (1, heads, S_q, head_dim), after RoPE.
        key: (kv_heads, S_k, head_dim) or batched; kv_heads must divide heads (grouped-query
            attention is handled without repeating the keys).
        visual_slice: the visual key columns, e.g. slice(1, 1 + M).
        query_rows: which query rows to average over (LongTensor, list or slice of row indices).
        scale: softmax scale, default 1 / sqrt(head_dim).
        causal: mask keys after the query position (query row r sees keys 0..r; needs S_q == S_k).
            False for OpenVLA-OFT, whose attention is bidirectional.
        chunk_rows: rows per chunk; at most heads x chunk_rows x S_k probabilities exist at once.

    The softmax runs over ALL keys in float32, so the result equals
    `visual_attention_scores_from_probs(softmax(q k^T * scale), ...)` up to rounding.
    """
    query = _drop_batch(query, "query", 3)
    key = _drop_batch(key, "key", 3)
    num_heads, num_queries, head_dim = query.shape
    num_kv_heads, num_keys, key_dim = key.shape
    if key_dim != head_dim or num_heads % num_kv_heads != 0:
        raise ValueError(
            f"query {tuple(query.shape)} and key {tuple(key.shape)} do not match: expected the same head_dim "
            "and kv_heads dividing heads"
        )
    if causal and num_queries != num_keys:
        raise ValueError(f"causal=True needs S_q == S_k, got S_q={num_queries} S_k={num_keys}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows={chunk_rows!r} is invalid: expected an int >= 1")
    _check_visual_slice(visual_slice, num_keys)
    chunks, num_rows = _row_chunks(query_rows, num_queries, query.device, chunk_rows)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale

    group_size = num_heads // num_kv_heads
    key_t = key.float().transpose(-1, -2)  # (kv, head_dim, S_k)
    total = None
    for chunk in chunks:
        # Scale the queries (rows x head_dim), not the logits (rows x S_k): one pass fewer over the
        # larger tensor, and the product is contiguous, so the grouping below is a free view.
        chunk_query = query[:, chunk].float() * scale  # (heads, rows, head_dim)
        rows_here = chunk_query.shape[1]
        # heads h = kv * group_size + g share key head kv (the layout of repeat_kv): as rows of one
        # (kv, group * rows) batch, grouped-query attention needs no repeated keys.
        logits = chunk_query.reshape(num_kv_heads, group_size * rows_here, head_dim) @ key_t
        if causal:
            positions = torch.arange(num_queries, device=query.device)[chunk].repeat(group_size)
            future = torch.arange(num_keys, device=query.device)[None, :] > positions[:, None]
            logits = logits.masked_fill(future, float("-inf"))
        part = logits.softmax(dim=-1)[..., visual_slice].sum(dim=(0, 1))
        total = part if total is None else total + part
    return total / (num_heads * num_rows)
