"""The paired protocol of a closed-loop evaluation, for any task (sim, LIBERO).

Input: one `EpisodeOutcome` per (configuration, episode).  Every configuration should have run the
same episode ids (same seeds / initial states); comparisons only use the episodes both sides ran.

Per configuration the report gives:
  * success rate with its 95 % Wilson interval;
  * a paired comparison against each reference configuration (exact McNemar on the discordant
    episodes; see `stats`);
  * success on the episodes with at least one pruned policy call (a method with a warm-up may
    finish an episode before it ever prunes: those episodes say nothing about its selection);
  * success against radius: the share of episodes whose final error is within each radius (only
    when the task reports an error, e.g. the TCP-to-target distance);
  * the LLM FLOPs really spent over the episodes (warm-up included) / the same steps unpruned.

`references` name configurations by label ("none", "fastv@0.25") or by method ("fastv"): a method
name compares each configuration with that method at the same keep ratio.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Hashable, Iterable, Sequence

import numpy as np

from .stats import paired_comparison, wilson_interval

DEFAULT_RADII = (0.025, 0.035, 0.05)  # m: the sim reach task's success radius, then looser ones


@dataclass(frozen=True)
class EpisodeOutcome:
    config: str  # configuration label: "none" or "method@keep"
    episode: Hashable  # the episode's id (scene seed; (task, trial) for LIBERO)
    success: bool
    final_error: float = float("nan")  # task error at the end (m), NaN when the task has none
    pruned_calls: int = 0  # policy calls that ran pruned
    policy_calls: int = 0
    flops_spent: float = float("nan")  # LLM FLOPs as run, every call (warm-up included)
    flops_full: float = float("nan")  # the same calls unpruned


def config_label(method: str, keep_ratio: float) -> str:
    return "none" if method == "none" else f"{method}@{keep_ratio:g}"


def split_label(label: str) -> tuple[str, float]:
    if "@" not in label:
        return label, 1.0
    method, keep = label.rsplit("@", 1)
    return method, float(keep)


def _resolve_reference(reference: str, label: str, labels: Sequence[str]) -> str | None:
    """The configuration `label` is compared with for `reference` (None: no such configuration)."""
    if reference in labels:
        return reference
    if "@" in reference:
        return None
    _, keep = split_label(label)
    candidate = config_label(reference, keep)
    return candidate if candidate in labels else None


def paired_report(outcomes: Iterable[EpisodeOutcome], references: Sequence[str] = ("none",),
                  radii: Sequence[float] = DEFAULT_RADII) -> dict:
    """The paired protocol over `outcomes`; a JSON-ready dict {"references", "radii", "rows"}."""
    by_config: dict[str, dict[Hashable, EpisodeOutcome]] = {}
    for outcome in outcomes:
        episodes = by_config.setdefault(outcome.config, {})
        if outcome.episode in episodes:
            raise ValueError(f"episode {outcome.episode!r} of {outcome.config!r} is listed twice")
        episodes[outcome.episode] = outcome
    labels = list(by_config)
    rows = []
    for label, episodes in by_config.items():
        items = list(episodes.values())
        n = len(items)
        successes = sum(e.success for e in items)
        low, high = wilson_interval(successes, n)
        pruned = [e for e in items if e.pruned_calls > 0]
        errors = np.array([e.final_error for e in items], dtype=float)
        has_error = bool(np.isfinite(errors).any())
        spent = [e.flops_spent for e in items if math.isfinite(e.flops_spent) and math.isfinite(e.flops_full)]
        full = [e.flops_full for e in items if math.isfinite(e.flops_spent) and math.isfinite(e.flops_full)]
        method, keep = split_label(label)
        row = {
            "config": label, "method": method, "keep_ratio": keep, "episodes": n, "successes": successes,
            "success_rate": successes / n, "ci95_low": low, "ci95_high": high,
            "episodes_with_pruned_call": len(pruned),
            "success_when_pruned": (sum(e.success for e in pruned) / len(pruned)) if pruned else float("nan"),
            "flops_spent_ratio": (sum(spent) / sum(full)) if full and sum(full) > 0 else float("nan"),
            # policy calls that ran every token (warm-up, refill after a new instruction), per episode
            "unpruned_calls_per_episode": float(np.mean([e.policy_calls - e.pruned_calls for e in items])),
            "median_final_error": float(np.nanmedian(errors)) if has_error else float("nan"),
            "success_at_radius": {f"{r:g}": float(np.mean(errors <= r)) if has_error else float("nan")
                                  for r in radii},
            "paired": {},
        }
        success = {key: e.success for key, e in episodes.items()}
        for reference in references:
            other = _resolve_reference(reference, label, labels)
            if other is None or other == label:
                continue
            ref_success = {key: e.success for key, e in by_config[other].items()}
            row["paired"][reference] = {"against": other, **paired_comparison(success, ref_success).as_dict()}
        rows.append(row)
    return {"references": list(references), "radii": [float(r) for r in radii], "rows": rows}


def _pct(value: float, digits: int = 1) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value * 100:.{digits}f}"


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def format_paired_report(report: dict) -> str:
    """The printed table: one line per configuration; a paired column pair per reference."""
    radii = report["radii"]
    refs = report["references"]
    header = f"{'config':<22} {'n':>4} {'success [95% CI]':>22} {'pruned>=1':>13} {'FLOPs':>6} {'unpr/ep':>7}"
    header += "".join(f" {'<=' + format(r * 100, 'g') + 'cm':>8}" for r in radii)
    header += "".join(f" {'vs ' + ref:>24}" for ref in refs)
    lines = [header, "-" * len(header)]
    for row in report["rows"]:
        line = (f"{row['config']:<22} {row['episodes']:>4} "
                f"{_pct(row['success_rate']):>6}% [{_pct(row['ci95_low']):>5}, {_pct(row['ci95_high']):>5}] "
                f"{_pct(row['success_when_pruned'], 0):>4}% of {row['episodes_with_pruned_call']:>4} "
                f"{row['flops_spent_ratio']:>6.3f} {row.get('unpruned_calls_per_episode', float('nan')):>7.2f}")
        line += "".join(f" {_pct(row['success_at_radius'][format(r, 'g')], 0):>7}%" for r in radii)
        for ref in refs:
            paired = row["paired"].get(ref)
            if paired is None:
                line += f" {'':>24}"
            else:
                text = (f"{paired['difference'] * 100:+.1f} ({paired['only_config']}:{paired['only_reference']}) "
                        f"p={_p(paired['p_value'])}")
                line += f" {text:>24}"
        lines.append(line)
    lines += [
        "",
        "success: share of episodes solved, 95% Wilson interval.  pruned>=1: success on the episodes with at",
        "least one pruned policy call, of how many.  FLOPs: LLM FLOPs really spent over all episodes (warm-up",
        "calls count in full) / the same calls unpruned.  unpr/ep: policy calls per episode that ran every token",
        "(warm-up included).  <=r: share of episodes whose final error is within r.",
        "vs REF: paired difference in success points on the same episodes, (discordant: only this : only REF),",
        "exact two-sided McNemar p.  A method-name reference compares at the same keep ratio.",
    ]
    return "\n".join(lines)


def _save_with_legend(fig, ax, path) -> Path:
    """The common end of the line plots: grid, legend, tight layout, PNG written, figure closed."""
    import matplotlib.pyplot as plt

    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_radius_curve(report: dict, outcomes: Sequence[EpisodeOutcome], path: str | os.PathLike,
                      title: str = "") -> Path:
    """Share of episodes with final error <= r, as a continuous curve of r, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    grid = np.linspace(0.0, 0.10, 201)
    for row in report["rows"]:
        errors = np.array([o.final_error for o in outcomes if o.config == row["config"]], dtype=float)
        if not np.isfinite(errors).any():
            continue
        share = [(errors <= r).mean() * 100 for r in grid]
        style = "--" if row["method"] == "none" else "-"
        ax.plot(grid * 100, share, style, linewidth=1.8 if row["method"] in ("none", "vla_pruner") else 1.0,
                label=row["config"])
    for r in report["radii"]:
        ax.axvline(r * 100, color="gray", linewidth=0.6, linestyle=":")
    ax.set_xlabel("radius r (cm)")
    ax.set_ylabel("episodes with final error <= r (%)")
    ax.set_title(title or "success against radius", fontsize=9)
    ax.set_ylim(-2, 102)
    return _save_with_legend(fig, ax, path)


def plot_error_histogram(report: dict, outcomes: Sequence[EpisodeOutcome], path: str | os.PathLike,
                         title: str = "") -> Path:
    """Histogram of the final error per configuration (one small panel each, shared bins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"]
            if np.isfinite([o.final_error for o in outcomes if o.config == r["config"]]).any()]
    cols = min(4, max(1, len(rows)))
    lines = max(1, math.ceil(len(rows) / cols))
    fig, axes = plt.subplots(lines, cols, figsize=(3.2 * cols, 2.4 * lines), dpi=110, squeeze=False,
                             sharex=True, sharey=True)
    bins = np.linspace(0.0, 0.12, 25)
    for ax, row in zip(axes.flat, rows):
        errors = np.array([o.final_error for o in outcomes if o.config == row["config"]], dtype=float)
        ax.hist(np.clip(errors[np.isfinite(errors)], 0, bins[-1]) * 100, bins=bins * 100, color="tab:blue")
        for r in report["radii"]:
            ax.axvline(r * 100, color="gray", linewidth=0.6, linestyle=":")
        ax.set_title(f"{row['config']} (median {row['median_final_error'] * 100:.1f} cm)", fontsize=8)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("final error (cm, last bin = more)", fontsize=8)
    fig.suptitle(title or "final error per configuration", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_success_vs_flops(report: dict, path: str | os.PathLike, title: str = "") -> Path:
    """Success (95 % interval) against the FLOPs each configuration really spent: methods compared
    at equal compute sit on the same vertical; one marker per method, one point per keep ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    rows = [r for r in report["rows"] if math.isfinite(r["flops_spent_ratio"])]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["flops_spent_ratio"])
        x = [r["flops_spent_ratio"] for r in mine]
        y = np.array([r["success_rate"] for r in mine]) * 100
        err = np.clip(np.array([[r["success_rate"] - r["ci95_low"], r["ci95_high"] - r["success_rate"]]
                                for r in mine]).T * 100, 0.0, None)
        ax.errorbar(x, y, yerr=err, marker="s" if method == "none" else "o", capsize=3, label=method,
                    linewidth=1.6 if method == "vla_pruner" else 1.0)
    ax.set_xlabel("LLM FLOPs really spent / unpruned (warm-up included)")
    ax.set_ylabel("success rate (%)")
    ax.set_title(title or "success against the compute really spent", fontsize=9)
    ax.set_ylim(-3, 103)
    return _save_with_legend(fig, ax, path)


def write_paired_report(outcomes: Sequence[EpisodeOutcome], out_dir: str | os.PathLike,
                        references: Sequence[str] = ("none",), radii: Sequence[float] = DEFAULT_RADII,
                        title: str = "") -> tuple[dict, dict[str, str]]:
    """paired.json, paired.txt, success_vs_flops.png, radius_curve.png and final_error_hist.png in
    `out_dir`.  Returns (the report, {kind: path}); the radius plots only when the task reports a
    final error."""
    outcomes = list(outcomes)
    report = paired_report(outcomes, references, radii)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"paired_json": out / "paired.json", "paired_table": out / "paired.txt"}
    payload = {**report, "outcomes": [{**asdict(o), "episode": _jsonable(o.episode)} for o in outcomes]}
    paths["paired_json"].write_text(json.dumps(payload, indent=1, default=float) + "\n", encoding="utf-8")
    paths["paired_table"].write_text(format_paired_report(report) + "\n", encoding="utf-8")
    if any(math.isfinite(row["flops_spent_ratio"]) for row in report["rows"]):
        paths["flops_plot"] = plot_success_vs_flops(report, out / "success_vs_flops.png", title)
    if any(math.isfinite(o.final_error) for o in outcomes):
        paths["radius_plot"] = plot_radius_curve(report, outcomes, out / "radius_curve.png", title)
        paths["error_hist"] = plot_error_histogram(report, outcomes, out / "final_error_hist.png", title)
    return report, {k: str(v) for k, v in paths.items()}


def outcomes_from_libero(records: Iterable) -> list[EpisodeOutcome]:
    """LIBERO's `libero.results.EpisodeRecord`s as outcomes (episode id = (suite, task id, initial
    state)), so eval-libero can print the same paired report.  LIBERO gives no final error (no radius
    columns); FLOPs spent = the record's mean per-call ratio x its calls, in units of one unpruned call
    (a task's sequence length is fixed, so every call of an episode costs the same unpruned)."""
    out = []
    for record in records:
        calls = max(1, len(record.chunk_ms))
        out.append(EpisodeOutcome(
            config=config_label(record.method, record.keep_ratio),
            episode=(record.suite, record.task_id, record.episode),
            success=bool(record.success), pruned_calls=int(round(record.pruned_fraction * calls)), policy_calls=calls,
            flops_spent=float(record.flops_ratio) * calls, flops_full=float(calls)))
    return out


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value
