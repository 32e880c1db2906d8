"""Dataset builder, batched training forward, statistics and the training loop (train-sim)."""
import json

import numpy as np
import pytest
import torch

from vla_pruner_ros.model import OFTForActionPrediction, load_policy, make_checkpoint
from vla_pruner_ros.model.checkpoint import build_model, load_checkpoint
from vla_pruner_ros.model.processing_oft import OFTImageProcessor, normalize_proprio, unnormalize_actions
from vla_pruner_ros.sim import ScriptedExpert, SimEnv
from vla_pruner_ros.sim.task import make_episode, success
from vla_pruner_ros.training.dataset import (
    DatasetConfig,
    EpisodeRecord,
    SimDataset,
    bounds_statistics,
    build_dataset,
    normalize_bounds,
    pixel_tensor,
    policy_view,
    read_meta,
    stored_npz_array,
)
from vla_pruner_ros.training.train import TrainConfig, learning_rate_at, train


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """Two episodes of one scene (red and blue target), with DART noise and a forced detour."""
    config = DatasetConfig(num_scenes=1, first_seed=7, targets=("red", "blue"), action_noise_max=0.02,
                           detour_probability=1.0, detour_steps=(2, 2), hover_steps=3, retarget_probability=0.0,
                           seed=1)
    path = tmp_path_factory.mktemp("data") / "small.npz"
    summary = build_dataset(config, path, progress=False)
    return config, path, summary


def test_dataset_shapes_and_episode_bookkeeping(small_dataset):
    config, path, summary = small_dataset
    data = SimDataset(path)
    n = len(data)
    assert summary["episodes"] == 2 and summary["samples"] == n and summary["expert_success"] == 1.0
    for view in ("fixed", "wrist"):
        assert data.views[view].shape == (n, 112, 112, 3) and data.views[view].dtype == np.uint8
    assert data.proprio.shape == (n, 7) and data.chunks.shape == (n, 8, 7)
    assert data.normalized_proprio.shape == (n, 7) and data.normalized_chunks.shape == (n, 8, 7)
    # Every successful episode: its control steps + the hover steps, numbered 0.. in order.
    for number, episode in enumerate(data.meta["episodes"]):
        rows = np.flatnonzero(data.episode == number)
        assert episode["success"] and episode["detour"] == 2
        assert len(rows) == episode["num_steps"] + config.hover_steps
        assert np.array_equal(data.step[rows], np.arange(len(rows)))
        assert data.instructions[data.instruction[rows[0]]] == episode["instruction"]
        assert episode["target"] in episode["instruction"]
    assert {e["target"] for e in data.meta["episodes"]} == {"red", "blue"}


def test_labels_are_the_expert_chunk_from_the_state_the_images_show(small_dataset):
    config, path, _ = small_dataset
    data = SimDataset(path)
    expert = ScriptedExpert(control_period=config.control_period, max_joint_speed=config.max_joint_speed)
    for number, episode_meta in enumerate(data.meta["episodes"]):
        episode = make_episode(episode_meta["seed"], config.task, episode_meta["target"])
        for row in np.flatnonzero(data.episode == number)[::5]:
            joints, gripper = data.proprio[row, :6].astype(np.float64), float(data.proprio[row, 6])
            expected = expert.action_chunk(episode, joints, gripper, config.chunk_length)
            np.testing.assert_allclose(data.chunks[row], expected, atol=2e-5)
    # DART: the executed actions were perturbed, so consecutive states do not follow the labels exactly.
    rows = np.flatnonzero(data.episode == 0)
    reached = data.proprio[rows[1:6], :6]
    labelled = data.chunks[rows[0:5], 0, :6]
    assert np.abs(reached - labelled).max() > 1e-3


def test_retarget_episodes_start_above_another_cube(tmp_path):
    """The demo keeps running when the instruction changes: some episodes start hovering over a
    different cube and are recorded from there to the named one."""
    config = DatasetConfig(num_scenes=1, first_seed=21, targets=("green",), retarget_probability=1.0,
                           detour_probability=0.0, action_noise_max=0.0, hover_steps=0)
    build_dataset(config, tmp_path / "rt.npz", progress=False)
    data = SimDataset(tmp_path / "rt.npz")
    (episode,) = data.meta["episodes"]
    assert episode["success"] and episode["start_above"] in ("red", "blue")
    scene = make_episode(21, "above", "green").scene
    kinematics = ScriptedExpert().kinematics
    first_tcp = kinematics.tcp_pose(data.proprio[0, :6].astype(np.float64))[:3, 3]
    last_tcp = kinematics.tcp_pose(data.chunks[-1, 0, :6].astype(np.float64))[:3, 3]
    assert success(first_tcp, scene, episode["start_above"]) and not success(first_tcp, scene, "green")
    assert success(last_tcp, scene, "green")
    assert len(data) == episode["num_steps"]


def test_stored_views_give_exactly_the_policy_preprocessing():
    """pixel_tensor on the stored (resized) uint8 views == OFTImageProcessor on the 224 px render."""
    model = build_model("xarm6-sim")
    processor = OFTImageProcessor(model.config)
    env = SimEnv(seed=3, image_size=(224, 224))
    obs = env.reset(seed=11)
    expected = processor([(v, obs["images"][v]) for v in ("fixed", "wrist")])
    stored = {v: policy_view(obs["images"][v], processor.size)[None] for v in ("fixed", "wrist")}
    got = pixel_tensor(stored, processor.means, processor.stds)
    assert got.shape == (1, 2, 6, 112, 112)
    torch.testing.assert_close(got[0], expected, atol=1e-6, rtol=0)


def test_patch_labels_mark_the_cubes_where_the_images_show_them(small_dataset):
    """Probe labels (training only): each cube's top lands on a patch showing that cube's colour."""
    _, path, _ = small_dataset
    data = SimDataset(path)
    assert data.patch_classes.shape == (len(data), 128) and data.patch_classes.dtype == np.int8
    fixed = data.patch_classes[:, :64]
    for colour in (1, 2, 3):  # the fixed camera sees all three cubes in every sample
        assert np.all((fixed == colour).sum(1) == 1)
    dominant = {1: 0, 2: 1, 3: 2}  # red, green, blue -> RGB channel
    checked, shown = 0, 0
    for row in range(0, len(data), 7):
        for view, name in enumerate(("fixed", "wrist")):
            labels = data.patch_classes[row, 64 * view:64 * (view + 1)].reshape(8, 8)
            for r, c in zip(*np.nonzero(labels)):
                patch = data.views[name][row, 14 * r:14 * r + 14, 14 * c:14 * c + 14].astype(int)
                channel = dominant[int(labels[r, c])]
                others = np.delete(patch, channel, axis=2).max(axis=2)
                shown += (patch[..., channel] - others > 40).sum() >= 3
                checked += 1
    # The labels ignore occlusion (the fingers or the arm can hide a cube), so allow a few misses.
    assert checked > 20 and shown >= 0.85 * checked, (shown, checked)
    episode_targets = [1 + ["red", "green", "blue"].index(e["target"]) for e in data.meta["episodes"]]
    assert np.array_equal(data.target_class, np.array(episode_targets)[data.episode])
    assert np.abs(data.target_xy).max() <= 1.0


def test_normalisation_matches_inference_and_round_trips(small_dataset):
    _, path, _ = small_dataset
    data = SimDataset(path)
    stats = data.statistics
    action, proprio = stats["action"], stats["proprio"]
    assert action["mask"] == [True] * 6 + [False]  # gripper passes through, as in OFT
    assert np.all(np.array(action["q01"]) <= np.array(action["q99"]))
    assert stats["num_trajectories"] == 2 and stats["num_transitions"] == len(data)
    # The policy's normalize_proprio gives the same training inputs.
    for row in range(0, len(data), 9):
        np.testing.assert_allclose(data.normalized_proprio[row],
                                   normalize_proprio(data.proprio[row].astype(np.float64), proprio), atol=1e-6)
    assert np.abs(data.normalized_chunks).max() <= 1.0 + 1e-6
    # Within the q01..q99 band, un-normalising the labels gives the recorded targets back.
    chunks = data.chunks.reshape(-1, 7).astype(np.float64)
    inside = np.all((chunks >= action["q01"]) & (chunks <= action["q99"]), axis=1)
    assert inside.mean() > 0.8
    back = unnormalize_actions(data.normalized_chunks.reshape(-1, 7)[inside], action)
    np.testing.assert_allclose(back, chunks[inside], atol=1e-5)


def test_bounds_statistics_values_and_errors():
    values = np.stack([np.linspace(0, 1, 101), np.full(101, 2.0)], axis=1)
    stats = bounds_statistics(values, mask=[True, False])
    assert stats["q01"][0] == pytest.approx(0.01) and stats["q99"][0] == pytest.approx(0.99)
    assert stats["min"][0] == 0.0 and stats["max"][0] == 1.0 and stats["mask"] == [True, False]
    # The constant dimension gets the minimum band around its value instead of q01 == q99.
    assert stats["q01"][1] == pytest.approx(1.95) and stats["q99"][1] == pytest.approx(2.05)
    assert stats["min"][1] == pytest.approx(1.95) and stats["max"][1] == pytest.approx(2.05)
    normalized = normalize_bounds(np.array([[0.5, 7.0], [2.0, -1.0]]), stats)
    np.testing.assert_allclose(normalized, [[0.0, 7.0], [1.0, -1.0]], atol=1e-7)  # clipped; masked dim raw
    # IK round-off around 0 stays ~0 after normalisation (without the band it would become +-1).
    round_off = np.random.default_rng(0).normal(0, 1e-7, (500, 1))
    assert np.abs(normalize_bounds(round_off, bounds_statistics(round_off))).max() < 1e-4
    assert np.abs(normalize_bounds(round_off, bounds_statistics(round_off, min_span=0.0))).max() > 0.5
    with pytest.raises(ValueError, match="non-empty"):
        bounds_statistics(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="mask"):
        bounds_statistics(values, mask=[True])


def test_dataset_config_rejects_bad_values():
    with pytest.raises(ValueError, match="num_scenes"):
        DatasetConfig(num_scenes=0)
    with pytest.raises(ValueError, match="targets"):
        DatasetConfig(targets=("purple",))
    with pytest.raises(ValueError, match="image_size"):
        DatasetConfig(image_size=100)
    with pytest.raises(ValueError, match="task"):
        DatasetConfig(task="stack")
    with pytest.raises(ValueError, match="detour_steps"):
        DatasetConfig(detour_steps=(4, 2))


def test_batched_forward_equals_the_inference_forward(tiny_checkpoint):
    """forward_batch (training) computes, row by row, what forward (inference, unpruned) does."""
    policy = load_policy(tiny_checkpoint)
    model: OFTForActionPrediction = policy.model
    rng = np.random.default_rng(0)
    pixel_values, proprio = [], []
    for _ in range(3):
        views = {v: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for v in ("fixed", "wrist")}
        pixel_values.append(policy.image_processor(list(views.items())))
        proprio.append(torch.tensor(rng.uniform(-1, 1, 7), dtype=torch.float32))
    ids, _ = policy.prompt_builder("move the gripper above the green cube")
    with torch.no_grad():
        batched = model.forward_batch(torch.stack(pixel_values), ids[None].repeat(3, 1), policy.stop_token_id,
                                      torch.stack(proprio))
        for i in range(3):
            single = model(pixel_values[i], ids, policy.stop_token_id, proprio=proprio[i]).normalized_actions
            torch.testing.assert_close(batched[i], single, atol=2e-5, rtol=1e-4)
    assert batched.shape == (3, 8, 7)
    with torch.no_grad():
        details = model.forward_batch(torch.stack(pixel_values), ids[None].repeat(3, 1), policy.stop_token_id,
                                      torch.stack(proprio), return_details=True)
    torch.testing.assert_close(details["actions"], batched)
    assert details["visual"].shape == details["visual_hidden"].shape == (3, 512, 64)
    assert details["readout"].shape == (3, 56, 64)
    assert not torch.allclose(batched[0], batched[1])  # different inputs, different actions
    with pytest.raises(ValueError, match="pixel_values"):
        model.forward_batch(pixel_values[0], ids[None], policy.stop_token_id, proprio[0][None])
    with pytest.raises(ValueError, match="proprio"):
        model.forward_batch(torch.stack(pixel_values[:2]), ids[None].repeat(2, 1), policy.stop_token_id, None)


def test_learning_rate_schedule():
    config = TrainConfig(dataset="x.npz", out_dir="o", work_dir="w", steps=1000, warmup_steps=100,
                         learning_rate=1e-3, min_learning_rate_ratio=0.1)
    assert learning_rate_at(0, config) == pytest.approx(1e-5)
    assert learning_rate_at(99, config) == pytest.approx(1e-3)
    assert learning_rate_at(100, config) == pytest.approx(1e-3)
    assert learning_rate_at(550, config) == pytest.approx(0.55e-3)  # half way down the cosine
    assert learning_rate_at(1000, config) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="preset"):
        TrainConfig(dataset="x", out_dir="o", work_dir="w", preset="oft-7b")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(dataset="x", out_dir="o", work_dir="w", batch_size=0)


def test_train_writes_a_loadable_checkpoint_with_the_data_statistics_and_resumes(small_dataset, tmp_path):
    _, path, _ = small_dataset
    config = TrainConfig(dataset=str(path), out_dir=str(tmp_path / "ckpt"), work_dir=str(tmp_path / "work"),
                         steps=2, batch_size=4, warmup_steps=1, eval_every=1, save_every=1, eval_samples=4,
                         validation_fraction=0.0)
    summary = train(config, progress=False)
    assert summary["steps"] == 2
    out = tmp_path / "ckpt"
    statistics = json.loads((out / "dataset_statistics.json").read_text())
    assert list(statistics) == ["xarm6_sim_reach"]
    assert statistics["xarm6_sim_reach"]["action"] == SimDataset(path).statistics["action"]
    assert (tmp_path / "work" / "loss_curve.png").stat().st_size > 1000
    log = [json.loads(line) for line in (tmp_path / "work" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2]
    # The written weights are the trained ones (bf16-rounded), not a fresh initialisation.
    state = torch.load(tmp_path / "work" / "train_state.pt", weights_only=False)["model"]
    loaded = load_checkpoint(out).model.state_dict()
    name = "language_model.model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(loaded[name], state[name].to(torch.bfloat16).float())
    fresh = build_model("xarm6-sim", seed=0).state_dict()[name]
    assert not torch.equal(state[name], fresh)
    policy = load_policy(out)
    assert policy.view_names == ("fixed", "wrist") and policy.num_visual_tokens == 128
    # Resume: asking for 3 steps continues from step 2.
    more = train(TrainConfig(**{**config.__dict__, "steps": 3, "overwrite": True}), progress=False)
    assert more["steps"] == 3
    log = [json.loads(line) for line in (tmp_path / "work" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3]
    with pytest.raises(ValueError, match="not empty"):
        train(TrainConfig(**{**config.__dict__, "steps": 3}), progress=False)


def test_make_checkpoint_still_writes_what_it_did(tmp_path):
    """The writer was split (make_checkpoint -> save_checkpoint): random checkpoints are unchanged."""
    out = make_checkpoint("tiny", tmp_path / "a", seed=3)
    again = make_checkpoint("tiny", tmp_path / "b", seed=3)
    for name in ("config.json", "dataset_statistics.json", "vla_pruner_oft.json", "preprocessor_config.json"):
        assert (out / name).read_text() == (again / name).read_text()
    assert (out / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    sidecar = json.loads((out / "vla_pruner_oft.json").read_text())
    assert sidecar["preset"] == "tiny" and "view_names" not in sidecar


class _PlantedCode:
    """Unpickling this runs os.makedirs(marker): what a hostile train_state.pt could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return (os.makedirs, (self.marker,))


def test_a_planted_pickle_in_the_training_state_is_refused_not_run(tmp_path, capsys):
    """`vla-pruner train-sim --export-only --work-dir W` used to unpickle W/train_state.pt with
    weights_only=False, running whatever it held; now it refuses the file in one line."""
    from vla_pruner_ros.tools.cli import main
    from vla_pruner_ros.training.train import load_training_state

    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "code_ran"
    torch.save({"model": {}, "config": {"preset": "xarm6-sim", "dataset": "x"}, "step": 1,
                "payload": _PlantedCode(marker)}, work / "train_state.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(["train-sim", "--export-only", "--work-dir", str(work), "--out", str(tmp_path / "out")])
    message = str(exit_info.value.code)
    assert "train_state.pt" in message and "not loaded" in message and "\n" not in message
    assert not marker.exists() and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="not loaded"):
        load_training_state(work / "train_state.pt")
    assert not marker.exists()
    # A file that is plain data but not a training state is refused too.
    torch.save({"weights": torch.zeros(2)}, work / "other.pt")
    with pytest.raises(ValueError, match="not a train-sim training state"):
        load_training_state(work / "other.pt")


@pytest.fixture(scope="module")
def pregrasp_dataset(tmp_path_factory):
    config = DatasetConfig(num_scenes=1, first_seed=3, task="pregrasp", image_size=56, action_noise_max=0.01,
                           detour_probability=0.0, hover_steps=2, seed=2)
    path = tmp_path_factory.mktemp("pregrasp") / "pregrasp.npz"
    summary = build_dataset(config, path, progress=False)
    return config, path, summary


def test_pregrasp_dataset_follows_the_instruction_of_the_moment(pregrasp_dataset):
    """Instruction, named cube and label change at the episode's switch step: after it the label
    is the expert's chunk toward the newly named cube."""
    from vla_pruner_ros.sim import make_expert

    config, path, summary = pregrasp_dataset
    data = SimDataset(path)
    (meta,) = data.meta["episodes"]
    assert summary["expert_success"] == 1.0 and meta["switch_step"] is not None
    episode = make_episode(meta["seed"], "pregrasp")
    texts = [data.instructions[i] for i in data.instruction]
    switch = meta["switch_step"]
    assert set(texts[:switch]) == {episode.instruction} and set(texts[switch:]) == {episode.next_instruction}
    names = episode.scene.names
    assert {names[k] for k in data.target_cube[:switch]} == {episode.target}
    assert {names[k] for k in data.target_cube[switch:]} == {episode.next_target}
    expert = make_expert("pregrasp", control_period=config.control_period, max_joint_speed=config.max_joint_speed)
    for row in (switch - 1, switch, len(data) - 1):
        joints, gripper = data.proprio[row, :6].astype(np.float64), float(data.proprio[row, 6])
        expected = expert.action_chunk(episode.at(row), joints, gripper, config.chunk_length)
        np.testing.assert_allclose(data.chunks[row], expected, atol=2e-5)
    assert data.chunks[-1, -1, 6] == 1.0  # holding the grasp at the end
    # Probe labels: the named cube's patches are marked per sample, by cube (not by colour).
    assert data.patch_cubes.max() == 4 and data.patch_classes.max() <= 3
    assert np.array_equal(data.target_class, 1 + data.target_cube)


def test_yaw_probe_labels_are_the_fingers_error_to_the_named_cube(pregrasp_dataset, small_dataset):
    """Yaw probe labels (training only): (sin 4e, cos 4e) of the fingers' error to the named cube's
    nearest face; square (cos 4e = 1) once the expert holds the grasp, and absent on the reach task."""
    from vla_pruner_ros.sim import pregrasp as pg
    from vla_pruner_ros.sim.kinematics import XArm6Kinematics

    _, path, _ = pregrasp_dataset
    data = SimDataset(path)
    assert data.has_yaw.all() and data.target_yaw.shape == (len(data), 2)
    np.testing.assert_allclose(np.linalg.norm(data.target_yaw, axis=1), 1.0, atol=1e-5)
    episode = make_episode(data.meta["episodes"][0]["seed"], "pregrasp")
    kinematics = XArm6Kinematics()
    for row in (0, len(data) // 2, len(data) - 1):
        cube = episode.scene.cubes[data.target_cube[row]]
        error = pg.yaw_error(cube.yaw, pg.finger_yaw(kinematics, data.proprio[row, :6].astype(np.float64)))
        np.testing.assert_allclose(data.target_yaw[row], [np.sin(4 * error), np.cos(4 * error)], atol=1e-5)
    # Holding the grasp at the end: square within the task's tolerance; earlier samples are not all square.
    assert data.target_yaw[-1, 1] >= np.cos(4 * pg.GRASP_YAW_TOLERANCE)
    assert data.target_yaw[:, 1].min() < np.cos(4 * pg.GRASP_YAW_TOLERANCE)
    reach = SimDataset(small_dataset[1])
    assert not reach.has_yaw.any() and not reach.target_yaw.any()


def test_warm_start_copies_the_source_and_starts_new_layers_as_identities(tmp_path):
    from vla_pruner_ros.training.train import warm_start

    make_checkpoint("xarm6-sim", tmp_path / "src", seed=5)
    source = load_checkpoint(tmp_path / "src").model.state_dict()
    deep = build_model("xarm6-sim-deep", seed=0)
    counts = warm_start(deep, tmp_path / "src")
    assert counts["resampled"] == 2 and counts["identity_layers"] == 6
    dst = deep.state_dict()
    name = "language_model.model.layers.5.mlp.up_proj.weight"
    torch.testing.assert_close(dst[name], source[name])
    assert not torch.equal(dst[name], build_model("xarm6-sim-deep", seed=0).state_dict()[name])
    assert torch.count_nonzero(dst["language_model.model.layers.6.self_attn.o_proj.weight"]) == 0
    assert dst["vision_backbone.featurizer.pos_embed"].shape[1] == 144


def test_dagger_labels_the_policy_visited_states_with_the_expert_and_appends_them(pregrasp_dataset, tiny_checkpoint,
                                                                                  tmp_path):
    """DAgger: the policy drives (expert_probability 0), every visited state gets the expert's chunk
    of the instruction of the moment, and the samples are appended after the recorded ones."""
    from vla_pruner_ros.sim import make_expert
    from vla_pruner_ros.training.dagger import DaggerConfig, append_records, collect

    data_config, path, _ = pregrasp_dataset
    out = tmp_path / "merged.npz"
    config = DaggerConfig(checkpoint=str(tiny_checkpoint), dataset=str(path), out=str(out), episodes=1,
                          first_seed=41, expert_probability=0.0, max_steps=6, hover_steps=0)
    records, episodes = collect(config, progress=False)
    (record,) = records
    assert len(record.chunks) == 6 and episodes[0]["source"] == "dagger" and episodes[0]["seed"] == 41
    summary = append_records(path, records, episodes, out)
    before, merged = SimDataset(path), SimDataset(out)
    n = len(before)
    assert summary["samples"] == len(merged) == n + 6 and merged.num_episodes == before.num_episodes + 1
    np.testing.assert_array_equal(merged.views["wrist"][:n], before.views["wrist"])
    np.testing.assert_array_equal(merged.chunks[:n], before.chunks)
    assert np.all(merged.episode[n:] == before.num_episodes) and list(merged.step[n:]) == list(range(6))
    episode = make_episode(41, "pregrasp")
    expert = make_expert("pregrasp", control_period=data_config.control_period,
                         max_joint_speed=data_config.max_joint_speed)
    for row in range(n, n + 6):
        joints, gripper = merged.proprio[row, :6].astype(np.float64), float(merged.proprio[row, 6])
        np.testing.assert_allclose(merged.chunks[row], expert.action_chunk(episode, joints, gripper, 8), atol=2e-5)
        assert merged.instructions[merged.instruction[row]] == episode.instruction
    # The policy, not the expert, moved the arm: the visited joints leave the expert's path.
    reached = merged.proprio[n + 1, :6]
    assert np.abs(reached - merged.chunks[n, 0, :6]).max() > 1e-3
    with pytest.raises(ValueError, match="already in"):
        append_records(out, records, episodes, tmp_path / "again.npz")


def test_dagger_command_line_rolls_out_at_the_given_horizon(pregrasp_dataset, tiny_checkpoint, tmp_path, capsys):
    """`python -m vla_pruner_ros.training.dagger --actions-per-step N --max-steps M`: the roll-out
    follows N points per policy call (recorded with the round) for M steps, and a bad N is refused."""
    from vla_pruner_ros.training.dagger import main
    from vla_pruner_ros.training.dataset import read_meta

    _, path, _ = pregrasp_dataset
    out = tmp_path / "merged.npz"
    common = ["--checkpoint", str(tiny_checkpoint), "--dataset", str(path), "--out", str(out), "--episodes", "1",
              "--first-seed", "43", "--expert-probability", "0", "--max-steps", "5"]
    assert main(common + ["--actions-per-step", "3"]) == 0
    (round_,) = read_meta(out)["dagger_rounds"]
    assert round_["actions_per_step"] == 3 and round_["max_steps"] == 5 and round_["samples"] == 5
    assert len(SimDataset(out)) == len(SimDataset(path)) + 5
    with pytest.raises(SystemExit) as refused:
        main(common + ["--actions-per-step", "0", "--out", str(tmp_path / "bad.npz")])
    assert refused.value.code == 2 and "actions_per_step=0" in capsys.readouterr().err
    assert not (tmp_path / "bad.npz").exists()


def test_append_streams_the_stored_arrays_and_refuses_mismatched_samples_without_leaving_a_file(
        pregrasp_dataset, tmp_path):
    """append_records copies the stored arrays into the new file without loading them (a dataset can
    outgrow memory): every array equals the concatenation, in both storage modes; a record whose
    views have another size is refused and leaves neither the output nor its temporary file."""
    from vla_pruner_ros.training.dagger import append_records

    _, path, _ = pregrasp_dataset
    data = np.load(path)
    n = len(data["proprio"])
    record = EpisodeRecord(seed=990, target="left red", instruction="grasp the left red cube", success=True, num_steps=3,
                           action_noise=0.0, detour=0)
    for step in range(3):
        record.images["fixed"].append(np.full(data["fixed"].shape[1:], step, np.uint8))
        record.images["wrist"].append(np.full(data["wrist"].shape[1:], 10 + step, np.uint8))
        record.proprio.append(np.full(7, step, np.float32))
        record.chunks.append(np.full(data["chunks"].shape[1:], -step, np.float32))
        record.instructions.append("grasp the left red cube")
        record.targets.append(1)
    episode = {"seed": 990, "success": True, "source": "test"}
    for compress in (False, True):
        out = tmp_path / f"streamed_{compress}.npz"
        summary = append_records(path, [record], [episode], out, compress=compress)
        merged = np.load(out)
        assert summary["samples"] == n + 3 and set(merged.files) == set(data.files)
        for name in ("fixed", "wrist", "proprio", "chunks", "step", "target"):
            assert merged[name].dtype == data[name].dtype
            np.testing.assert_array_equal(merged[name][:n], data[name])
        np.testing.assert_array_equal(merged["wrist"][n:], np.stack(record.images["wrist"]))
        np.testing.assert_array_equal(merged["chunks"][n:], np.stack(record.chunks))
        assert list(merged["episode"][n:]) == [len(read_meta(path)["episodes"])] * 3
        assert read_meta(out)["episodes"][-1]["seed"] == 990
    bad = EpisodeRecord(seed=991, target="left red", instruction="grasp the left red cube", success=False, num_steps=1,
                        action_noise=0.0, detour=0)
    bad.images["fixed"].append(np.zeros((8, 8, 3), np.uint8))
    bad.images["wrist"].append(np.zeros((8, 8, 3), np.uint8))
    bad.proprio.append(np.zeros(7, np.float32))
    bad.chunks.append(np.zeros(data["chunks"].shape[1:], np.float32))
    bad.instructions.append("grasp the left red cube")
    bad.targets.append(0)
    with pytest.raises(ValueError, match="new samples have shape"):
        append_records(path, [bad], [{"seed": 991, "success": False}], tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists() and not (tmp_path / "bad.npz.tmp.npz").exists()


def test_relabel_gives_every_stored_state_the_current_experts_chunk(pregrasp_dataset, tmp_path):
    """Relabelling with the expert that recorded the dataset reproduces its chunks (the episode and
    named cube of every sample are found again); another expert changes only the chunks."""
    from vla_pruner_ros.sim.pregrasp import PregraspExpert
    from vla_pruner_ros.training.dagger import relabel

    data_config, path, _ = pregrasp_dataset
    same = relabel(path, tmp_path / "same.npz", compress=False)
    before, again = SimDataset(path), SimDataset(same["path"])
    np.testing.assert_allclose(again.chunks, before.chunks, atol=2e-5)
    assert same["mean_joint_change"] < 1e-5 and same["mean_gripper_change"] == 0.0
    deeper = PregraspExpert(control_period=data_config.control_period, max_joint_speed=data_config.max_joint_speed,
                            grasp_depth=0.03)
    other = SimDataset(relabel(path, tmp_path / "deeper.npz", expert=deeper)["path"])
    np.testing.assert_array_equal(other.views["wrist"], before.views["wrist"])
    np.testing.assert_array_equal(other.proprio, before.proprio)
    assert np.abs(other.chunks[..., :6] - before.chunks[..., :6]).max() > 1e-3
    assert other.meta["relabelled"][-1]["samples"] == len(before)


def test_warm_start_from_the_same_task_keeps_the_source_normalisation(pregrasp_dataset, tmp_path):
    from vla_pruner_ros.training.train import inherited_statistics

    _, path, _ = pregrasp_dataset
    source = {"action": {"q01": [0.0] * 7, "q99": [1.0] * 7}, "proprio": {"q01": [0.0] * 7, "q99": [1.0] * 7}}
    (tmp_path / "same").mkdir()
    (tmp_path / "same" / "dataset_statistics.json").write_text(json.dumps({"xarm6_sim_pregrasp": source}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "dataset_statistics.json").write_text(json.dumps({"xarm6_sim_reach": source}))
    assert inherited_statistics(tmp_path / "same", path) == source
    assert inherited_statistics(tmp_path / "other", path) is None and inherited_statistics(None, path) is None


def test_yaw_probe_loss_counts_only_the_samples_that_have_a_yaw_label():
    from vla_pruner_ros.training.train import TrainingProbes

    torch.manual_seed(0)
    probes = TrainingProbes(width=8)
    batch_size, tokens = 3, 4
    details = {"visual": torch.randn(batch_size, tokens, 8), "visual_hidden": torch.randn(batch_size, tokens, 8),
               "readout": torch.randn(batch_size, 5, 8)}
    batch = {"patch_classes": torch.zeros(batch_size, tokens, dtype=torch.int8),
             "patch_cubes": torch.zeros(batch_size, tokens, dtype=torch.int8),
             "target_class": torch.ones(batch_size, dtype=torch.int8), "target_xy": torch.zeros(batch_size, 2),
             "target_yaw": torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0]]),
             "has_yaw": torch.tensor([True, False, True])}
    got = probes.losses(details, batch)
    predicted = probes.yaw(details["readout"].mean(dim=1))
    expected = (predicted - batch["target_yaw"]).abs().sum(dim=1)[[0, 2]].mean()
    torch.testing.assert_close(got["yaw"], expected)
    # the wrist probe reads only the named cube's wrist patch: token 3 of sample 0 (tokens 2-3 are
    # the wrist view); sample 2's named cube shows only in the fixed view, sample 1 has no label
    assert "wrist_yaw" not in got
    batch["patch_cubes"] = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 1], [1, 0, 0, 0]], dtype=torch.int8)
    got = probes.losses(details, batch)
    expected = (probes.wrist_yaw(details["visual"][0, 3]) - batch["target_yaw"][0]).abs().sum()
    torch.testing.assert_close(got["wrist_yaw"], expected)
    batch["has_yaw"] = torch.zeros(batch_size, dtype=torch.bool)  # the reach task: no yaw term at all
    assert "yaw" not in probes.losses(details, batch)


def test_wrist_yaw_pretraining_trains_the_towers_on_near_cube_samples(small_dataset, tmp_path):
    """train-sim's optional first phase (pregrasp): the vision towers alone learn the wrist-view yaw
    on the near-cube samples, then the policy trains as usual; its summary is kept."""
    from vla_pruner_ros.training.near_states import NearStatesConfig, collect
    from vla_pruner_ros.training.dagger import append_records
    from vla_pruner_ros.training.train import near_cube_samples

    base = tmp_path / "base.npz"
    build_dataset(DatasetConfig(num_scenes=1, first_seed=9, task="pregrasp", image_size=112, hover_steps=0,
                                detour_probability=0.0, seed=3), base, progress=False)
    records, episodes = collect(NearStatesConfig(dataset=str(base), out="", scenes=1, per_scene=24), progress=False)
    path = tmp_path / "near.npz"
    append_records(base, records, episodes, path, compress=False)
    data = SimDataset(path)
    near = near_cube_samples(data, np.arange(len(data)))
    assert set(np.flatnonzero(data.episode == 1)) <= set(near.tolist()) and len(near) < len(data)
    config = TrainConfig(dataset=str(path), out_dir=str(tmp_path / "ckpt"), work_dir=str(tmp_path / "work"),
                         steps=1, batch_size=2, warmup_steps=0, eval_every=1, save_every=1, eval_samples=2,
                         validation_fraction=0.0, yaw_pretrain_steps=40, yaw_pretrain_batch=8)
    summary = train(config, progress=False)
    pretrain = summary["yaw_pretrain"]
    assert pretrain["steps"] == 40 and pretrain["train_samples"] == len(near)
    assert pretrain["final_mse"] < pretrain["first_mse"]
    # the towers moved: they are not the fresh initialisation the policy started from
    trained = load_checkpoint(tmp_path / "ckpt").model.state_dict()
    fresh = build_model("xarm6-sim", seed=0).state_dict()
    name = next(n for n in fresh if n.startswith("vision_backbone") and n.endswith("weight") and fresh[n].ndim == 2)
    assert not torch.allclose(trained[name], fresh[name].to(torch.bfloat16).float())
    with pytest.raises(ValueError, match="no near-cube samples"):
        train(TrainConfig(**{**config.__dict__, "dataset": str(small_dataset[1]), "work_dir": str(tmp_path / "w2"),
                             "out_dir": str(tmp_path / "c2")}), progress=False)


def test_uncompressed_views_are_mapped_from_the_file_not_loaded(small_dataset, tmp_path):
    """A dataset stored without compression (dagger --no-compress) gives its views as read-only memory
    maps of the file, equal to what np.load reads; compressed members are loaded as before, and the
    training dataset holds the same pixels either way."""
    _, path, _ = small_dataset
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    stored = tmp_path / "stored.npz"
    np.savez(stored, **arrays)
    for name, array in arrays.items():
        mapped = stored_npz_array(stored, name)
        assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
        assert mapped.dtype == array.dtype
        np.testing.assert_array_equal(mapped, array)
        assert stored_npz_array(path, name) is None  # build_dataset compresses
    with pytest.raises(KeyError, match="no array 'depth'"):
        stored_npz_array(stored, "depth")
    fortran = tmp_path / "fortran.npz"
    np.savez(fortran, grid=np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4)))
    np.testing.assert_array_equal(stored_npz_array(fortran, "grid"), np.arange(12).reshape(3, 4))
    mapped_data, loaded_data = SimDataset(stored), SimDataset(path)
    for view in ("fixed", "wrist"):
        assert isinstance(mapped_data.views[view], np.memmap)
        assert not isinstance(loaded_data.views[view], np.memmap)
        indices = np.array([0, len(loaded_data) - 1, 3])
        np.testing.assert_array_equal(mapped_data.views[view][indices], loaded_data.views[view][indices])
    np.testing.assert_array_equal(mapped_data.normalized_chunks, loaded_data.normalized_chunks)
