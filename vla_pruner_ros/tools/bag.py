"""``vla-pruner bag recover DIR``: make a killed recording readable again.

A recorder killed without closing its bag (SIGKILL, power loss) leaves no ``metadata.yaml``
and, for MCAP, no summary: ``ros2 bag`` and rosbags refuse it. ``recover`` rebuilds a closed
bag from every complete record in the file (see ``vla_pruner_ros.bags.recover``); the damaged
file is kept next to it as ``<name>.damaged``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bag_command", required=True)
    recover = sub.add_parser("recover", help="rebuild a readable bag from a recording that was killed")
    recover.add_argument("path", type=Path, metavar="DIR", help="the bag directory")
    recover.add_argument("--force", action="store_true",
                         help="rebuild even if the bag has a metadata.yaml (it was closed)")


def run(args: argparse.Namespace) -> int:
    from vla_pruner_ros.bags import BagError
    from vla_pruner_ros.bags.recover import recover_bag

    try:
        report = recover_bag(args.path, force=args.force)
    except (BagError, OSError) as error:
        print(f"vla-pruner bag recover: error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0
