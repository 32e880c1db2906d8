"""``RayBackend``: units as calls on Ray actors, one actor per worker.

Each actor runs ``Work.setup()`` once (one policy load per worker) and then units one at a time,
so a worker keeps its policy across units. Resources per worker: ``cpus_per_worker`` (default 1)
and ``gpus_per_worker`` (Ray then sets CUDA_VISIBLE_DEVICES of the actor, so device "cuda" is the
GPU it was given; fractions share a GPU). A worker that dies (killed, out of memory, its node
lost) fails only the unit it was running; the backend starts a replacement (which runs ``setup``
again) and ``run_units`` retries that unit.

Where Ray runs (``address``):
* ``"auto"``: the cluster this machine belongs to (``ray start``, or RAY_ADDRESS) when there is one,
  else a private local cluster, like ``"local"`` (not when RAY_ADDRESS names a cluster that cannot
  be reached: that is an error);
* ``"local"``: always a private cluster on this machine with ``workers x cpus_per_worker`` CPUs (all
  the machine's CPUs when ``workers`` is not given), shut down at the end;
* anything else: the address of a running cluster (``HOST:6379`` on a cluster node, ``ray://HOST:10001``
  through Ray Client).
The backend disconnects (``ray.shutdown()``) at the end when it connected; a cluster that was
already connected in this process (``ray.is_initialized()``) is used and left connected.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from .core import Outcome, Unit, WorkerSetupError, exception_signature

INSTALL_HINT = ("install the optional Ray extra: scripts/setup_ray.sh "
                "(or pip install -c constraints.txt -r requirements-ray.txt)")
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # results are small; Ray's default is 30 % of the RAM


def ray_unavailable_reason() -> str | None:
    """None when Ray can be imported, else why not (and how to install it)."""
    try:
        import ray  # noqa: F401
    except ImportError as error:
        return f"Ray is not installed ({error}); {INSTALL_HINT}"
    return None


def import_ray():
    reason = ray_unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    return ray


class _WorkerHost:
    """The actor: holds the work and the state its ``setup`` made."""

    def __init__(self, work):
        self.work = work
        self.state = None

    def setup(self) -> dict:
        self.state = self.work.setup()
        return {"pid": os.getpid()}

    def run(self, args) -> Any:
        return self.work.run(self.state, args, None)


class RayBackend:
    name = "ray"

    def __init__(self, address: str = "auto", workers: int | None = None, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, max_setup_failures: int = 3, quiet: bool = False):
        if workers is not None and workers < 1:
            raise ValueError(f"workers={workers}: expected >= 1")
        if cpus_per_worker < 0 or gpus_per_worker < 0 or cpus_per_worker + gpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker={cpus_per_worker}, gpus_per_worker={gpus_per_worker}: "
                             "expected >= 0 and not both 0")
        self.address = address or "auto"
        self.workers = workers
        self.cpus_per_worker = float(cpus_per_worker)
        self.gpus_per_worker = float(gpus_per_worker)
        self.max_setup_failures = max_setup_failures
        self.quiet = quiet
        self.started_local = False  # this backend started a private cluster
        self.worker_pids: dict[Any, int] = {}  # actor -> pid of its process (for tests and logs)
        self.deaths = 0  # workers lost while running a unit
        self.cluster: dict = {}
        self._ray = None
        self._connected = False
        self._work = None
        self._actor_class = None
        self._idle: list = []
        self._setting_up: dict = {}  # setup ref -> actor
        self._running: dict = {}  # unit ref -> (unit key, actor)
        self._setup_failures = 0

    # ------------------------------------------------------------------ cluster
    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        common = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
        if self.address in ("auto", "local"):
            if self.address == "auto":
                try:
                    ray.init(address="auto", **common)
                    self._connected = True
                    return
                except ConnectionError:
                    if os.environ.get("RAY_ADDRESS"):
                        raise  # a cluster was named and cannot be reached: say so, do not start another
                    # no cluster on this machine: start a private one
            cpus = (self.workers * max(self.cpus_per_worker, 1.0)) if self.workers else (os.cpu_count() or 1)
            gpus = self.workers * self.gpus_per_worker if self.workers and self.gpus_per_worker else None
            ray.init(address="local", num_cpus=int(round(cpus)), num_gpus=None if gpus is None else int(-(-gpus // 1)),
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)
            self.started_local = True
        else:
            ray.init(address=self.address, **common)
        self._connected = True

    def _default_workers(self) -> int:
        resources = self._ray.cluster_resources()
        if self.gpus_per_worker:
            count = int(resources.get("GPU", 0) // self.gpus_per_worker)
            if count < 1:
                raise RuntimeError(f"the Ray cluster has {resources.get('GPU', 0):g} GPU(s); a worker needs "
                                   f"{self.gpus_per_worker:g} (--ray-gpus-per-worker)")
            return count
        return max(1, int(resources.get("CPU", 1) // max(self.cpus_per_worker, 1e-9)))

    # ------------------------------------------------------------------ workers
    def start(self, work) -> None:
        self._ray = import_ray()
        self._work = work
        self._connect()
        ray = self._ray
        self.cluster = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
        count = self.workers or self._default_workers()
        self._actor_class = ray.remote(_WorkerHost).options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0, max_task_retries=0)
        self._work_ref = ray.put(work)
        for _ in range(count):
            self._spawn()
        if not self.quiet:
            where = "a local Ray cluster" if self.started_local else f"the Ray cluster at {self.address}"
            print(f"[ray] {count} worker(s) on {where} ({self._describe_cluster()}), "
                  f"{self.cpus_per_worker:g} CPU and {self.gpus_per_worker:g} GPU each")

    def _describe_cluster(self) -> str:
        return ", ".join(f"{self.cluster[k]:g} {k}" for k in ("CPU", "GPU") if k in self.cluster) or "no resources"

    def _spawn(self) -> None:
        actor = self._actor_class.remote(self._work_ref)
        self._setting_up[actor.setup.remote()] = actor

    def capacity(self) -> int:
        return len(self._idle)

    def submit(self, unit: Unit, attempt: int) -> None:
        actor = self._idle.pop()
        self._running[actor.run.remote(unit.args)] = (unit.key, actor)

    def wait(self) -> Outcome | None:
        ray = self._ray
        refs = list(self._running) + list(self._setting_up)
        if not refs:
            raise RuntimeError("RayBackend.wait: nothing is running")
        (ref,), _ = ray.wait(refs, num_returns=1)
        if ref in self._setting_up:
            actor = self._setting_up.pop(ref)
            try:
                info = ray.get(ref)
            except ray.exceptions.RayTaskError as error:  # setup raised: every worker would
                raise _setup_error(error) from error
            except ray.exceptions.RayActorError as error:  # died while loading: try another one
                self._setup_failures += 1
                if self._setup_failures > self.max_setup_failures:
                    raise WorkerSetupError(
                        f"{self._setup_failures} Ray workers died while starting: {error}") from error
                self._spawn()
                return None
            self.worker_pids[actor] = int(info["pid"])
            self._idle.append(actor)
            return None
        key, actor = self._running.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as error:  # the unit raised; the worker is fine
            self._idle.append(actor)
            cause = getattr(error, "cause", None)
            signature = exception_signature(cause) if isinstance(cause, BaseException) else \
                f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            return Outcome(key, False, failure=signature, detail=str(error))
        except ray.exceptions.RayActorError as error:  # the worker died: replace it
            self.deaths += 1
            self.worker_pids.pop(actor, None)
            self._spawn()
            return Outcome(key, False, failure=f"worker died ({type(error).__name__})", detail=str(error))
        self._idle.append(actor)
        return Outcome(key, True, result=result)

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        try:
            for actor in list(self._idle) + list(self._setting_up.values()) + [a for _, a in self._running.values()]:
                try:
                    ray.kill(actor)
                except Exception:  # noqa: BLE001 -- already gone
                    pass
        finally:
            self._idle, self._setting_up, self._running = [], {}, {}
            if self._connected:
                ray.shutdown()  # stops the private cluster we started; only disconnects from another
                self._connected = False


def _setup_error(error) -> BaseException:
    cause = getattr(error, "cause", None)
    if isinstance(cause, (ValueError, OSError, KeyError)):
        return cause  # the same error a serial run raises (the driver reports it the same way)
    return WorkerSetupError(f"a Ray worker could not set up: {cause if cause is not None else error}")
