"""``vla-pruner soak``: the simulated system for many control steps, watching for leaks.

Runs the simulated xArm6, the simulated cameras and the policy node in one process over real
rclpy, steps as fast as the policy allows, changes the instruction every few episodes' worth of
steps (each change resets the pruner history), and reports: steps and duration, resident memory
at start/after warm-up/end with its slope per 1000 steps, the pruner history's size, step rate
in the first and last quarter (drift), failed steps and ERROR diagnostics.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

INSTRUCTIONS = tuple(f"move the gripper above the {colour} cube" for colour in ("red", "green", "blue"))


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=int, default=10_000, help="control steps to run")
    parser.add_argument("--checkpoint", default="", help="OFT checkpoint (default: artifacts/checkpoints/tiny)")
    parser.add_argument("--method", default="vla_pruner")
    parser.add_argument("--keep-ratio", type=float, default=0.25)
    parser.add_argument("--instruction-every", type=int, default=200, help="steps between instruction changes")
    parser.add_argument("--warmup-fraction", type=float, default=0.1, help="share of steps before memory is judged")
    parser.add_argument("--max-input-age", type=float, default=0.0,
                        help="the node's max_input_age in s (0: the node's default); a machine shared with other "
                             "work needs more, or its slow steps are rightly dropped as stale")
    parser.add_argument("--json", default="", help="write the report here")


def resident_mb() -> float:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def history_elements(pruner) -> int:
    """Tensor elements held by the pruner's temporal history (0 without one)."""
    history = getattr(pruner, "history", None)
    if history is None:
        return 0
    import torch

    return sum(value.numel() for value in vars(history).values() if isinstance(value, torch.Tensor))


def slope_per_1000(steps: list[int], values: list[float]) -> float:
    import numpy as np

    if len(steps) < 2:
        return 0.0
    slope, _ = np.polyfit(np.asarray(steps, float), np.asarray(values, float), 1)
    return float(slope * 1000)


def run(args) -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from tqdm import tqdm

    from vla_pruner_ros.control.launch_logic import default_checkpoint
    from vla_pruner_ros.model import load_policy
    from vla_pruner_ros.msg import PrunerStats
    from vla_pruner_ros.nodes.policy_node import PolicyNode
    from vla_pruner_ros.nodes.sim_cameras import SimCamerasNode
    from vla_pruner_ros.nodes.sim_xarm6 import SimXArm6Node

    if args.steps < 10:
        raise SystemExit("--steps must be at least 10")
    checkpoint = args.checkpoint or default_checkpoint()
    context = rclpy.Context()
    rclpy.init(context=context)
    policy = load_policy(checkpoint)
    arm = SimXArm6Node(context=context)
    cameras = SimCamerasNode(context=context)
    node = PolicyNode(policy=policy, context=context, parameter_overrides=[
        Parameter("autostart", value=True),
        Parameter("instruction", value=INSTRUCTIONS[0]),
        Parameter("prune.method", value=args.method),
        Parameter("prune.keep_ratio", value=args.keep_ratio),
        # Back-to-back steps: the step period is shorter than a step, so the policy is the limit.
        Parameter("control_rate", value=100.0),
        Parameter("actions_per_step", value=1),
        Parameter("publish_overlays", value=True),
    ] + ([Parameter("max_input_age", value=float(args.max_input_age))] if args.max_input_age > 0 else []))
    monitor = rclpy.create_node("soak_monitor", context=context)
    done = threading.Event()
    lock = threading.Lock()
    record = {"steps": 0, "errors": 0, "error_messages": {}, "step_times": [], "samples": []}

    def on_stats(msg: PrunerStats) -> None:
        with lock:
            record["steps"] += 1
            step = record["steps"]
            record["step_times"].append(time.monotonic())
            if step % 25 == 0 or step == 1:
                record["samples"].append((step, resident_mb(), history_elements(policy.pruner)))
            if step % args.instruction_every == 0:
                instruction = INSTRUCTIONS[(step // args.instruction_every) % len(INSTRUCTIONS)]
                threading.Thread(target=node.set_parameters,
                                 args=([Parameter("instruction", value=instruction)],), daemon=True).start()
            if step >= args.steps:
                done.set()

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.level == DiagnosticStatus.ERROR:
                with lock:
                    record["errors"] += 1
                    record["error_messages"][status.message] = record["error_messages"].get(status.message, 0) + 1

    monitor.create_subscription(PrunerStats, "/vla_pruner_policy/stats", on_stats, 100)
    monitor.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 100)
    # Executors as the launch file has them: the simulated arm and cameras on one single-threaded
    # executor, the policy node on another (a multi-threaded one halved the step: README,
    # "The policy node's executor"); the monitor rides with the policy node.
    executors = [SingleThreadedExecutor(context=context), SingleThreadedExecutor(context=context)]
    for executor, nodes in zip(executors, ((arm, cameras), (node, monitor))):
        for n in nodes:
            executor.add_node(n)
    stop_spinning = threading.Event()

    def spin(executor) -> None:
        # spin_once until told to stop: shutting an executor down under a running spin() races it.
        while not stop_spinning.is_set():
            executor.spin_once(timeout_sec=0.1)

    spinners = [threading.Thread(target=spin, args=(executor,), daemon=True) for executor in executors]
    start_mb = resident_mb()
    started = time.monotonic()
    for spinner in spinners:
        spinner.start()
    bar = tqdm(total=args.steps, unit="step", desc="soak", file=sys.stderr)
    seen = 0
    try:
        while not done.wait(1.0):
            with lock:
                steps = record["steps"]
            bar.update(steps - seen)
            seen = steps
            bar.set_postfix(rss_mb=f"{resident_mb():.0f}", failed=node._failed_steps)
    except KeyboardInterrupt:
        print("interrupted: reporting what ran so far", file=sys.stderr)
    bar.update(record["steps"] - seen)
    bar.close()
    duration = time.monotonic() - started
    stop_spinning.set()
    for spinner in spinners:
        spinner.join(timeout=5)  # the loops have stopped before anything is shut down or destroyed
    for executor in executors:
        executor.shutdown(timeout_sec=5)
    failed = node._failed_steps
    for n in (monitor, node, cameras, arm):
        n.destroy_node()
    rclpy.try_shutdown(context=context)

    samples = record["samples"]
    warm_step = int(args.steps * args.warmup_fraction)
    judged = [(s, mb) for s, mb, _ in samples if s >= warm_step]
    times = record["step_times"]
    quarter = max(1, len(times) // 4)

    def rate(chunk):
        return (len(chunk) - 1) / (chunk[-1] - chunk[0]) if len(chunk) > 1 and chunk[-1] > chunk[0] else 0.0

    report = {
        "checkpoint": str(checkpoint),
        "method": args.method,
        "keep_ratio": args.keep_ratio,
        "steps": record["steps"],
        "duration_s": round(duration, 1),
        "rss_mb_start": round(start_mb, 1),
        "rss_mb_after_warmup": round(judged[0][1], 1) if judged else None,
        "rss_mb_end": round(samples[-1][1], 1) if samples else None,
        "rss_slope_mb_per_1000_steps": round(slope_per_1000(*zip(*judged)) if len(judged) > 1 else 0.0, 3),
        "history_elements_max": max((h for _, _, h in samples), default=0),
        "history_elements_end": samples[-1][2] if samples else 0,
        "steps_per_s_first_quarter": round(rate(times[:quarter]), 2),
        "steps_per_s_last_quarter": round(rate(times[-quarter:]), 2),
        "failed_steps": failed,
        "error_diagnostics": record["errors"],
        "error_messages": record["error_messages"],
    }
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if failed == 0 and record["steps"] >= args.steps else 1


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="vla-pruner soak", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
