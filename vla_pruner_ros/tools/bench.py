"""``vla-pruner bench``: ms per action chunk and FLOPs per pruning method, measured side by side.

    vla-pruner bench --preset scaled --steps 20 --warmup 5 --json bench.json      # CPU, ~5 min on 2 cores
    vla-pruner bench --preset scaled --dtype float32                              # default dtype: auto
    vla-pruner bench --preset oft-7b --device cuda --json bench-oft7b.json        # real sizes, bf16, random weights
    vla-pruner bench --preset tiny --steps 2 --warmup 1 --methods none,fastv,vla_pruner

All configurations run on one model with the same inputs in one process, interleaved across
repetitions (see ``vla_pruner_ros.benchmarking``). Only numbers from one run compare.
"""

from __future__ import annotations

import argparse
import sys

from ..benchmarking.suite import DEFAULT_KEEP_RATIOS, DEFAULT_METHODS, DTYPES
from ._arguments import keep_ratio_list, method_list

PRESET_CHOICES = ("scaled", "tiny", "oft-7b")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--preset", choices=PRESET_CHOICES, default="scaled",
                        help="model sizes, random weights built on the device (default: scaled)")
    parser.add_argument("--checkpoint", default=None, help="benchmark this checkpoint directory instead of a preset")
    parser.add_argument("--methods", type=method_list, default=DEFAULT_METHODS,
                        help=f"comma-separated (default: {','.join(DEFAULT_METHODS)}); vanilla always runs")
    parser.add_argument("--keep", type=keep_ratio_list, default=DEFAULT_KEEP_RATIOS,
                        help="comma-separated keep ratios (default: 0.5,0.25,0.125)")
    parser.add_argument("--steps", type=int, default=20, help="timed repetitions per configuration (default: 20)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed steps per configuration after the pruner's own warm-up (default: 5)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--dtype", choices=("auto", *sorted(DTYPES)), default="auto",
                        help="auto (default): bfloat16 on CUDA and on a CPU with native bf16 "
                             "(avx512_bf16/AMX), float32 otherwise")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="weights and inputs seed")
    parser.add_argument("--no-capture-profile", action="store_true",
                        help="skip the profiled steps that measure the score-capture ms")
    parser.add_argument("--no-peak-probe", action="store_true",
                        help="skip measuring the GEMM peak of the dtype (the %% peak column)")
    parser.add_argument("--peak-seconds", type=float, default=0.3,
                        help="GEMM peak probe: seconds per matmul shape (default: 0.3)")
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write every number to OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from ..benchmarking.report import format_report, write_json
    from ..benchmarking.suite import BenchSettings, run_benchmark

    try:
        settings = BenchSettings(
            preset=args.preset, methods=tuple(args.methods), keep_ratios=tuple(args.keep), steps=args.steps,
            warmup=args.warmup, device=args.device, dtype=args.dtype, threads=args.threads, seed=args.seed,
            checkpoint=args.checkpoint, profile_capture=not args.no_capture_profile,
            peak_probe=not args.no_peak_probe, peak_seconds=args.peak_seconds)
    except ValueError as exc:
        print(f"vla-pruner bench: error: {exc}", file=sys.stderr)
        return 2
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {settings.device}", file=sys.stderr)
    result = run_benchmark(settings, progress=not args.quiet)
    result["argv"] = list(sys.argv)
    print(format_report(result))
    if args.json_out:
        write_json(result, args.json_out)
        print(f"\nwrote {args.json_out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="vla-pruner bench", description=__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
