"""Results of the LIBERO harness (no LIBERO needed): Wilson intervals, the resumable store, the
summaries, CSV/JSON/plot and videos."""
import csv
import json

import numpy as np
import pytest

from vla_pruner_ros.libero.results import (
    EpisodeRecord,
    ResultsStore,
    check_run_metadata,
    format_table,
    plot_success_vs_keep,
    summarize,
    wilson_interval,
    write_csv,
    write_json,
    write_reports,
)
from vla_pruner_ros.libero.video import write_video


def record(method="fastv", keep=0.5, task_id=0, episode=0, success=True, chunk_ms=(10.0, 20.0), flops=0.6):
    return EpisodeRecord(method=method, keep_ratio=keep, suite="libero_spatial", task_id=task_id,
                         task=f"task {task_id}", episode=episode, success=success, steps=50,
                         chunk_ms=list(chunk_ms), flops_ratio=flops, pruned_fraction=1.0, wall_s=1.0)


# ------------------------------------------------------------------------------------- Wilson
def test_wilson_known_values():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)
    low, high = wilson_interval(479, 500)  # OFT-like 95.8 %
    assert low == pytest.approx(0.9365, abs=1e-3) and high == pytest.approx(0.9724, abs=1e-3)


def test_wilson_contains_estimate_and_narrows():
    for trials in (1, 7, 50, 500):
        for successes in range(0, trials + 1, max(1, trials // 7)):
            low, high = wilson_interval(successes, trials)
            assert 0.0 <= low <= successes / trials <= high <= 1.0
    assert np.diff(wilson_interval(25, 50)) > np.diff(wilson_interval(250, 500))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


# -------------------------------------------------------------------------------------- store
def test_store_persists_and_resumes(tmp_path):
    store = ResultsStore(tmp_path)
    store.add(record(episode=0))
    store.add(record(episode=1, success=False))
    reopened = ResultsStore(tmp_path)
    assert len(reopened) == 2
    assert ("fastv", 0.5, 0, 1) in reopened
    assert ("fastv", 0.5000000001, 0, 1) in reopened  # keep ratios compare after rounding
    assert ("fastv", 0.25, 0, 1) not in reopened
    assert reopened.records[("fastv", 0.5, 0, 1)].success is False


def test_store_ignores_a_line_cut_by_an_interruption(tmp_path):
    store = ResultsStore(tmp_path)
    store.add(record(episode=0))
    with open(store.path, "a") as f:
        f.write('{"method": "fastv", "keep_ratio": 0.5, "suite": "libero_sp')  # killed mid-write
    reopened = ResultsStore(tmp_path)
    assert len(reopened) == 1 and reopened.skipped_lines == 1
    reopened.add(record(episode=1))  # appended on its own line
    again = ResultsStore(tmp_path)
    assert len(again) == 2 and again.skipped_lines == 1


def test_run_metadata_guards_against_mixing_runs(tmp_path):
    check_run_metadata(tmp_path, {"checkpoint": "/a", "suite": "libero_goal", "max_steps": 300})
    check_run_metadata(tmp_path, {"checkpoint": "/a", "suite": "libero_goal", "max_steps": 300})
    with pytest.raises(ValueError, match=r"different run \(checkpoint: '/a' -> '/b'"):
        check_run_metadata(tmp_path, {"checkpoint": "/b", "suite": "libero_goal", "max_steps": 300})


# ---------------------------------------------------------------------------------- summaries
def sample_records():
    records = []
    for task_id in (0, 1):
        for episode in range(4):
            records.append(record("none", 1.0, task_id, episode, success=episode < 3, chunk_ms=(30.0,), flops=1.0))
            records.append(record("fastv", 0.5, task_id, episode, success=episode < 2 - task_id,
                                  chunk_ms=(10.0, 20.0), flops=0.6))
            records.append(record("fastv", 0.25, task_id, episode, success=False, chunk_ms=(8.0,), flops=0.4))
    return records


def test_summarize_rates_intervals_and_relative():
    rows = summarize(sample_records())
    suite_rows = [r for r in rows if r.level == "suite"]
    assert [(r.method, r.keep_ratio) for r in suite_rows] == [("none", 1.0), ("fastv", 0.5), ("fastv", 0.25)]
    none, fastv_half, fastv_quarter = suite_rows
    assert (none.successes, none.episodes) == (6, 8)
    assert (fastv_half.successes, fastv_half.episodes) == (3, 8)
    assert fastv_half.relative_to_none == pytest.approx(0.5)
    assert fastv_quarter.success_rate == 0.0 and fastv_quarter.ci_low == 0.0
    assert (fastv_half.ci_low, fastv_half.ci_high) == pytest.approx(wilson_interval(3, 8))
    assert fastv_half.ms_per_chunk_mean == pytest.approx(15.0) and fastv_half.chunks == 16
    assert fastv_half.flops_ratio == pytest.approx(0.6)
    task_rows = [r for r in rows if r.level == "task" and r.method == "fastv" and r.keep_ratio == 0.5]
    assert [(r.task_id, r.successes) for r in task_rows] == [(0, 2), (1, 1)]
    assert task_rows[1].relative_to_none == pytest.approx(1 / 3)


def test_csv_json_table_and_plot(tmp_path):
    rows = summarize(sample_records())
    with open(write_csv(rows, tmp_path / "r.csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) == 9
    assert table[0]["level"] == "suite" and table[0]["method"] == "none" and float(table[0]["success_rate"]) == 0.75
    assert table[0]["relative_to_none"] == "1.0"
    data = json.loads(write_json(rows, {"suite": "libero_spatial"}, tmp_path / "r.json").read_text())
    assert data["run"] == {"suite": "libero_spatial"}
    assert [(c["method"], c["keep_ratio"], len(c["tasks"])) for c in data["configurations"]] == [
        ("none", 1.0, 2), ("fastv", 0.5, 2), ("fastv", 0.25, 2)]
    text = format_table(rows)
    assert "fastv" in text and "37.5 [" in text and "50.0%" in text and len(text.splitlines()) == 5
    assert len(format_table(rows, per_task=True).splitlines()) == 11
    png = plot_success_vs_keep(rows, tmp_path / "plot.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_write_reports_from_store(tmp_path):
    store = ResultsStore(tmp_path)
    for r in sample_records():
        store.add(r)
    paths = write_reports(store, {"suite": "libero_spatial"})
    assert {"results.csv", "results.json", "success_vs_keep.png", "paired.txt", "paired.json"} <= {
        p.name for p in paths.values()}
    assert all(p.is_file() for p in paths.values())
    # The same paired report as eval-sim: each configuration against unpruned and paper FastV.
    report = json.loads((tmp_path / "paired.json").read_text())
    rows = {row["config"]: row for row in report["rows"]}
    assert set(rows) == {"none", "fastv@0.5", "fastv@0.25"}
    assert rows["fastv@0.25"]["paired"]["none"]["against"] == "none"
    assert "fastv" not in rows["fastv@0.25"]["paired"]  # a method is not compared with itself
    assert rows["none"]["episodes"] == len([r for r in sample_records() if r.method == "none"])


# ------------------------------------------------------------------------------------- videos
def frames(count=6):
    return [np.full((32, 48, 3), 40 * i, np.uint8) for i in range(count)]


def test_gif_video(tmp_path):
    from PIL import Image

    path = write_video(frames(), tmp_path / "fastv_keep0.5_ep0", video_format="gif")
    assert path.name == "fastv_keep0.5_ep0.gif"
    with Image.open(path) as gif:
        assert gif.n_frames == 6 and gif.size == (48, 32)


def test_mp4_video_or_gif_fallback(tmp_path):
    path = write_video(frames(), tmp_path / "clip.mp4", video_format="mp4")
    assert path.suffix in (".mp4", ".gif") and path.stat().st_size > 0
    if path.suffix == ".mp4":
        import cv2

        capture = cv2.VideoCapture(str(path))
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
        capture.release()


def test_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "x")
    with pytest.raises(ValueError, match="one size"):
        write_video([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)], tmp_path / "x")
    with pytest.raises(ValueError, match="video_format"):
        write_video(frames(), tmp_path / "x", video_format="avi")
