"""The replay's numbers and files without a model: deviation, top-k overlaps, statistics, run
configuration, rows (CSV) and the table."""
import csv
import math

import numpy as np
import pytest

from vla_pruner_ros.replay import ReplayConfig, action_deviation, overlap_series, robust_stats, run_specs, topk_count
from vla_pruner_ros.replay.metrics import fraction_label
from vla_pruner_ros.replay.report import format_table, parquet_available, write_rows


def test_action_deviation_is_per_dimension_over_the_chunk():
    reference = np.zeros((4, 3))
    actions = np.array([[0.1, 0.0, -0.4],
                        [0.3, 0.0, 0.0],
                        [-0.2, 0.0, 0.0],
                        [0.0, 0.0, 0.0]])
    l1, worst = action_deviation(actions, reference)
    np.testing.assert_allclose(l1, [0.15, 0.0, 0.1])
    np.testing.assert_allclose(worst, [0.3, 0.0, 0.4])
    with pytest.raises(ValueError, match=r"expected equal \(chunk, action_dim\) shapes"):
        action_deviation(actions, np.zeros((4, 2)))


def test_topk_count_rounds_halves_up_like_the_budget():
    assert [topk_count(f, 128) for f in (0.125, 0.25, 0.5)] == [16, 32, 64]
    assert topk_count(0.125, 4) == 1 and topk_count(0.125, 12) == 2  # 1.5 -> 2
    assert [fraction_label(f) for f in (0.125, 0.25, 0.5)] == ["k12_5", "k25", "k50"]


def test_overlap_series_same_step_and_consecutive_steps():
    m = 8
    ramp = np.arange(m, dtype=np.float32)
    s_vl = np.stack([ramp, ramp, ramp])  # top-4: tokens 4..7
    s_act = np.stack([ramp, ramp[::-1].copy(), ramp[::-1].copy()])  # step 0 agrees, steps 1-2: tokens 0..3
    series = overlap_series(s_vl, s_act, episodes=np.array([0, 0, 1]), fractions=(0.5,))
    np.testing.assert_allclose(series["vl_act"][0.5], [1.0, 0.0, 0.0])
    # step 1 vs 0: disjoint; step 2 starts a new episode: no previous step
    assert series["act_prev"][0.5][1] == 0.0
    assert np.isnan(series["act_prev"][0.5][0]) and np.isnan(series["act_prev"][0.5][2])
    shifted = np.array([0, 0, 5, 6, 7, 8, 0, 0], dtype=np.float32)  # top-4: tokens 2..5, half of 4..7
    partial = np.stack([ramp, shifted])
    series = overlap_series(partial, partial, episodes=np.array([0, 0]), fractions=(0.5, 0.25))
    assert series["act_prev"][0.5][1] == 0.5 and series["act_prev"][0.25][1] == 0.0  # top-2: {6,7} vs {4,5}
    with pytest.raises(ValueError, match="one per step"):
        overlap_series(s_vl, s_act, episodes=np.array([0]))


def test_robust_stats_ignores_missing_values():
    stats = robust_stats([1.0, 2.0, 3.0, 4.0, float("nan"), None])
    assert stats["median"] == 2.5 and stats["n"] == 4 and stats["min"] == 1.0 and stats["max"] == 4.0
    assert stats["q1"] == 1.75 and stats["q3"] == 3.25 and stats["iqr"] == 1.5
    assert math.isnan(robust_stats([float("nan")])["median"]) and robust_stats([])["n"] == 0


def test_run_specs_put_the_unpruned_reference_first():
    specs = run_specs(ReplayConfig(methods=("fastv", "vla_pruner"), keep_ratios=(0.5, 0.25)))
    assert [s.name for s in specs] == ["none", "fastv@0.5", "fastv@0.25", "vla_pruner@0.5", "vla_pruner@0.25"]
    assert specs[0].settings.pruner_config().method == "none" and specs[0].is_reference
    fastv = specs[2].settings.pruner_config()
    assert (fastv.method, fastv.keep_ratio, fastv.prune_layer, fastv.window) == ("fastv", 0.25, 3, 3)
    # 'none' listed among the methods still runs once
    specs = run_specs(ReplayConfig(methods=("none", "fastv"), keep_ratios=(0.5,)))
    assert [s.name for s in specs] == ["none", "fastv@0.5"]


@pytest.mark.parametrize("changes, message", [
    ({"methods": ()}, "methods: expected at least one"),
    ({"methods": ("fastv", "bogus")}, "'bogus' unknown"),
    ({"methods": ("fastv", "fastv")}, "has duplicates"),
    ({"keep_ratios": (0.5, 0.0)}, r"keep_ratios: \[0.0\] outside \(0, 1\]"),
    ({"keep_ratios": (0.5, 0.5)}, "has duplicates"),
    ({"methods": ("vla_pruner:window=0",)}, "PrunerConfig.window=0"),
    ({"methods": ("vla_pruner:decay=1.5",)}, "PrunerConfig.decay=1.5"),
    ({"pruner": "window=2"}, "pruner: expected an enabled PrunerConfig"),
    ({"analysis_layers": "first"}, "analysis_layers='first'"),
])
def test_replay_config_names_the_bad_field(changes, message):
    with pytest.raises(ValueError, match=message):
        ReplayConfig(**changes)


def test_rows_are_written_as_csv_with_empty_cells_for_nan(tmp_path):
    rows = [{"config": "none", "step": 0, "total_ms": 12.3456789, "pool_ratio": float("nan"), "warmup": False},
            {"config": "fastv@0.5", "step": 0, "total_ms": 8.0, "pool_ratio": 1.5, "warmup": True}]
    path = write_rows(rows, tmp_path / "steps", "csv")
    assert path.name == "steps.csv"
    with open(path, newline="") as file:
        read = list(csv.DictReader(file))
    assert read[0] == {"config": "none", "step": "0", "total_ms": "12.345679", "pool_ratio": "", "warmup": "False"}
    assert read[1]["pool_ratio"] == "1.5"
    if not parquet_available():
        with pytest.raises(ValueError, match="needs pyarrow"):
            write_rows(rows, tmp_path / "steps", "parquet")
    with pytest.raises(ValueError, match="row_format='xlsx'"):
        write_rows(rows, tmp_path / "steps", "xlsx")


def _run(name, method, keep, median, speedup, kept, l1, worst, pool):
    return {"name": name, "method": method, "keep_ratio": keep, "latency_ms": {"total": {"median": median}},
            "speedup_vs_none": speedup, "kept_tokens": {"steady_mean": kept, "of": 512},
            "deviation": {"l1_mean": l1, "max_max": worst}, "pool_ratio": {"mean": pool}}


def test_table_has_one_aligned_line_per_run():
    summary = {"runs": [_run("none", "none", 1.0, 100.0, 1.0, 512, 0.0, 0.0, float("nan")),
                        _run("vla_pruner@0.25", "vla_pruner", 0.25, 62.5, 1.6, 128, 0.0123, 0.25, 1.4375)]}
    lines = format_table(summary).splitlines()
    assert lines[0].split() == ["method", "keep", "ms", "median", "speed-up", "kept", "tokens", "L1", "dev", "max",
                                "dev", "pool", "ratio"]
    assert lines[2].split() == ["none", "1", "100.0", "1.00x", "512/512", "0.0000", "0.0000", "-"]
    assert lines[3].split() == ["vla_pruner", "0.25", "62.5", "1.60x", "128/512", "0.0123", "0.2500", "1.44"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
