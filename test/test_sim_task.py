"""Tasks, success test, scripted expert and SimEnv."""
import numpy as np
import pytest

from vla_pruner_ros.sim.env import SimEnv, run_expert_episode
from vla_pruner_ros.sim.kinematics import HOME_JOINTS, XArm6Kinematics
from vla_pruner_ros.sim.scene import CUBE_REGION, Scene
from vla_pruner_ros.sim.task import MAX_STEPS, SUCCESS_REGIONS, TASKS, ScriptedExpert, make_episode, success

KIN = XArm6Kinematics()


@pytest.mark.parametrize("task, episodes", [("above", 30), ("touch", 15)])
def test_expert_always_succeeds_within_the_step_limit(task, episodes):
    env = SimEnv(seed=123, image_size=None, task=task)
    results = [run_expert_episode(env) for _ in range(episodes)]
    assert all(r["success"] for r in results), [r["seed"] for r in results if not r["success"]]
    lengths = np.array([r["num_steps"] for r in results])
    assert lengths.max() < MAX_STEPS[task]
    assert len({r["seed"] for r in results}) == episodes  # distinct episodes, not one repeated


def test_expert_motion_is_smooth_and_within_the_velocity_limit():
    env = SimEnv(seed=4, image_size=None)
    expert = ScriptedExpert(env.kinematics, control_period=env.control_period)
    result = run_expert_episode(env, expert=expert)
    actions = result["actions"]
    start = np.array(result["observations"][0]["joints"], dtype=np.float64)
    steps = np.diff(np.vstack([start, actions[:, :6]]), axis=0)
    assert np.all(np.abs(steps) <= expert.max_joint_speed * env.control_period + 1e-6)
    assert expert.max_joint_speed < env.kinematics.velocity_limits.min()
    # The arm actually reached every target (each is reachable within one period).
    np.testing.assert_allclose(env.arm.joints, actions[-1, :6], atol=1e-9)
    # The TCP never moves faster than the Cartesian speed limit (plus the IK's tolerance).
    tcp = KIN.tcp_pose(np.vstack([start, actions[:, :6]]))[:, :3, 3]
    assert np.all(np.linalg.norm(np.diff(tcp, axis=0), axis=1) <= expert.max_speed * env.control_period + 2e-3)


def test_expert_approaches_from_above():
    env = SimEnv(seed=9, image_size=None, task="touch")
    result = run_expert_episode(env)
    episode = env.episode
    cube = episode.scene.cube(episode.target)
    tcp = KIN.tcp_pose(result["actions"][:, :6])[:, :3, 3]
    horizontal = np.linalg.norm(tcp[:, :2] - cube.position[:2], axis=1)
    height = tcp[:, 2] - cube.top
    # Whenever the TCP is within 4 cm of the cube's top face it is already nearly centred over it.
    low = height < 0.04
    assert low.any() and np.all(horizontal[low] < 0.03)
    assert result["actions"][-1, 6] == 1.0  # fingers closed to touch


def test_action_chunk_rolls_the_expert_forward():
    episode = make_episode(2)
    expert = ScriptedExpert()
    joints = HOME_JOINTS + 0.05
    chunk = expert.action_chunk(episode, joints, 0.0, chunk_size=8)
    assert chunk.shape == (8, 7)
    np.testing.assert_allclose(chunk[0], expert.next_action(episode, joints, 0.0))
    for i in range(7):
        np.testing.assert_allclose(chunk[i + 1], expert.next_action(episode, chunk[i, :6], chunk[i, 6]))
    with pytest.raises(ValueError, match="chunk_size"):
        expert.action_chunk(episode, joints, 0.0, chunk_size=0)


def test_recorded_episode_for_datasets():
    env = SimEnv(seed=1, image_size=(64, 80))
    result = run_expert_episode(env, seed=77, target="green", chunk_size=5)
    steps = result["num_steps"]
    assert result["seed"] == 77 and result["target"] == "green" and "green cube" in result["instruction"]
    assert result["actions"].shape == (steps, 7) and result["action_chunks"].shape == (steps, 5, 7)
    np.testing.assert_allclose(result["action_chunks"][:, 0], result["actions"])
    assert len(result["observations"]) == steps
    obs = result["observations"][0]
    assert obs["images"]["fixed"].shape == (64, 80, 3) and obs["images"]["wrist"].dtype == np.uint8
    # Re-recording the same seed gives the same data.
    again = run_expert_episode(env, seed=77, target="green", chunk_size=5)
    np.testing.assert_array_equal(again["actions"], result["actions"])
    last_wrist = [r["observations"][-1]["images"]["wrist"] for r in (again, result)]
    np.testing.assert_array_equal(*last_wrist)


def test_success_region_geometry():
    scene = Scene(0)
    cube = scene.cube("blue")
    x, y, top = cube.position[0], cube.position[1], cube.top
    above = SUCCESS_REGIONS["above"]
    assert success([x, y, top + 0.06], scene, "blue")
    assert success([x + 0.02, y, top + 0.06], scene, "blue")
    assert not success([x + 0.03, y, top + 0.06], scene, "blue")       # too far sideways
    assert not success([x, y + 0.02, top + 0.02], scene, "blue")        # too low
    assert not success([x, y, top + 0.11], scene, "blue")               # too high
    assert success([x, y, top + above.max_height - 1e-6], scene, "blue")
    assert not success([x, y, top + 0.06], scene, "red")  # cubes are >= 10 cm apart
    assert success([x, y, top + 0.005], scene, "blue", task="touch")
    assert not success([x, y, top + 0.06], scene, "blue", task="touch")
    assert not success([x, y, top - 0.02], scene, "blue", task="touch")
    with pytest.raises(ValueError, match="task"):
        success([x, y, top], scene, "blue", task="grasp")
    with pytest.raises(ValueError, match="tcp_position"):
        success([x, y], scene, "blue")
    with pytest.raises(ValueError, match="no 'yellow' cube"):
        success([x, y, top], scene, "yellow")


def test_instructions_name_the_target_and_different_targets_differ():
    episodes = {colour: make_episode(3, target=colour) for colour in ("red", "green", "blue")}
    instructions = {e.instruction for e in episodes.values()}
    assert len(instructions) == 3
    for colour, episode in episodes.items():
        assert episode.instruction == f"move the gripper above the {colour} cube"
        assert episode.target == colour
    expert = ScriptedExpert()
    goals = [expert.goal(e) for e in episodes.values()]
    assert min(np.linalg.norm(a[:2] - b[:2]) for i, a in enumerate(goals) for b in goals[i + 1:]) >= 0.1
    assert make_episode(3, task="touch", target="red").instruction.endswith("red cube then touch it")
    # Targets drawn from the seed: deterministic per seed, all colours occur.
    first, second = make_episode(11), make_episode(11)
    assert first[1:] == second[1:]
    np.testing.assert_array_equal(first.scene.cube("red").position, second.scene.cube("red").position)
    assert {make_episode(seed).target for seed in range(30)} == {"red", "green", "blue"}
    with pytest.raises(ValueError, match="target"):
        make_episode(3, target="purple")
    with pytest.raises(ValueError, match="task"):
        make_episode(3, task="stack")
    assert set(TASKS) == {"above", "touch", "above_switch", "pregrasp"}  # pregrasp: test_sim_pregrasp.py


def test_cubes_are_seeded_separate_and_inside_the_region():
    x_min, x_max, y_min, y_max = CUBE_REGION
    layouts = set()
    for seed in range(100):
        scene = Scene(seed)
        centres = np.array([cube.position for cube in scene.cubes])
        assert [cube.colour for cube in scene.cubes] == ["red", "green", "blue"]
        assert np.all((centres[:, 0] >= x_min) & (centres[:, 0] <= x_max))
        assert np.all((centres[:, 1] >= y_min) & (centres[:, 1] <= y_max))
        np.testing.assert_allclose(centres[:, 2], scene.cube_size / 2)
        gaps = [np.linalg.norm(a[:2] - b[:2]) for i, a in enumerate(centres) for b in centres[i + 1:]]
        assert min(gaps) >= 0.10
        layouts.add(tuple(np.round(centres[:, :2].ravel(), 6)))
    assert len(layouts) == 100
    np.testing.assert_array_equal(Scene(5).cubes[0].position, Scene(5).cubes[0].position)


def test_env_reset_and_step_interface():
    env = SimEnv(seed=0, image_size=(48, 64))
    obs = env.reset(seed=3, target="red")
    assert obs["instruction"] == "move the gripper above the red cube"
    assert obs["joints"].shape == (6,) and obs["proprio"].shape == (7,)
    np.testing.assert_allclose(obs["proprio"][:6], obs["joints"])
    assert obs["proprio"][6] == obs["gripper"] == 0.0
    assert set(obs["images"]) == {"fixed", "wrist"} and obs["images"]["fixed"].shape == (48, 64, 3)
    target = env.arm.joints + np.array([0.1, -0.1, 0.05, 0.0, 0.1, -0.2])
    obs, reached, done, info = env.step(np.concatenate([target, [1.0]]))
    np.testing.assert_allclose(obs["joints"], target, atol=1e-6)  # within the limit: reached in one period
    assert obs["gripper"] == pytest.approx(0.2)                     # gripper: 2 strokes/s for 0.1 s
    assert not reached and not done and info["step"] == 1 and info["target"] == "red"
    for bad, message in (([0.0] * 6, "shape"), ([0.0] * 6 + [np.nan], "finite")):
        with pytest.raises(ValueError, match=message):
            env.step(bad)


def test_env_times_out_when_holding_still_and_needs_reset():
    env = SimEnv(seed=0, image_size=None, max_steps=5)
    env.reset(seed=8)
    hold = np.concatenate([env.arm.joints, [0.0]])
    for step in range(1, 6):
        _, reached, done, info = env.step(hold)
        assert not reached and done == (step == 5)
    assert info["timeout"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(hold)
    env.reset()
    assert env.step_count == 0 and not env.done


def test_env_start_state_is_seeded():
    env = SimEnv(seed=0, image_size=None)
    a = env.reset(seed=21)["joints"]
    b = env.reset(seed=21)["joints"]
    c = env.reset(seed=22)["joints"]
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3 and np.abs(a - HOME_JOINTS).max() <= env.init_joint_noise + 1e-6
    first = [SimEnv(seed=5, image_size=None).episode_seed for _ in range(2)]
    assert first[0] == first[1]


def test_above_switch_changes_the_named_cube_on_the_way_and_only_the_last_one_counts():
    """The reach task with the paper's Remark 1 shift: same scene and first cube as "above" of the
    seed, another cube named at a seeded step 8-16; reaching the first cube before the change, or
    staying on it after, is not success."""
    from vla_pruner_ros.sim.task import REACH_SWITCH_STEPS, episode_success

    switches = set()
    for seed in range(40):
        episode, plain = make_episode(seed, "above_switch"), make_episode(seed, "above")
        assert episode.target == plain.target and episode.instruction == plain.instruction
        assert [c.position.tolist() for c in episode.scene.cubes] == [c.position.tolist() for c in plain.scene.cubes]
        assert episode.next_target != episode.target
        assert episode.at(episode.switch_step).instruction == f"move the gripper above the {episode.next_target} cube"
        assert REACH_SWITCH_STEPS[0] <= episode.switch_step <= REACH_SWITCH_STEPS[1]
        switches.add(episode.switch_step)
    assert len(switches) > 4
    episode = make_episode(3, "above_switch")
    kinematics = XArm6Kinematics()
    expert = ScriptedExpert(kinematics)
    # hover over the first cube: success before the change? no. after? no (it names another cube now).
    q = np.array(HOME_JOINTS, dtype=float)
    for _ in range(60):
        q = expert.next_action(episode, q)[:6]
    assert success(kinematics.tcp_pose(q)[:3, 3], episode.scene, episode.target, "above_switch")
    assert not episode_success(episode, kinematics, q, 0.0, episode.switch_step - 1)
    assert not episode_success(episode, kinematics, q, 0.0, episode.switch_step)
    # the expert follows the change (eval-sim's env), within the step limit
    env = SimEnv(image_size=None, task="above_switch")
    runs = [run_expert_episode(env, seed=seed) for seed in range(10)]
    assert all(run["success"] for run in runs)
    assert all(len(run["actions"]) > episode.switch_step for run, episode in
               zip(runs, [make_episode(s, "above_switch") for s in range(10)]))
