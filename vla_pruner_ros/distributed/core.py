"""Units, the per-worker work, and the scheduling loop shared by every backend.

A sweep is a list of independent ``Unit``s (configuration x episode, configuration x bag). A
``Work`` object says how to do one: ``setup()`` runs once per worker (it loads the policy) and
returns the worker's state; ``run(state, args)`` does one unit with it and returns a result.
``run_units`` hands the units to a backend (``SerialBackend`` here, ``RayBackend`` in
``ray_backend``), writes every result to a sink as soon as it arrives (so an interrupted sweep
resumes without rerunning a finished unit), and retries failures:

* an attempt fails when its unit raises, or when its worker dies (OOM, a preempted node);
* a failed unit is run again, up to ``max_attempts`` (3) attempts, but a unit whose attempts fail
  the same way twice (same exception type and message, or a worker death both times) is not tried
  again: it is reported in ``RunReport.failed`` and the sweep goes on with the other units.

Results come back in completion order (``on_result``); ``RunReport.results`` lists them in unit
order, so tables made from it do not depend on which worker finished first.
"""
from __future__ import annotations

import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Unit:
    """One independent piece of a sweep. ``key`` is unique and stable across runs (resume matches
    on it); ``args`` is what ``Work.run`` gets (picklable for Ray)."""

    key: str
    args: Any = None


class Work(Protocol):
    """What a worker does; must be picklable (Ray ships it to each worker)."""

    def setup(self) -> Any:
        """Once per worker, before its first unit (load the policy here)."""

    def run(self, state: Any, args: Any, tick: Callable[[int], None] | None = None) -> Any:
        """One unit with the worker's ``state``. ``tick(n)``, when given, reports n steps of progress
        inside the unit (the serial backend passes it; workers in other processes do not)."""


@dataclass
class Outcome:
    """How one attempt of a unit ended (what a backend hands back)."""

    key: str
    ok: bool
    result: Any = None
    failure: str = ""  # the failure's signature: "ValueError: bad thing", "worker died (ActorDiedError)"
    detail: str = ""  # the traceback or the backend's explanation


@dataclass
class UnitFailure:
    """A unit given up on: the signature of every failed attempt, and the last one's details."""

    key: str
    attempts: list[str]
    detail: str

    def __str__(self) -> str:
        return f"{self.key}: failed {len(self.attempts)} time(s): " + "; ".join(self.attempts)


@dataclass
class RunReport:
    results: dict[str, Any]  # key -> result of every finished unit, in unit order (resumed ones too)
    ran: list[str] = field(default_factory=list)  # keys finished by this run, in completion order
    resumed: list[str] = field(default_factory=list)  # keys found finished in the sink
    failed: dict[str, UnitFailure] = field(default_factory=dict)
    retried: dict[str, list[str]] = field(default_factory=dict)  # key -> signatures of its failed attempts
    attempts: int = 0  # attempts started by this run

    @property
    def complete(self) -> bool:
        return not self.failed


class Sink(Protocol):
    """Where results go as they arrive; ``results()`` is read once at the start (resume)."""

    def results(self) -> dict[str, Any]: ...
    def add(self, key: str, result: Any) -> None: ...


class Backend(Protocol):
    def start(self, work: Work) -> None: ...
    def capacity(self) -> int:
        """How many attempts can be submitted now."""
    def submit(self, unit: Unit, attempt: int) -> None: ...
    def wait(self) -> Outcome | None:
        """The next finished attempt; None when only the capacity changed (a worker became ready)."""
    def close(self) -> None: ...


class WorkerSetupError(RuntimeError):
    """``Work.setup`` failed on a worker (a bad checkpoint, a missing file): no unit can run."""


def exception_signature(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class SerialBackend:
    """Every unit in this process, one after the other, with one ``setup()``: today's serial run."""

    name = "serial"

    def __init__(self, on_tick: Callable[[str, int], None] | None = None):
        self.on_tick = on_tick
        self._work = None
        self._state = None
        self._queued: deque[Unit] = deque()

    def start(self, work: Work) -> None:
        self._work = work
        self._state = work.setup()

    def capacity(self) -> int:
        return 0 if self._queued else 1

    def submit(self, unit: Unit, attempt: int) -> None:
        self._queued.append(unit)

    def wait(self) -> Outcome:
        unit = self._queued.popleft()
        tick = (lambda n, key=unit.key: self.on_tick(key, n)) if self.on_tick else None
        try:
            result = self._work.run(self._state, unit.args, tick)
        except Exception as exc:  # noqa: BLE001 -- any failure of a unit is that unit's, KeyboardInterrupt is not
            return Outcome(unit.key, False, failure=exception_signature(exc), detail=traceback.format_exc())
        return Outcome(unit.key, True, result=result)

    def close(self) -> None:
        self._state = None


def run_units(work: Work, units: Iterable[Unit], backend: Backend | None = None, sink: Sink | None = None,
              on_result: Callable[[str, Any], None] | None = None,
              on_failure: Callable[[str, str, bool], None] | None = None,
              max_attempts: int = MAX_ATTEMPTS) -> RunReport:
    """Run every unit not already in ``sink`` on ``backend`` (default: serially, here).

    ``on_result(key, result)`` after each unit finishes (after the sink has it);
    ``on_failure(key, signature, final)`` after each failed attempt (``final``: given up on).
    The backend is not started when every unit is already finished (no policy load)."""
    units = list(units)
    keys = [unit.key for unit in units]
    if len(set(keys)) != len(keys):
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"run_units: unit keys must be unique; repeated: {duplicates[:5]}")
    if max_attempts < 1:
        raise ValueError(f"run_units: max_attempts={max_attempts}: expected >= 1")
    backend = backend if backend is not None else SerialBackend()
    stored = dict(sink.results()) if sink is not None else {}
    finished = {key: stored[key] for key in keys if key in stored}
    report = RunReport(results={}, resumed=[key for key in keys if key in finished])
    by_key = {unit.key: unit for unit in units}
    pending = deque(unit for unit in units if unit.key not in finished)
    failures: dict[str, list[str]] = {}
    in_flight = 0
    if pending:
        backend.start(work)
        try:
            while pending or in_flight:
                while pending and backend.capacity() > 0:
                    unit = pending.popleft()
                    backend.submit(unit, len(failures.get(unit.key, ())) + 1)
                    in_flight += 1
                    report.attempts += 1
                outcome = backend.wait()
                if outcome is None:
                    continue
                in_flight -= 1
                if outcome.ok:
                    if sink is not None:
                        sink.add(outcome.key, outcome.result)
                    finished[outcome.key] = outcome.result
                    report.ran.append(outcome.key)
                    if outcome.key in failures:
                        report.retried[outcome.key] = list(failures[outcome.key])
                    if on_result is not None:
                        on_result(outcome.key, outcome.result)
                    continue
                seen = failures.setdefault(outcome.key, [])
                seen.append(outcome.failure)
                final = seen.count(outcome.failure) >= 2 or len(seen) >= max_attempts
                if final:
                    report.failed[outcome.key] = UnitFailure(outcome.key, list(seen), outcome.detail)
                else:
                    pending.append(by_key[outcome.key])
                if on_failure is not None:
                    on_failure(outcome.key, outcome.failure, final)
        finally:
            backend.close()
    report.results = {key: finished[key] for key in keys if key in finished}
    return report


class SweepIncomplete(RuntimeError):
    """Some units failed twice; the finished ones are in the sink, a new run retries the rest."""

    def __init__(self, report: RunReport):
        self.report = report
        lines = "\n  ".join(describe_failures(report))
        super().__init__(f"{len(report.failed)} unit(s) failed and were given up on (finished units are kept; "
                         f"run the same command again to retry them):\n  {lines}")


def describe_failures(report: RunReport, limit: int = 10) -> list[str]:
    """Lines for the terminal: the units given up on, with the signatures of their attempts."""
    lines = [str(failure) for failure in list(report.failed.values())[:limit]]
    if len(report.failed) > limit:
        lines.append(f"... and {len(report.failed) - limit} more")
    return lines
