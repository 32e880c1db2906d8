"""Printing and saving a benchmark result (the dict ``suite.run_benchmark`` returns)."""

from __future__ import annotations

import json
import math
import os
from typing import Any


def _fmt(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def _table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    def render(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *(render(line) for line in lines)])


def describe_run(result: dict[str, Any]) -> str:
    machine, model, settings = result["machine"], result["model"], result["settings"]
    what = model["checkpoint"] or f"preset {model['preset']}"
    gpu = f", {machine['gpu']}" if machine.get("gpu") else ""
    lines = []
    load, cores = machine.get("load_average_before"), machine.get("usable_cores")
    if load and cores and load[0] >= cores:
        lines.append(f"WARNING: load average {load[0]} on {cores} cores before the run: other processes compete "
                     f"for the CPU and timings are noisy (see the IQR column); rerun on a quiet machine (or --threads 1)")
    return "\n".join(lines + [
        f"{what}: LLM {model['llm_layers']} layers x {model['hidden_size']} (MLP {model['intermediate_size']}, "
        f"{model['attention_heads']} heads), {model['views']} views x {model['num_visual'] // model['views']} "
        f"visual tokens, {model['seq_len']} rows, chunk {model['chunk_length']}x{model['action_dim']}, "
        f"{model['parameters'] / 1e6:.1f} M parameters, weights {model['weights']}",
        f"machine: {machine['cpu']} ({machine['usable_cores']} usable cores), torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, device {machine['device']}{gpu}, {machine['dtype']}"
        f"{' (' + machine['dtype_reason'] + ')' if machine.get('dtype_reason') else ''}; "
        f"load average {machine['load_average_before']} -> {machine['load_average_after']}",
        *([f"GEMM peak ({peak['dtype']}, {peak['threads']} threads, best of the model's {len(peak['shapes'])} "
           f"linear-layer shapes): {peak['gflops']:.1f} GFLOP/s at {peak['best']}"]
          if (peak := result.get("gemm_peak")) else []),
        f"timing: {settings['steps']} interleaved repetitions per configuration after "
        f"{settings['warmup']} warm-up steps (+ the pruner's history window); ms = median of the whole "
        f"predict(), spread = IQR",
    ])


def format_table(result: dict[str, Any]) -> str:
    """The main table and the LLM/overhead table."""
    rows = result["rows"]
    main_header = ["config", "kept", "ms", "IQR", "speed-up", "FLOPs %", "limit", "eff.",
                   "vs FastV", "select ms", "select %", "capture ms", "GFLOP/s", "% peak"]
    main = []
    for r in rows:
        main.append([
            r["name"], f"{r['kept']}/{r['num_visual']}", _fmt(r["ms"]["median"], ".1f"), _fmt(r["ms"]["iqr"], ".1f"),
            _fmt(r["speedup"], ".2f") + "x", _fmt(100 * r["flops_ratio"], ".1f"), _fmt(r["flops_limit"], ".2f") + "x",
            _fmt(r["efficiency"], ".2f"), _fmt(r["ms_vs_fastv"], ".3f"),
            _fmt(r["select_ms"], ".2f") if r["keep_ratio"] is not None else "-",
            _fmt(r["select_pct"], ".2f") if r["keep_ratio"] is not None else "-",
            _fmt(r["score_capture_ms"], ".2f"), _fmt(r.get("gflops_per_s"), ".1f"),
            _fmt(100 * r["peak_fraction"] if r.get("peak_fraction") is not None else None, ".1f"),
        ])
    llm_header = ["config", "LLM ms", "LLM speed-up", "LLM FLOPs %", "LLM limit", "LLM eff.",
                  "Eq.13 %", "GFLOPs", "vision", "LLM", "capture", "select", "pool C_dual"]
    llm = []
    for r in rows:
        f = r["flops"]
        llm.append([
            r["name"], _fmt(r["llm_ms"], ".1f"), _fmt(r["llm_speedup"], ".2f"), _fmt(100 * r["llm_flops_ratio"], ".1f"),
            _fmt(r["llm_flops_limit"], ".2f"), _fmt(r["llm_efficiency"], ".2f"),
            _fmt(100 * r["analytic_llm_flops"]["ratio"], ".1f"), _fmt(f["total"] / 1e9, ".2f"),
            _fmt(f["vision"] / 1e9, ".2f"), _fmt(f["llm"] / 1e9, ".2f"), _fmt(f["score_capture"] / 1e9, ".3f"),
            _fmt(f["selection"] / 1e9, ".3f"), _fmt((r.get("pools") or {}).get("pool_dual"), "d"),
        ])
    notes = ("speed-up = vanilla ms / ms; FLOPs % and limit (= vanilla FLOPs / FLOPs) from FlopCounterMode over "
             "one whole step (vision towers included); eff. = speed-up / limit; vs FastV = ms / FastV ms at the "
             "same keep; select = the policy's select stage; capture = side-score computation (torch.profiler, median of up to 3 untimed steps). "
             "GFLOP/s = measured FLOPs / median ms; % peak = that / the GEMM peak measured for this dtype at the "
             "model's shapes (like MFU). "
             "LLM columns: decoder layers + capture + selection only; Eq.13 % = the paper's analytic LLM ratio.")
    return "\n\n".join([_table(main_header, main), _table(llm_header, llm), notes])


def format_targets(result: dict[str, Any]) -> str:
    targets = result["targets"]
    if not targets["checks"]:
        return "targets: no vla_pruner rows to check"
    names = {"efficiency": "efficiency >= {limit}", "ms_vs_fastv": "VLA-Pruner ms / FastV ms <= {limit}",
             "select_pct": "selection <= {limit} % of the step",
             "peak_fraction": "vanilla step >= {limit} of the GEMM peak"}
    lines = []
    for check in targets["checks"]:
        label = names[check["target"]].format(limit=check["limit"])
        where = "vanilla" if check["keep_ratio"] is None else f"keep {check['keep_ratio']:g}"
        lines.append(f"  {where}: {label}: {check['value']:.3f} {'met' if check['met'] else 'MISSED'}")
    verdict = "all met" if targets["all_met"] else "some missed"
    return "targets (vla_pruner, this run): " + verdict + "\n" + "\n".join(lines)


def format_report(result: dict[str, Any]) -> str:
    return "\n\n".join([describe_run(result), format_table(result), format_targets(result)])


def write_json(result: dict[str, Any], path: str | os.PathLike) -> None:
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, sort_keys=False)
        f.write("\n")
