"""The sweep scheduler without Ray (runs in CI): resume, retry once, report a unit that fails the
same way twice, the JSONL sink, and eval-sim through the units equal to the plain serial loop."""
import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from vla_pruner_ros.distributed import JsonlSink, SerialBackend, Unit, run_units
from vla_pruner_ros.distributed.cli import backend_from_args
from vla_pruner_ros.distributed.sink import decode, encode


@dataclass
class Scripted:
    """Squares its argument; ``fail[key]`` lists exceptions its attempts raise first, in order."""

    fail: dict = field(default_factory=dict)
    setups: int = 0
    calls: list = field(default_factory=list)

    def setup(self):
        self.setups += 1
        return {"offset": 0}

    def run(self, state, args, tick=None):
        key, value = args
        self.calls.append(key)
        queued = self.fail.get(key)
        if queued:
            raise queued.pop(0)
        if tick is not None:
            tick(1)
        return {"value": value * value + state["offset"]}


def units(n):
    return [Unit(f"u{i}", (f"u{i}", i)) for i in range(n)]


def test_runs_every_unit_once_with_one_setup_and_results_in_unit_order(tmp_path):
    work, ticks = Scripted(), []
    report = run_units(work, units(5), backend=SerialBackend(on_tick=lambda k, n: ticks.append(k)),
                       sink=JsonlSink(tmp_path / "u.jsonl", {"run": 1}))
    assert work.setups == 1 and work.calls == [f"u{i}" for i in range(5)]
    assert list(report.results) == [f"u{i}" for i in range(5)] and report.complete
    assert [r["value"] for r in report.results.values()] == [0, 1, 4, 9, 16]
    assert ticks == [f"u{i}" for i in range(5)] and report.attempts == 5


def test_resume_reruns_nothing_finished_and_skips_setup_when_all_done(tmp_path):
    path = tmp_path / "u.jsonl"
    first = Scripted(fail={"u3": [KeyboardInterrupt()]})  # an interruption in the middle of the sweep
    with pytest.raises(KeyboardInterrupt):
        run_units(first, units(6), sink=JsonlSink(path, {"run": 1}))
    assert first.calls == ["u0", "u1", "u2", "u3"]
    second = Scripted()
    report = run_units(second, units(6), sink=JsonlSink(path, {"run": 1}))
    assert second.calls == ["u3", "u4", "u5"] and report.resumed == ["u0", "u1", "u2"]
    assert [r["value"] for r in report.results.values()] == [0, 1, 4, 9, 16, 25]
    third = Scripted()
    again = run_units(third, units(6), sink=JsonlSink(path, {"run": 1}))
    assert third.setups == 0 and third.calls == [] and again.ran == [] and len(again.results) == 6
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 6  # the header and each unit exactly once


def test_a_failed_unit_is_retried_once_and_then_succeeds(tmp_path):
    work, seen = Scripted(fail={"u1": [RuntimeError("flaky")]}), []
    report = run_units(work, units(3), sink=JsonlSink(tmp_path / "u.jsonl"),
                       on_failure=lambda key, sig, final: seen.append((key, sig, final)))
    assert report.complete and report.results["u1"] == {"value": 1}
    assert seen == [("u1", "RuntimeError: flaky", False)]
    assert report.retried == {"u1": ["RuntimeError: flaky"]}
    assert work.calls == ["u0", "u1", "u2", "u1"]  # retried after the others, not in a tight loop


def test_a_unit_failing_the_same_way_twice_is_reported_not_retried_forever(tmp_path):
    boom = [ValueError("bad seed 1"), ValueError("bad seed 1"), ValueError("bad seed 1")]
    work, seen = Scripted(fail={"u1": boom}), []
    path = tmp_path / "u.jsonl"
    report = run_units(work, units(3), sink=JsonlSink(path),
                       on_failure=lambda key, sig, final: seen.append((key, final)))
    assert not report.complete and list(report.failed) == ["u1"]
    assert report.failed["u1"].attempts == ["ValueError: bad seed 1"] * 2
    assert "Traceback" in report.failed["u1"].detail
    assert work.calls.count("u1") == 2 and seen == [("u1", False), ("u1", True)]
    assert set(report.results) == {"u0", "u2"}  # the other units finished and are stored
    assert set(JsonlSink(path).results()) == {"u0", "u2"}


def test_different_failures_are_tried_up_to_max_attempts():
    work = Scripted(fail={"u0": [OSError("disk"), MemoryError("oom"), RuntimeError("x"), RuntimeError("y")]})
    report = run_units(work, units(1), max_attempts=3)
    assert report.failed["u0"].attempts == ["OSError: disk", "MemoryError: oom", "RuntimeError: x"]
    assert work.calls == ["u0"] * 3


def test_setup_errors_stop_the_sweep():
    class Broken(Scripted):
        def setup(self):
            raise ValueError("no config.json")

    with pytest.raises(ValueError, match="no config.json"):
        run_units(Broken(), units(2))


def test_duplicate_keys_are_refused():
    with pytest.raises(ValueError, match="unique"):
        run_units(Scripted(), [Unit("a", ("a", 1)), Unit("a", ("a", 2))])


def test_sink_ignores_a_cut_line_refuses_another_run_and_round_trips_numpy(tmp_path):
    path = tmp_path / "u.jsonl"
    sink = JsonlSink(path, {"checkpoint": "/a", "window": 3})
    value = {"x": np.array([[0.1, np.nan], [1e-30, -2.5]], dtype=np.float32), "k": np.arange(4),
             "m": np.array([True, False]), "s": np.float64(0.3), "t": (1, "a")}
    sink.add("a", value)
    with open(path, "a") as f:
        f.write('{"key": "b", "result": {"x": [1, 2')  # an interruption mid-line
    again = JsonlSink(path, {"checkpoint": "/a", "window": 3})
    assert again.skipped_lines == 1 and set(again.results()) == {"a"}
    got = again.results()["a"]
    assert got["x"].dtype == np.float32 and np.array_equal(got["x"], value["x"], equal_nan=True)
    assert got["k"].dtype == value["k"].dtype and got["m"].dtype == bool and got["s"] == 0.3 and got["t"] == [1, "a"]
    again.add("b", {"y": 1})
    assert set(JsonlSink(path, {"checkpoint": "/a", "window": 3}).results()) == {"a", "b"}
    with pytest.raises(ValueError, match="window: 3 -> 4"):
        JsonlSink(path, {"checkpoint": "/a", "window": 4})
    assert decode(json.loads(json.dumps(encode(value["x"])))).tobytes() == value["x"].tobytes()


def test_without_ray_the_backend_is_serial_and_ray_is_not_imported():
    import argparse
    import sys

    from vla_pruner_ros.distributed import add_ray_arguments

    parser = argparse.ArgumentParser()
    add_ray_arguments(parser)
    assert isinstance(backend_from_args(parser.parse_args([])), SerialBackend)
    assert parser.parse_args(["--ray"]).ray == "auto"
    assert parser.parse_args(["--ray", "10.0.0.1:6379"]).ray == "10.0.0.1:6379"
    assert "ray" not in sys.modules or sys.modules["ray"] is not None  # importing the module did not need Ray
    with pytest.raises(SystemExit):
        parser.parse_args(["--ray-workers", "0"])


# ------------------------------------------------------------------------- eval-sim as units
TIMING = ("median_ms_per_step",)


def outcomes(items):
    """Episode records or table rows without their timing fields (the rest is deterministic), as
    JSON so that NaN equals NaN."""
    return [json.dumps({k: v for k, v in item.items() if k not in TIMING}, sort_keys=True) for item in items]


def small_config(checkpoint, **changes):
    from vla_pruner_ros.training.evaluate import EvalConfig

    settings = dict(checkpoint=str(checkpoint), methods=("none", "vla_pruner"), keep_ratios=(0.5,), episodes=2,
                    actions_per_step=8, prune_layer=1, window=2, include_expert=False, threads=1)
    settings.update(changes)
    return EvalConfig(**settings)


def test_eval_sim_units_equal_the_serial_loop_and_resume_runs_nothing(tiny_checkpoint, tmp_path):
    from vla_pruner_ros.distributed.eval_sim import evaluate_sweep, sink_for
    from vla_pruner_ros.training.evaluate import evaluate

    config = small_config(tiny_checkpoint)
    plain = evaluate(config, progress=False)
    ran = []
    swept = evaluate_sweep(config, sink=sink_for(config, tmp_path), progress=False,
                           on_result=lambda key, result: ran.append(key))
    assert outcomes(swept["episodes"]) == outcomes(plain["episodes"])  # final distances bit for bit
    assert outcomes(swept["rows"]) == outcomes(plain["rows"])
    assert len(ran) == 4 and swept["units"]["ran"] == 4
    again = evaluate_sweep(config, sink=sink_for(config, tmp_path), progress=False,
                           on_result=lambda key, result: ran.append(key))
    assert len(ran) == 4 and again["units"] == {"ran": 0, "resumed": 4, "retried": {}}
    assert outcomes(again["episodes"]) == outcomes(swept["episodes"]) and again["num_visual_tokens"] == 512
    assert outcomes(again["rows"]) == outcomes(swept["rows"])
    more = small_config(tiny_checkpoint, episodes=3)  # one more episode per configuration: only those run
    grown = evaluate_sweep(more, sink=sink_for(more, tmp_path), progress=False)
    assert grown["units"]["ran"] == 2
    assert outcomes(grown["episodes"][:2]) == outcomes(swept["episodes"][:2])
    with pytest.raises(ValueError, match="other settings"):
        sink_for(small_config(tiny_checkpoint, window=3), tmp_path)
    # the serial command's own resume reads what the units wrote (one file, one format)
    from vla_pruner_ros.training.evaluate import EpisodeLog

    log = EpisodeLog(tmp_path / "episodes.jsonl", more)
    assert len(log.done) == 6 and log.get("vla_pruner", 0.5, 2).seed == 2


# ------------------------------------------------------------------------- replay as units
REPLAY_TIMING = ("_ms", "online_total_ms")


def replay_rows(path):
    """steps.csv without its timing columns."""
    import csv

    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if not k.endswith(REPLAY_TIMING)} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def replay_setup(tmp_path_factory):
    from vla_pruner_ros.model import make_checkpoint
    from vla_pruner_ros.replay.simbag import SimBagSpec, write_sim_bag

    root = tmp_path_factory.mktemp("replay_units")
    checkpoint = make_checkpoint("tiny", root / "tiny", seed=0, image_size=112)
    bags = [write_sim_bag(root / name, "mcap", SimBagSpec(duration_s=1.2)).path for name in ("a", "b")]
    return checkpoint, bags, root


def replay_cli(checkpoint, bags, out, *extra):
    import contextlib
    import io

    import torch

    from vla_pruner_ros.tools.cli import main as cli

    printed, threads = io.StringIO(), torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(printed):
            code = cli(["replay", *map(str, bags), "--checkpoint", str(checkpoint), "--methods", "vla_pruner",
                        "--keep", "0.5", "--window", "2", "--out", str(out), "--quiet", "--threads", "1",
                        "--no-plots", *extra])
    finally:
        torch.set_num_threads(threads)
    return code, printed.getvalue()


def test_replay_units_equal_run_replay(replay_setup):
    from vla_pruner_ros.control.robot_config import load_robot_config
    from vla_pruner_ros.model import load_policy
    from vla_pruner_ros.pruning import PrunerConfig
    from vla_pruner_ros.replay import ReplayConfig, run_replay
    from vla_pruner_ros.replay.runs import PolicySource, ReplayWork, SpecRun, TimelineSource, assemble, replay_units
    from vla_pruner_ros.distributed.sink import decode, encode

    checkpoint, bags, _ = replay_setup
    robot, config = load_robot_config(), ReplayConfig(methods=("vla_pruner",), keep_ratios=(0.5,),
                                                 pruner=PrunerConfig(keep_ratio=0.25, window=2))
    source = TimelineSource(str(bags[0]))
    timeline = source.load(robot)
    plain = run_replay(load_policy(checkpoint), robot, timeline, config)
    work = ReplayWork(PolicySource(str(checkpoint), threads=1), robot, config, {"a": source})
    report = run_units(work, replay_units(config, ["a"]))
    # through JSON and back, as a resumed run reads them
    runs = {key.split("/", 1)[1]: SpecRun.from_dict(decode(json.loads(json.dumps(encode(value)))))
            for key, value in report.results.items()}
    swept = assemble(config, timeline, runs)
    timing = lambda rows: [{k: v for k, v in r.items() if not k.endswith(REPLAY_TIMING)} for r in rows]  # noqa: E731
    assert json.dumps(timing(swept.rows)) == json.dumps(timing(plain.rows))
    for name in plain.kept:
        assert np.array_equal(swept.kept[name], plain.kept[name])
    assert np.array_equal(swept.s_vl, plain.s_vl) and np.array_equal(swept.s_act, plain.s_act)
    assert swept.grids == plain.grids and swept.view_names == plain.view_names


def test_replay_of_two_bags_writes_a_folder_each_and_resumes(replay_setup):
    checkpoint, bags, root = replay_setup
    out = root / "out"
    code, printed = replay_cli(checkpoint, bags, out)
    assert code == 0, printed
    units = (out / "units.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in units[1:]] == ["a/none", "a/vla_pruner@0.5", "b/none",
                                                               "b/vla_pruner@0.5"]
    first = {bag: (out / bag / "steps.csv").read_text() for bag in ("a", "b")}
    assert all(replay_rows(out / bag / "steps.csv") for bag in first)
    code, printed = replay_cli(checkpoint, bags, out)  # again: every run is taken from units.jsonl
    assert code == 0 and "4 run(s) taken from" in printed
    assert (out / "units.jsonl").read_text().splitlines() == units
    assert {bag: (out / bag / "steps.csv").read_text() for bag in ("a", "b")} == first  # timings included
    code, printed = replay_cli(checkpoint, bags[:1], root / "one")  # one bag: --out is its folder
    assert code == 0 and (root / "one" / "steps.csv").is_file()
    assert replay_rows(root / "one" / "steps.csv") == replay_rows(out / "a" / "steps.csv")


# ------------------------------------------------------------------------- eval-libero as units
class SceneEnv:
    """LIBERO's environment interface; ``reset`` places a 'fixture' from the global np.random as
    LIBERO does, and the episode succeeds when the policy's x action crosses that fixture."""

    def __init__(self, task_id, fail_task=None):
        self.task_id, self.fail_task, self.fixture, self.x = task_id, fail_task, 0.0, 0.0

    def seed(self, seed):
        np.random.seed(seed)

    def reset(self):
        self.fixture = float(np.random.uniform(0.2, 0.6))
        self.x = 0.0

    def set_init_state(self, state):
        self.x = 0.01 * state
        return self.obs()

    def obs(self):
        image = np.full((8, 8, 3), int(100 * self.fixture), np.uint8)
        return {"agentview_image": image, "robot0_eye_in_hand_image": image,
                "robot0_eef_pos": np.array([self.x, 0.0, 0.0]), "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
                "robot0_gripper_qpos": np.array([0.02, -0.02])}

    def step(self, action):
        if self.task_id == self.fail_task and action[0] != 0:
            raise RuntimeError("MuJoCo unstable")
        self.x += action[0]
        done = self.x >= self.fixture
        return self.obs(), float(done), done, {}

    def close(self):
        pass


class SceneSuite:
    name, num_tasks = "fake_suite", 3

    def __init__(self, fail_task=None):
        self.fail_task = fail_task

    def instruction(self, task_id):
        return f"task {task_id}"

    def initial_states(self, task_id):
        return list(range(10))

    def make_env(self, task_id):
        return SceneEnv(task_id, self.fail_task)


class ObservingPolicy:
    """Actions from the observation and the pruner only (no history), like a real policy."""

    view_names, proprio_dim, chunk_length, action_dim = ("fixed", "wrist"), 8, 4, 7

    def __init__(self):
        self.keep = 1.0

    def set_pruner(self, config):
        self.keep = 1.0 if config is None else config.keep_ratio

    def reset(self):
        pass

    def predict(self, images, proprio, instruction):
        from types import SimpleNamespace

        step = 0.02 * self.keep + 0.001 * float(images["fixed"][0, 0, 0]) / 100
        actions = np.array([[step, 0, 0, 0, 0, 0, 1.0]] * 4)
        return SimpleNamespace(actions=actions, timings={"total": 1.0}, flops={"ratio": self.keep},
                               pruned=self.keep < 1)


@dataclass(frozen=True)
class FakeLibero:
    """A LiberoSource for the fakes (what a Ray worker loads)."""

    suite: str = "fake_suite"
    fail_task: int | None = None
    seed: int = 7

    def load_policy(self):
        return ObservingPolicy()

    def load_suite(self):
        return SceneSuite(self.fail_task)


def libero_setup(**changes):
    from vla_pruner_ros.libero.protocol import build_configurations
    from vla_pruner_ros.libero.runner import EpisodeSettings
    from vla_pruner_ros.pruning import METHODS

    configurations = build_configurations(["none", "fastv"], [0.5, 0.25], METHODS)
    return configurations, EpisodeSettings(max_steps=30, num_steps_wait=2, **changes)


def libero_records(store):
    return sorted(json.dumps({k: v for k, v in vars(r).items() if k not in ("wall_s", "chunk_ms")}, sort_keys=True)
                  for r in store.records.values())


def test_libero_units_equal_the_serial_loop_and_resume(tmp_path):
    from vla_pruner_ros.distributed.libero import evaluate_units
    from vla_pruner_ros.libero.results import ResultsStore
    from vla_pruner_ros.libero.runner import evaluate

    configurations, settings = libero_setup()
    plain = ResultsStore(tmp_path / "plain")
    evaluate(ObservingPolicy(), SceneSuite(), configurations, [0, 2], 3, settings, plain, progress=False)
    store = ResultsStore(tmp_path / "units")
    ran = evaluate_units(FakeLibero(), configurations, [0, 2], 3, settings, store, progress=False,
                         policy=ObservingPolicy(), suite=SceneSuite())
    assert ran == 3 * 2 * 3 == len(store)
    assert libero_records(store) == libero_records(plain)
    assert len({r.success for r in store.records.values()}) == 2  # the fakes give both outcomes
    again = ResultsStore(tmp_path / "units")
    assert evaluate_units(FakeLibero(), configurations, [0, 2], 3, settings, again, progress=False,
                          policy=ObservingPolicy(), suite=SceneSuite()) == 0
    # a worker that starts at episode 2 of a task gets OFT's scene for episode 2 (SceneSeeds)
    late = ResultsStore(tmp_path / "late")
    for record in plain.records.values():
        if record.episode < 2:
            late.add(record)
    assert evaluate_units(FakeLibero(), configurations, [0, 2], 3, settings, late, progress=False,
                          policy=ObservingPolicy(), suite=SceneSuite()) == 6
    assert libero_records(late) == libero_records(plain)


def test_libero_units_stop_when_a_configuration_only_raises(tmp_path):
    from vla_pruner_ros.distributed.libero import evaluate_units
    from vla_pruner_ros.libero.results import ResultsStore
    from vla_pruner_ros.libero.runner import EvaluationAborted

    configurations, settings = libero_setup()
    store = ResultsStore(tmp_path)
    with pytest.raises(EvaluationAborted, match="none: all 3 episode"):
        evaluate_units(FakeLibero(fail_task=0), configurations, [0], 3, settings, store, progress=False,
                       policy=ObservingPolicy(), suite=SceneSuite(fail_task=0))
    assert len(store) == 0 and "MuJoCo unstable" in (tmp_path / "errors.log").read_text()
