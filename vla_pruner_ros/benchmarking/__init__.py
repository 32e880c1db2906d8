"""Measurement code for ``vla-pruner bench``: interleaved timing, FLOP counting (measured and the
paper's analytic App. A.2), the benchmark suite and its report.

    from vla_pruner_ros.benchmarking import BenchSettings, run_benchmark, format_report
    result = run_benchmark(BenchSettings(preset="scaled", steps=20, warmup=5))
    print(format_report(result))
"""
from .flops import FlopBreakdown, count_flops, llama_decoder_flops, llama_layer_flops, paper_llm_flops
from .models import init_random_, make_observations, random_policy
from .report import format_report, format_table, format_targets, write_json
from .suite import DEFAULT_KEEP_RATIOS, DEFAULT_METHODS, TARGETS, BenchSettings, run_benchmark
from .timing import Spread, run_interleaved, summarize

__all__ = [
    "DEFAULT_KEEP_RATIOS",
    "DEFAULT_METHODS",
    "TARGETS",
    "BenchSettings",
    "FlopBreakdown",
    "Spread",
    "count_flops",
    "format_report",
    "format_table",
    "format_targets",
    "init_random_",
    "llama_decoder_flops",
    "llama_layer_flops",
    "make_observations",
    "paper_llm_flops",
    "random_policy",
    "run_benchmark",
    "run_interleaved",
    "summarize",
    "write_json",
]
