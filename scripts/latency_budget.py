#!/usr/bin/env python3
"""Does the latency budget (PrunerConfig.target_ms, issue 17) hold its target?

For each target: one run of --steps policy steps; a competing CPU load (a busy process, same
niceness) starts at --load-from and stops at --load-until, so every run has a quiet and a loaded
part.  Per step: total step time, the keep ratio the controller chose, its prediction.  Prints the
fraction of steps within +5 % of the target (quiet / loaded, after --settle steps of each part) and
writes latency_budget.json and latency_budget.png (chosen ratio and step time over time).

    python scripts/latency_budget.py --preset scaled --targets 60,90 --steps 160 --out /tmp/lat
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path


def _busy(stop_at: float) -> None:  # the competing load: a Python spin (one core)
    os.nice(0)
    x = 0
    while time.time() < stop_at:
        x = (x * 1103515245 + 12345) % 2147483648


def run(policy, observations, target_ms: float, steps: int, load_from: int, load_until: int, min_ratio: float,
        method: str):
    from vla_pruner_ros.pruning import PrunerConfig

    policy.set_pruner(PrunerConfig(method=method, keep_ratio=1.0, target_ms=target_ms, min_keep_ratio=min_ratio))
    policy.reset()
    rows, load = [], None
    for step in range(steps):
        if step == load_from:
            load = multiprocessing.Process(target=_busy, args=(time.time() + 3600,), daemon=True)
            load.start()
        if step == load_until and load is not None:
            load.terminate()
            load.join()
            load = None
        obs = observations[step % len(observations)]
        out = policy.predict(obs.images, obs.proprio, obs.instruction)
        rows.append({"step": step, "loaded": load is not None, "total_ms": out.timings["total"],
                     "kept": int(len(out.kept_indices)), "ratio": len(out.kept_indices) / out.num_visual_tokens,
                     "predicted_ms": out.pruner.get("predicted_ms"), "warmup": bool(out.warmup)})
    if load is not None:
        load.terminate()
        load.join()
    return rows


def summarize(rows, target_ms: float, settle: int) -> dict:
    parts = {}
    for loaded in (False, True):
        part = [r for r in rows if r["loaded"] == loaded]
        # skip the first `settle` steps of each contiguous part (the controller re-fits)
        segments, current = [], []
        for r in part:
            if current and r["step"] != current[-1]["step"] + 1:
                segments.append(current)
                current = []
            current.append(r)
        if current:
            segments.append(current)
        kept = [r for seg in segments for r in seg[settle:] if not r["warmup"]]
        within = sum(r["total_ms"] <= 1.05 * target_ms for r in kept)
        parts["loaded" if loaded else "quiet"] = {
            "steps": len(kept), "within_5pct": within / len(kept) if kept else float("nan"),
            "mean_ms": sum(r["total_ms"] for r in kept) / len(kept) if kept else float("nan"),
            "mean_ratio": sum(r["ratio"] for r in kept) / len(kept) if kept else float("nan")}
    return parts


def plot(results, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, dpi=110)
    for target, rows in results.items():
        steps = [r["step"] for r in rows]
        line = axes[0].plot(steps, [r["ratio"] for r in rows], label=f"target {target:g} ms")[0]
        axes[1].plot(steps, [r["total_ms"] for r in rows], color=line.get_color(), lw=0.8)
        axes[1].axhline(target, color=line.get_color(), ls="--", lw=0.8)
        axes[1].axhline(1.05 * target, color=line.get_color(), ls=":", lw=0.8)
        loaded = [r["step"] for r in rows if r["loaded"]]
        if loaded:
            for ax in axes:
                ax.axvspan(min(loaded), max(loaded), color="0.9", zorder=0)
    axes[0].set_ylabel("chosen keep ratio")
    axes[0].legend(loc="lower left")
    axes[1].set_ylabel("step time (ms)")
    axes[1].set_xlabel("policy step (grey: competing CPU load)")
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="scaled", help="random-weight preset of vla-pruner bench")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint directory instead of a preset")
    parser.add_argument("--targets", default="60,90", help="comma-separated target step times (ms)")
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--load-from", type=int, default=60)
    parser.add_argument("--load-until", type=int, default=120)
    parser.add_argument("--settle", type=int, default=8, help="steps skipped after each load change")
    parser.add_argument("--min-ratio", type=float, default=0.05)
    parser.add_argument("--method", default="vla_pruner")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch

    from vla_pruner_ros.benchmarking.models import make_observations, random_policy
    from vla_pruner_ros.model import load_policy

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        policy = load_policy(args.checkpoint, dtype="float32", announce=False)
    else:
        policy = random_policy(args.preset, dtype=torch.float32)
    observations = make_observations(policy, 16, seed=0)
    args.out.mkdir(parents=True, exist_ok=True)
    # unpruned and pruned reference times, to place the targets
    policy.set_pruner(None)
    for obs in observations[:3]:
        policy.predict(obs.images, obs.proprio, obs.instruction)
    full = [policy.predict(o.images, o.proprio, o.instruction).timings["total"] for o in observations[:5]]
    print(f"unpruned step: median {sorted(full)[2]:.1f} ms", flush=True)
    results, summary = {}, {}
    for target in (float(t) for t in args.targets.split(",")):
        rows = run(policy, observations, target, args.steps, args.load_from, args.load_until, args.min_ratio,
                   args.method)
        results[target] = rows
        summary[target] = summarize(rows, target, args.settle)
        print(f"target {target:g} ms: " + "; ".join(
            f"{name} {part['within_5pct']:.1%} of {part['steps']} steps within +5 % (mean {part['mean_ms']:.1f} ms, "
            f"ratio {part['mean_ratio']:.3f})" for name, part in summary[target].items()), flush=True)
    (args.out / "latency_budget.json").write_text(json.dumps(
        {"command": " ".join(sys.argv), "unpruned_ms": full, "summary": summary,
         "steps": {str(k): v for k, v in results.items()}}, indent=1))
    plot(results, args.out / "latency_budget.png")
    print(f"wrote {args.out / 'latency_budget.json'}, {args.out / 'latency_budget.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
