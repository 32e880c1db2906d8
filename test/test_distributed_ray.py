"""eval-sim on a local 2-CPU Ray cluster: the same per-episode results as the serial run, a worker
killed mid-run loses only its unit, an interrupted sweep resumes without rerunning a finished unit.
Skipped where the optional Ray extra (scripts/setup_ray.sh) is not installed, as in CI."""
import json
import os
import signal
import subprocess

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra (scripts/setup_ray.sh), not installed here")

from vla_pruner_ros.distributed import RayBackend, Unit, run_units  # noqa: E402
from vla_pruner_ros.distributed.eval_sim import SINK_FILE, evaluate_sweep, sim_units, sink_for, unit_key  # noqa: E402

from test_distributed import (  # noqa: E402,F401
    FakeLibero, ObservingPolicy, SceneSuite, libero_records, libero_setup, outcomes, replay_cli, replay_rows,
    replay_setup, small_config)

METHODS, RATIOS, EPISODES = ("fastv", "vla_pruner"), (0.5, 0.25), 3  # 4 configurations x 3 episodes


@pytest.fixture(scope="module")
def cluster():
    """One private 2-CPU cluster for the module, always shut down (no raylet left behind)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 ** 2,
             log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
    assert not _raylets(), "a raylet outlived ray.shutdown()"


def _raylets():
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    mine = str(os.getpid())
    return [line for line in out.splitlines() if "raylet" in line and mine in line.split()[1:2]]


@pytest.fixture(scope="module")
def config(tiny_checkpoint):
    return small_config(tiny_checkpoint, methods=METHODS, keep_ratios=RATIOS, episodes=EPISODES)


@pytest.fixture(scope="module")
def serial(config, tmp_path_factory):
    """Today's serial eval-sim loop (training.evaluate.evaluate), not the units."""
    from vla_pruner_ros.training.evaluate import evaluate

    return evaluate(config, progress=False)


def _stored_keys(out_dir):
    """The unit keys of the episodes in eval-sim's episode log, in file order (repeats kept)."""
    lines = (out_dir / SINK_FILE).read_text().splitlines()[1:]
    return [unit_key(e["method"], e["keep_ratio"], e["seed"]) for e in map(json.loads, lines)]


def test_eval_sim_with_ray_equals_the_serial_run(cluster, config, serial, tiny_checkpoint, tmp_path):
    """``vla-pruner eval-sim --ray`` (this process is connected to the 2-CPU cluster, so the command
    uses it) on 2 methods x 2 ratios x 3 episodes: results.json holds the serial episodes."""
    import contextlib
    import io

    import torch

    from vla_pruner_ros.tools.cli import main as cli

    printed, threads = io.StringIO(), torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(printed):
            code = cli(["eval-sim", "--checkpoint", str(tiny_checkpoint), "--methods", ",".join(METHODS),
                        "--keep", ",".join(map(str, RATIOS)), "--episodes", str(EPISODES), "--actions-per-step", "8",
                        "--prune-layer", "1", "--window", "2", "--no-expert", "--threads", "1",
                        "--out", str(tmp_path), "--ray", "--ray-workers", "2"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, printed.getvalue()
    assert "[ray] 2 worker(s)" in printed.getvalue()
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(serial["episodes"]) == 12
    assert outcomes(results["episodes"]) == outcomes(json.loads(json.dumps(serial["episodes"])))  # bit for bit
    assert outcomes(results["rows"]) == outcomes(json.loads(json.dumps(serial["rows"])))
    assert sorted(_stored_keys(tmp_path)) == sorted(u.key for u in sim_units(config))
    for name in ("results.csv", "table.txt", "success_vs_keep_ratio.png"):
        assert (tmp_path / name).is_file()


def test_a_killed_worker_loses_only_its_unit(cluster, config, serial, tmp_path):
    backend = RayBackend(workers=2, cpus_per_worker=1, quiet=True)
    killed = []

    def kill_one(key, result):
        if not killed:  # both workers are busy with the next units: kill one mid-episode
            pid = sorted(backend.worker_pids.values())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    swept = evaluate_sweep(config, backend=backend, sink=sink_for(config, tmp_path), progress=False,
                           on_result=kill_one)
    assert killed and backend.deaths == 1
    retried = swept["units"]["retried"]
    assert len(retried) == 1 and list(retried.values())[0][0].startswith("worker died")
    keys = _stored_keys(tmp_path)
    assert sorted(keys) == sorted(u.key for u in sim_units(config))  # every unit exactly once
    assert outcomes(swept["episodes"]) == outcomes(serial["episodes"])


def test_an_interrupted_ray_sweep_resumes_without_rerunning_finished_units(cluster, config, serial, tmp_path):
    first_ran = []

    def interrupt(key, result):
        first_ran.append(key)
        if len(first_ran) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_sweep(config, backend=RayBackend(workers=2, quiet=True), sink=sink_for(config, tmp_path),
                       progress=False, on_result=interrupt)
    assert _stored_keys(tmp_path) == first_ran
    second_ran = []
    swept = evaluate_sweep(config, backend=RayBackend(workers=2, quiet=True), sink=sink_for(config, tmp_path),
                           progress=False, on_result=lambda key, result: second_ran.append(key))
    assert not set(second_ran) & set(first_ran) and len(second_ran) == 12 - 5
    assert swept["units"]["resumed"] == 5
    assert sorted(_stored_keys(tmp_path)) == sorted(u.key for u in sim_units(config))
    assert outcomes(swept["episodes"]) == outcomes(serial["episodes"])


@pytest.fixture(scope="module", autouse=True)
def _ship_this_module_by_value():
    """Workers import vla_pruner_ros from the working directory but not this test module: its
    work classes travel by value."""
    import sys

    modules = [sys.modules[__name__], sys.modules["test_distributed"]]
    for module in modules:
        ray.cloudpickle.register_pickle_by_value(module)
    yield
    for module in modules:
        ray.cloudpickle.unregister_pickle_by_value(module)


class FailsOn:
    """A unit that raises the same error on every worker."""

    def __init__(self, bad):
        self.bad = bad

    def setup(self):
        return os.getpid()

    def run(self, state, args, tick=None):
        if args == self.bad:
            raise ValueError(f"unit {args} is bad")
        return {"arg": args, "pid": state}


def test_a_unit_failing_twice_on_ray_is_reported_and_the_rest_finish(cluster):
    report = run_units(FailsOn(2), [Unit(f"u{i}", i) for i in range(5)], backend=RayBackend(workers=2, quiet=True))
    assert list(report.failed) == ["u2"] and report.failed["u2"].attempts == ["ValueError: unit 2 is bad"] * 2
    assert sorted(report.results) == ["u0", "u1", "u3", "u4"]
    assert os.getpid() not in {r["pid"] for r in report.results.values()}  # ran in the workers


def test_replay_of_two_bags_on_ray_equals_the_serial_replay(cluster, replay_setup, tmp_path):
    checkpoint, bags, _ = replay_setup
    code, printed = replay_cli(checkpoint, bags, tmp_path / "serial")
    assert code == 0, printed
    code, printed = replay_cli(checkpoint, bags, tmp_path / "ray", "--ray", "--ray-workers", "2")
    assert code == 0, printed
    assert "[ray] 2 worker(s)" in printed
    for bag in ("a", "b"):
        assert replay_rows(tmp_path / "ray" / bag / "steps.csv") == replay_rows(tmp_path / "serial" / bag / "steps.csv")


def test_eval_libero_units_on_ray_equal_the_serial_loop(cluster, tmp_path):
    """The LIBERO loop on scripted stand-ins (LIBERO itself is another optional extra): workers load
    their own policy and suite, episodes land in the same episodes.jsonl as the serial run's."""
    from vla_pruner_ros.distributed.libero import evaluate_units
    from vla_pruner_ros.libero.results import ResultsStore
    from vla_pruner_ros.libero.runner import evaluate

    configurations, settings = libero_setup()
    plain = ResultsStore(tmp_path / "plain")
    evaluate(ObservingPolicy(), SceneSuite(), configurations, [0, 1, 2], 4, settings, plain, progress=False)
    store = ResultsStore(tmp_path / "ray")
    ran = evaluate_units(FakeLibero(), configurations, [0, 1, 2], 4, settings, store, progress=False,
                         backend=RayBackend(workers=2, quiet=True), num_tasks=3)
    assert ran == 3 * 3 * 4 and libero_records(store) == libero_records(plain)
    assert len(ResultsStore(tmp_path / "ray")) == 36  # each episode once in the file


def test_eval_libero_command_on_ray_equals_the_serial_command(cluster, tmp_path, capsys):
    """Real LIBERO (another optional extra), a tiny checkpoint, 2 configurations x 2 short episodes
    of libero_spatial task 0: ``eval-libero --ray`` writes the serial command's episodes."""
    from vla_pruner_ros.libero.env import libero_unavailable_reason

    reason = libero_unavailable_reason()
    if reason is not None:
        pytest.skip(str(reason))
    from vla_pruner_ros.model import make_checkpoint
    from vla_pruner_ros.tools.cli import main

    checkpoint = make_checkpoint("tiny", tmp_path / "tiny", action_dim=7, proprio_dim=8,
                                 unnorm_key="libero_spatial_no_noops", center_crop=True)
    argv = ["eval-libero", "--checkpoint", str(checkpoint), "--suite", "libero_spatial", "--tasks", "0",
            "--episodes-per-task", "2", "--methods", "none,fastv", "--keep", "0.5", "--max-steps", "16",
            "--no-progress", "--device", "cpu"]
    assert main(argv + ["--out", str(tmp_path / "serial")]) == 0
    assert main(argv + ["--out", str(tmp_path / "ray"), "--ray", "--ray-workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "4 episode(s) run now" in printed and "[ray] 2 worker(s)" in printed

    def episodes(out):
        lines = (out / "episodes.jsonl").read_text().splitlines()
        return sorted(json.dumps({k: v for k, v in json.loads(line).items() if k not in ("wall_s", "chunk_ms")},
                                 sort_keys=True) for line in lines)

    assert len(episodes(tmp_path / "ray")) == 4 and episodes(tmp_path / "ray") == episodes(tmp_path / "serial")
