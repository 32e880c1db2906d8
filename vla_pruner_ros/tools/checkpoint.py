"""``vla-pruner checkpoint make|verify``: write an OFT-format checkpoint with seeded random
weights, or check a directory (names, shapes, files, statistics) or a preset's real layout.
Errors are one line (``vla-pruner checkpoint: error: ...``), never a traceback."""

from __future__ import annotations

import argparse
import json
import sys

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``vla-pruner checkpoint make|verify`` (mounted by the package CLI)."""
    from vla_pruner_ros.model.checkpoint import PRESETS, TORCH_DTYPES

    sub = parser.add_subparsers(dest="checkpoint_command", required=True)
    make = sub.add_parser("make", help="write a checkpoint directory with seeded random weights")
    make.add_argument("--preset", choices=sorted(n for n, p in PRESETS.items() if p.writable), default="tiny")
    make.add_argument("--out", required=True, help="output directory (must be new or empty)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--shards", type=int, default=None, help="write N safetensors shards plus an index")
    make.add_argument("--image-size", type=int, default=None, help="per-view image size (multiple of 14)")
    make.add_argument("--chunk-length", type=int, default=None)
    make.add_argument("--action-dim", type=int, default=None, help="action dimensions (LIBERO and xArm6: 7)")
    make.add_argument("--proprio-dim", type=int, default=None, help="proprio dimensions (LIBERO: 8, xArm6: 7)")
    make.add_argument("--center-crop", choices=("on", "off"), default=None,
                      help="record that the policy uses OFT's test-time center crop")
    make.add_argument("--unnorm-key", default=None)
    make.add_argument("--weights-dtype", choices=sorted(TORCH_DTYPES), default=None)
    verify = sub.add_parser("verify", help="check tensor names/shapes of a directory or a preset (no loading)")
    target = verify.add_mutually_exclusive_group(required=True)
    target.add_argument("--path", help="a checkpoint directory")
    target.add_argument("--preset", choices=sorted(PRESETS))


def one_line(error: BaseException) -> str:
    """An error as one line: its first line, the first detail after it, and how many more."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    text = lines[0] + (f" {lines[1]}" if len(lines) > 1 else "")
    return text + (f" (and {len(lines) - 2} more lines)" if len(lines) > 2 else "")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"vla-pruner checkpoint {args.checkpoint_command}: error: {one_line(error)}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from vla_pruner_ros.model.checkpoint import (
        check_statistics,
        inspect_checkpoint,
        make_checkpoint,
        verify_against_preset,
    )

    if args.checkpoint_command == "make":
        center_crop = None if args.center_crop is None else args.center_crop == "on"
        overrides = {k: v for k, v in (("image_size", args.image_size), ("chunk_length", args.chunk_length),
                                       ("action_dim", args.action_dim), ("proprio_dim", args.proprio_dim),
                                       ("center_crop", center_crop),
                                       ("unnorm_key", args.unnorm_key), ("weights_dtype", args.weights_dtype))
                     if v is not None}
        out = make_checkpoint(args.preset, args.out, seed=args.seed, shards=args.shards, **overrides)
        print(f"wrote {args.preset} checkpoint to {out}")
        return 0
    if args.path:
        info = inspect_checkpoint(args.path)
        for key in sorted(info.statistics):
            check_statistics(info, key)
        files = sorted({file for _, file in info.weight_table.values()})
        print(f"{args.path}: OK — {len(info.weight_table)} tensors in {len(files)} file(s), action_dim "
              f"{info.action_dim}, proprio_dim {info.proprio_dim}, chunk {info.chunk_length}, "
              f"{info.config.text_config.num_hidden_layers} LLM layers, unnorm keys {sorted(info.statistics)} "
              f"(statistics from {info.statistics_file.name})")
        return 0
    report = verify_against_preset(args.preset)
    print(json.dumps(report, indent=2))
    return 0
