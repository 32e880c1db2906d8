"""The replay's figures (matplotlib, no display needed): latency and action deviation against
the keep ratio, the Fig. 2 overlap curves, the Fig. 11 pool ratio, and a contact sheet of the
retained tokens drawn with the node's own overlay."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..control.overlay import draw_retained_tokens
from .metrics import OVERLAP_FRACTIONS, fraction_label
from .observations import ReplayTimeline
from .runs import REFERENCE, ReplayResult

DPI = 120
STAGE_COLOURS = {"preprocess": "#b0b0b0", "vision": "#6baed6", "llm_prefix": "#fd8d3c", "select": "#e31a1c",
                 "llm_suffix": "#fdd0a2", "action_head": "#74c476"}


def _method_runs(summary: dict) -> dict[str, list[dict]]:
    """method -> its runs sorted by keep ratio (descending), without the reference."""
    methods: dict[str, list[dict]] = {}
    for run in summary["runs"]:
        if run["method"] != REFERENCE:
            methods.setdefault(run["method"], []).append(run)
    return {m: sorted(runs, key=lambda r: -r["keep_ratio"]) for m, runs in methods.items()}


def _reference(summary: dict) -> dict:
    return next(run for run in summary["runs"] if run["method"] == REFERENCE)


def _keep_axis(ax, ratios) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(ratios)))
    ax.set_xticklabels([f"{r:g}" for r in sorted(set(ratios))])
    ax.invert_xaxis()  # left to right: more pruning
    ax.set_xlabel("keep ratio (fraction of visual tokens kept)")
    ax.grid(True, alpha=0.3)


def plot_latency(summary: dict, path: Path) -> Path:
    """Median step latency (IQR bars) per method vs keep ratio, and where the time goes."""
    fig = Figure(figsize=(12, 4.8), dpi=DPI)
    ax, stages_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    reference = _reference(summary)
    ref = reference["latency_ms"]["total"]
    ratios = [r["keep_ratio"] for runs in _method_runs(summary).values() for r in runs] or [1.0]
    ax.axhline(ref["median"], color="black", linestyle="--", label=f"none (unpruned) {ref['median']:.1f} ms")
    ax.axhspan(ref["q1"], ref["q3"], color="black", alpha=0.08)
    # speed-up labels: alternate sides so that methods with close latencies stay readable
    label_places = [((8, -3), "left"), ((-8, -3), "right"), ((8, 9), "left"), ((-8, 9), "right")]
    for index, (method, runs) in enumerate(_method_runs(summary).items()):
        x = [r["keep_ratio"] for r in runs]
        y = [r["latency_ms"]["total"]["median"] for r in runs]
        low = [r["latency_ms"]["total"]["median"] - r["latency_ms"]["total"]["q1"] for r in runs]
        high = [r["latency_ms"]["total"]["q3"] - r["latency_ms"]["total"]["median"] for r in runs]
        ax.errorbar(x, y, yerr=[low, high], marker="o", capsize=3, label=method)
        for xi, yi, run in zip(x, y, runs):
            offset, align = label_places[index % len(label_places)]
            ax.annotate(f"{run['speedup_vs_none']:.2f}x", (xi, yi), textcoords="offset points", xytext=offset,
                        ha=align, fontsize=8, color=ax.lines[-1].get_color() if ax.lines else "black")
    _keep_axis(ax, ratios)
    ax.set_ylabel("policy step latency, median (ms)")
    ax.set_title("Latency vs keep ratio (bars: IQR; labels: speed-up vs none)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)

    runs = summary["runs"]
    names = [run["name"] for run in runs]
    bottom = np.zeros(len(runs))
    for stage, colour in STAGE_COLOURS.items():
        values = np.array([run["latency_ms"][stage]["median"] for run in runs], dtype=float)
        values = np.nan_to_num(values)
        stages_ax.bar(names, values, bottom=bottom, color=colour, label=stage, edgecolor="white", linewidth=0.5)
        bottom += values
    stages_ax.set_ylabel("median per stage (ms)")
    stages_ax.set_title("Where the time goes (steady steps)")
    stages_ax.tick_params(axis="x", labelrotation=35, labelsize=8)
    for label in stages_ax.get_xticklabels():
        label.set_horizontalalignment("right")
    stages_ax.legend(fontsize=7, ncols=2)
    stages_ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(_context(summary), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_deviation(summary: dict, result: ReplayResult, path: Path) -> Path:
    """Action deviation from the unpruned policy per method vs keep ratio: L1 and max."""
    fig = Figure(figsize=(12, 4.5), dpi=DPI)
    l1_ax, max_ax = fig.subplots(1, 2)
    methods = _method_runs(summary)
    ratios = [r["keep_ratio"] for runs in methods.values() for r in runs] or [1.0]
    for method, runs in methods.items():
        x = [r["keep_ratio"] for r in runs]
        l1 = [np.array([row["dev_l1"] for row in result.rows_of(r["name"]) if not row["warmup"]]) for r in runs]
        medians = [float(np.median(v)) if v.size else np.nan for v in l1]
        q1 = [m - (float(np.percentile(v, 25)) if v.size else np.nan) for m, v in zip(medians, l1)]
        q3 = [(float(np.percentile(v, 75)) if v.size else np.nan) - m for m, v in zip(medians, l1)]
        l1_ax.errorbar(x, medians, yerr=[q1, q3], marker="o", capsize=3, label=method)
        max_ax.plot(x, [r["deviation"]["max_max"] for r in runs], marker="o", label=f"{method}: worst step")
        max_ax.plot(x, [r["deviation"]["max_mean"] for r in runs], marker="x", linestyle=":",
                    color=max_ax.lines[-1].get_color(), label=f"{method}: mean over steps")
    for ax in (l1_ax, max_ax):
        _keep_axis(ax, ratios)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    l1_ax.set_ylabel("L1 deviation |a - a_none|, mean over chunk and dims")
    l1_ax.set_title("Action L1 deviation from unpruned (steady steps; median, IQR bars)")
    max_ax.set_ylabel("max |a - a_none| over chunk and dims")
    max_ax.set_title("Largest action deviation from unpruned")
    fig.suptitle(_context(summary) + "   (actions in the robot's units: rad for joints)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _episode_starts(result: ReplayResult, times: np.ndarray) -> list[float]:
    rows = result.rows_of(REFERENCE)
    return [times[i] for i in range(1, len(rows)) if rows[i]["episode"] != rows[i - 1]["episode"]]


def plot_overlaps(result: ReplayResult, path: Path, summary: dict) -> Path:
    """Fig. 2(b): top-k overlap over the episode, prefill vs action and action t vs t-1."""
    rows = result.rows_of(REFERENCE)
    times = np.array([row["time_s"] for row in rows])
    fig = Figure(figsize=(12, 4.5), dpi=DPI)
    axes = fig.subplots(1, 2, sharey=True)
    titles = {"vl_act": "Top-k(S_vl) vs Top-k(S_act), same step",
              "act_prev": "Top-k(S_act at t) vs Top-k(S_act at t-1)"}
    fig2 = summary["analysis"]["fig2_topk_overlap"]
    for ax, kind in zip(axes, ("vl_act", "act_prev")):
        for fraction in OVERLAP_FRACTIONS:
            label = fraction_label(fraction)
            values = np.array([row[f"overlap_{kind}_{label}"] for row in rows], dtype=float)
            mean = fig2[kind][label]["mean"]
            ax.plot(times, values, marker=".", label=f"k = {fraction * 100:g}% of M (mean {mean:.2f})")
        for start in _episode_starts(result, times):
            ax.axvline(start, color="grey", linestyle=":", linewidth=1)
        ax.set_title(titles[kind])
        ax.set_xlabel("time in bag (s)")
        ax.set_ylim(0, 1.05)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper right" if kind == "vl_act" else "lower right", framealpha=0.9)
    axes[0].set_ylabel("overlap ratio |Top-k ∩ Top-k| / k")
    layers = result.layers
    fig.suptitle(f"Unpruned attention (paper Fig. 2): S_vl from layers {_span(layers.score_layers)}, "
                 f"S_act from layers {_span(layers.action_layers)}   |   " + _context(summary), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_pool_ratio(result: ReplayResult, path: Path, summary: dict) -> Path | None:
    """Fig. 11: |C_dual| / |C_vl| over time for each VLA-Pruner run (None when there is none)."""
    runs = [spec for spec in result.specs if spec.method == "vla_pruner"]
    if not runs:
        return None
    fig = Figure(figsize=(8, 4.5), dpi=DPI)
    ax = fig.subplots()
    for spec in runs:
        rows = result.rows_of(spec.name)
        times = np.array([row["time_s"] for row in rows])
        ratio = np.array([row["pool_ratio"] for row in rows], dtype=float)
        ax.plot(times, ratio, marker=".", label=f"keep {spec.keep_ratio:g} (mean {np.nanmean(ratio):.2f})"
                if np.isfinite(ratio).any() else f"keep {spec.keep_ratio:g} (never pruned)")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.axhline(2.0, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0.9, 2.1)
    ax.set_xlabel("time in bag (s)")
    ax.set_ylabel("|C_dual| / |C_vl|")
    ax.set_title("VLA-Pruner candidate pool ratio over time (paper Fig. 11; gaps: warm-up)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(_context(summary), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def choose_sheet_steps(result: ReplayResult, names: list[str], count: int = 3) -> list[int]:
    """``count`` steps spread over the episode where every run of ``names`` pruned (else any)."""
    num_steps = len(result.rows_of(REFERENCE))
    pruned = [i for i in range(num_steps)
              if all(result.rows_of(n)[i]["pruned"] for n in names if n != REFERENCE)]
    pool = pruned or list(range(num_steps))
    if len(pool) <= count:
        return pool
    picks = np.linspace(0, len(pool) - 1, count).round().astype(int)
    return sorted({pool[i] for i in picks})


def contact_sheet(result: ReplayResult, timeline: ReplayTimeline, keep_ratio: float, path: Path,
                  steps: list[int] | None = None) -> Path:
    """Rows: the unpruned run and every method at ``keep_ratio``; columns: chosen steps x views.
    Each cell is the node's overlay: pruned patches dimmed, kept ones outlined."""
    names = [REFERENCE] + [s.name for s in result.specs
                           if not s.is_reference and abs(s.keep_ratio - keep_ratio) < 1e-9]
    if len(names) == 1:
        available = sorted({s.keep_ratio for s in result.specs if not s.is_reference})
        raise ValueError(f"contact sheet keep ratio {keep_ratio:g}: no run has it; runs have {available}")
    steps = choose_sheet_steps(result, names) if steps is None else list(steps)
    bad = [s for s in steps if not 0 <= s < len(timeline.steps)]
    if bad or not steps:
        raise ValueError(f"contact sheet steps {bad or steps}: expected step numbers in 0..{len(timeline.steps) - 1}")
    views = result.view_names
    columns = [(step, v) for step in steps for v in range(len(views))]
    fig = Figure(figsize=(2.1 * len(columns) + 0.6, 2.3 * len(names) + 0.6), dpi=DPI)
    axes = np.array(fig.subplots(len(names), len(columns), squeeze=False))
    offsets = np.cumsum([0] + [rows * cols for rows, cols in result.grids])
    for r, name in enumerate(names):
        row_data = result.rows_of(name)
        for c, (step, v) in enumerate(columns):
            rows, cols = result.grids[v]
            kept = np.flatnonzero(result.kept[name][step, offsets[v]:offsets[v + 1]])
            pruned = row_data[step]["pruned"]
            image = timeline.steps[step].observation.images[views[v]]
            overlay = draw_retained_tokens(image, rows, cols, kept if pruned else None, crop_scale=result.crop_scale)
            ax = axes[r, c]
            ax.imshow(overlay)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"step {step} (t={row_data[step]['time_s']:.1f} s)\n{views[v]}", fontsize=8)
            if c == 0:
                state = "all tokens" if name == REFERENCE else f"keep {keep_ratio:g}"
                ax.set_ylabel(f"{name.split('@')[0]}\n{state}", fontsize=9)
            if name != REFERENCE:
                note = f"{len(kept)}/{rows * cols}" + ("" if pruned else " (warm-up)")
                ax.text(0.02, 0.02, note, transform=ax.transAxes, fontsize=7, color="white",
                        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    fig.suptitle(f"Retained visual tokens at keep ratio {keep_ratio:g} (dimmed: pruned, outlined: kept)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _span(layers) -> str:
    layers = list(layers)
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def _context(summary: dict) -> str:
    steps = summary["steps"]
    bag = Path(summary["bag"]["path"]).name
    return f"bag {bag}: {steps['run']} steps ({steps['source']} timing)"


def write_plots(result: ReplayResult, timeline: ReplayTimeline, summary: dict, out_dir: Path,
                sheet_keep: float | None = None, sheet_steps: list[int] | None = None) -> dict[str, Path]:
    """Every figure into ``out_dir``; returns name -> file (the pool-ratio plot only with a
    vla_pruner run, the contact sheet only with a pruned run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "latency": plot_latency(summary, out_dir / "latency_vs_keep.png"),
        "deviation": plot_deviation(summary, result, out_dir / "deviation_vs_keep.png"),
        "overlap": plot_overlaps(result, out_dir / "overlap_over_episode.png", summary),
    }
    pool = plot_pool_ratio(result, out_dir / "pool_ratio_over_time.png", summary)
    if pool is not None:
        files["pool_ratio"] = pool
    ratios = sorted({s.keep_ratio for s in result.specs if not s.is_reference})
    if ratios:
        keep = sheet_keep if sheet_keep is not None else ratios[len(ratios) // 2]
        files["contact_sheet"] = contact_sheet(result, timeline, keep, out_dir / "contact_sheet.png", sheet_steps)
    return files
