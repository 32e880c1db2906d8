"""A short soak of the whole simulated system (the long one is `vla-pruner soak --steps 10000`)."""
import argparse
import json

from vla_pruner_ros.tools import soak


def test_short_soak_runs_clean_with_a_bounded_history(tiny_checkpoint, tmp_path):
    parser = argparse.ArgumentParser()
    soak.add_arguments(parser)
    out = tmp_path / "soak.json"
    # A generous input age: this checks that nothing fails and the history stays bounded, not the
    # machine's speed. On a CPU shared with other work a tiny step can take 0.5-0.8 s, and the node
    # then rightly drops its chunk as stale (test_reliability covers that hold).
    args = parser.parse_args(["--steps", "40", "--instruction-every", "15", "--checkpoint", str(tiny_checkpoint),
                              "--max-input-age", "5.0", "--json", str(out)])
    assert soak.run(args) == 0
    report = json.loads(out.read_text())
    assert report["steps"] >= 40
    assert report["failed_steps"] == 0 and report["error_diagnostics"] == 0
    # The decaying window holds w=3 observations of M=512 tokens, whatever the number of steps
    # and instruction changes (each change resets it).
    assert 0 < report["history_elements_max"] <= 3 * 512
    assert report["rss_mb_end"] > 0 and report["steps_per_s_last_quarter"] > 0


def test_slope_helper():
    assert abs(soak.slope_per_1000([0, 1000, 2000], [10.0, 11.0, 12.0]) - 1.0) < 1e-9
    assert soak.slope_per_1000([5], [1.0]) == 0.0
