#!/usr/bin/env python3
"""How often does the shift detector (PrunerConfig.shift_fallback, issue 17) fire in ordinary
closed-loop sim episodes, and what do its signals look like?  Runs `--episodes` episodes of a
checkpoint with VLA-Pruner + shift_fallback and prints, over the pruned steps: the fraction that
fired (by reason) and quantiles of the image change and of the temporal/current top-k overlap.

    python scripts/shift_signals.py --episodes 5 --keep 0.25
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/xarm6_sim_reach")
    parser.add_argument("--task", default="above")
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--keep", type=float, default=0.25)
    parser.add_argument("--fallback", default="current")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from vla_pruner_ros.control.robot_config import load_robot_config
    from vla_pruner_ros.model import load_policy
    from vla_pruner_ros.pruning import PrunerConfig
    from vla_pruner_ros.training.evaluate import RENDER_SIZE, run_episode
    from vla_pruner_ros.sim import SimEnv

    torch.set_num_threads(args.threads)
    policy = load_policy(args.checkpoint, dtype="float32", announce=False)
    policy.set_pruner(PrunerConfig(method="vla_pruner", keep_ratio=args.keep, shift_fallback=args.fallback))
    records = []

    class Recording:  # the policy, with every step's pruner diagnostics kept
        def __getattr__(self, name):
            return getattr(policy, name)

        def predict(self, **kwargs):
            out = policy.predict(**kwargs)
            records.append(dict(out.pruner, pruned=out.pruned))
            return out

    env = SimEnv(seed=args.seed, image_size=RENDER_SIZE, task=args.task)
    robot = load_robot_config()
    successes = 0
    for i in range(args.episodes):
        successes += run_episode(Recording(), env, args.seed + i, robot, task=args.task).success
    pruned = [r for r in records if r["pruned"]]
    fired = [r for r in pruned if r["shift"]]
    reasons = {}
    for r in fired:
        reasons[r["shift_reason"] or "refill"] = reasons.get(r["shift_reason"] or "refill", 0) + 1
    image = np.array([r["image_change"] for r in pruned if not math.isnan(r["image_change"])])
    overlap = np.array([r["action_overlap"] for r in pruned if not math.isnan(r["action_overlap"])])
    q = (0.1, 0.5, 0.9, 0.99)
    print(f"{args.episodes} episodes ({successes} succeeded), {len(records)} policy steps, {len(pruned)} pruned")
    print(f"fired on {len(fired)}/{len(pruned)} pruned steps: {reasons}")
    if image.size:
        print("image change quantiles " + ", ".join(f"q{int(p * 100)} {np.quantile(image, p):.4f}" for p in q))
    if overlap.size:
        print("temporal/current top-k overlap quantiles " +
              ", ".join(f"q{int(p * 100)} {np.quantile(overlap, p):.3f}" for p in q))
    return 0


if __name__ == "__main__":
    sys.exit(main())
