"""The LIBERO evaluation loop on a scripted environment and a scripted policy (no LIBERO needed):
settle steps, open-loop chunks, gripper post-processing, seeding, resume, videos; and the CLI's
argument handling up to the point where LIBERO is needed."""
import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vla_pruner_ros.libero.protocol import NOOP_ACTION, EvalConfiguration
from vla_pruner_ros.libero.results import ResultsStore
from vla_pruner_ros.libero.runner import EpisodeSettings, evaluate, run_episode
from vla_pruner_ros.pruning import PrunerConfig


class ScriptedEnv:
    """LIBERO's environment interface. The episode succeeds once ``succeed_after`` non-no-op
    actions ran (None: never). Images carry the step count in pixel (0, 0)."""

    def __init__(self, succeed_after=None, fail_at=None):
        self.succeed_after, self.fail_at = succeed_after, fail_at
        self.calls, self.actions, self.closed = [], [], False
        self.policy_steps = 0
        self.steps = 0

    def obs(self):
        fixed = np.zeros((8, 8, 3), np.uint8)
        fixed[0, 0] = min(self.steps, 255)
        wrist = np.full((8, 8, 3), 9, np.uint8)
        return {"agentview_image": fixed, "robot0_eye_in_hand_image": wrist,
                "robot0_eef_pos": np.array([0.0, 0.0, float(self.steps)]),
                "robot0_eef_quat": np.array([0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)]),
                "robot0_gripper_qpos": np.array([0.02, -0.02])}

    def seed(self, seed):
        self.calls.append(("seed", seed))

    def reset(self):
        self.calls.append(("reset",))
        self.steps = self.policy_steps = 0

    def set_init_state(self, state):
        self.calls.append(("init", state))
        return self.obs()

    def step(self, action):
        self.actions.append(list(action))
        self.steps += 1
        if list(action) != list(NOOP_ACTION):
            self.policy_steps += 1
            if self.fail_at is not None and self.policy_steps == self.fail_at:
                raise RuntimeError("MuJoCo unstable")
        done = self.succeed_after is not None and self.policy_steps >= self.succeed_after
        return self.obs(), float(done), done, {}

    def close(self):
        self.closed = True


class ScriptedPolicy:
    """The Policy interface: a chunk of 4 actions whose gripper alternates open/close."""

    view_names = ("fixed", "wrist")
    proprio_dim = 8
    chunk_length = 4

    def __init__(self, interrupt_after=None):
        self.predictions, self.pruners, self.resets = [], [], 0
        self.interrupt_after = interrupt_after

    def set_pruner(self, config):
        self.pruners.append(config)

    def reset(self):
        self.resets += 1

    def predict(self, images, proprio, instruction):
        if self.interrupt_after is not None and len(self.predictions) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.predictions.append({"images": images, "proprio": proprio, "instruction": instruction})
        index = len(self.predictions)
        actions = np.array([[0.01 * index, 0, 0, 0, 0, 0, 1.0 if i % 2 == 0 else 0.0] for i in range(4)])
        return SimpleNamespace(actions=actions, timings={"total": 10.0 * index}, flops={"ratio": 0.5}, pruned=True)


def test_episode_settles_then_runs_chunks_open_loop():
    env, policy = ScriptedEnv(succeed_after=None), ScriptedPolicy()
    outcome = run_episode(env, policy, "put the bowl on the plate", "state-3", EpisodeSettings(max_steps=10))
    assert env.calls[:3] == [("seed", 0), ("reset",), ("init", "state-3")]
    assert env.actions[:10] == [list(NOOP_ACTION)] * 10  # 10 settle steps
    assert len(env.actions) == 20 and outcome.steps == 10 and not outcome.success
    assert len(policy.predictions) == 3  # ceil(10 / 4) chunks
    # first chunk: gripper open (1) -> env -1, close (0) -> env +1, alternating
    assert [a[-1] for a in env.actions[10:14]] == [-1.0, 1.0, -1.0, 1.0]
    assert [a[0] for a in env.actions[10:20]] == pytest.approx([0.01] * 4 + [0.02] * 4 + [0.03] * 2)
    assert outcome.chunk_ms == [10.0, 20.0, 30.0] and outcome.pruned_calls == 3


def test_episode_feeds_rotated_images_and_proprio_after_settling():
    env, policy = ScriptedEnv(), ScriptedPolicy()
    run_episode(env, policy, "task", 0, EpisodeSettings(max_steps=5, num_steps_wait=3))
    first = policy.predictions[0]
    assert first["instruction"] == "task"
    assert first["images"]["fixed"][7, 7, 0] == 3  # pixel (0, 0) after 3 settle steps, rotated 180 degrees
    assert first["images"]["fixed"][0, 0, 0] == 0
    np.testing.assert_allclose(first["proprio"], [0, 0, 3, 0, 0, math.pi / 2, 0.02, -0.02])
    assert policy.predictions[1]["images"]["fixed"][7, 7, 0] == 3 + 4  # queried again after 4 actions


def test_episode_success_stops_early_and_open_loop_steps():
    env, policy = ScriptedEnv(succeed_after=6), ScriptedPolicy()
    outcome = run_episode(env, policy, "t", 0, EpisodeSettings(max_steps=100, open_loop_steps=2))
    assert outcome.success and outcome.steps == 6
    assert len(policy.predictions) == 3  # 2 actions per query


def test_episode_warmup_calls_are_untimed_and_followed_by_reset():
    env, policy = ScriptedEnv(), ScriptedPolicy()
    outcome = run_episode(env, policy, "t", 0, EpisodeSettings(max_steps=4, warmup_calls=2))
    assert len(policy.predictions) == 3 and outcome.chunk_ms == [30.0]
    assert policy.resets == 1


def test_simulator_error_fails_the_episode():
    env, policy = ScriptedEnv(fail_at=3), ScriptedPolicy()
    outcome = run_episode(env, policy, "t", 0, EpisodeSettings(max_steps=50))
    assert not outcome.success and outcome.steps == 2 and "MuJoCo unstable" in outcome.error


def test_settings_validation():
    with pytest.raises(ValueError, match="max_steps"):
        EpisodeSettings(max_steps=0)
    with pytest.raises(ValueError, match="open_loop_steps"):
        EpisodeSettings(max_steps=5, open_loop_steps=0)


class ScriptedSuite:
    name = "libero_spatial"
    num_tasks = 3

    def __init__(self, succeed_after=None):
        self.envs, self.succeed_after = [], succeed_after

    def instruction(self, task_id):
        return f"instruction {task_id}"

    def initial_states(self, task_id):
        return [f"state {task_id}-{i}" for i in range(5)]

    def make_env(self, task_id):
        self.envs.append(ScriptedEnv(succeed_after=self.succeed_after.get(task_id) if self.succeed_after else None))
        return self.envs[-1]


CONFIGURATIONS = [EvalConfiguration("none", 1.0), EvalConfiguration("fastv", 0.5),
                  EvalConfiguration("vla_pruner", 0.25)]


def test_evaluate_runs_every_cell_once_and_resumes(tmp_path):
    suite, policy = ScriptedSuite(succeed_after={0: 3}), ScriptedPolicy()
    store = ResultsStore(tmp_path)
    settings = EpisodeSettings(max_steps=8, num_steps_wait=1)
    ran = evaluate(policy, suite, CONFIGURATIONS, [0, 2], 2, settings, store, progress=False)
    assert ran == 12 and len(store) == 12
    assert len(suite.envs) == 2 and all(env.closed for env in suite.envs)  # one env per task
    assert policy.pruners[0] is None  # "none" runs without a pruner
    assert policy.pruners[1] == PrunerConfig(method="fastv", keep_ratio=0.5)
    assert {r.success for r in store.records.values() if r.task_id == 0} == {True}
    assert {r.success for r in store.records.values() if r.task_id == 2} == {False}
    record = store.records[("vla_pruner", 0.25, 2, 1)]
    assert record.task == "instruction 2" and record.steps == 8 and record.chunk_ms and record.pruned_fraction == 1.0
    # a second run finds everything done: no environment, no policy call
    calls = len(policy.predictions)
    assert evaluate(policy, suite, CONFIGURATIONS, [0, 2], 2, settings, ResultsStore(tmp_path), progress=False) == 0
    assert len(suite.envs) == 2 and len(policy.predictions) == calls


def test_evaluate_after_an_interruption_runs_only_the_rest(tmp_path):
    settings = EpisodeSettings(max_steps=4, num_steps_wait=0)
    with pytest.raises(KeyboardInterrupt):
        evaluate(ScriptedPolicy(interrupt_after=5), ScriptedSuite(), CONFIGURATIONS, [1], 3, settings,
                 ResultsStore(tmp_path), progress=False)
    done = ResultsStore(tmp_path)
    assert len(done) == 5  # one chunk per episode: 5 episodes finished before the 6th call
    policy = ScriptedPolicy()
    assert evaluate(policy, ScriptedSuite(), CONFIGURATIONS, [1], 3, settings, ResultsStore(tmp_path),
                    progress=False) == 4
    assert len(policy.predictions) == 4
    assert len(ResultsStore(tmp_path)) == 9


def test_evaluate_writes_videos_of_the_first_episodes(tmp_path):
    store = ResultsStore(tmp_path)
    evaluate(ScriptedPolicy(), ScriptedSuite(), CONFIGURATIONS[1:2], [0], 3, EpisodeSettings(max_steps=3),
             store, videos_per_task=2, video_format="gif", progress=False)
    videos = sorted(r.video for r in store.records.values() if r.video)
    assert videos == ["videos/fastv_keep0p5_task00_ep00_failure.gif", "videos/fastv_keep0p5_task00_ep01_failure.gif"]
    assert all((tmp_path / v).is_file() for v in videos)


def test_evaluate_validates_tasks_and_init_states(tmp_path):
    store = ResultsStore(tmp_path)
    with pytest.raises(ValueError, match="tasks 0..2"):
        evaluate(ScriptedPolicy(), ScriptedSuite(), CONFIGURATIONS, [3], 1, EpisodeSettings(max_steps=2), store,
                 progress=False)
    with pytest.raises(ValueError, match="only 5 initial states"):
        evaluate(ScriptedPolicy(), ScriptedSuite(), CONFIGURATIONS, [0], 6, EpisodeSettings(max_steps=2), store,
                 progress=False)


# ------------------------------------------------------------------------------------------ CLI
def cli_args(tmp_path, **overrides):
    from vla_pruner_ros.tools import eval_libero

    parser = eval_libero.add_arguments(argparse.ArgumentParser())
    argv = ["--checkpoint", str(tmp_path), "--suite", "libero_goal", "--out", str(tmp_path / "out")]
    for name, value in overrides.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return parser.parse_args(argv)


def test_cli_rejects_bad_input_before_loading_anything(tmp_path, capsys):
    from vla_pruner_ros.tools import eval_libero

    (tmp_path / "dataset_statistics.json").write_text(json.dumps({"libero_goal_no_noops": {}}))
    assert eval_libero.run(cli_args(tmp_path, methods="none,magic")) == 2
    assert "unknown ['magic']" in capsys.readouterr().err
    assert eval_libero.run(cli_args(tmp_path, keep="0.5,2")) == 2
    assert "outside (0, 1]" in capsys.readouterr().err
    assert eval_libero.run(cli_args(tmp_path, unnorm_key="bridge")) == 2
    assert "unnorm_key='bridge'" in capsys.readouterr().err
    (tmp_path / "dataset_statistics.json").write_text(json.dumps({"bridge_orig": {}}))
    assert eval_libero.run(cli_args(tmp_path)) == 2
    assert "libero_goal_no_noops" in capsys.readouterr().err
    assert eval_libero.run(cli_args(tmp_path / "missing")) == 2
    assert "not a directory" in capsys.readouterr().err


def test_cli_center_crop_and_statistics(tmp_path):
    from vla_pruner_ros.tools.eval_libero import resolve_center_crop, statistics_keys

    (tmp_path / "config.json").write_text(json.dumps({"norm_stats": {"libero_10_no_noops": {}, "x": {}}}))
    assert statistics_keys(tmp_path) == ["libero_10_no_noops", "x"]
    assert resolve_center_crop(tmp_path, "auto") is True  # real OFT LIBERO checkpoints: trained with crops
    (tmp_path / "vla_pruner_oft.json").write_text(json.dumps({"center_crop": False}))
    assert resolve_center_crop(tmp_path, "auto") is False
    assert resolve_center_crop(tmp_path, "on") is True


def test_cli_is_mounted(capsys):
    from vla_pruner_ros.tools.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval-libero", "--help"])
    assert exit_info.value.code == 0
    assert "--episodes-per-task" in capsys.readouterr().out


# ------------------------------------------------------------------------ LIBERO availability
def test_unavailable_reason_names_missing_modules(monkeypatch):
    import importlib.util

    from vla_pruner_ros.libero import env

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "robosuite" else real(name, *a))
    reason = env.libero_unavailable_reason()
    assert "robosuite" in reason and "setup_libero.sh" in reason


def test_libero_config_points_at_the_installed_package(tmp_path):
    from vla_pruner_ros.libero.env import write_libero_config

    path = write_libero_config(tmp_path / "cfg", tmp_path / "site" / "libero")
    text = path.read_text()
    assert f"bddl_files: {tmp_path / 'site' / 'libero' / 'libero' / 'bddl_files'}" in text
    assert f"init_states: {tmp_path / 'site' / 'libero' / 'libero' / 'init_files'}" in text
    before = path.stat().st_mtime_ns
    write_libero_config(tmp_path / "cfg", tmp_path / "site" / "libero")  # unchanged: not rewritten
    assert path.stat().st_mtime_ns == before


def test_libero_config_folder_is_per_checkout_and_installation(tmp_path, monkeypatch):
    from vla_pruner_ros.libero import env

    monkeypatch.setenv("VLA_PRUNER_LIBERO_HOME", str(tmp_path))
    first, second = env.default_config_dir(tmp_path / "a" / "libero"), env.default_config_dir(tmp_path / "b" / "libero")
    assert first.parent == second.parent == tmp_path and first != second
    assert env.default_config_dir(tmp_path / "a" / "libero") == first  # stable for one installation
    checkout = Path(env.__file__).resolve().parents[2]
    monkeypatch.setattr(env, "__file__", str(tmp_path / "other_checkout" / "vla_pruner_ros" / "libero" / "env.py"))
    assert env.default_config_dir(tmp_path / "a" / "libero") != first  # another checkout, same LIBERO
    text = env.write_libero_config(first, tmp_path / "a" / "libero").read_text()
    assert f"for the LIBERO in {tmp_path / 'a' / 'libero'}" in text and str(checkout) not in text


def test_robosuite_version_other_than_ofts_is_reported(monkeypatch):
    import importlib.metadata
    import importlib.util

    from vla_pruner_ros.libero import env

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.4.0" if name == "robosuite" else real(name))
    reason = env.libero_unavailable_reason()
    assert "robosuite 1.4.0 is installed" in reason and "pins 1.4.1" in reason and "setup_libero.sh" in reason


def test_robosuite_macro_advice_is_dropped_and_other_warnings_kept():
    import logging

    from vla_pruner_ros.libero.env import _drop_macro_advice

    def record(message):
        return logging.LogRecord("robosuite_logs", logging.WARNING, "macros.py", 53, message, None, None)

    for message in ("No private macro file found!", "It is recommended to use a private macro file",
                    "To setup, run: python /x/robosuite/scripts/setup_macros.py"):
        assert not _drop_macro_advice(record(message))
    assert _drop_macro_advice(record("Controller failed to converge"))


def test_cli_reports_a_stopped_run_with_exit_code_1(tmp_path, capsys, monkeypatch):
    from vla_pruner_ros.libero.runner import EvaluationAborted
    from vla_pruner_ros.tools import eval_libero

    def stopped(args):
        raise EvaluationAborted("none: all 3 episode(s) it ran raised an exception (first: task 0 episode 0: x)")

    monkeypatch.setattr(eval_libero, "_run", stopped)
    assert eval_libero.run(cli_args(tmp_path)) == 1
    assert "eval-libero: stopped: none: all 3 episode(s)" in capsys.readouterr().err


def test_resume_of_a_run_made_before_ofts_scene_order_is_refused(tmp_path):
    from vla_pruner_ros.libero.results import check_run_metadata
    from vla_pruner_ros.libero.runner import make_metadata

    metadata = make_metadata(tmp_path, "libero_spatial", "libero_spatial_no_noops", EpisodeSettings(max_steps=5), True)
    old = {k: v for k, v in metadata.items() if k != "protocol"}  # what run.json held before protocol 2
    check_run_metadata(tmp_path / "out", old)
    with pytest.raises(ValueError, match="protocol: None -> 2"):
        check_run_metadata(tmp_path / "out", metadata)
