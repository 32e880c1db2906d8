"""Per-step rows (CSV, or Parquet when pyarrow is installed), the summary JSON and the table."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from .metrics import OVERLAP_FRACTIONS, fraction_label, robust_stats, topk_count
from .observations import ReplayTimeline
from .runs import REFERENCE, STAGES, ReplayConfig, ReplayResult

ROW_FORMATS = ("csv", "parquet")


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def write_rows(rows: list[dict], path: str | Path, row_format: str = "csv") -> Path:
    """Write the per-step rows; ``path`` gets the format's suffix. Returns the file written."""
    if row_format not in ROW_FORMATS:
        raise ValueError(f"row_format={row_format!r}: expected one of {', '.join(ROW_FORMATS)}")
    if not rows:
        raise ValueError("no rows to write")
    path = Path(path).with_suffix("." + row_format)
    columns = list(rows[0])
    if row_format == "parquet":
        if not parquet_available():
            raise ValueError("row format parquet needs pyarrow (pip install pyarrow); use csv")
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({c: [row[c] for row in rows] for c in columns}), path)
        return path
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_value(row[c]) for c in columns})
    return path


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(round(value, 6))
    return value


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and np.isfinite(v)]


def _mean(values) -> float:
    data = _finite(values)
    return float(np.mean(data)) if data else float("nan")


def summarize(result: ReplayResult, timeline: ReplayTimeline, config: ReplayConfig, extra: dict | None = None) -> dict:
    """The summary: inputs, settings, one entry per run and the paper's analyses.

    Latency is taken over the *steady* steps of a run (not in the pruner's warm-up, which runs
    unpruned by design); the speed-up is the reference's median total latency over the run's.
    """
    runs = []
    reference_median = None
    for spec in result.specs:
        rows = result.rows_of(spec.name)
        steady = [r for r in rows if not r["warmup"]] or rows
        latency = {stage: robust_stats([r[f"{stage}_ms"] for r in steady]) for stage in STAGES}
        median = latency["total"]["median"]
        if spec.is_reference:
            reference_median = median
        dims = result.action_dim
        pool_ratios = [r["pool_ratio"] for r in rows]
        runs.append({
            "name": spec.name,
            "method": spec.method,
            "keep_ratio": spec.keep_ratio,
            "steps": len(rows),
            "warmup_steps": sum(r["warmup"] for r in rows),
            "pruned_steps": sum(r["pruned"] for r in rows),
            "latency_ms": latency,
            "speedup_vs_none": (reference_median / median) if reference_median and median else float("nan"),
            "kept_tokens": {"mean": _mean([r["kept_tokens"] for r in rows]),
                            "steady_mean": _mean([r["kept_tokens"] for r in steady]),
                            "of": int(rows[0]["visual_tokens"])},
            "flops_ratio_mean": _mean([r["flops_ratio"] for r in rows]),
            "deviation": {
                "l1_mean": _mean([r["dev_l1"] for r in rows]),
                "l1_steady_mean": _mean([r["dev_l1"] for r in steady]),
                "max_mean": _mean([r["dev_max"] for r in rows]),
                "max_max": max(_finite([r["dev_max"] for r in rows]), default=float("nan")),
                "l1_normalized_mean": _mean([r["dev_l1_normalized"] for r in rows]),
                "l1_per_dim": [_mean([r[f"dev_l1_d{d}"] for r in rows]) for d in range(dims)],
                "max_per_dim": [max(_finite([r[f"dev_max_d{d}"] for r in rows]), default=float("nan"))
                                for d in range(dims)],
            },
            "pool_ratio": robust_stats(pool_ratios),
            "online": _online_agreement(rows),
        })

    reference = result.rows_of(REFERENCE)
    fig2 = {"k_fractions": list(OVERLAP_FRACTIONS),
            "k_tokens": {fraction_label(f): topk_count(f, result.s_vl.shape[1]) for f in OVERLAP_FRACTIONS},
            "score_layers": list(result.layers.score_layers), "action_layers": list(result.layers.action_layers)}
    for kind in ("vl_act", "act_prev"):
        fig2[kind] = {fraction_label(f): robust_stats([r[f"overlap_{kind}_{fraction_label(f)}"] for r in reference])
                      for f in OVERLAP_FRACTIONS}
    fig11 = {}
    for spec in result.specs:
        if spec.method == "vla_pruner":
            pruned = [r for r in result.rows_of(spec.name) if np.isfinite(r["pool_ratio"])]
            fig11[spec.name] = {"time_s": [r["time_s"] for r in pruned], "pool_ratio": [r["pool_ratio"] for r in pruned]}
    info = timeline.info
    summary = {
        "bag": {"path": str(info.path), "storage": info.storage, "duration_s": info.duration_s,
                "messages": info.message_count,
                "topics": {t.name: {"type": t.msgtype, "count": t.count} for t in info.topics.values()}},
        "steps": {
            "source": timeline.step_source,
            "period_s": timeline.step_period,
            "run": len(timeline.steps),
            "held": len(timeline.held),
            "held_reasons": _held_reasons(timeline),
            "episodes": [{"index": i, "instruction": text,
                          "steps": sum(1 for s in timeline.steps if s.episode == i)}
                         for i, text in enumerate(timeline.instructions)],
            "camera_topics": timeline.camera_topics,
            "image_transport": timeline.image_transport,
            "instruction_source": timeline.instruction_source,
            "skipped_messages": timeline.skipped_messages,
        },
        "settings": {"methods": list(config.methods), "keep_ratios": list(config.keep_ratios),
                     **{name: list(value) if isinstance(value, tuple) else value  # the shared PrunerConfig
                        for name, value in dataclasses.asdict(config.pruner).items()
                        if name not in ("method", "keep_ratio", "enabled")},
                     "analysis_layers": config.analysis_layers},
        "runs": runs,
        "analysis": {"fig2_topk_overlap": fig2, "fig11_pool_ratio": fig11},
    }
    summary.update(extra or {})
    return summary


def _online_agreement(rows: list[dict]) -> dict:
    """How many recorded online steps ran this configuration, and on how many of those the
    replay kept exactly the tokens the node kept (needs the retained_tokens topic)."""
    same = [r for r in rows if r["online_same_config"]]
    compared = [r for r in same if r["online_same_kept"] != ""]
    return {"steps_same_config": len(same), "steps_compared": len(compared),
            "steps_same_kept": sum(1 for r in compared if r["online_same_kept"]),
            "online_total_ms": robust_stats([r["online_total_ms"] for r in same])}


def _held_reasons(timeline: ReplayTimeline, limit: int = 10) -> list[dict]:
    return [{"time_s": round(timeline.seconds(h.time_ns), 3), "reason": h.reason} for h in timeline.held[:limit]]


def write_summary(summary: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(_json_safe(summary), indent=2) + "\n", encoding="utf-8")
    return path


def _json_safe(value):
    """NaN/inf -> null (JSON has no NaN), numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def format_table(summary: dict) -> str:
    """The terminal table: one line per run."""
    header = ("method", "keep", "ms median", "speed-up", "kept tokens", "L1 dev", "max dev", "pool ratio")
    lines = []
    for run in summary["runs"]:
        pool = run["pool_ratio"]["mean"]
        lines.append((
            run["method"],
            f"{run['keep_ratio']:g}",
            f"{run['latency_ms']['total']['median']:.1f}",
            f"{run['speedup_vs_none']:.2f}x",
            f"{run['kept_tokens']['steady_mean']:.0f}/{run['kept_tokens']['of']}",
            f"{run['deviation']['l1_mean']:.4f}",
            f"{run['deviation']['max_max']:.4f}",
            f"{pool:.2f}" if pool is not None and math.isfinite(pool) else "-",
        ))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def aligned(cells) -> str:  # method left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([aligned(header), rule, *(aligned(line) for line in lines)])
