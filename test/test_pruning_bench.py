"""Smoke test of the selection micro-benchmark (its structure, never its timings)."""
import argparse

import pytest

from vla_pruner_ros.pruning import METHODS
from vla_pruner_ros.tools import bench_select


def tiny_args(*extra):
    parser = bench_select.add_arguments(argparse.ArgumentParser())
    return parser.parse_args(["--num-visual", "32", "--dims", "8", "16", "--keeps", "0.5", "0.25",
                              "--repeats", "2", "--warmup", "1", *extra])


def test_benchmark_rows_cover_the_grid():
    rows = bench_select.benchmark(tiny_args())
    methods = [m for m in METHODS if m != "none"]
    assert len(rows) == 2 * 2 * (1 + len(methods))
    assert {(r["width"], r["keep"]) for r in rows} == {(8, 0.5), (8, 0.25), (16, 0.5), (16, 0.25)}
    for row in rows:
        assert row["p10"] <= row["median"] <= row["p90"]
        if row["method"] == "matmul":
            assert row["ratio"] == 1.0
    table = bench_select.format_table(rows)
    assert "vla_pruner" in table and "x matmul" in table


def test_main_prints_a_table(capsys):
    assert bench_select.main(["--num-visual", "16", "--dims", "8", "--keeps", "0.5", "--repeats", "1",
                              "--methods", "vla_pruner", "random"]) == 0
    out = capsys.readouterr().out
    assert "matmul" in out and "vla_pruner" in out and "random" in out


def test_a_method_that_never_prunes_is_refused():
    with pytest.raises(ValueError, match="never prunes"):
        bench_select.benchmark(tiny_args("--methods", "none"))
