"""The ``vla-pruner`` command line tool.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so
``vla-pruner --help`` is instant and a command's heavy imports (torch, rclpy) stay
out of the others.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("vla_pruner_ros.tools.demo", "run the hardware-free demo: simulated xArm6 + cameras + policy node"),
    "checkpoint": ("vla_pruner_ros.tools.checkpoint", "write (make) or check (verify) OFT-format checkpoints"),
    "bench": ("vla_pruner_ros.tools.bench", "benchmark ms per action chunk and FLOPs per pruning method"),
    "bench-select": ("vla_pruner_ros.tools.bench_select", "benchmark token selection alone against a dense matmul"),
    "record": ("vla_pruner_ros.tools.record", "record ROS topics into a rosbag2 directory (sqlite3 or mcap)"),
    "bag": ("vla_pruner_ros.tools.bag", "recover a bag whose recorder was killed (bag recover DIR)"),
    "replay": ("vla_pruner_ros.tools.replay", "replay a bag offline through the policy with several pruning methods"),
    "soak": ("vla_pruner_ros.tools.soak", "run the simulated system for many steps and report memory and drift"),
    "train-sim": ("vla_pruner_ros.tools.train_sim", "train a small OFT-format policy on the simulated reach task"),
    "eval-sim": ("vla_pruner_ros.tools.eval_sim", "closed-loop success rate per pruning method in the simulator"),
    "eval-libero": ("vla_pruner_ros.tools.eval_libero", "LIBERO success rate per pruning method (optional extra)"),
    "premise": ("vla_pruner_ros.tools.premise", "does VLA-Pruner's premise hold for a model: scores vs token effects"),
}


def _top_level_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<13} {text}" for name, (_, text) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="vla-pruner",
        description="OpenVLA-OFT + VLA-Pruner tools for the xArm6.",
        epilog=f"commands:\n{lines}\n\nRun 'vla-pruner COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_level_parser()
    top.add_argument("command", nargs="?", help=argparse.SUPPRESS)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        top.print_usage(sys.stderr)
        print(f"vla-pruner: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module_name, text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"vla-pruner {name}", description=text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
