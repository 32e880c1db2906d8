"""The ``--ray`` options every sweep command shares, and the backend they choose."""
from __future__ import annotations

import argparse

from .core import SerialBackend

RAY_CHOICES_HELP = ("run the units on Ray: 'auto' (the default when --ray is given alone) joins the cluster of "
                    "this machine (`ray start`, RAY_ADDRESS) or starts a private local one; 'local' always "
                    "starts a private one; HOST:PORT or ray://HOST:PORT joins that cluster. Without --ray "
                    "everything runs here, one unit after the other, and Ray is not imported")


def add_ray_arguments(parser: argparse.ArgumentParser, default_gpus: str = "auto") -> None:
    group = parser.add_argument_group("Ray (optional extra: scripts/setup_ray.sh)")
    group.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|local|ADDRESS",
                       help=RAY_CHOICES_HELP)
    group.add_argument("--ray-workers", type=_positive_int, default=None, metavar="N",
                       help="Ray workers, each loading the policy once (default: as many as the cluster's "
                            "CPUs / --ray-cpus-per-worker, or GPUs / --ray-gpus-per-worker)")
    group.add_argument("--ray-cpus-per-worker", type=_non_negative, default=None, metavar="C",
                       help="CPUs Ray reserves per worker (default: the command's torch threads, else 1)")
    group.add_argument("--ray-gpus-per-worker", type=_non_negative, default=None, metavar="G",
                       help="GPUs per worker (default: 1 when the command's device is CUDA, else 0; "
                            "0.5 puts two workers on a GPU)")


def backend_from_args(args: argparse.Namespace, *, device: str | None = None, threads: int | None = None,
                      on_tick=None, quiet: bool = False):
    """``SerialBackend`` without --ray; otherwise a ``RayBackend`` (Ray imported only then)."""
    if getattr(args, "ray", None) is None:
        return SerialBackend(on_tick=on_tick)
    from .ray_backend import RayBackend, ray_unavailable_reason

    reason = ray_unavailable_reason()
    if reason is not None:
        raise ValueError(f"--ray: {reason}")
    cuda = bool(device) and str(device).startswith("cuda")
    gpus = args.ray_gpus_per_worker if args.ray_gpus_per_worker is not None else (1.0 if cuda else 0.0)
    cpus = args.ray_cpus_per_worker if args.ray_cpus_per_worker is not None else float(threads or 1)
    return RayBackend(address=args.ray, workers=args.ray_workers, cpus_per_worker=cpus, gpus_per_worker=gpus,
                      quiet=quiet)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number >= 0")
    return value
