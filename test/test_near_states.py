"""Near-cube yaw states for the pregrasp task: where they put the arm and what they label it with."""
import json

import numpy as np
import pytest

from vla_pruner_ros.sim import make_expert
from vla_pruner_ros.sim import pregrasp as pg
from vla_pruner_ros.sim.kinematics import XArm6Kinematics
from vla_pruner_ros.sim.task import make_episode
from vla_pruner_ros.training.dataset import DatasetConfig, SimDataset, build_dataset
from vla_pruner_ros.training.near_states import NearStatesConfig, collect, main, place_near


@pytest.fixture(scope="module")
def pregrasp_file(tmp_path_factory):
    config = DatasetConfig(num_scenes=1, first_seed=5, task="pregrasp", image_size=56, action_noise_max=0.01,
                           detour_probability=0.0, hover_steps=1, seed=1)
    path = tmp_path_factory.mktemp("near") / "base.npz"
    build_dataset(config, path, progress=False)
    return config, path


def test_place_near_puts_the_fingers_where_asked():
    kinematics = XArm6Kinematics()
    cube = make_episode(7, "pregrasp").scene.cubes[2]
    for yaw_err in (-0.7, -0.2, 0.0, 0.4, 0.78):
        joints = place_near(kinematics, cube, np.array([0.01, -0.005]), 0.04, yaw_err)
        assert joints is not None
        tcp = kinematics.tcp_pose(joints)[:3, 3]
        np.testing.assert_allclose(tcp, cube.position + [0.01, -0.005, cube.size / 2 + 0.04], atol=1e-3)
        assert abs(pg.yaw_error(cube.yaw, pg.finger_yaw(kinematics, joints)) - yaw_err) < 1e-2


def test_near_states_cover_the_yaw_range_and_carry_the_experts_labels(pregrasp_file, tmp_path):
    data_config, path = pregrasp_file
    config = NearStatesConfig(dataset=str(path), out=str(tmp_path / "out.npz"), scenes=2, per_scene=30)
    records, episodes = collect(config, progress=False)
    assert [len(r.chunks) for r in records] == [30, 30]
    assert {e["source"] for e in episodes} == {"near_yaw"}
    kinematics = XArm6Kinematics()
    expert = make_expert("pregrasp", kinematics, control_period=data_config.control_period,
                         max_joint_speed=data_config.max_joint_speed)
    errors, offsets = [], []
    for record in records:
        episode = make_episode(record.seed, "pregrasp")
        names = {episode.target, episode.next_target}
        for proprio, target, chunk, text in zip(record.proprio, record.targets, record.chunks, record.instructions):
            cube, name = episode.scene.cubes[target], episode.scene.names[target]
            assert name in names
            moment = episode.at(0) if name == episode.target else episode.at(episode.switch_step)
            assert text == moment.instruction  # the instruction names the cube the state is near
            joints = proprio[:6].astype(np.float64)
            errors.append(pg.yaw_error(cube.yaw, pg.finger_yaw(kinematics, joints)))
            offsets.append(np.linalg.norm(kinematics.tcp_pose(joints)[:2, 3] - cube.position[:2]))
            expected = expert.action_chunk(moment, joints, float(proprio[6]), data_config.chunk_length)
            np.testing.assert_allclose(chunk, expected, atol=2e-5)
    errors = np.abs(np.rad2deg(errors))
    # uniform up to 45 degrees: both well-aligned and far-off states, unlike the expert's own data
    assert errors.max() > 30 and errors.min() < 10 and 12 < np.median(errors) < 33
    assert max(offsets) <= config.max_offset + 2e-3


def test_the_command_appends_them_to_the_dataset(pregrasp_file, tmp_path, capsys):
    _, path = pregrasp_file
    out = tmp_path / "merged.npz"
    assert main(["--dataset", str(path), "--out", str(out), "--scenes", "1", "--per-scene", "5",
                 "--no-compress"]) == 0
    before, after = SimDataset(path), SimDataset(out)
    assert len(after) == len(before) + 5 and after.meta["episodes"][-1]["source"] == "near_yaw"
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["added_samples"] == 5
    with pytest.raises(ValueError, match="already in"):  # the same scene seeds twice are refused
        main(["--dataset", str(out), "--out", str(out), "--scenes", "1", "--per-scene", "5"])
