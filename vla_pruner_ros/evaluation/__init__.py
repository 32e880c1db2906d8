"""Statistics and reports of closed-loop evaluations, shared by eval-sim and eval-libero.

    from vla_pruner_ros.evaluation import EpisodeOutcome, paired_report, format_paired_report
    outcomes = [EpisodeOutcome(config="none", episode=7, success=True, final_error=0.012,
                               pruned_calls=0, flops_spent=..., flops_full=...), ...]
    report = paired_report(outcomes, references=("none",), radii=(0.025, 0.035, 0.05))
    print(format_paired_report(report))

`stats` holds the tests (Wilson interval, exact McNemar), `report` the paired protocol, and
`premise` the premise check (does a score rank the visual tokens by their causal effect).
"""
from .report import (
    EpisodeOutcome,
    format_paired_report,
    outcomes_from_libero,
    paired_report,
    plot_error_histogram,
    plot_radius_curve,
    write_paired_report,
)
from .stats import PairedComparison, mcnemar_exact, paired_comparison, wilson_interval

__all__ = [
    "EpisodeOutcome",
    "PairedComparison",
    "format_paired_report",
    "mcnemar_exact",
    "outcomes_from_libero",
    "paired_comparison",
    "paired_report",
    "plot_error_histogram",
    "plot_radius_curve",
    "wilson_interval",
    "write_paired_report",
]
