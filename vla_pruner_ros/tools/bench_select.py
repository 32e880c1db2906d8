"""Micro-benchmark of token selection: how long does choosing the kept tokens take?

For M visual tokens of width d, every method's `select()` is timed (median over repeats, warm-up
excluded) next to one dense (M x d) @ (d x d) matrix product of the same width, the cost of a single
linear projection of the visual tokens, so the overhead reads as a ratio.  Inputs are synthetic
but shaped like the real ones: clustered features (neighbouring image patches are alike, which is
what the diversity filter works on), heavy-tailed prefill attention and peaked action attention.

    python -m vla_pruner_ros.tools.bench_select                # M=512, d=1024/4096, keep 50/25/12.5 %
    python -m vla_pruner_ros.tools.bench_select --device cuda --dims 4096 --repeats 100
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Dict, List, Optional, Sequence

import torch

from vla_pruner_ros.pruning import METHODS, PrunerConfig, make_pruner

NUM_LAYERS = 32  # Llama-2 7B; only used to resolve the default action layers


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--num-visual", type=int, default=512, help="M, visual tokens (OFT: 2 views x 256)")
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 4096], help="feature widths d")
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.25, 0.125], help="keep ratios")
    parser.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "none"], choices=METHODS)
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per row")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds before timing")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the features and of the reference matmul")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _spread(samples: Sequence[float]):
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return statistics.median(ordered), pick(0.1), pick(0.9)


def make_inputs(num_visual: int, width: int, steps: int, device, dtype, generator: torch.Generator) -> List[Dict]:
    """`steps` synthetic steps: clustered features, prefill scores of every group, action scores."""
    centres = torch.randn(32, width, generator=generator)
    inputs = []
    for _ in range(steps):
        cluster = torch.randint(0, 32, (num_visual,), generator=generator)
        features = centres[cluster] + 0.5 * torch.randn(num_visual, width, generator=generator)
        prefill = {g: (2.0 * torch.randn(num_visual, generator=generator)).softmax(0)
                   for g in ("vl", "prefix", "last", "all", "text")}
        action = (3.0 * torch.randn(num_visual, generator=generator)).softmax(0)
        inputs.append(dict(
            features=features.to(device=device, dtype=dtype),
            prefill={g: s.to(device) for g, s in prefill.items()},
            action=action.to(device),
        ))
    return inputs


class SelectTimer:
    """Steps one method's pruner like the model would; `sample()` returns the ms of one `select()`.

    History methods first run their unpruned warm-up steps (plan, observe; nothing timed).
    """

    def __init__(self, method: str, keep_ratio: float, inputs: List[Dict], device):
        self.pruner = make_pruner(PrunerConfig(method=method, keep_ratio=keep_ratio))
        self.inputs, self.device, self.step = inputs, device, 0
        self.num_visual = inputs[0]["features"].shape[0]

    def sample(self) -> float:
        for _ in range(self.pruner.config.window + 1):
            data = self.inputs[self.step % len(self.inputs)]
            self.step += 1
            plan = self.pruner.plan(num_visual_tokens=self.num_visual, num_layers=NUM_LAYERS)
            observed = torch.ones(self.num_visual, dtype=torch.bool, device=self.device)
            elapsed_ms = None
            if plan.prune:
                scores = {g: data["prefill"][g] for g in plan.prefill_groups}
                _synchronize(self.device)
                start = time.perf_counter()
                selection = self.pruner.select(features=data["features"], prefill_scores=scores)
                _synchronize(self.device)
                elapsed_ms = (time.perf_counter() - start) * 1e3
                observed = torch.zeros_like(observed)
                observed[selection.kept] = True
            if plan.action_layers:
                self.pruner.observe(action_scores=data["action"], observed=observed)
            if elapsed_ms is not None:
                return elapsed_ms
        raise ValueError(f"method {self.pruner.name!r} at keep_ratio={self.pruner.config.keep_ratio} never prunes: "
                         "nothing to time")


class MatmulTimer:
    """One dense (M x d) @ (d x d) product: a single linear projection of the M visual tokens."""

    def __init__(self, num_visual: int, width: int, device, dtype, generator: torch.Generator):
        self.tokens = torch.randn(num_visual, width, generator=generator).to(device=device, dtype=dtype)
        self.weight = torch.randn(width, width, generator=generator).to(device=device, dtype=dtype)
        self.device = device

    def sample(self) -> float:
        _synchronize(self.device)
        start = time.perf_counter()
        self.tokens @ self.weight
        _synchronize(self.device)
        return (time.perf_counter() - start) * 1e3


def benchmark(args: argparse.Namespace) -> List[Dict]:
    """Run the grid: per (width, keep ratio) a matmul row and one row per method.

    Samples are taken round-robin (matmul, method 1, method 2, ..., then again), so a machine that
    speeds up or slows down during the run shifts the reference and the methods alike and the
    ratios stay comparable.
    """
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"--repeats={args.repeats} / --warmup={args.warmup}: expected repeats >= 1, warmup >= 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    for width in args.dims:
        inputs = make_inputs(args.num_visual, width, 4, device, dtype, generator)
        matmul = MatmulTimer(args.num_visual, width, device, dtype, generator)
        for keep_ratio in args.keeps:
            timers = {"matmul": matmul}
            timers.update((method, SelectTimer(method, keep_ratio, inputs, device)) for method in args.methods)
            samples = {name: [] for name in timers}
            for round_index in range(args.warmup + args.repeats):
                for name, timer in timers.items():
                    elapsed_ms = timer.sample()
                    if round_index >= args.warmup:
                        samples[name].append(elapsed_ms)
            matmul_median = statistics.median(samples["matmul"])
            for name, values in samples.items():
                median, p10, p90 = _spread(values)
                rows.append(dict(width=width, keep=keep_ratio, method=name, median=median, p10=p10, p90=p90,
                                 ratio=median / matmul_median))
    return rows


def format_table(rows: List[Dict]) -> str:
    lines = [f"{'d':>5} {'keep':>6} {'method':<13} {'median ms':>10} {'p10-p90 ms':>17} {'x matmul':>9}"]
    for row in rows:
        keep = f"{row['keep'] * 100:g}%"
        spread = f"{row['p10']:.3f}-{row['p90']:.3f}"
        lines.append(f"{row['width']:>5} {keep:>6} {row['method']:<13} {row['median']:>10.3f} {spread:>17} "
                     f"{row['ratio']:>9.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = benchmark(args)
    threads = torch.get_num_threads()
    device = args.device
    if torch.device(device).type == "cuda":
        device += f" ({torch.cuda.get_device_name(torch.device(device))})"
    print(f"selection time, M={args.num_visual}, device={device}, dtype={args.dtype}, torch threads={threads}, "
          f"{args.repeats} timed calls after {args.warmup} warm-up rounds, sampled round-robin with the matmul")
    print(f"'x matmul' = median / median of one ({args.num_visual} x d) @ (d x d) matmul in the same rounds")
    print(format_table(rows))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
