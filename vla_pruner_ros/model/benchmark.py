"""Step latency of the OFT policy, vanilla vs a pruning method, measured in one run.

    python -m vla_pruner_ros.model.benchmark --preset tiny --preset scaled --steps 15

For each preset: write the checkpoint to a temporary directory, load two policies from it (one
vanilla, one with the pruner), run both past their warm-up (the pruner's history window plus a
few steps), then alternate them step by step (so background load hits both alike) and report the
median ms per step and the ratio. Only ratios measured in the same run should be compared.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..pruning import PrunerConfig
from .checkpoint import make_checkpoint
from .policy import load_policy

INSTRUCTION = "pick up the red block and put it in the basket"


def _observation(policy, seed: int):
    rng = np.random.default_rng(seed)
    size = policy.config.image_size
    images = {name: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for name in policy.view_names}
    proprio = rng.uniform(-0.5, 0.5, policy.proprio_dim) if policy.proprio_dim else None
    return images, proprio


def benchmark_preset(preset: str, method: str, keep_ratio: float, steps: int, warmup: int,
                     device: str | None, checkpoint: str | None = None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = checkpoint or make_checkpoint(preset, Path(tmp) / preset, seed=0)
        vanilla = load_policy(path, device=device)
        pruned = load_policy(path, device=device)
        config = PrunerConfig(method=method, keep_ratio=keep_ratio)
        pruned.set_pruner(config)
        images, proprio = _observation(vanilla, seed=0)
        history = config.window
        for _ in range(warmup + history):
            vanilla.predict(images, proprio, INSTRUCTION)
            out = pruned.predict(images, proprio, INSTRUCTION)
        if not out.pruned:
            raise RuntimeError(f"{method} at keep_ratio={keep_ratio} did not prune after warm-up")
        times: dict[str, list[float]] = {"vanilla": [], "pruned": [], "vanilla_llm": [], "pruned_llm": []}
        for _ in range(steps):
            for name, policy in (("vanilla", vanilla), ("pruned", pruned)):
                out = policy.predict(images, proprio, INSTRUCTION)
                times[name].append(out.timings["total"])
                llm = sum(out.timings.get(k, 0.0) for k in ("llm_prefix", "select", "llm_suffix"))
                times[f"{name}_llm"].append(llm)
        medians = {k: statistics.median(v) for k, v in times.items()}
        medians["speedup"] = medians["vanilla"] / medians["pruned"]
        medians["llm_speedup"] = medians["vanilla_llm"] / medians["pruned_llm"] if medians["pruned_llm"] else 0.0
        medians["flops_ratio"] = out.flops["ratio"]
        medians["kept"] = len(out.kept_indices)
        medians["num_visual"] = out.num_visual_tokens
        return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", choices=["tiny", "scaled"], help="repeatable (default: both)")
    parser.add_argument("--checkpoint", default=None, help="benchmark this directory instead of a preset")
    parser.add_argument("--method", default="vla_pruner")
    parser.add_argument("--keep-ratio", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per policy")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (besides the pruner warm-up)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    targets = [args.checkpoint] if args.checkpoint else (args.preset or ["tiny", "scaled"])
    print(f"device={args.device or ('cuda' if torch.cuda.is_available() else 'cpu')} "
          f"threads={torch.get_num_threads()} method={args.method} keep_ratio={args.keep_ratio} steps={args.steps}")
    for target in targets:
        is_dir = args.checkpoint is not None
        r = benchmark_preset("tiny" if is_dir else target, args.method, args.keep_ratio, args.steps, args.warmup,
                             args.device, checkpoint=target if is_dir else None)
        print(f"{target}: vanilla {r['vanilla']:.1f} ms/step, {args.method}@{args.keep_ratio:.0%} "
              f"{r['pruned']:.1f} ms/step (x{r['speedup']:.2f}); LLM only {r['vanilla_llm']:.1f} vs "
              f"{r['pruned_llm']:.1f} ms (x{r['llm_speedup']:.2f}); kept {r['kept']}/{r['num_visual']}, "
              f"analytic LLM FLOPs ratio {r['flops_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
