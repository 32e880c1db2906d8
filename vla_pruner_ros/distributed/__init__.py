"""Sweeps of independent units (configuration x episode, configuration x bag), run here one after
the other or on a Ray cluster, behind one interface:

    from vla_pruner_ros.distributed import JsonlSink, SerialBackend, Unit, run_units
    report = run_units(work, units, backend=SerialBackend(), sink=JsonlSink(out / "units.jsonl", fingerprint))

``work`` is a picklable object with ``setup()`` (once per worker: load the policy) and
``run(state, args, tick)`` (one unit); ``RayBackend`` (``ray_backend``, imports Ray only when
started) runs the same work on Ray actors. ``run_units`` skips units already in the sink (resume),
writes each result as it arrives, retries a failed unit, and reports a unit that fails the same
way twice instead of retrying it forever. ``cli.add_ray_arguments`` / ``cli.backend_from_args`` are
the ``--ray`` options of the commands. Ray itself is an optional extra (scripts/setup_ray.sh).
"""
from .cli import add_ray_arguments, backend_from_args
from .core import (
    MAX_ATTEMPTS,
    Outcome,
    RunReport,
    SerialBackend,
    SweepIncomplete,
    Unit,
    UnitFailure,
    Work,
    WorkerSetupError,
    describe_failures,
    exception_signature,
    run_units,
)
from .ray_backend import INSTALL_HINT, RayBackend, ray_unavailable_reason
from .sink import JsonlSink

__all__ = [
    "add_ray_arguments", "backend_from_args",
    "MAX_ATTEMPTS", "Outcome", "RunReport", "SerialBackend", "SweepIncomplete", "Unit", "UnitFailure", "Work",
    "WorkerSetupError",
    "describe_failures", "exception_signature", "run_units",
    "INSTALL_HINT", "RayBackend", "ray_unavailable_reason",
    "JsonlSink",
]
