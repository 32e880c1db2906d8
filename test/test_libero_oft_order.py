"""OpenVLA-OFT's LIBERO loop semantics that need no LIBERO (run in CI): the scene seeding order
(seed once per task, episodes in order, the same scenes for every configuration), the open-loop
selection of ``deque(maxlen=n).extend(chunk)``, and episodes that raise (counted, logged, the run
goes on; a configuration that fails every episode stops the run)."""
import json
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vla_pruner_ros.libero.protocol import NOOP_ACTION, EvalConfiguration
from vla_pruner_ros.libero.results import EpisodeRecord, ResultsStore
from vla_pruner_ros.libero.runner import (
    ERRORS_LOG,
    EpisodeSettings,
    EvaluationAborted,
    SceneSeeds,
    evaluate,
    rng_state_digest,
    run_episode,
)

SCENES_FIXTURE = Path(__file__).parent / "fixtures" / "upstream_oft_libero" / "scenes.json"
A, B = EvalConfiguration("none", 1.0), EvalConfiguration("fastv", 0.5)


class FixtureEnv:
    """LIBERO's seeding behaviour in miniature: ``seed`` is ``np.random.seed``; ``reset`` places
    the fixtures from the global ``np.random`` (a variable number of draws, like LIBERO's placement
    retries); ``set_init_state`` and ``step`` draw nothing. Episodes never succeed."""

    def __init__(self, fail=None):
        self.fail = fail or (lambda event, resets: False)
        self.fixtures, self.actions = [], []
        self.resets = 0

    def obs(self):
        return {"agentview_image": np.zeros((8, 8, 3), np.uint8),
                "robot0_eye_in_hand_image": np.zeros((8, 8, 3), np.uint8),
                "robot0_eef_pos": np.zeros(3), "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
                "robot0_gripper_qpos": np.zeros(2)}

    def seed(self, seed):
        np.random.seed(seed)

    def reset(self):
        self.resets += 1
        if self.fail("reset", self.resets):
            raise RuntimeError("placement failed")
        tries = 1 + int(np.random.randint(3))  # LIBERO retries a placement that collides
        self.fixtures.append(tuple(np.random.uniform(-1, 1, size=(tries, 2))[-1]))
        return self.obs()

    def set_init_state(self, state):
        return self.obs()

    def step(self, action):
        self.actions.append(list(action))
        if self.fail("step", self.resets):
            raise FloatingPointError("MuJoCo unstable")
        return self.obs(), 0.0, False, {}

    def close(self):
        pass


class ChunkPolicy:
    """An 8-action chunk; action i of call c is (c, i, 0, 0, 0, 0, open). Draws from np.random on
    every call, as a sampling policy might (that must not move the scenes)."""

    view_names = ("fixed", "wrist")
    proprio_dim = 8
    chunk_length = 8

    def __init__(self, raise_on_call=()):
        self.calls = 0
        self.raise_on_call = set(raise_on_call)

    def set_pruner(self, config):
        pass

    def reset(self):
        pass

    def predict(self, images, proprio, instruction):
        self.calls += 1
        np.random.random(5)
        if self.calls in self.raise_on_call:
            raise RuntimeError(f"CUDA error on call {self.calls}")
        actions = np.array([[self.calls, i, 0, 0, 0, 0, 1.0] for i in range(8)], dtype=float)
        return SimpleNamespace(actions=actions, timings={"total": 1.0}, flops={"ratio": 1.0}, pruned=False)


class Suite:
    name = "libero_spatial"
    num_tasks = 2

    def __init__(self, fail=None):
        self.envs, self.fail = [], fail

    def instruction(self, task_id):
        return f"task {task_id}"

    def initial_states(self, task_id):
        return [f"state {i}" for i in range(10)]

    def make_env(self, task_id):
        self.envs.append(FixtureEnv(self.fail))
        return self.envs[-1]


def oft_scenes(episodes):
    """OFT's order, literally: make the env, env.seed(0), then episode 0, 1, 2, ... each env.reset()."""
    env = FixtureEnv()
    env.seed(0)
    for _ in range(episodes):
        env.reset()  # nothing else in OFT's loop draws from np.random
    return env.fixtures


SHORT = EpisodeSettings(max_steps=2, num_steps_wait=1)


# ------------------------------------------------------------------------------------- seeding
def test_the_seeded_state_is_the_one_oft_fixture_recorded():
    """Episode 0 of every task starts from np.random.seed(0), the state OFT's run recorded."""
    fixture = json.loads(SCENES_FIXTURE.read_text())
    scenes = SceneSeeds(FixtureEnv(), seed=0)
    assert rng_state_digest(scenes.states[0]) == fixture["episodes"][0]["rng_before_reset"]
    assert fixture["env_made_and_seeded"]["rng"] == fixture["episodes"][0]["rng_before_reset"]


def test_every_configuration_gets_ofts_scenes_in_ofts_order(tmp_path):
    suite, policy = Suite(), ChunkPolicy()
    np.random.seed(123)  # whatever the global state was before the run
    evaluate(policy, suite, [A, B], [0, 1], 3, SHORT, ResultsStore(tmp_path), progress=False)
    expected = oft_scenes(3)
    assert expected[0] != expected[1] != expected[2]
    for env in suite.envs:  # one env per task; A's episodes 0-2, then B's episodes 0-2
        assert env.fixtures == expected + expected


def test_resumed_episode_gets_its_oft_scene_by_fast_forward(tmp_path):
    store = ResultsStore(tmp_path)
    for episode in (0, 1):  # a previous run finished B's episodes 0 and 1 of task 0
        store.add(EpisodeRecord(method="fastv", keep_ratio=0.5, suite="libero_spatial", task_id=0, task="t",
                                episode=episode, success=False, steps=2, chunk_ms=[1.0], flops_ratio=1.0,
                                pruned_fraction=0.0, wall_s=0.1))
    suite = Suite()
    assert evaluate(ChunkPolicy(), suite, [B], [0], 3, SHORT, store, progress=False) == 1
    expected = oft_scenes(3)
    assert suite.envs[0].fixtures == expected  # two fast-forward resets, then episode 2's own
    assert suite.envs[0].fixtures[-1] == expected[2]


def test_scene_seeds_reuse_states_and_reject_negative_episodes():
    env = FixtureEnv()
    scenes = SceneSeeds(env, seed=0)
    scenes.reset(2)
    scenes.reset(1)
    scenes.reset(2)
    expected = oft_scenes(3)
    assert env.fixtures == expected + [expected[1], expected[2]]
    assert len(scenes.states) == 4
    with pytest.raises(ValueError, match="episode=-1"):
        scenes.reset(-1)


# ----------------------------------------------------------------------------------- open loop
def executed_chunks(open_loop_steps, max_steps):
    env, policy = FixtureEnv(), ChunkPolicy()
    outcome = run_episode(env, policy, "t", "s", EpisodeSettings(max_steps=max_steps, num_steps_wait=0,
                                                                open_loop_steps=open_loop_steps))
    assert outcome.error is None and outcome.steps == max_steps
    return [tuple(a[:2]) for a in env.actions]


def oft_executed(n, chunks, max_steps):
    """What OFT's run_episode executes: a deque(maxlen=n) extended with each chunk, popleft per step."""
    queue, done, call = deque(maxlen=n), [], 0
    while len(done) < max_steps:
        if not queue:
            call += 1
            queue.extend([(call, i) for i in range(chunks)])
        done.append(queue.popleft())
    return done


def test_open_loop_4_executes_the_last_four_actions_of_each_chunk():
    executed = executed_chunks(4, 10)
    assert executed == oft_executed(4, 8, 10)
    assert executed[:8] == [(1.0, 4.0), (1.0, 5.0), (1.0, 6.0), (1.0, 7.0),
                            (2.0, 4.0), (2.0, 5.0), (2.0, 6.0), (2.0, 7.0)]


@pytest.mark.parametrize("n", [1, 8, 12, None])
def test_open_loop_other_lengths_match_oft(n):
    assert executed_chunks(n, 17) == oft_executed(n or 8, 8, 17)


# -------------------------------------------------------------------------------------- errors
def test_an_episode_that_raises_is_a_failure_logged_with_its_id_and_the_run_goes_on(tmp_path, capsys):
    # episode 1 of task 0 (the second reset): the simulator raises on its first policy step
    suite = Suite(fail=lambda event, resets: event == "step" and resets == 2)
    store = ResultsStore(tmp_path)
    assert evaluate(ChunkPolicy(), suite, [A], [0], 3, SHORT, store, progress=True) == 3
    records = {r.episode: r for r in store.records.values()}
    assert [records[e].success for e in range(3)] == [False] * 3
    assert records[0].error is None and records[2].error is None and records[2].steps == 2
    assert records[1].error.startswith("FloatingPointError: MuJoCo unstable (at test_libero_oft_order.py:")
    assert records[1].steps == 0
    printed = capsys.readouterr()
    assert "task 0 episode 1 (none): episode failed with FloatingPointError" in printed.out + printed.err
    log = (tmp_path / ERRORS_LOG).read_text()
    assert "none task 0 episode 1" in log and "Traceback" in log and "MuJoCo unstable" in log
    reloaded = ResultsStore(tmp_path)  # counted: stored like any failure, not run again
    assert len(reloaded) == 3 and reloaded.records[("none", 1.0, 0, 1)].error == records[1].error


def test_errors_before_the_first_clean_episode_count_once_one_runs(tmp_path):
    # policy calls 1 and 2 raise (episodes 0 and 1 of A), then everything works
    store = ResultsStore(tmp_path)
    assert evaluate(ChunkPolicy(raise_on_call={1, 2}), Suite(), [A], [0], 4, SHORT, store, progress=False) == 4
    errors = {r.episode: r.error for r in store.records.values()}
    assert errors[0].startswith("RuntimeError: CUDA error on call 1") and errors[1].startswith("RuntimeError")
    assert errors[2] is None and errors[3] is None


def test_a_reset_that_raises_is_counted_too(tmp_path):
    suite = Suite(fail=lambda event, resets: event == "reset" and resets == 3)
    store = ResultsStore(tmp_path)
    evaluate(ChunkPolicy(), suite, [A], [0], 3, SHORT, store, progress=False)
    assert store.records[("none", 1.0, 0, 2)].error.startswith("RuntimeError: placement failed")


def test_a_configuration_failing_every_episode_stops_the_run_with_a_clear_message(tmp_path):
    suite = Suite(fail=lambda event, resets: event == "step")
    store = ResultsStore(tmp_path)
    with pytest.raises(EvaluationAborted, match=r"none: all 3 episode\(s\) it ran raised an exception \(first: "
                                                r"task 0 episode 0: FloatingPointError: MuJoCo unstable"):
        evaluate(ChunkPolicy(), suite, [A, B], [0, 1], 5, SHORT, store, progress=False)
    assert len(ResultsStore(tmp_path)) == 0  # nothing recorded: a rerun after the fix runs them
    assert len(suite.envs) == 1 and suite.envs[0].resets == 3
    assert (tmp_path / ERRORS_LOG).read_text().count("===") == 3


def test_a_short_run_whose_every_episode_fails_stops_too(tmp_path):
    suite = Suite(fail=lambda event, resets: event == "step")
    with pytest.raises(EvaluationAborted, match="all 2 episode"):
        evaluate(ChunkPolicy(), suite, [A], [0], 2, SHORT, ResultsStore(tmp_path), progress=False)
    assert len(ResultsStore(tmp_path)) == 0


def test_keyboard_interrupt_is_not_an_episode_failure(tmp_path):
    class Interrupting(ChunkPolicy):
        def predict(self, **kwargs):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(Interrupting(), Suite(), [A], [0], 2, SHORT, ResultsStore(tmp_path), progress=False)


def test_noop_settle_steps_are_unchanged():
    env = FixtureEnv()
    run_episode(env, ChunkPolicy(), "t", "s", EpisodeSettings(max_steps=1, num_steps_wait=3))
    assert env.actions[:3] == [list(NOOP_ACTION)] * 3 and len(env.actions) == 4
