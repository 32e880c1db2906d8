"""Tests for success rates: the Wilson interval of one rate and the exact McNemar test of two
rates measured on the same episodes (paired: same seeds, same scenes, same instructions).

Why paired: every configuration of an evaluation runs the same episodes, so most of the variance
between two success rates is the episodes themselves (easy or hard scenes).  McNemar looks only
at the discordant episodes, the ones exactly one of the two configurations solved; under "no
difference" each discordant episode is a fair coin, so the two-sided p-value is an exact binomial
tail (no normal approximation, valid for a handful of discordant pairs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Mapping

WILSON_Z = 1.959963984540054  # two-sided 95 %


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (the 95 % one by default)."""
    if isinstance(trials, bool) or not hasattr(trials, "__index__") or int(trials) < 1:
        raise ValueError(f"trials={trials!r}: expected a positive integer")
    trials = int(trials)
    if isinstance(successes, bool) or not hasattr(successes, "__index__") or not 0 <= int(successes) <= trials:
        raise ValueError(f"successes={successes!r}: expected an integer in 0..{trials}")
    p = int(successes) / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (only the first configuration
    succeeded) and c (only the second): P(X <= min(b, c)) * 2 for X ~ Binomial(b + c, 1/2),
    capped at 1.  No discordant pair gives 1.0."""
    for name, value in (("only_first", only_first), ("only_second", only_second)):
        if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < 0:
            raise ValueError(f"{name}={value!r}: expected a non-negative integer")
    b, c = int(only_first), int(only_second)
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class PairedComparison:
    """A configuration against a reference on the episodes both ran."""

    episodes: int  # episodes in common
    both: int  # solved by both
    only_config: int  # solved by the configuration, not the reference
    only_reference: int  # solved by the reference, not the configuration
    neither: int
    p_value: float  # exact two-sided McNemar

    @property
    def difference(self) -> float:
        """Success rate of the configuration minus that of the reference (same episodes)."""
        return (self.only_config - self.only_reference) / self.episodes if self.episodes else float("nan")

    def as_dict(self) -> dict:
        return {"episodes": self.episodes, "both": self.both, "only_config": self.only_config,
                "only_reference": self.only_reference, "neither": self.neither,
                "difference": self.difference, "p_value": self.p_value}


def paired_comparison(config: Mapping[Hashable, bool], reference: Mapping[Hashable, bool]) -> PairedComparison:
    """Compare per-episode successes {episode id: success} on the episodes both dicts hold."""
    common = [key for key in config if key in reference]
    both = sum(bool(config[k]) and bool(reference[k]) for k in common)
    only_config = sum(bool(config[k]) and not bool(reference[k]) for k in common)
    only_reference = sum(not bool(config[k]) and bool(reference[k]) for k in common)
    neither = len(common) - both - only_config - only_reference
    return PairedComparison(len(common), both, only_config, only_reference, neither,
                            mcnemar_exact(only_config, only_reference))
