"""``vla-pruner eval-sim``: closed-loop success rate per pruning method and keep ratio in the
simulated reach task (identical seeded scenes for every configuration).

    vla-pruner eval-sim --checkpoint checkpoints/xarm6_sim_reach \\
        --methods none,fastv,fastv_last,fastv_all_rows,divprune,random,vla_pruner --keep 0.25 \\
        --episodes 200 --reference none,fastv --radii 0.025,0.035,0.05

Prints the table and the paired protocol (McNemar against each --reference, success on episodes with
a pruned call, success against radius, FLOPs really spent) and writes results.json, results.csv,
table.txt, success_vs_keep_ratio.png, paired.json, paired.txt, radius_curve.png and
final_error_hist.png to --out.  Every finished episode is appended to --out/episodes.jsonl; running the
same command again resumes (logged episodes are reused, not rerun).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ._arguments import add_pruner_arguments, keep_ratio_list, method_list

ROOT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training.evaluate import DEFAULT_KEEP_RATIOS, DEFAULT_METHODS

    parser.add_argument("--checkpoint", default=None,
                        help="OFT checkpoint directory (default: the shipped checkpoints/xarm6_sim_reach)")
    parser.add_argument("--methods", type=method_list, default=DEFAULT_METHODS,
                        help=f"comma-separated pruning methods; 'none' = unpruned (default {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--keep", type=keep_ratio_list, default=DEFAULT_KEEP_RATIOS,
                        help="comma-separated keep ratios (default 0.5,0.25,0.125)")
    parser.add_argument("--episodes", type=int, default=50, help="episodes per configuration")
    parser.add_argument("--task", default="above")
    parser.add_argument("--seed", type=int, default=0, help="first scene seed (scenes seed .. seed+episodes-1)")
    parser.add_argument("--actions-per-step", type=int, default=4, help="chunk points executed per policy step")
    parser.add_argument("--max-joint-velocity", type=float, default=1.0, help="rad/s, as the policy node")
    # the PrunerConfig fields EvalConfig takes (the others: a variant, --methods vla_pruner:decay=0.5)
    add_pruner_arguments(parser, ("prune_layer", "window"))
    parser.add_argument("--no-expert", action="store_true", help="skip the expert's success rate")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "auto"), default="float32",
                        help="model dtype (default float32: the published tables; auto = load_policy's choice)")
    parser.add_argument("--reference", type=_reference_list, default=("none",),
                        help="comma-separated references for the paired McNemar tests: a configuration "
                             "('none', 'fastv@0.25') or a method, compared at the same keep ratio (default none)")
    parser.add_argument("--radii", type=_radius_list, default=(0.025, 0.035, 0.05),
                        help="comma-separated radii (m) of the success-against-radius columns")
    parser.add_argument("--out", default=str(ROOT / "artifacts" / "eval_sim"), help="output directory")
    from ..distributed import add_ray_arguments  # --ray: episodes as units on Ray (issue 18)

    add_ray_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import format_paired_report
    from ..distributed import SweepIncomplete, WorkerSetupError
    from ..distributed.eval_sim import evaluate_command  # without --ray: training.evaluate.evaluate
    from ..training.evaluate import EvalConfig, format_table, write_results

    checkpoint = args.checkpoint or str(ROOT / "checkpoints" / "xarm6_sim_reach")
    if not (Path(checkpoint) / "config.json").is_file():
        print(f"eval-sim: {checkpoint} is not a checkpoint directory (no config.json); train one with "
              "`vla-pruner train-sim` or pass --checkpoint", file=sys.stderr)
        return 2
    try:
        config = EvalConfig(checkpoint=checkpoint, methods=args.methods, keep_ratios=args.keep,
                            episodes=args.episodes, task=args.task, seed=args.seed,
                            actions_per_step=args.actions_per_step, max_joint_velocity=args.max_joint_velocity,
                            prune_layer=args.prune_layer, window=args.window, include_expert=not args.no_expert,
                            threads=args.threads, dtype=args.dtype)
    except ValueError as error:
        print(f"eval-sim: {error}", file=sys.stderr)
        return 2
    try:
        results = evaluate_command(config, args, log_path=Path(args.out) / "episodes.jsonl")
    except ValueError as error:
        print(f"eval-sim: {error}", file=sys.stderr)
        return 2
    except (SweepIncomplete, WorkerSetupError, ConnectionError) as error:  # --ray only
        print(f"eval-sim: {error}", file=sys.stderr)
        return 1
    command = "vla-pruner eval-sim " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 1 and sys.argv[1] == "eval-sim" else None
    paths = write_results(results, args.out, command=command, references=args.reference, radii=args.radii)
    print(format_table(results))
    print()
    print(format_paired_report(results["paired"]))
    resumed = results.get("resumed_episodes", 0)
    print(f"wall time {results['wall_s']:.0f} s" + (f" ({resumed} episodes from the log)" if resumed else "")
          + f"; wrote {', '.join(paths.values())}")
    return 0


def _reference_list(text: str) -> tuple[str, ...]:
    """'none, fastv' -> ('none', 'fastv'); each a method name or METHOD@KEEP."""
    from ..pruning import METHODS

    names = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [n for n in names if n.split("@", 1)[0] not in METHODS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"--reference {text!r}: expected comma-separated methods or METHOD@KEEP "
                                         f"from {', '.join(METHODS)}")
    return names


def _radius_list(text: str) -> tuple[float, ...]:
    try:
        radii = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        radii = ()
    if not radii or any(not r > 0 for r in radii):
        raise argparse.ArgumentTypeError(f"--radii {text!r}: expected comma-separated radii in metres, > 0")
    return radii
