"""``vla-pruner replay`` end to end on the tiny checkpoint: small sim bags in both storage
formats, two methods x two keep ratios, then the rows, the summary, the PNGs and the table;
and the clear errors for a bag with a topic missing and for a truncated bag."""
import contextlib
import csv
import io
import json
import shutil

import pytest
import torch

from vla_pruner_ros.model import make_checkpoint
from vla_pruner_ros.replay.report import parquet_available
from vla_pruner_ros.replay.simbag import SimBagSpec, write_sim_bag
from vla_pruner_ros.tools.cli import main as cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
M = 2 * 8 * 8  # tiny checkpoint at 112 px: two views of 8 x 8 patches
CONFIGS = ["none", "fastv@0.5", "fastv@0.25", "vla_pruner@0.5", "vla_pruner@0.25"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # The tiny preset at 112 px (128 visual tokens) keeps every forward well under a second here.
    return make_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=0, image_size=112)


# mcap: raw images, no stats (steps every 0.4 s); sqlite3: compressed images + the node's stats.
BAGS = {
    "mcap": SimBagSpec(duration_s=2.0),
    "sqlite3": SimBagSpec(duration_s=2.0, stats_period=0.4, compressed=True),
}


@pytest.fixture(scope="module", params=sorted(BAGS))
def replayed(request, checkpoint, tmp_path_factory):
    storage = request.param
    root = tmp_path_factory.mktemp(f"replay_{storage}")
    bag = write_sim_bag(root / "episode", storage, BAGS[storage])
    out = root / "out"
    printed = io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(printed):
            # one torch thread: much faster than two on a machine shared with other jobs
            code = cli(["replay", str(bag.path), "--checkpoint", str(checkpoint), "--methods", "fastv,vla_pruner",
                        "--keep", "0.5,0.25", "--window", "2", "--out", str(out), "--quiet", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)  # the CLI ran in this process: leave torch as it was
    return storage, bag, out, code, printed.getvalue()


def _rows(out):
    with open(out / "steps.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_replay_exits_zero_and_writes_every_file(replayed):
    storage, _, out, code, _ = replayed
    assert code == 0
    for name in ("steps.csv", "summary.json", "tokens.npz", "latency_vs_keep.png", "deviation_vs_keep.png",
                 "overlap_over_episode.png", "pool_ratio_over_time.png", "contact_sheet.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 1000, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == PNG_MAGIC, name


def test_rows_hold_every_run_and_step(replayed):
    storage, bag, out, _, _ = replayed
    rows = _rows(out)
    steps = 5  # 2 s of inputs, a step every 0.4 s (mcap) / a recorded step every 0.4 s (sqlite3)
    assert [r["config"] for r in rows] == [c for c in CONFIGS for _ in range(steps)]
    for name in CONFIGS:
        run = [r for r in rows if r["config"] == name]
        assert [int(r["step"]) for r in run] == list(range(steps))
        assert all(int(r["visual_tokens"]) == M for r in run)
        for r in run:
            assert float(r["total_ms"]) > 0 and float(r["vision_ms"]) > 0
    reference = [r for r in rows if r["config"] == "none"]
    assert all(float(r["dev_l1"]) == 0.0 and int(r["kept_tokens"]) == M for r in reference)
    # FastV prunes from the first step: round(r * M) tokens, and its actions move away from unpruned
    for ratio in (0.5, 0.25):
        fastv = [r for r in rows if r["config"] == f"fastv@{ratio:g}"]
        assert all(int(r["kept_tokens"]) == round(ratio * M) and r["pruned"] == "True" for r in fastv)
        assert max(float(r["dev_l1"]) for r in fastv) > 0
        assert all(float(r["dev_max"]) >= float(r["dev_l1"]) for r in fastv)
    # VLA-Pruner: window 2 -> two unpruned warm-up steps (identical to unpruned), then pruned
    for ratio in (0.5, 0.25):
        vla = [r for r in rows if r["config"] == f"vla_pruner@{ratio:g}"]
        assert [r["warmup"] for r in vla] == ["True", "True", "False", "False", "False"]
        assert all(float(r["dev_l1"]) == 0.0 and float(r["dev_max"]) == 0.0 for r in vla[:2])
        assert all(int(r["kept_tokens"]) == round(ratio * M) for r in vla[2:])
        budget = round(ratio * M)
        for r in vla[2:]:  # Alg. 2 pools: |C_vl| = |C_act| = budget <= |C_dual| <= 2 budget
            assert int(r["pool_vl"]) == int(r["pool_act"]) == budget
            assert budget <= int(r["pool_dual"]) <= 2 * budget
            assert float(r["pool_ratio"]) == pytest.approx(int(r["pool_dual"]) / budget, abs=1e-6)
        assert all(r["pool_ratio"] == "" for r in vla[:2])
    # the reference rows carry the Fig. 2 overlaps; the first step has no previous step
    assert reference[0]["overlap_act_prev_k25"] == ""
    for r in reference:
        assert 0.0 <= float(r["overlap_vl_act_k12_5"]) <= 1.0
    assert all(0.0 <= float(r["overlap_act_prev_k50"]) <= 1.0 for r in reference[1:])


def test_summary_has_latency_deviation_and_the_papers_analyses(replayed):
    storage, _, out, _, _ = replayed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"]["source"] == ("stats" if storage == "sqlite3" else "period")
    assert summary["steps"]["image_transport"] == ("compressed" if storage == "sqlite3" else "raw")
    assert summary["bag"]["storage"] == storage
    runs = {run["name"]: run for run in summary["runs"]}
    assert list(runs) == CONFIGS
    assert runs["none"]["speedup_vs_none"] == pytest.approx(1.0)
    for run in runs.values():
        latency = run["latency_ms"]["total"]
        assert latency["q1"] <= latency["median"] <= latency["q3"] and latency["iqr"] >= 0
        assert run["speedup_vs_none"] > 0
    assert runs["fastv@0.25"]["kept_tokens"]["steady_mean"] == round(0.25 * M)
    assert runs["vla_pruner@0.5"]["warmup_steps"] == 2 and runs["vla_pruner@0.5"]["pruned_steps"] == 3
    assert runs["fastv@0.25"]["deviation"]["l1_mean"] > 0
    assert len(runs["fastv@0.25"]["deviation"]["l1_per_dim"]) == 7
    assert 1.0 <= runs["vla_pruner@0.25"]["pool_ratio"]["mean"] <= 2.0
    assert runs["fastv@0.5"]["pool_ratio"]["n"] == 0
    fig2 = summary["analysis"]["fig2_topk_overlap"]
    assert fig2["k_tokens"] == {"k12_5": 16, "k25": 32, "k50": 64}
    for kind in ("vl_act", "act_prev"):
        for stats in fig2[kind].values():
            assert 0.0 <= stats["mean"] <= 1.0
    assert fig2["vl_act"]["k25"]["n"] == 5 and fig2["act_prev"]["k25"]["n"] == 4
    fig11 = summary["analysis"]["fig11_pool_ratio"]
    assert set(fig11) == {"vla_pruner@0.5", "vla_pruner@0.25"}
    assert len(fig11["vla_pruner@0.25"]["pool_ratio"]) == 3


def test_the_final_table_is_printed(replayed):
    *_, printed = replayed
    table = printed[printed.index("method"):].splitlines()
    assert table[0].split() == ["method", "keep", "ms", "median", "speed-up", "kept", "tokens", "L1", "dev",
                                "max", "dev", "pool", "ratio"]
    lines = [line.split() for line in table[2:2 + len(CONFIGS)]]
    assert [line[:2] for line in lines] == [["none", "1"], ["fastv", "0.5"], ["fastv", "0.25"],
                                            ["vla_pruner", "0.5"], ["vla_pruner", "0.25"]]
    assert lines[0][3] == "1.00x" and lines[0][4] == "128/128" and lines[2][4] == "32/128"
    assert lines[1][-1] == "-" and 1.0 <= float(lines[4][-1]) <= 2.0  # pool ratio: VLA-Pruner only
    assert "unpruned top-k overlap" in printed and "wrote " in printed


def test_a_missing_topic_fails_at_once_with_the_listing(checkpoint, tmp_path, capsys):
    bag = write_sim_bag(tmp_path / "nowrist", "mcap",
                        SimBagSpec(duration_s=0.5, omit_topics=("/wrist_camera/color/image_raw",)))
    code = cli(["replay", str(bag.path), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--quiet"])
    error = capsys.readouterr().err
    assert code == 1
    assert "missing topic /wrist_camera/color/image_raw (sensor_msgs/msg/Image)" in error
    assert "/joint_states" in error and "sensor_msgs/msg/JointState" in error  # what the bag does have
    assert "Traceback" not in error
    assert not (tmp_path / "out").exists()  # nothing was run or written


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_truncated_bag_gives_a_clear_error(checkpoint, tmp_path, capsys, storage):
    bag = write_sim_bag(tmp_path / "whole", storage, SimBagSpec(duration_s=1.0))
    broken = tmp_path / "broken"
    shutil.copytree(bag.path, broken)
    (storage_file,) = [p for p in broken.iterdir() if p.suffix in (".mcap", ".db3")]
    data = storage_file.read_bytes()
    storage_file.write_bytes(data[: len(data) // 2])
    code = cli(["replay", str(broken), "--checkpoint", str(checkpoint), "--quiet", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 1
    assert error.startswith("vla-pruner replay: error: ") and "corrupt or truncated" in error
    assert "Traceback" not in error


def test_bad_options_are_refused_before_reading(checkpoint, tmp_path, capsys):
    bag = tmp_path / "not_read"
    assert cli(["replay", str(bag), "--checkpoint", str(checkpoint), "--keep", "0.5,1.5"]) == 2
    assert "keep_ratios: [1.5] outside (0, 1]" in capsys.readouterr().err
    assert cli(["replay", str(bag), "--checkpoint", str(checkpoint), "--methods", "fastv,magic"]) == 2
    assert "'magic' unknown" in capsys.readouterr().err
    if not parquet_available():
        assert cli(["replay", str(bag), "--checkpoint", str(checkpoint), "--format", "parquet"]) == 2
        assert "--format parquet needs pyarrow" in capsys.readouterr().err
    assert cli(["replay", str(bag), "--checkpoint", str(checkpoint)]) == 1
    assert "does not exist" in capsys.readouterr().err
