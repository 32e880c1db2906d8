"""The long-horizon "pregrasp" sim task: look-alike cubes, a yaw-aligned grasp pose, an instruction
that changes mid-episode, and its scripted expert."""
import dataclasses

import numpy as np
import pytest

from vla_pruner_ros.sim import SimEnv, make_episode, make_expert, run_expert_episode
from vla_pruner_ros.sim import pregrasp
from vla_pruner_ros.sim.pregrasp import PregraspScene, grasp_state, grasped
from vla_pruner_ros.sim.task import MAX_STEPS, TASKS, episode_success, success
from vla_pruner_ros.training.dataset import policy_view


def _drive(env, episode, expert, until, limit=200):
    """Step the expert for ``episode`` (ignoring SimEnv's own end) until ``until(env)``."""
    for _ in range(limit):
        if until(env):
            return True
        env.step(expert.next_action(episode, env.arm.joints, env.arm.gripper))
        env.done = False
    return until(env)


def test_scene_has_two_cubes_per_colour_told_apart_only_by_side():
    for seed in range(20):
        scene = PregraspScene(seed)
        assert len(scene.cubes) == 4 and len(set(scene.names)) == 4
        colours = [c.colour for c in scene.cubes]
        assert sorted(set(colours.count(c) for c in colours)) == [2]
        for colour in set(colours):
            left, right = scene.cube(f"left {colour}"), scene.cube(f"right {colour}")
            assert left.rgb == right.rgb and left.size == right.size
            assert left.position[1] - right.position[1] >= pregrasp.MIN_PAIR_SEPARATION
        xy = np.array([c.position[:2] for c in scene.cubes])
        assert min(np.linalg.norm(xy[i] - xy[j]) for i in range(4) for j in range(i)) >= 0.10
    assert PregraspScene(3).names == PregraspScene(3).names  # seeded
    with pytest.raises(ValueError, match="no 'left purple'"):
        PregraspScene(0).cube("left purple")


def test_the_instruction_changes_mid_episode_and_only_the_last_named_cube_counts():
    episode = make_episode(4, "pregrasp")
    assert episode.task == "pregrasp" and episode.next_target != episode.target
    low, high = pregrasp.SWITCH_STEPS
    assert low <= episode.switch_step <= high < MAX_STEPS["pregrasp"]
    assert episode.instruction == TASKS["pregrasp"].format(colour=episode.target) == \
        f"grasp the {episode.target} cube"
    env = SimEnv(image_size=None, task="pregrasp")
    obs = env.reset(seed=4)
    assert obs["instruction"] == episode.instruction
    # Grasp the first named cube before the change: that is not a success, and after the change
    # the observation names the other cube while the arm still holds the first one.
    expert = make_expert("pregrasp", env.kinematics, max_joint_speed=1.0)
    first = episode._replace(switch_step=None)
    cube = episode.scene.cube(episode.target)
    assert _drive(env, first, expert, lambda e: grasped(e.kinematics, e.arm.joints, e.arm.gripper, cube))
    assert env.step_count < episode.switch_step
    assert not episode_success(env.episode, env.kinematics, env.arm.joints, env.arm.gripper, env.step_count)
    _drive(env, first, expert, lambda e: e.step_count >= episode.switch_step)
    obs = env.observation()
    assert obs["instruction"] == episode.next_instruction != episode.instruction
    assert grasped(env.kinematics, env.arm.joints, env.arm.gripper, cube)
    assert not episode_success(env.episode, env.kinematics, env.arm.joints, env.arm.gripper, env.step_count)
    _, reached, _, info = env.step(np.concatenate([env.arm.joints, [1.0]]))
    assert not reached and info["target"] == episode.next_target
    with pytest.raises(ValueError, match="episode_success"):
        success(np.zeros(3), episode.scene, episode.target, "pregrasp")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expert_solves_the_task_after_the_switch(seed):
    env = SimEnv(image_size=None, task="pregrasp")
    result = run_expert_episode(env, seed=seed, chunk_size=2)
    episode = env.episode
    assert result["success"] and result["num_steps"] > episode.switch_step
    final = grasp_state(env.kinematics, env.arm.joints, episode.scene.cube(episode.next_target))
    assert final["horizontal"] <= pregrasp.GRASP_RADIUS and abs(final["yaw_error"]) <= pregrasp.GRASP_YAW_TOLERANCE
    # Long horizon: tens of control steps, i.e. many policy calls at 4 executed actions per call.
    assert result["num_steps"] >= 40


def test_the_grasp_needs_the_cube_yaw():
    """An expert that believes every cube is turned 45 degrees from where it is never succeeds."""
    env = SimEnv(image_size=None, task="pregrasp")
    expert = make_expert("pregrasp", env.kinematics, max_joint_speed=1.0)
    env.reset(seed=1)
    episode = env.episode
    wrong = PregraspScene(1)
    wrong.cubes = tuple(dataclasses.replace(c, yaw=c.yaw + np.pi / 4) for c in wrong.cubes)
    believed = episode._replace(scene=wrong)
    reached = False
    while not env.done:
        _, reached, _, info = env.step(expert.next_action(believed.at(env.step_count), env.arm.joints,
                                                          env.arm.gripper))
    assert not reached and abs(info["yaw_error"]) > pregrasp.GRASP_YAW_TOLERANCE


def test_the_yaw_detail_is_seen_in_the_wrist_view_not_the_fixed_view():
    """Turning the target cube by the success tolerance (8 deg) changes a handful of pixels of the
    policy's fixed view but many of its wrist view, once the gripper is above the cube."""
    env = SimEnv(image_size=(224, 224), task="pregrasp")
    expert = make_expert("pregrasp", env.kinematics, max_joint_speed=1.0)
    env.reset(seed=0)
    episode = env.episode._replace(switch_step=None)
    cube = episode.scene.cube(episode.target)
    assert _drive(env, episode, expert,
                  lambda e: grasp_state(e.kinematics, e.arm.joints, cube)["horizontal"] < 0.01)
    frames = env.kinematics.forward_kinematics(env.arm.joints)
    turned = PregraspScene(0)
    turned.cubes = tuple(dataclasses.replace(c, yaw=c.yaw + pregrasp.GRASP_YAW_TOLERANCE) if c is not None
                         and c.colour == cube.colour and np.allclose(c.position, cube.position) else c
                         for c in turned.cubes)
    before = env.renderer.render_views(episode.scene, frames, env.arm.gripper)
    after = env.renderer.render_views(turned, frames, env.arm.gripper)
    changed = {}
    for view in ("fixed", "wrist"):
        a, b = (policy_view(x[view], 168).astype(int) for x in (before, after))
        changed[view] = int((np.abs(a - b).max(-1) > 30).sum())
    assert changed["fixed"] < 25 and changed["wrist"] > 5 * max(1, changed["fixed"]), changed


def test_every_pruning_method_survives_the_mid_episode_instruction_change(tmp_path):
    """The policy resets its pruner when the instruction changes (what this task does mid-episode):
    every method must accept that reset (RandomPruning.reset once did not take its reason)."""
    from vla_pruner_ros.model import load_policy, make_checkpoint
    from vla_pruner_ros.pruning import METHODS, PrunerConfig

    make_checkpoint("tiny", tmp_path / "tiny", seed=0)
    policy = load_policy(tmp_path / "tiny")
    env = SimEnv(task="pregrasp")
    obs = env.reset(seed=0)
    episode = env.episode
    for method in (m for m in METHODS if m != "none"):
        policy.set_pruner(PrunerConfig(method=method, keep_ratio=0.25, prune_layer=2, window=1))
        policy.reset()
        for instruction in (episode.instruction, episode.instruction, episode.next_instruction):
            out = policy.predict(images=obs["images"], proprio=obs["proprio"], instruction=instruction)
            assert np.all(np.isfinite(out.actions)), method


def test_expert_labels_are_continuous_where_the_old_gates_jumped():
    """The expert's labels have no threshold a policy of ~1 cm / few-degree precision would average
    across: the turn vanishes (not flips) at +-45 deg where the nearest face changes, the target height
    sinks continuously as the TCP centres and squares up, and a started closure is kept."""
    expert = make_expert("pregrasp", max_joint_speed=1.0)
    quarter = np.pi / 4
    assert abs(expert.yaw_turn(0.0, quarter - 1e-4)) < 1e-3 and abs(expert.yaw_turn(0.0, -quarter)) < 1e-3
    assert expert.yaw_turn(0.0, np.deg2rad(3.0)) == pytest.approx(np.deg2rad(3.0), rel=0.02)
    assert expert.yaw_turn(0.0, np.deg2rad(30.0)) == pytest.approx(expert.yaw_speed * expert.control_period)
    assert expert.yaw_turn(2 * expert.align_radius, np.deg2rad(30.0)) == 0.0  # read from the wrist view
    cube = PregraspScene(0).cubes[0]
    heights = [expert.goal_height(h, np.deg2rad(y), cube) for h, y in
               [(0.0, 0.0), (0.005, 0.0), (0.010, 0.0), (0.010, 4.0), (0.010, 8.0), (0.02, 8.0), (0.3, 45.0)]]
    assert np.all(np.diff(heights) > 0) and max(np.diff(heights)) < 0.20
    assert heights[0] == pytest.approx(cube.top - expert.grasp_depth)
    assert max(abs(expert.goal_height(0.0100, 0.0, cube) - expert.goal_height(0.0101, 0.0, cube)),
               abs(expert.goal_height(0.0, 0.0500, cube) - expert.goal_height(0.0, 0.0501, cube))) < 1e-3
    # Inside the success tolerances but outside the closing cone: closes only if already closing.
    state = {"horizontal": 0.010, "height": 0.0, "yaw_error": np.deg2rad(6.0)}
    assert expert.gripper_command(state, 0.0) == 0.0 and expert.gripper_command(state, 0.4) == 1.0
    assert expert.gripper_command(dict(state, horizontal=0.02), 0.4) == 0.0
    assert expert.gripper_command({"horizontal": 0.004, "height": -0.005, "yaw_error": 0.01}, 0.0) == 1.0
