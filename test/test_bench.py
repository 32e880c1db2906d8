"""`vla-pruner bench` end to end on the tiny preset: the JSON it writes and how its numbers relate.

Timings are never asserted (they are machine noise at this size); what is asserted is that every
configuration is there, that derived numbers follow from the measured ones, and that the measured
FLOPs agree exactly with an independent count of the layers that ran.
"""
import argparse
import json

import pytest

from vla_pruner_ros.benchmarking.flops import llama_decoder_flops
from vla_pruner_ros.benchmarking.suite import DEFAULT_KEEP_RATIOS, DEFAULT_METHODS, TARGETS
from vla_pruner_ros.pruning import PrunerConfig
from vla_pruner_ros.tools import bench, cli


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    parser = bench.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--preset", "tiny", "--steps", "2", "--warmup", "1", "--json", str(out), "--quiet",
                              "--peak-seconds", "0.02"])
    assert bench.run(args) == 0
    return json.loads(out.read_text())


def rows_by_name(report):
    return {row["name"]: row for row in report["rows"]}


def test_every_method_and_keep_ratio_has_a_row(report):
    names = set(rows_by_name(report))
    expected = {"none"} | {f"{m}@{k:g}" for m in DEFAULT_METHODS if m != "none" for k in DEFAULT_KEEP_RATIOS}
    assert names == expected
    assert report["schema"] == "vla-pruner-bench/1"
    assert report["settings"]["steps"] == 2 and report["settings"]["warmup"] == 1


def test_machine_and_model_are_described(report):
    machine, model = report["machine"], report["model"]
    for key in ("cpu", "usable_cores", "torch", "torch_threads", "device", "dtype"):
        assert machine[key] not in (None, "")
    assert machine["device"] == "cpu" and machine["dtype"] == "float32"  # the session pins dtype auto
    assert machine["dtype_reason"] == "auto, pinned by VLA_PRUNER_AUTO_DTYPE"
    assert (model["preset"], model["llm_layers"], model["hidden_size"], model["num_visual"]) == ("tiny", 6, 64, 512)
    assert model["seq_len"] > model["num_visual"]


def test_timings_are_summarised_from_the_samples(report):
    for row in report["rows"]:
        ms, samples = row["ms"], row["samples_ms"]
        assert len(samples) == 2 and ms["count"] == 2
        assert ms["min"] <= ms["q1"] <= ms["median"] <= ms["q3"] <= ms["max"]
        assert ms["median"] == pytest.approx(sum(samples) / 2, rel=1e-3)  # median of two samples
        assert set(row["stages_ms"]) >= {"preprocess", "vision", "llm_prefix", "select", "llm_suffix", "total"}


def test_derived_numbers_follow_from_the_measured_ones(report):
    rows = rows_by_name(report)
    vanilla = rows["none"]
    assert vanilla["speedup"] == pytest.approx(1.0) and vanilla["efficiency"] == pytest.approx(1.0)
    for row in report["rows"]:
        assert row["speedup"] == pytest.approx(vanilla["ms"]["median"] / row["ms"]["median"])
        assert row["flops_limit"] == pytest.approx(vanilla["flops"]["total"] / row["flops"]["total"])
        assert row["flops_ratio"] == pytest.approx(1 / row["flops_limit"])
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["flops_limit"])
        assert row["llm_flops_limit"] == pytest.approx(vanilla["flops"]["llm"] / row["flops"]["llm"])
        assert row["llm_efficiency"] == pytest.approx(row["llm_speedup"] / row["llm_flops_limit"])
        assert row["select_pct"] == pytest.approx(100 * row["select_ms"] / row["ms"]["median"])
        if row["method"] != "none":
            fastv = rows[f"fastv@{row['keep_ratio']:g}"]
            assert row["ms_vs_fastv"] == pytest.approx(row["ms"]["median"] / fastv["ms"]["median"])


def test_pruned_rows_keep_the_budget_and_cost_fewer_flops(report):
    vanilla = rows_by_name(report)["none"]
    assert not vanilla["pruned"] and vanilla["kept"] == 512 and vanilla["seq_len_after"] == vanilla["seq_len_before"]
    for row in report["rows"]:
        if row["method"] == "none":
            continue
        budget = PrunerConfig(keep_ratio=row["keep_ratio"]).budget(512)
        assert row["pruned"] and row["timed_steps_pruned"] == 2 and row["kept"] == budget
        assert row["seq_len_after"] == row["seq_len_before"] - (512 - budget)
        assert row["flops"]["total"] < vanilla["flops"]["total"]
        assert row["flops"]["vision"] == vanilla["flops"]["vision"]  # the towers are never pruned
    by_keep = sorted((r for r in report["rows"] if r["method"] == "vla_pruner"), key=lambda r: r["keep_ratio"])
    assert [r["flops"]["total"] for r in by_keep] == sorted(r["flops"]["total"] for r in by_keep)


def test_measured_layer_flops_equal_an_exact_count_of_the_layers_that_ran(report):
    layers = report["model"]["llm_layers"]
    for row in report["rows"]:
        # recomputed here from the row counts, independently of the benchmark's own bookkeeping
        before, after, layer = row["seq_len_before"], row["seq_len_after"], row["prune_layer"]
        rows_per_layer = [before] * layers if layer is None else [before] * layer + [after] * (layers - layer)
        text = argparse.Namespace(num_attention_heads=4, num_key_value_heads=None, head_dim=None,
                                  hidden_size=64, intermediate_size=172)
        assert row["flops"]["decoder_layers"] == llama_decoder_flops(rows_per_layer, text)
        assert row["flops_decoder_layers_exact"] == row["flops"]["decoder_layers"]


def test_side_costs_appear_where_each_method_has_them(report):
    for row in report["rows"]:
        flops, method = row["flops"], row["method"]
        # score capture: FastV and VLA-Pruner read attention; vanilla and DivPrune do not
        assert (flops["score_capture"] > 0) == (method in ("fastv", "vla_pruner"))
        assert (row["score_capture_ms"] > 0) == (method in ("fastv", "vla_pruner"))
        # selection FLOPs: the cosine-distance matrix of Alg. 1 (VLA-Pruner, DivPrune)
        assert (flops["selection"] > 0) == (method in ("vla_pruner", "divprune"))
        assert flops["llm"] == flops["decoder_layers"] + flops["score_capture"] + flops["selection"]
        if method == "divprune":  # Alg. 1 over all 512 tokens: 2 * 512 * 512 * 64 multiply-adds
            assert flops["selection"] == 2 * 512 * 512 * 64
        if method == "vla_pruner":
            pool = row["pools"]["pool_dual"]
            assert row["kept"] <= pool <= 2 * row["kept"]
            # Alg. 1 over the pool, plus the decaying-window estimate (weights (3,) @ history (3, 512))
            assert flops["selection"] == 2 * pool * pool * 64 + 2 * 3 * 512


def test_analytic_eq13_ratio_is_reported_next_to_the_measured_one(report):
    for row in report["rows"]:
        analytic = row["analytic_llm_flops"]
        assert analytic["ratio"] == pytest.approx(analytic["pruned"] / analytic["full"])
        if row["method"] == "none":
            assert analytic["ratio"] == 1.0
        else:  # Eq. 10-13 ignore the third MLP matrix and the side costs, so they only roughly agree
            assert analytic["ratio"] < 1.0 and abs(analytic["ratio"] - row["llm_flops_ratio"]) < 0.1


def test_achieved_flops_are_reported_against_the_measured_gemm_peak(report):
    peak = report["gemm_peak"]
    assert peak["dtype"] == "float32" and peak["gflops"] > 0
    assert peak["gflops"] == max(shape["gflops"] for shape in peak["shapes"])
    best = next(s for s in peak["shapes"] if s["gflops"] == peak["gflops"])
    assert peak["best"] == f"{best['rows']}x{best['inner']}x{best['cols']} ({best['where']})"
    for row in report["rows"]:
        assert row["gflops_per_s"] == pytest.approx(row["flops"]["total"] / (row["ms"]["median"] / 1e3) / 1e9)
        assert row["peak_fraction"] == pytest.approx(row["gflops_per_s"] / peak["gflops"])


def test_targets_are_checked_for_every_vla_pruner_ratio(report):
    checks = report["targets"]["checks"]
    assert {(c["keep_ratio"], c["target"]) for c in checks} == {
        (k, t) for k in DEFAULT_KEEP_RATIOS for t in ("efficiency", "ms_vs_fastv", "select_pct")} | {
        (None, "peak_fraction")}
    for check in checks:
        assert check["met"] == (check["value"] >= check["limit"] if check["target"] in ("efficiency", "peak_fraction")
                                else check["value"] <= check["limit"])
    peak_check = next(c for c in checks if c["target"] == "peak_fraction")
    assert peak_check["limit"] == 0.80 and peak_check["value"] == rows_by_name(report)["none"]["peak_fraction"]
    assert report["targets"]["limits"] == TARGETS
    assert report["targets"]["all_met"] == all(c["met"] for c in checks)


def test_the_printed_report_has_both_tables(report, capsys):
    from vla_pruner_ros.benchmarking.report import format_report

    text = format_report(report)
    assert "vla_pruner@0.125" in text and "LLM speed-up" in text and "Eq.13 %" in text and "targets" in text
    assert "% peak" in text and "GEMM peak (float32" in text


def test_cli_mounts_the_command_and_rejects_bad_options(capsys):
    assert cli.COMMANDS["bench"][0] == "vla_pruner_ros.tools.bench"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--keep", "0.5,1.5"])
    assert exit_info.value.code == 2 and "--keep" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["bench", "--methods", "none,fastest"])
    assert "fastest" in capsys.readouterr().err
    parser = bench.add_arguments(argparse.ArgumentParser())
    assert bench.run(parser.parse_args(["--steps", "0"])) == 2
    assert "BenchSettings.steps=0" in capsys.readouterr().err
