"""FLOPs of one policy step: measured on the real forward, and analytic (paper App. A.2).

Measured: ``torch.utils.flop_counter.FlopCounterMode`` around one ``Policy.predict`` counts 2 FLOPs
per multiply-add of every matmul/convolution that actually runs (elementwise ops, norms, softmax
are not counted). Two gaps are filled here:

- SDPA on CPU dispatches to ``aten._scaled_dot_product_flash_attention_for_cpu``, which torch
  2.14's counter has no formula for (it counts the CUDA kernels only), so the attention of the
  vision towers and of the LLM would read as 0 FLOPs on CPU. ``CPU_SDPA_FORMULA`` adds it: QK^T
  and PV, 2 * heads * S_q * S_k * (d_qk + d_v) per batch element, like the CUDA formulas.
- The counter attributes FLOPs to modules; ``FlopBreakdown`` splits them into the vision towers +
  projector, the decoder layers, the side-score capture inside those layers (the only batched
  matmuls there: the Llama projections are 2-D ``mm``), the selection (what runs in the decoder
  outside any layer: the cosine-distance matrix of the diversity filter) and the two small heads.

Analytic: the paper's Eq. 10-13 (``vla_pruner_ros.model.llm_flops``) counts multiply-adds of a
two-matrix FFN, so its absolute numbers are not the measured ones; its ratio is comparable.
``llama_layer_flops`` is the exact count of one of our Llama layers (three-matrix FFN, grouped KV,
2 FLOPs per multiply-add), which the measured decoder-layer FLOPs must equal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..model.policy import llm_flops


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    batch, heads, query_len, head_dim = query_shape
    key_len, value_dim = key_shape[2], value_shape[3]
    return 2 * batch * heads * query_len * key_len * (head_dim + value_dim)


CPU_SDPA_FORMULA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
SCORE_CAPTURE_OPS = ("aten.bmm",)  # batched matmuls inside decoder layers = side-score capture


@dataclass(frozen=True)
class FlopBreakdown:
    """FLOPs of one step, split by where they run (2 FLOPs per multiply-add)."""

    total: int
    vision: int  # vision towers + projector (never pruned)
    decoder_layers: int  # the Llama layers' own work (projections, attention, MLP)
    score_capture: int  # side scores (S_vl / S_act / FastV) computed inside the layers
    selection: int  # token selection inside the decoder (e.g. Alg. 1's distance matrix)
    heads: int  # proprio projector + action head

    @property
    def llm(self) -> int:
        """Everything the LLM stage runs: layers, score capture and selection."""
        return self.decoder_layers + self.score_capture + self.selection

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "llm": self.llm}


def count_flops(model: torch.nn.Module, step: Callable[[], Any]) -> tuple[FlopBreakdown, Any]:
    """Run ``step()`` (one forward of ``model``, e.g. a ``predict``) under the FLOP counter.

    Returns the breakdown and what ``step`` returned.
    """
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FORMULA) as counter:
        result = step()
    return breakdown_from_counts(counter.get_flop_counts(), type(model).__name__), result


def breakdown_from_counts(counts: dict[str, dict[Any, int]], root: str) -> FlopBreakdown:
    """Split ``FlopCounterMode.get_flop_counts()`` (module name -> op -> FLOPs) of an OFT model."""
    def total(name: str, ops: Sequence[str] | None = None) -> int:
        per_op = counts.get(name, {})
        return sum(v for op, v in per_op.items() if ops is None or str(op) in ops)

    decoder = f"{root}.language_model.model"
    layer_names = [name for name in counts if name.startswith(f"{decoder}.layers.")
                   and name.count(".") == decoder.count(".") + 2]  # the layers themselves, not their children
    layers_all = sum(total(name) for name in layer_names)
    capture = sum(total(name, SCORE_CAPTURE_OPS) for name in layer_names)
    return FlopBreakdown(
        total=total("Global"),
        vision=total(f"{root}.vision_backbone") + total(f"{root}.projector"),
        decoder_layers=layers_all - capture,
        score_capture=capture,
        selection=total(decoder) - layers_all,
        heads=total(f"{root}.proprio_projector") + total(f"{root}.action_head"),
    )


# ------------------------------------------------------------------------------------- analytic
def paper_llm_flops(num_layers: int, hidden_size: int, intermediate_size: int, seq_len: int,
                    pruned_seq_len: int | None, prune_layer: int | None) -> dict[str, float]:
    """Paper Eq. 10-13: FLOPs_full = T C(mu), FLOPs_prune = K C(mu) + (T-K) C(mu~) and their ratio."""
    return llm_flops(num_layers, hidden_size, intermediate_size, seq_len, pruned_seq_len, prune_layer)


def llama_layer_flops(rows: int, hidden_size: int, intermediate_size: int, num_heads: int,
                      num_kv_heads: int, head_dim: int) -> int:
    """Exact FLOPs (2 per multiply-add) of one bidirectional Llama layer on ``rows`` rows.

    q/o projections 2·n·d·(H·h) each, k/v 2·n·d·(H_kv·h) each, attention QK^T and PV
    2·H·n²·h each, MLP (gate, up, down) 3 · 2·n·d·m.
    """
    n, d, m = rows, hidden_size, intermediate_size
    projections = 2 * n * d * (2 * num_heads * head_dim + 2 * num_kv_heads * head_dim)
    attention = 2 * 2 * num_heads * n * n * head_dim
    mlp = 3 * 2 * n * d * m
    return projections + attention + mlp


def llama_decoder_flops(rows_per_layer: Sequence[int], text_config) -> int:
    """Exact FLOPs of the decoder layers given the rows each layer ran on (``DecoderOutput.layer_rows``)."""
    heads = text_config.num_attention_heads
    kv_heads = text_config.num_key_value_heads or heads
    head_dim = text_config.head_dim or text_config.hidden_size // heads
    return sum(llama_layer_flops(rows, text_config.hidden_size, text_config.intermediate_size, heads,
                                 kv_heads, head_dim) for rows in rows_per_layer)
