#!/usr/bin/env python3
"""Does the latency budget (PrunerConfig.target_ms, issue 17) hold its target?

For each target: one run of --steps policy steps; a competing CPU load (a busy process, same
niceness) starts at --load-from and stops at --load-until, so every run has a quiet and a loaded
part.  Per step: total step time, the keep ratio the controller chose, its prediction.  Prints the
fraction of steps within +5 % of the target (quiet / loaded, after --settle steps of each part) and
writes latency_budget.json and latency_budget.png (chosen ratio and step time over time).

    python scripts/latency_budget.py --preset scaled --targets 60,90 --steps 160 --out /tmp/lat

--demo runs the same test on the hardware-free system instead of a bare policy: for each target,
`vla-pruner demo` (simulated arm and cameras, the policy node over real rclpy) with
`--method METHOD:target_ms=T:min_keep_ratio=R --keep-ratio 1.0 --stats-csv`, the competing load from
--load-from-s to --load-until-s seconds after the first policy step, the rows read back from the
node's own PrunerStats:

    python scripts/latency_budget.py --demo --checkpoint CKPT --targets 150,250 --duration 120 --out /tmp/lat
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


def run_demo(checkpoint: str, target_ms: float, duration: float, load_from_s: float, load_until_s: float,
             min_ratio: float, method: str, csv_path: Path, log_path: Path, load_processes: int = 1):
    """One `vla-pruner demo` run under the budget; rows as `run` returns them, from its stats CSV."""
    import csv
    import subprocess

    command = [sys.executable, "-m", "vla_pruner_ros.tools.cli", "demo", "--duration", str(duration),
               "--keep-ratio", "1.0", "--method", f"{method}:target_ms={target_ms:g}:min_keep_ratio={min_ratio:g}",
               "--stats-csv", str(csv_path)]
    if checkpoint:
        command += ["--checkpoint", checkpoint]
    csv_path.unlink(missing_ok=True)
    with open(log_path, "w") as log:
        demo = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        # the load's clock starts at the first policy step (loading the checkpoint takes a while)
        while demo.poll() is None and not (csv_path.is_file() and csv_path.stat().st_size > 0):
            time.sleep(0.2)
        first = time.time()
        load_window = (first + load_from_s, first + load_until_s)
        time.sleep(max(0.0, load_window[0] - time.time()))
        loads = [multiprocessing.Process(target=_busy, args=(load_window[1],), daemon=True)
                 for _ in range(load_processes)]
        for load in loads:
            load.start()
        for load in loads:
            load.join()
        demo.wait()
    if demo.returncode != 0:
        raise SystemExit(f"vla-pruner demo exited with {demo.returncode}; see {log_path}")
    rows = []
    with open(csv_path) as f:
        for step, row in enumerate(csv.DictReader(f)):
            received = float(row["received_s"])
            rows.append({"step": step, "loaded": load_window[0] <= received <= load_window[1],
                         "total_ms": float(row["total_ms"]),
                         "kept": int(row["visual_tokens_after"]),
                         "ratio": int(row["visual_tokens_after"]) / int(row["visual_tokens_before"]),
                         "predicted_ms": float(row["predicted_ms"]), "warmup": row["warmup"] == "True"})
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
    parser.add_argument("--demo", action="store_true", help="run vla-pruner demo (the ROS nodes) per target")
    parser.add_argument("--duration", type=float, default=120.0, help="--demo: seconds per target")
    parser.add_argument("--load-from-s", type=float, default=40.0, help="--demo: load start after the first step")
    parser.add_argument("--load-until-s", type=float, default=80.0, help="--demo: load end after the first step")
    parser.add_argument("--load-processes", type=int, default=1, help="--demo: busy processes of the competing load")
    args = parser.parse_args(argv)
    if args.demo:
        return main_demo(args)

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
    return run_targets(args, lambda target: run(policy, observations, target, args.steps, args.load_from,
                                                args.load_until, args.min_ratio, args.method),
                       lambda: {"unpruned_ms": full})


def run_targets(args, run_target, extra) -> int:
    """Both modes' loop: per target, the rows of `run_target(target)`, their summary printed;
    then latency_budget.json (the command, `extra()` read at the end, summaries, rows) and
    latency_budget.png."""
    results, summary = {}, {}
    for target in (float(t) for t in args.targets.split(",")):
        rows = run_target(target)
        results[target] = rows
        summary[target] = summarize(rows, target, args.settle)
        print(f"target {target:g} ms: " + "; ".join(
            f"{name} {part['within_5pct']:.1%} of {part['steps']} steps within +5 % (mean {part['mean_ms']:.1f} ms, "
            f"ratio {part['mean_ratio']:.3f})" for name, part in summary[target].items()), flush=True)
    (args.out / "latency_budget.json").write_text(json.dumps(
        {"command": " ".join(sys.argv), **extra(), "summary": summary,
         "steps": {str(k): v for k, v in results.items()}}, indent=1))
    plot(results, args.out / "latency_budget.png")
    print(f"wrote {args.out / 'latency_budget.json'}, {args.out / 'latency_budget.png'}")
    return 0


def main_demo(args) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    print("load average at start: %.2f %.2f %.2f" % os.getloadavg(), flush=True)
    return run_targets(args, lambda target: run_demo(
        args.checkpoint or "", target, args.duration, args.load_from_s, args.load_until_s, args.min_ratio,
        args.method, args.out / f"demo_stats_{target:g}.csv", args.out / f"demo_{target:g}.log",
        args.load_processes), lambda: {"load_average": os.getloadavg()})


if __name__ == "__main__":
    sys.exit(main())
