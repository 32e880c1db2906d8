"""On real LIBERO (needs the optional extra: scripts/setup_libero.sh): the scenes of episodes 0-2
of libero_spatial task 0 that ``evaluate`` builds are the ones OpenVLA-OFT's own evaluation code
built (test/fixtures/upstream_oft_libero/scenes.json, recorded from moojink/openvla-oft 213c5ff):
the same numpy random state before every reset and the same position of every body (fixtures,
objects, robot) after ``set_init_state``, for a configuration run in order and for another that
only runs episode 2. ~1-2 min on 2 CPU cores (four LIBERO resets)."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vla_pruner_ros.libero.env import libero_unavailable_reason

REASON = libero_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "upstream_oft_libero" / "scenes.json").read_text())


class RecordingEnv:
    """The real LIBERO environment, recording the random state before each reset and every body's
    pose after each set_init_state."""

    def __init__(self, env):
        self._env, self.events = env, []

    def __getattr__(self, name):
        return getattr(self._env, name)

    def reset(self):
        from vla_pruner_ros.libero.runner import rng_state_digest

        self.events.append({"rng_before_reset": rng_state_digest()})
        return self._env.reset()

    def set_init_state(self, state):
        from vla_pruner_ros.libero.runner import rng_state_digest

        obs = self._env.set_init_state(state)
        model, data = self._env.sim.model, self._env.sim.data
        self.events[-1]["rng_after_set_init_state"] = rng_state_digest()
        self.events[-1]["bodies"] = {model.body_id2name(i): list(data.body_xpos[i]) + list(data.body_xquat[i])
                                     for i in range(model.nbody)}
        return obs


class HoldStill:
    view_names, proprio_dim, chunk_length = ("fixed", "wrist"), 8, 8

    def set_pruner(self, config):
        pass

    def reset(self):
        pass

    def predict(self, images, proprio, instruction):
        actions = np.array([[0, 0, 0, 0, 0, 0, 1.0]] * 8)
        return SimpleNamespace(actions=actions, timings={"total": 1.0}, flops={"ratio": 1.0}, pruned=False)


def test_episodes_0_to_2_get_the_scenes_ofts_evaluation_built(tmp_path):
    from vla_pruner_ros.libero.env import LiberoSuite
    from vla_pruner_ros.libero.protocol import EvalConfiguration
    from vla_pruner_ros.libero.results import EpisodeRecord, ResultsStore
    from vla_pruner_ros.libero.runner import EpisodeSettings, evaluate

    assert FIXTURE["suite"] == "libero_spatial" and FIXTURE["task_id"] == 0
    suite = LiberoSuite("libero_spatial")
    envs = []

    class Recording:
        name, num_tasks = suite.name, suite.num_tasks
        instruction, initial_states = suite.instruction, suite.initial_states

        def make_env(self, task_id):
            envs.append(RecordingEnv(suite.make_env(task_id)))
            return envs[-1]

    store = ResultsStore(tmp_path)
    for episode in (0, 1):  # the second configuration only has episode 2 left (as after a resume)
        store.add(EpisodeRecord(method="fastv", keep_ratio=0.5, suite=suite.name, task_id=0, task="t",
                                episode=episode, success=False, steps=1, chunk_ms=[1.0], flops_ratio=1.0,
                                pruned_fraction=0.0, wall_s=0.1))
    np.random.seed(1234)  # whatever state the process is in
    configurations = [EvalConfiguration("none", 1.0), EvalConfiguration("fastv", 0.5)]
    ran = evaluate(HoldStill(), Recording(), configurations, [0], 3, EpisodeSettings(max_steps=1, num_steps_wait=0),
                   store, progress=False)
    assert ran == 4 and not any(r.error for r in store.records.values())
    events = envs[0].events
    assert len(events) == 4  # none: episodes 0, 1, 2; fastv: episode 2
    for got, episode in zip(events, (0, 1, 2, 2)):
        expected = FIXTURE["episodes"][episode]
        assert got["rng_before_reset"] == expected["rng_before_reset"], f"episode {episode}"
        assert got["rng_after_set_init_state"] == expected["rng_after_set_init_state"], f"episode {episode}"
        assert sorted(got["bodies"]) == sorted(expected["bodies"])
        worst = max(np.max(np.abs(np.subtract(got["bodies"][name], pose))) for name, pose in expected["bodies"].items())
        assert worst < 1e-6, f"episode {episode}: a body is {worst:.2e} away from where OFT's run put it"
    # the fixtures really move between OFT's episodes (so the comparison above can fail)
    stove = [FIXTURE["episodes"][k]["bodies"]["flat_stove_1_main"][:3] for k in range(3)]
    assert np.max(np.abs(np.subtract(stove[1], stove[0]))) > 0.01
