"""Interleaved wall-clock timing of several configurations in one process.

Machine noise (other processes, frequency changes, thermal state) drifts over seconds. Timing
configuration A for a minute and then B for a minute lets that drift masquerade as a difference
between A and B. So every repetition runs each configuration once, round-robin, and the start of
the round rotates from one repetition to the next (no configuration always runs right after the
same neighbour). Each configuration's samples are then summarised by their median and spread.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Spread:
    """Median and spread of one configuration's samples (ms)."""

    median: float
    q1: float  # 25th percentile
    q3: float  # 75th percentile
    min: float
    max: float
    count: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "iqr": self.iqr}


def summarize(samples: Sequence[float]) -> Spread:
    """Median, quartiles (linear interpolation between order statistics), min and max."""
    values = sorted(float(s) for s in samples)
    if not values:
        raise ValueError("summarize: samples is empty; expected at least one timing")
    if len(values) == 1:
        only = values[0]
        return Spread(only, only, only, only, only, 1)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Spread(statistics.median(values), q1, q3, values[0], values[-1], len(values))


@dataclass
class Sample:
    """One timed call: wall-clock ms around it and whatever it returned."""

    ms: float
    result: Any


def rotated(names: Sequence[str], repetition: int) -> list[str]:
    """The round-robin order of one repetition: ``names`` rotated left by ``repetition``."""
    shift = repetition % len(names)
    return list(names[shift:]) + list(names[:shift])


def run_interleaved(
    calls: Mapping[str, Callable[[int], Any]],
    repetitions: int,
    synchronize: Callable[[], None] | None = None,
    on_sample: Callable[[str, Sample], None] | None = None,
) -> dict[str, list[Sample]]:
    """Time every call ``repetitions`` times, interleaved round-robin with a rotating start.

    ``calls[name](repetition)`` is one unit of work (e.g. one policy step on the repetition's
    observation). ``synchronize`` (e.g. ``torch.cuda.synchronize``) runs before and after each call,
    inside nothing that is timed before, so queued device work is charged to the call that made it.
    The garbage collector is off while timing (a collection would land on an arbitrary call).
    """
    if not calls:
        raise ValueError("run_interleaved: calls is empty; expected at least one configuration")
    if isinstance(repetitions, bool) or not isinstance(repetitions, int) or repetitions < 1:
        raise ValueError(f"repetitions={repetitions!r}: expected an int >= 1")
    names = list(calls)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    sync = synchronize or (lambda: None)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for repetition in range(repetitions):
            for name in rotated(names, repetition):
                sync()
                start = time.perf_counter()
                result = calls[name](repetition)
                sync()
                sample = Sample(ms=(time.perf_counter() - start) * 1e3, result=result)
                samples[name].append(sample)
                if on_sample is not None:
                    on_sample(name, sample)
    finally:
        if was_enabled:
            gc.enable()
    return samples
