"""The machine's matmul peak for a dtype, measured at the model's own GEMM shapes.

A step's achieved FLOP/s (its measured FLOPs / its median time) means little on its own: 400
GFLOP/s is most of a laptop's float32 rate and a tenth of its bfloat16 rate. So the benchmark first
runs a short probe: every distinct GEMM the model's linear layers run in a step (rows x in ->
out, rows = the tokens a layer sees), each timed for a fraction of a second with the same threads,
device and dtype, and takes the best rate as the peak. Each configuration is then reported as a
fraction of it (like nanoGPT's MFU: model FLOPs utilisation). The peak is what ``torch.matmul``
reaches on this machine, not a datasheet number: a step cannot beat it with the same kernels.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class GemmShape:
    rows: int  # M: tokens through the layer
    inner: int  # K: input features
    cols: int  # N: output features
    where: str  # which layers run it

    @property
    def flops(self) -> int:
        return 2 * self.rows * self.inner * self.cols


@dataclass(frozen=True)
class GemmPeak:
    dtype: str
    device: str
    threads: int
    gflops: float  # the best shape's rate: the peak
    best: str  # that shape, "MxKxN (where)"
    shapes: list[dict]  # every shape probed with its GFLOP/s

    def as_dict(self) -> dict:
        return asdict(self)


def model_gemm_shapes(policy, rows: int | None = None) -> list[GemmShape]:
    """The distinct (M, K, N) of the linear layers of one unpruned step of ``policy``'s model:
    the towers (all views' patches as one batch), the projector and the decoder layers (``rows``:
    the decoder sequence length; default: the visual tokens + 64)."""
    config = policy.config
    text = config.text_config
    views = len(policy.view_names)
    patches = views * config.patches_per_view
    rows = rows or patches + 64
    heads = text.num_attention_heads
    kv_heads = text.num_key_value_heads or heads
    head_dim = text.head_dim or text.hidden_size // heads
    d, m = text.hidden_size, text.intermediate_size
    shapes = []
    seen = set()

    def add(shape: GemmShape) -> None:
        key = (shape.rows, shape.inner, shape.cols)
        if key not in seen:
            seen.add(key)
            shapes.append(shape)

    backbone = policy.model.vision_backbone
    for name, tower in (("dinov2", backbone.featurizer), ("siglip", backbone.fused_featurizer)):
        width = tower.embed_dim
        tokens = views * (config.patches_per_view + getattr(tower, "num_prefix_tokens", 0))
        hidden = tower.blocks[0].mlp.fc1.out_features
        add(GemmShape(tokens, width, 3 * width, f"{name} qkv"))
        add(GemmShape(tokens, width, hidden, f"{name} mlp fc1"))
        add(GemmShape(tokens, hidden, width, f"{name} mlp fc2"))
    projector = policy.model.projector
    add(GemmShape(patches, projector.fc1.in_features, projector.fc1.out_features, "projector fc1"))
    add(GemmShape(patches, projector.fc2.in_features, projector.fc2.out_features, "projector fc2"))
    add(GemmShape(rows, d, (heads + 2 * kv_heads) * head_dim, "llm q/k/v"))
    add(GemmShape(rows, heads * head_dim, d, "llm o"))
    add(GemmShape(rows, d, 2 * m, "llm gate/up"))
    add(GemmShape(rows, m, d, "llm down"))
    return shapes


def _rate(shape: GemmShape, dtype: torch.dtype, device: torch.device, seconds: float,
          synchronize: Callable[[], None]) -> float:
    """GFLOP/s of ``x @ w.T`` at ``shape``: median of repeated timings for about ``seconds``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape.rows, shape.inner, generator=generator).to(device=device, dtype=dtype)
    w = torch.randn(shape.cols, shape.inner, generator=generator).to(device=device, dtype=dtype)
    with torch.inference_mode():
        torch.nn.functional.linear(x, w)  # first call: kernel selection, allocation
        synchronize()
        times = []
        deadline = time.perf_counter() + seconds
        while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
            start = time.perf_counter()
            torch.nn.functional.linear(x, w)
            synchronize()
            times.append(time.perf_counter() - start)
    return shape.flops / statistics.median(times) / 1e9


def measure_gemm_peak(shapes: list[GemmShape], dtype: torch.dtype, device: str | torch.device = "cpu",
                      seconds_per_shape: float = 0.3) -> GemmPeak:
    """The best GFLOP/s over ``shapes`` (each timed for ``seconds_per_shape``; two passes, the better
    rate per shape counts, so a shape probed during a burst of other load gets a second chance)."""
    if not shapes:
        raise ValueError("measure_gemm_peak: shapes is empty")
    device = torch.device(device)
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    rates = {shape: 0.0 for shape in shapes}
    for _ in range(2):
        for shape in shapes:
            rates[shape] = max(rates[shape], _rate(shape, dtype, device, seconds_per_shape / 2, synchronize))
    best = max(shapes, key=lambda s: rates[s])
    return GemmPeak(
        dtype=str(dtype).removeprefix("torch."), device=str(device), threads=torch.get_num_threads(),
        gflops=rates[best], best=f"{best.rows}x{best.inner}x{best.cols} ({best.where})",
        shapes=[{**asdict(s), "gflops": rates[s]} for s in shapes])
