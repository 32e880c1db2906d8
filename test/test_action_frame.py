"""Action frames: a checkpoint whose head outputs offsets from the proprio ("relative") is trained,
written and loaded so that every caller still receives absolute joint targets."""
import json

import numpy as np
import pytest

from vla_pruner_ros.model import load_policy, make_checkpoint
from vla_pruner_ros.model.processing_oft import actions_from_frame, actions_to_frame
from vla_pruner_ros.training.dataset import DatasetConfig, SimDataset, build_dataset, dataset_statistics
from vla_pruner_ros.training.train import TrainConfig, inherited_statistics, train


def test_frames_round_trip_and_leave_the_gripper_absolute():
    rng = np.random.default_rng(0)
    chunks = rng.uniform(-1, 1, size=(5, 8, 7))
    proprio = rng.uniform(-1, 1, size=(5, 7))
    mask = [True] * 6 + [False]
    relative = actions_to_frame(chunks, proprio, "relative", mask)
    np.testing.assert_allclose(relative[:, 3, :6], chunks[:, 3, :6] - proprio[:, :6])
    np.testing.assert_array_equal(relative[..., 6], chunks[..., 6])
    for sample in range(5):
        np.testing.assert_allclose(actions_from_frame(relative[sample], proprio[sample], "relative", mask),
                                   chunks[sample])
    np.testing.assert_array_equal(actions_to_frame(chunks, proprio, "absolute", mask), chunks)
    with pytest.raises(ValueError, match="expected one of"):
        actions_to_frame(chunks, proprio, "delta", mask)
    with pytest.raises(ValueError, match="proprio is needed"):
        actions_from_frame(chunks[0], None, "relative", mask)
    with pytest.raises(ValueError, match="must be equal"):
        actions_from_frame(chunks[0], proprio[0, :6], "relative", mask)


def test_a_relative_checkpoint_adds_the_proprio_back(tmp_path):
    """Same seed, same weights: the relative checkpoint's actions are the absolute one's plus the
    proprio on the joints, and equal on the gripper."""
    absolute = load_policy(make_checkpoint("tiny", tmp_path / "abs", seed=3), dtype="float32", announce=False)
    relative_dir = make_checkpoint("tiny", tmp_path / "rel", seed=3, action_frame="relative")
    assert json.loads((relative_dir / "vla_pruner_oft.json").read_text())["action_frame"] == "relative"
    assert "action_frame" not in json.loads((tmp_path / "abs" / "vla_pruner_oft.json").read_text())
    relative = load_policy(relative_dir, dtype="float32", announce=False)
    assert relative.action_frame == "relative" and absolute.action_frame == "absolute"
    assert "relative to the proprio" in relative.preprocessing_summary()
    rng = np.random.default_rng(1)
    size = absolute.config.image_size
    images = {v: rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for v in absolute.view_names}
    proprio = rng.uniform(-0.5, 0.5, size=absolute.proprio_dim)
    a = absolute.predict(images, proprio, "pick up the cube").actions
    r = relative.predict(images, proprio, "pick up the cube").actions
    mask = np.asarray(absolute.action_stats["mask"], dtype=bool)
    assert mask.any() and not mask.all()
    np.testing.assert_allclose(r[:, mask], a[:, mask] + proprio[mask], atol=1e-6)
    np.testing.assert_allclose(r[:, ~mask], a[:, ~mask], atol=1e-6)


def test_an_unknown_frame_in_the_sidecar_is_refused(tmp_path):
    path = make_checkpoint("tiny", tmp_path / "ckpt", seed=0)
    sidecar = json.loads((path / "vla_pruner_oft.json").read_text())
    (path / "vla_pruner_oft.json").write_text(json.dumps({**sidecar, "action_frame": "delta"}))
    with pytest.raises(ValueError, match="action_frame 'delta'"):
        load_policy(path, dtype="float32", announce=False)
    with pytest.raises(ValueError, match="action_frame"):
        make_checkpoint("tiny", tmp_path / "bad", seed=0, action_frame="delta")


@pytest.fixture(scope="module")
def reach_dataset(tmp_path_factory):
    config = DatasetConfig(num_scenes=1, first_seed=7, targets=("red",), hover_steps=2, retarget_probability=0.0,
                           seed=1)
    path = tmp_path_factory.mktemp("data") / "small.npz"
    build_dataset(config, path, progress=False)
    return path


def test_relative_training_targets_offsets_and_writes_the_frame(reach_dataset, tmp_path):
    data = SimDataset(reach_dataset, action_frame="relative")
    offsets = data.chunks[:, :, :6] - data.proprio[:, None, :6]
    stats = data.statistics["action"]
    assert stats == dataset_statistics(data.proprio, data.chunks, data.num_episodes, "relative")["action"]
    assert stats != SimDataset(reach_dataset).statistics["action"]
    low, high = np.asarray(stats["q01"][:6]), np.asarray(stats["q99"][:6])
    expected = np.clip(2 * (offsets - low) / (high - low + 1e-8) - 1, -1, 1)
    np.testing.assert_allclose(data.normalized_chunks[..., :6], expected, atol=1e-5)
    np.testing.assert_array_equal(data.normalized_chunks[..., 6], data.chunks[..., 6])

    config = TrainConfig(dataset=str(reach_dataset), out_dir=str(tmp_path / "ckpt"), work_dir=str(tmp_path / "w"),
                         steps=1, batch_size=2, warmup_steps=0, eval_every=1, save_every=1, eval_samples=2,
                         validation_fraction=0.0, action_frame="relative")
    train(config, progress=False)
    sidecar = json.loads((tmp_path / "ckpt" / "vla_pruner_oft.json").read_text())
    assert sidecar["action_frame"] == "relative"
    written = json.loads((tmp_path / "ckpt" / "dataset_statistics.json").read_text())["xarm6_sim_reach"]["action"]
    np.testing.assert_allclose(written["q99"], stats["q99"])
    policy = load_policy(tmp_path / "ckpt", dtype="float32", announce=False)
    assert policy.action_frame == "relative"
    # a warm start keeps the source's statistics only in the same frame
    assert inherited_statistics(tmp_path / "ckpt", reach_dataset, "relative")["action"]["q99"] == written["q99"]
    assert inherited_statistics(tmp_path / "ckpt", reach_dataset, "absolute") is None
    with pytest.raises(ValueError, match="action_frame"):
        TrainConfig(dataset="x", out_dir="o", work_dir="w", action_frame="delta")
