"""The paired protocol: exact McNemar against known tables, and the report over hand-made episodes."""
import json
import math

import pytest

from vla_pruner_ros.evaluation import (
    EpisodeOutcome,
    format_paired_report,
    mcnemar_exact,
    paired_comparison,
    paired_report,
    wilson_interval,
    write_paired_report,
)


@pytest.mark.parametrize("b, c, expected", [
    (1, 9, 2 * (1 + 10) / 2 ** 10),  # 0.021484375
    (9, 1, 2 * (1 + 10) / 2 ** 10),  # symmetric
    (2, 10, 2 * (1 + 12 + 66) / 2 ** 12),  # 0.03857...
    (0, 5, 2 / 2 ** 5),  # 0.0625: five discordant pairs all one way are not significant at 5 %
    (0, 6, 2 / 2 ** 6),  # 0.03125: six are
    (5, 5, 1.0),  # capped at 1
    (0, 0, 1.0),  # no discordant pair
    (3, 7, 0.34375),  # 2 * (1 + 10 + 45 + 120) / 1024
])
def test_mcnemar_exact_against_known_tables(b, c, expected):
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_rejects_bad_counts():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            mcnemar_exact(bad, 3)


def test_paired_comparison_counts_only_common_episodes():
    config = {0: True, 1: True, 2: False, 3: False, 4: True, 99: True}
    reference = {0: True, 1: False, 2: True, 3: False, 4: False}
    paired = paired_comparison(config, reference)
    assert (paired.episodes, paired.both, paired.only_config, paired.only_reference, paired.neither) == (5, 1, 2, 1, 1)
    assert paired.difference == pytest.approx(1 / 5)
    assert paired.p_value == pytest.approx(mcnemar_exact(2, 1))


def _outcomes():
    """20 episodes: unpruned solves 18; 'a@0.25' loses 6 of them (6:0 discordant, p = 0.03125);
    'b@0.25' (a warm-up method) never prunes in episodes 0-4 and solves 16."""
    out = []
    for ep in range(20):
        out.append(EpisodeOutcome("none", ep, success=ep < 18, final_error=0.01 if ep < 18 else 0.06,
                                  pruned_calls=0, policy_calls=5, flops_spent=5.0, flops_full=5.0))
        a_success = ep < 12
        out.append(EpisodeOutcome("a@0.25", ep, success=a_success, final_error=0.01 if a_success else 0.03,
                                  pruned_calls=5, policy_calls=5, flops_spent=5 * 0.7, flops_full=5.0))
        b_success = ep < 16
        warm = ep < 5
        out.append(EpisodeOutcome("b@0.25", ep, success=b_success, final_error=0.01 if b_success else 0.045,
                                  pruned_calls=0 if warm else 2, policy_calls=3 if warm else 5,
                                  flops_spent=3.0 if warm else 3.0 + 2 * 0.7, flops_full=3.0 if warm else 5.0))
    return out


def test_paired_report_rows():
    report = paired_report(_outcomes(), references=("none", "a"), radii=(0.025, 0.035, 0.05))
    rows = {row["config"]: row for row in report["rows"]}
    none, a, b = rows["none"], rows["a@0.25"], rows["b@0.25"]
    assert (none["successes"], none["episodes"]) == (18, 20)
    assert (none["ci95_low"], none["ci95_high"]) == pytest.approx(wilson_interval(18, 20))
    assert "none" not in none["paired"]  # not compared with itself
    vs_none = a["paired"]["none"]
    assert (vs_none["only_config"], vs_none["only_reference"]) == (0, 6)
    assert vs_none["p_value"] == pytest.approx(0.03125) and vs_none["difference"] == pytest.approx(-0.3)
    assert b["paired"]["a"]["against"] == "a@0.25"  # a method reference means the same keep ratio
    assert (b["paired"]["a"]["only_config"], b["paired"]["a"]["only_reference"]) == (4, 0)
    # success on episodes with >= 1 pruned call: b never pruned in episodes 0-4 (all solved)
    assert b["episodes_with_pruned_call"] == 15 and b["success_when_pruned"] == pytest.approx(11 / 15)
    assert a["success_when_pruned"] == pytest.approx(12 / 20) and math.isnan(none["success_when_pruned"])
    # FLOPs really spent, warm-up calls counted in full
    assert a["flops_spent_ratio"] == pytest.approx(0.7)
    assert b["flops_spent_ratio"] == pytest.approx((5 * 3.0 + 15 * 4.4) / (5 * 3.0 + 15 * 5.0))
    # unpruned calls per episode: b's warm-up episodes 3 of 3, the others 3 of 5; a none; none all 5
    assert (none["unpruned_calls_per_episode"], a["unpruned_calls_per_episode"],
            b["unpruned_calls_per_episode"]) == pytest.approx((5.0, 0.0, 3.0))
    # success against radius: a's failures end at 3 cm, b's at 4.5 cm, none's at 6 cm
    assert a["success_at_radius"] == pytest.approx({"0.025": 0.6, "0.035": 1.0, "0.05": 1.0})
    assert b["success_at_radius"] == pytest.approx({"0.025": 0.8, "0.035": 0.8, "0.05": 1.0})
    assert none["success_at_radius"] == pytest.approx({"0.025": 0.9, "0.035": 0.9, "0.05": 0.9})
    text = format_paired_report(report)
    assert "-30.0 (0:6) p=0.031" in text and "vs none" in text and "vs a" in text
    assert "unpr/ep" in text and " 0.700    0.00 " in text  # a's FLOPs and unpruned calls


def test_duplicate_episode_refused():
    outcome = EpisodeOutcome("none", 0, success=True)
    with pytest.raises(ValueError, match="listed twice"):
        paired_report([outcome, outcome])


def test_write_paired_report_files(tmp_path):
    report, paths = write_paired_report(_outcomes(), tmp_path, references=("none",))
    saved = json.loads((tmp_path / "paired.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"])) and len(saved["outcomes"]) == 60
    for kind in ("radius_plot", "error_hist", "flops_plot"):
        assert open(paths[kind], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # without a task error (LIBERO), no radius plots
    plain = [EpisodeOutcome("none", i, success=i % 2 == 0) for i in range(4)]
    _, paths = write_paired_report(plain, tmp_path / "plain")
    assert "radius_plot" not in paths and (tmp_path / "plain" / "paired.txt").is_file()


def test_libero_records_feed_the_same_report():
    from vla_pruner_ros.evaluation import outcomes_from_libero
    from vla_pruner_ros.libero.results import EpisodeRecord

    def record(method, keep, episode, success, flops, pruned):
        return EpisodeRecord(method=method, keep_ratio=keep, suite="libero_spatial", task_id=0, task="pick",
                             episode=episode, success=success, steps=100, chunk_ms=[10.0] * 4, flops_ratio=flops,
                             pruned_fraction=pruned, wall_s=1.0)

    records = [record("none", 1.0, e, True, 1.0, 0.0) for e in range(6)]
    records += [record("vla_pruner", 0.25, e, e >= 3, 0.5 + 0.5 * (e == 0), 0.0 if e == 0 else 0.75)
                for e in range(6)]
    report = paired_report(outcomes_from_libero(records), references=("none",))
    row = {r["config"]: r for r in report["rows"]}["vla_pruner@0.25"]
    assert row["paired"]["none"]["only_reference"] == 3 and row["paired"]["none"]["p_value"] == pytest.approx(0.25)
    assert row["episodes_with_pruned_call"] == 5 and row["success_when_pruned"] == pytest.approx(3 / 5)
    assert row["flops_spent_ratio"] == pytest.approx((1.0 + 5 * 0.5) / 6)
    assert math.isnan(row["success_at_radius"]["0.025"])
