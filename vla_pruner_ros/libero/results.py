"""Episode records, the resumable store, and the summaries (table, CSV, JSON, plot).

The store is a JSONL file with one line per finished episode, keyed by
(method, keep ratio, task id, episode). A run that is interrupted and started again skips every
key already in the file; a line cut short by the interruption is ignored (and rewritten when
that episode runs again). ``run.json`` beside it records what the results depend on (checkpoint,
suite, protocol settings), so results of different runs are never mixed in one folder.
"""
from __future__ import annotations

import csv
import json
import math
import os
import statistics
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

EPISODES_FILE = "episodes.jsonl"
RUN_FILE = "run.json"
CSV_FILE = "results.csv"
JSON_FILE = "results.json"
PLOT_FILE = "success_vs_keep.png"
Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


# ----------------------------------------------------------------------------------- intervals
def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (stays inside [0, 1], sensible at 0/n and n/n)."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"wilson_interval: expected 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # Clamp the rounding noise at the ends (0/n gives exactly 0, n/n exactly 1).
    return (max(0.0, centre - half) if successes else 0.0, min(1.0, centre + half) if successes < trials else 1.0)


# -------------------------------------------------------------------------------------- records
@dataclass
class EpisodeRecord:
    """One finished episode."""

    method: str
    keep_ratio: float
    suite: str
    task_id: int
    task: str  # the instruction
    episode: int  # index of the benchmark's initial state
    success: bool
    steps: int  # policy actions executed (settle steps not counted)
    chunk_ms: list[float]  # ms of each policy call (timed calls only; warm-up excluded)
    flops_ratio: float  # mean analytic LLM FLOPs pruned / full over the policy calls
    pruned_fraction: float  # share of policy calls that dropped tokens (history warm-up runs unpruned)
    wall_s: float
    error: str | None = None  # exception that ended the episode, with where it was raised (a failure, as in OFT)
    video: str | None = None

    @property
    def key(self) -> tuple[str, float, int, int]:
        return episode_key(self.method, self.keep_ratio, self.task_id, self.episode)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EpisodeRecord":
        names = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING]
        if missing:
            raise ValueError(f"episode record: missing fields {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})


def episode_key(method: str, keep_ratio: float, task_id: int, episode: int) -> tuple[str, float, int, int]:
    return (str(method), round(float(keep_ratio), 6), int(task_id), int(episode))


class ResultsStore:
    """Append-only JSONL of finished episodes, read back on start (resume)."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / EPISODES_FILE
        self.records: dict[tuple, EpisodeRecord] = {}
        self.skipped_lines = 0
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        text = self.path.read_text()
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = EpisodeRecord.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError, ValueError):
                # A line cut short by an interruption: that episode simply runs again.
                self.skipped_lines += 1
                continue
            self.records[record.key] = record
        if text and not text.endswith("\n"):
            with open(self.path, "a") as f:  # the next append must start on a line of its own
                f.write("\n")

    def __contains__(self, key: tuple) -> bool:
        return episode_key(*key) in self.records

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: EpisodeRecord) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(asdict(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[record.key] = record

    def select(self, method: str | None = None, keep_ratio: float | None = None) -> list[EpisodeRecord]:
        return [r for r in self.records.values()
                if (method is None or r.method == method)
                and (keep_ratio is None or round(r.keep_ratio, 6) == round(keep_ratio, 6))]


def check_run_metadata(out_dir: str | os.PathLike, metadata: Mapping[str, Any]) -> None:
    """Write run.json, or check that an existing one describes the same run (resume safety)."""
    path = Path(out_dir) / RUN_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); delete it or use another --out") from exc
        changed = {k: (previous.get(k), v) for k, v in metadata.items() if previous.get(k) != v}
        if changed:
            details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
            raise ValueError(f"{path.parent} holds results of a different run ({details}); use another --out "
                             "or delete that folder")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(metadata), indent=2) + "\n")


# ------------------------------------------------------------------------------------ summaries
@dataclass
class Summary:
    """Success and timing over a set of episodes (one task, or a whole suite) of one configuration."""

    method: str
    keep_ratio: float
    level: str  # "task" or "suite"
    suite: str
    task_id: int | None
    task: str | None
    episodes: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    ms_per_chunk_mean: float | None
    ms_per_chunk_median: float | None
    chunks: int
    flops_ratio: float | None
    relative_to_none: float | None = None  # success rate / the unpruned reference's, same scope
    task_ids: list[int] = field(default_factory=list)


def summarize_records(records: Sequence[EpisodeRecord], level: str, task_id: int | None = None) -> Summary:
    if not records:
        raise ValueError("summarize_records: no records")
    first = records[0]
    successes = sum(bool(r.success) for r in records)
    low, high = wilson_interval(successes, len(records))
    chunk_ms = [ms for r in records for ms in r.chunk_ms]
    weighted = [(r.flops_ratio, len(r.chunk_ms)) for r in records if r.chunk_ms]
    total_calls = sum(n for _, n in weighted)
    return Summary(
        method=first.method, keep_ratio=first.keep_ratio, level=level, suite=first.suite,
        task_id=task_id, task=first.task if task_id is not None else None,
        episodes=len(records), successes=successes, success_rate=successes / len(records),
        ci_low=low, ci_high=high,
        ms_per_chunk_mean=statistics.fmean(chunk_ms) if chunk_ms else None,
        ms_per_chunk_median=statistics.median(chunk_ms) if chunk_ms else None,
        chunks=len(chunk_ms),
        flops_ratio=sum(f * n for f, n in weighted) / total_calls if total_calls else None,
        task_ids=sorted({r.task_id for r in records}),
    )


def summarize(records: Iterable[EpisodeRecord]) -> list[Summary]:
    """Per configuration: one suite row, then one row per task; "none" first, then by method and
    decreasing keep ratio. Relative accuracy is against "none" over the same tasks when present."""
    groups: dict[tuple[str, float], list[EpisodeRecord]] = {}
    for record in records:
        groups.setdefault((record.method, round(record.keep_ratio, 6)), []).append(record)
    order = sorted(groups, key=lambda k: (k[0] != "none", k[0], -k[1]))
    reference = groups.get(("none", 1.0), [])
    rows: list[Summary] = []
    for key in order:
        group = groups[key]
        task_ids = sorted({r.task_id for r in group})
        suite_row = summarize_records(sorted(group, key=lambda r: (r.task_id, r.episode)), "suite")
        reference_same_tasks = [r for r in reference if r.task_id in task_ids]
        suite_row.relative_to_none = _relative(suite_row, reference_same_tasks)
        rows.append(suite_row)
        for task_id in task_ids:
            task_records = [r for r in group if r.task_id == task_id]
            row = summarize_records(sorted(task_records, key=lambda r: r.episode), "task", task_id)
            row.relative_to_none = _relative(row, [r for r in reference if r.task_id == task_id])
            rows.append(row)
    return rows


def _relative(row: Summary, reference: Sequence[EpisodeRecord]) -> float | None:
    if not reference:
        return None
    reference_rate = sum(bool(r.success) for r in reference) / len(reference)
    return row.success_rate / reference_rate if reference_rate > 0 else None


CSV_COLUMNS = ("level", "suite", "method", "keep_ratio", "task_id", "task", "episodes", "successes",
               "success_rate", "ci_low", "ci_high", "relative_to_none", "ms_per_chunk_mean",
               "ms_per_chunk_median", "chunks", "flops_ratio")


def write_csv(rows: Sequence[Summary], path: str | os.PathLike) -> Path:
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            data = asdict(row)
            writer.writerow({c: "" if data[c] is None else data[c] for c in CSV_COLUMNS})
    return path


def write_json(rows: Sequence[Summary], metadata: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """{"run": metadata, "configurations": [{method, keep_ratio, suite: {...}, tasks: [...]}]}."""
    configurations: list[dict[str, Any]] = []
    for row in rows:
        data = asdict(row)
        if row.level == "suite":
            configurations.append({"method": row.method, "keep_ratio": row.keep_ratio, "suite": data, "tasks": []})
        else:
            configurations[-1]["tasks"].append(data)
    path = Path(path)
    path.write_text(json.dumps({"run": dict(metadata), "configurations": configurations}, indent=2) + "\n")
    return path


def format_table(rows: Sequence[Summary], per_task: bool = False) -> str:
    """A plain-text table of the suite rows (and the task rows when ``per_task``)."""
    header = ("method", "keep", "task", "success % [95% CI]", "episodes", "ms/chunk mean / median", "FLOPs",
              "rel. to none")
    lines = []
    for row in rows:
        if row.level == "task" and not per_task:
            continue
        ms = "-" if row.ms_per_chunk_mean is None else f"{row.ms_per_chunk_mean:.1f} / {row.ms_per_chunk_median:.1f}"
        flops = "-" if row.flops_ratio is None else f"{100 * row.flops_ratio:.1f}%"
        relative = "-" if row.relative_to_none is None else f"{100 * row.relative_to_none:.1f}%"
        task = "all" if row.level == "suite" else str(row.task_id)
        lines.append((row.method, f"{row.keep_ratio:g}", task,
                      f"{100 * row.success_rate:5.1f} [{100 * row.ci_low:.1f}, {100 * row.ci_high:.1f}]",
                      f"{row.successes}/{row.episodes}", ms, flops, relative))
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    render = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([render(header), render(["-" * w for w in widths])] + [render(line) for line in lines])


def plot_success_vs_keep(rows: Sequence[Summary], path: str | os.PathLike, title: str = "") -> Path:
    """Suite success rate against keep ratio, one line per method (Wilson 95 % bars); the unpruned
    reference as a horizontal band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suite_rows = [r for r in rows if r.level == "suite"]
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for row in suite_rows:
        if row.method == "none":
            rate = 100 * row.success_rate
            axes.axhline(rate, color="black", linestyle="--", linewidth=1, label=f"none (unpruned) {rate:.1f}%")
            axes.axhspan(100 * row.ci_low, 100 * row.ci_high, color="black", alpha=0.08)
            axes.plot([row.keep_ratio], [rate], marker="*", markersize=10, color="black", linestyle="none")
    methods = list(dict.fromkeys(r.method for r in suite_rows if r.method != "none"))
    for index, method in enumerate(methods):
        points = sorted((r for r in suite_rows if r.method == method), key=lambda r: r.keep_ratio)
        # Nudge each method sideways (on the log axis) so equal rates and their bars stay visible.
        nudge = 2 ** (0.06 * (index - (len(methods) - 1) / 2))
        keeps = [r.keep_ratio * nudge for r in points]
        rates = [100 * r.success_rate for r in points]
        errors = [[100 * (r.success_rate - r.ci_low) for r in points],
                  [100 * (r.ci_high - r.success_rate) for r in points]]
        axes.errorbar(keeps, rates, yerr=errors, marker="o", capsize=3, label=method)
    keeps_shown = sorted({r.keep_ratio for r in suite_rows})
    if keeps_shown:
        axes.set_xscale("log", base=2)
        axes.set_xticks(keeps_shown, [f"{k:g}" for k in keeps_shown])
        axes.invert_xaxis()  # more pruning to the right, as in the paper's figures
    axes.set_xlabel("keep ratio (fraction of visual tokens kept)")
    axes.set_ylabel("success rate (%)")
    axes.set_ylim(-2, 102)
    axes.grid(True, alpha=0.3)
    axes.set_title(title or "LIBERO success vs keep ratio")
    if suite_rows:
        axes.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path


def write_reports(store: ResultsStore, metadata: Mapping[str, Any], title: str = "",
                  references: tuple[str, ...] = ("none", "fastv")) -> dict[str, Path]:
    """Summaries of everything in the store: CSV, JSON and the plot, next to episodes.jsonl; and
    eval-sim's paired report (paired.txt/json: McNemar against each reference present -- a method
    name compares at the same keep ratio --, success on episodes with a pruned call, FLOPs spent)."""
    from vla_pruner_ros.evaluation.report import outcomes_from_libero, write_paired_report

    rows = summarize(store.records.values())
    out = store.out_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": write_csv(rows, out / CSV_FILE),
        "json": write_json(rows, metadata, out / JSON_FILE),
        "plot": plot_success_vs_keep(rows, out / PLOT_FILE, title),
    }
    _, paired = write_paired_report(outcomes_from_libero(store.records.values()), out, references=references,
                                    title=title)
    paths.update({kind: Path(path) for kind, path in paired.items()})
    return paths
