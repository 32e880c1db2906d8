"""``vla-pruner premise``: does VLA-Pruner's premise hold for my model?

    vla-pruner premise --checkpoint checkpoints/xarm6_sim_reach --sim 5
    vla-pruner premise --checkpoint DIR --bag runs/episode1 --tokens 64

Per policy step, the causal importance of each visual token (drop it alone at layer K, measure the
action change; ``--tokens`` tokens sampled per step, 0 = all) against the scores the methods rank
by (S_vl, FastV's prefix rows, FastV's last token, all rows, the current step's action attention,
VLA-Pruner's temporal S_act, random): Spearman rank correlation and top-k recall per score, the
action change when keeping each score's top ``--keep``, a plot and a one-screen verdict.
Writes premise.txt, premise.json and premise.png to --out.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ._arguments import add_pruner_arguments

ROOT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="OFT checkpoint directory (default: the shipped checkpoints/xarm6_sim_reach)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bag", help="a recorded bag (directory, .mcap or .db3): the node's observations")
    source.add_argument("--sim", type=int, metavar="N", help="N closed-loop sim episodes of the unpruned policy")
    parser.add_argument("--task", default="above", help="sim task (with --sim)")
    parser.add_argument("--seed", type=int, default=0, help="first scene seed (with --sim); also the sampling seed")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many policy steps")
    parser.add_argument("--tokens", type=int, default=32,
                        help="visual tokens whose causal importance is measured per step (0 = all of them)")
    parser.add_argument("--keep", type=float, default=0.25, help="keep ratio of the top-k recall and the direct test")
    add_pruner_arguments(parser, ("prune_layer", "window", "decay"))  # what PremiseProbe takes of PrunerConfig
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "auto"), default="float32",
                        help="model dtype (default float32: bf16 rounding would blur single-token effects)")
    parser.add_argument("--out", default=str(ROOT / "artifacts" / "premise"), help="output directory")


def run(args: argparse.Namespace) -> int:
    import itertools

    import torch

    from ..evaluation.premise import (
        PremiseProbe,
        bag_observations,
        format_summary,
        run_premise,
        sim_observations,
        summarize,
        write_premise,
    )
    from ..model import load_policy

    checkpoint = args.checkpoint or str(ROOT / "checkpoints" / "xarm6_sim_reach")
    if not (Path(checkpoint) / "config.json").is_file():
        print(f"premise: {checkpoint} is not a checkpoint directory (no config.json)", file=sys.stderr)
        return 2
    if args.sim is not None and args.sim < 1:
        print("premise: --sim N needs N >= 1 episodes", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    policy = load_policy(checkpoint, device="cpu", dtype=None if args.dtype == "auto" else args.dtype)
    try:
        probe = PremiseProbe(policy, prune_layer=args.prune_layer, keep_ratio=args.keep,
                             tokens_per_step=args.tokens, window=args.window, decay=args.decay, seed=args.seed)
    except ValueError as error:
        print(f"premise: {error}", file=sys.stderr)
        return 2
    if args.bag:
        from ..bags import BagError

        try:
            observations = list(bag_observations(args.bag, max_steps=args.max_steps))
        except (BagError, ValueError) as error:
            print(f"premise: {error}", file=sys.stderr)
            return 2
    else:
        observations = sim_observations(policy, args.sim, seed=args.seed, task=args.task)
        if args.max_steps:
            observations = itertools.islice(observations, args.max_steps)

    def progress(step):
        print(f"\rpremise: episode {step.episode} step {step.step}", end="", file=sys.stderr, flush=True)

    steps = run_premise(probe, observations, progress=progress)
    print(file=sys.stderr)
    if not steps:
        print("premise: no policy step to measure", file=sys.stderr)
        return 2
    summary = summarize(steps, args.keep)
    command = "vla-pruner premise " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 1 and sys.argv[1] == "premise" else None
    paths = write_premise(steps, summary, args.out, command=command)
    print(format_summary(summary))
    print(f"wrote {', '.join(paths.values())}")
    return 0
