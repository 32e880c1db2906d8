"""End to end on real LIBERO (needs the optional extra: scripts/setup_libero.sh): a tiny OFT
checkpoint, one short episode of libero_spatial task 0 per configuration, through the
``vla-pruner eval-libero`` command; then the same command again, which must resume (run nothing).
~40 s on 2 idle CPU cores (80 s on a loaded machine), most of it building the MuJoCo scene and
stepping it."""
import csv
import json

import pytest

from vla_pruner_ros.libero.env import libero_unavailable_reason

REASON = libero_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))


@pytest.fixture(scope="module")
def tiny_libero_checkpoint(tmp_path_factory):
    from vla_pruner_ros.model import make_checkpoint

    return make_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", action_dim=7, proprio_dim=8,
                           unnorm_key="libero_spatial_no_noops", center_crop=True)


def test_eval_libero_one_short_episode_end_to_end(tiny_libero_checkpoint, tmp_path, capsys):
    from vla_pruner_ros.tools.cli import main

    out = tmp_path / "results"
    argv = ["eval-libero", "--checkpoint", str(tiny_libero_checkpoint), "--suite", "libero_spatial",
            "--tasks", "0", "--episodes-per-task", "1", "--methods", "none,fastv", "--keep", "0.5",
            "--max-steps", "16", "--out", str(out), "--video", "1", "--video-format", "gif", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 episode(s) run now" in printed and "fastv" in printed

    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [(e["method"], e["keep_ratio"], e["task_id"], e["episode"]) for e in episodes] == [
        ("none", 1.0, 0, 0), ("fastv", 0.5, 0, 0)]
    for episode in episodes:
        assert episode["task"].startswith("pick up the black bowl")
        assert episode["error"] is None
        # a random tiny policy does not solve the task: the episode runs to the step limit, 2 chunks of 8
        assert episode["success"] is False and episode["steps"] == 16 and len(episode["chunk_ms"]) == 2
        assert (out / episode["video"]).is_file()
    none, fastv = episodes
    assert none["flops_ratio"] == 1.0 and none["pruned_fraction"] == 0.0
    assert fastv["flops_ratio"] < 1.0 and fastv["pruned_fraction"] == 1.0

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["level"], r["method"]) for r in rows] == [("suite", "none"), ("task", "none"),
                                                         ("suite", "fastv"), ("task", "fastv")]
    assert all(r["episodes"] == "1" and r["success_rate"] == "0.0" for r in rows)
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["unnorm_key"] == "libero_spatial_no_noops" and results["run"]["center_crop"] is True
    assert (out / "success_vs_keep.png").stat().st_size > 5000

    # Resume: everything is done, nothing runs, the files are rewritten from the store.
    assert main(argv) == 0
    assert "0 episode(s) run now, 2 in" in capsys.readouterr().out
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 2
