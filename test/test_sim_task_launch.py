"""The hardware-free system on the "pregrasp" sim task (launch argument sim_task, `vla-pruner demo
--task`): what the launch plans, the scene the simulated cameras render, and how the demo judges a
grasp. The "above" task's plan and console are tested in test_launch_logic.py and test_demo.py."""
import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from vla_pruner_ros.control import launch_logic
from vla_pruner_ros.control.launch_logic import (DEFAULT_SIM_TASK, LAUNCH_ARGUMENTS, SIM_TASKS, LaunchRefused,
                                                 node_parameters, plan_launch, pruning_in)
from vla_pruner_ros.sim import pregrasp
from vla_pruner_ros.sim.kinematics import HOME_JOINTS, XArm6Kinematics
from vla_pruner_ros.sim.pregrasp import PregraspScene, down_rotation, draw_episode
from vla_pruner_ros.sim.robot import GRIPPER_CLOSED_ANGLE, GRIPPER_JOINT_NAME
from vla_pruner_ros.tools.demo_target import TargetTracker, judge, named_cube, step_text, summary_line

ROOT = Path(__file__).resolve().parents[1]
KINEMATICS = XArm6Kinematics()


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A package data directory (config/ of this checkout) that is the only place the launch looks
    for checkpoints, so the tests do not depend on which policies this checkout ships."""
    root = tmp_path / "share"
    shutil.copytree(ROOT / "config", root / "config")
    (root / "config" / "sim_pregrasp.yaml").unlink(missing_ok=True)
    monkeypatch.setattr(launch_logic, "data_roots", lambda: [root])
    return root


def _ship(root: Path, relative: str, checkpoint: Path) -> Path:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(checkpoint, target_is_directory=True)
    return target


# --- the launch plan ---------------------------------------------------------------------------


def test_sim_task_is_a_launch_argument_and_an_unknown_task_is_refused():
    assert SIM_TASKS == ("above", "pregrasp") and LAUNCH_ARGUMENTS["sim_task"][0] == DEFAULT_SIM_TASK == "above"
    with pytest.raises(LaunchRefused, match=r"sim_task must be one of above, pregrasp, got 'grasp'"):
        plan_launch({"sim_task": "grasp", "checkpoint": "/any"})
    # The default task is "above": the cameras render its scene.
    cameras = plan_launch({"checkpoint": "/any"}).nodes[2]
    assert cameras.executable == "sim_cameras" and cameras.parameters == [{"scene_seed": 0, "task": "above"}]


def test_pregrasp_without_its_shipped_policy_is_refused_not_run_with_the_reach_policy(data_root, tiny_checkpoint):
    # The reach policy and the tiny checkpoint are there: "above" runs the reach policy ...
    reach = _ship(data_root, "checkpoints/xarm6_sim_reach", tiny_checkpoint)
    _ship(data_root, "artifacts/checkpoints/tiny", tiny_checkpoint)
    assert plan_launch({}).nodes[0].parameters[-1]["checkpoint"] == str(reach)
    # ... but "pregrasp" is refused, in one line that says what to do.
    with pytest.raises(LaunchRefused) as refused:
        plan_launch({"sim_task": "pregrasp"})
    message = str(refused.value)
    assert "\n" not in message and "pass checkpoint:=" in message
    assert str(data_root / "checkpoints" / "xarm6_sim_pregrasp") in message
    # The demo says the same and starts nothing.
    from vla_pruner_ros.tools.demo import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--task", "pregrasp"])) == 2


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_pregrasp_plan_with_a_checkpoint(seed, tiny_checkpoint):
    plan = plan_launch({"sim_task": "pregrasp", "checkpoint": str(tiny_checkpoint), "scene_seed": str(seed)})
    policy, arm, cameras = plan.nodes
    assert cameras.parameters == [{"scene_seed": seed, "task": "pregrasp"}]
    assert "task:='pregrasp'" in cameras.command()
    params_file, overrides = policy.parameters  # a named checkpoint: no shipped pruning layered
    assert params_file.endswith("config/policy.yaml") and overrides["checkpoint"] == str(tiny_checkpoint)
    # The policy starts on the seed's first target, in the text the pregrasp policy was trained on.
    _, first, _, _ = draw_episode(seed)
    assert overrides["instruction"] == f"grasp the {first} cube"
    assert first in PregraspScene(seed).names
    assert any(f"sim task pregrasp, scene seed {seed}" in m and first in m for m in plan.messages)
    # An instruction given at launch wins.
    given = plan_launch({"sim_task": "pregrasp", "checkpoint": str(tiny_checkpoint), "scene_seed": str(seed),
                         "instruction": "grasp the right blue cube"})
    assert given.nodes[0].parameters[-1]["instruction"] == "grasp the right blue cube"
    # "above" keeps policy.yaml's instruction (no override).
    assert "instruction" not in plan_launch({"checkpoint": str(tiny_checkpoint)}).nodes[0].parameters[-1]


def test_the_shipped_pregrasp_policy_is_the_default_with_its_own_pruning(data_root, tiny_checkpoint):
    shipped = _ship(data_root, "checkpoints/xarm6_sim_pregrasp", tiny_checkpoint)
    plan = plan_launch({"sim_task": "pregrasp"})
    params_file, overrides = plan.nodes[0].parameters  # no config/sim_pregrasp.yaml yet: policy.yaml alone
    assert overrides["checkpoint"] == str(shipped)
    # With its settings file there, it is layered like sim_reach.yaml is for the reach policy.
    settings = data_root / "config" / "sim_pregrasp.yaml"
    settings.write_text(yaml.safe_dump({"vla_pruner_policy": {"ros__parameters": {
        "prune": {"method": "divprune", "keep_ratio": 0.5}}}}))
    plan = plan_launch({"sim_task": "pregrasp"})
    params_file, layered, overrides = plan.nodes[0].parameters
    assert layered == str(settings) and pruning_in(layered) == {"method": "divprune", "keep_ratio": 0.5}
    assert any("divprune keep 0.5 from config/sim_pregrasp.yaml" in m for m in plan.messages)
    assert not any("; also" in m for m in plan.messages)  # a file with pruning only names nothing else
    # Naming the checkpoint or a parameter file turns the layer off.
    for values in ({"checkpoint": str(shipped)}, {"params_file": str(params_file)}):
        parameters = plan_launch({"sim_task": "pregrasp", **values}).nodes[0].parameters
        assert str(settings) not in parameters
    # The reach task never gets the pregrasp settings (its own are config/sim_reach.yaml).
    reach = _ship(data_root, "checkpoints/xarm6_sim_reach", tiny_checkpoint)
    parameters = plan_launch({}).nodes[0].parameters
    assert parameters[-1]["checkpoint"] == str(reach) and parameters[1].endswith("sim_reach.yaml")


def test_this_checkout_ships_the_pregrasp_policy_with_the_pruning_its_table_chose():
    """In this checkout (no stand-in data root): sim_task:=pregrasp runs checkpoints/xarm6_sim_pregrasp
    with config/sim_pregrasp.yaml layered, i.e. the choice of its 200-episode table (README, "The
    pregrasp table"): divprune at keep 0.25, pruned at layer 2 as the table was."""
    plan = plan_launch({"sim_task": "pregrasp"})
    params_file, layered, overrides = plan.nodes[0].parameters
    assert Path(overrides["checkpoint"]) == ROOT / "checkpoints" / "xarm6_sim_pregrasp"
    assert Path(layered) == ROOT / "config" / "sim_pregrasp.yaml"
    assert pruning_in(layered) == {"method": "divprune", "keep_ratio": 0.25, "layer": 2}
    # ... and the open-loop horizon its table ran at (config/sim_pregrasp.yaml says why), announced.
    assert node_parameters(layered)["actions_per_step"] == 7
    assert any("also actions_per_step 7" in message for message in plan.messages)
    assert overrides["instruction"] == draw_episode(0)[1].join(("grasp the ", " cube"))


# --- the simulated cameras ---------------------------------------------------------------------


def test_sim_cameras_render_the_pregrasp_scene_at_the_published_joint_state():
    rclpy = pytest.importorskip("rclpy")  # noqa: F841
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image, JointState

    from ros_harness import Probe, RosHarness, wait_for
    from vla_pruner_ros.nodes.sim_cameras import SimCamerasNode
    from vla_pruner_ros.sim.render import Renderer
    from vla_pruner_ros.sim.scene import Scene

    seed, size = 2, 64
    joints = np.array(HOME_JOINTS) + np.array([0.3, 0.1, -0.1, 0.0, 0.2, 0.4])
    gripper = 0.5
    renderer = Renderer(size, size)
    frames = KINEMATICS.forward_kinematics(joints)
    expected = renderer.render_views(PregraspScene(seed), frames, gripper)["fixed"]
    reach_scene = renderer.render_views(Scene(seed), frames, gripper)["fixed"]
    assert not np.array_equal(expected, reach_scene)  # the test can tell the two scenes apart

    harness = RosHarness()
    try:
        cameras = harness.add(SimCamerasNode(context=harness.context, parameter_overrides=[
            Parameter("task", value="pregrasp"), Parameter("scene_seed", value=seed),
            Parameter("width", value=size), Parameter("height", value=size), Parameter("rate", value=10.0),
            Parameter("markers_rate", value=0.0), Parameter("topics.fixed", value="/pregrasp_test/fixed"),
            Parameter("topics.wrist", value="/pregrasp_test/wrist")]))
        probe = Probe(harness, "pregrasp_camera_probe", "sim_cameras")
        images = probe.record(Image, "/pregrasp_test/fixed", depth=5)
        sender = harness.node("pregrasp_joint_sender")
        publisher = sender.create_publisher(JointState, "/joint_states", 10)
        state = JointState(name=[f"joint{i}" for i in range(1, 7)] + [GRIPPER_JOINT_NAME],
                           position=[*map(float, joints), gripper * GRIPPER_CLOSED_ANGLE])

        def rendered_as_expected():
            publisher.publish(state)
            with probe.lock:
                last = [msg for _, msg in images[-3:]]
            return any(np.array_equal(np.frombuffer(bytes(m.data), np.uint8).reshape(size, size, 3), expected)
                       for m in last)

        wait_for(rendered_as_expected, 60.0, interval=0.1, message="the fixed view of the pregrasp scene")
        assert probe.get_parameter("task") == "pregrasp"
        assert not probe.set_parameter("task", "above").successful  # read-only: the scene is fixed
        assert cameras.get_parameter("task").value == "pregrasp"
    finally:
        harness.close()


def test_sim_cameras_refuse_an_unknown_task():
    pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter

    from ros_harness import RosHarness
    from vla_pruner_ros.nodes.sim_cameras import SimCamerasNode

    harness = RosHarness(threads=2)
    try:
        with pytest.raises(ValueError, match="task must be one of above, pregrasp, got 'grasp'"):
            SimCamerasNode(context=harness.context, parameter_overrides=[Parameter("task", value="grasp")])
    finally:
        harness.close()


def test_the_simulated_arm_follows_the_gripper_trajectory_point_by_point():
    """The pregrasp policy closes the gripper along its chunk (e.g. 0.02 0.13 0.38 0.76 0.88 ...): the
    simulated arm follows those points in time, as SimEnv (eval-sim) and xarm_ros2's gripper
    controller do, instead of holding the first one."""
    pytest.importorskip("rclpy")
    from builtin_interfaces.msg import Duration
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from ros_harness import Probe, RosHarness, wait_for
    from vla_pruner_ros.control.robot_config import load_robot_config
    from vla_pruner_ros.nodes.sim_xarm6 import SimXArm6Node

    robot = load_robot_config()
    harness = RosHarness()
    try:
        harness.add(SimXArm6Node(context=harness.context))
        probe = Probe(harness, "gripper_probe", "sim_xarm6")
        states = probe.record(JointState, "/joint_states", depth=50)
        sender = harness.node("gripper_sender")
        publisher = sender.create_publisher(JointTrajectory, robot.gripper_topic, 10)
        wait_for(lambda: publisher.get_subscription_count() > 0 and states, 20.0, message="the simulated arm")

        def send(fractions):
            publisher.publish(JointTrajectory(joint_names=[GRIPPER_JOINT_NAME], points=[
                JointTrajectoryPoint(positions=[f * GRIPPER_CLOSED_ANGLE],
                                     time_from_start=Duration(nanosec=int((i + 1) * 1e8)))
                for i, f in enumerate(fractions)]))

        def gripper():
            with probe.lock:
                msg = states[-1][1]
            return msg.position[list(msg.name).index(GRIPPER_JOINT_NAME)] / GRIPPER_CLOSED_ANGLE

        send([0.02, 0.13, 0.38, 0.76, 0.88, 0.9, 0.9, 0.9])  # closes along the chunk
        wait_for(lambda: gripper() > 0.85, 20.0, message=lambda: f"the gripper to close (at {gripper():.2f})")
        send([0.9, 0.6, 0.2, 0.0])  # opens along the chunk
        wait_for(lambda: gripper() < 0.05, 20.0, message=lambda: f"the gripper to open (at {gripper():.2f})")
    finally:
        harness.close()


# --- judging a grasp (pure) --------------------------------------------------------------------


def _pose(cube, dx=0.0, yaw=0.0, depth=0.015):
    """Joints putting the TCP ``dx`` m off the cube's axis (along x), ``depth`` below its top, the
    fingers turned ``yaw`` rad from square."""
    target = np.array([cube.position[0] + dx, cube.position[1], cube.top - depth])
    solution = KINEMATICS.inverse_kinematics(target, HOME_JOINTS, orientation=down_rotation(cube.yaw + yaw))
    assert solution.success, solution
    return solution.joints


def test_judging_a_grasp_on_hand_made_joint_states():
    scene = PregraspScene(1)
    name = scene.names[0]
    cube = scene.cube(name)
    square = _pose(cube)
    grasp = judge("pregrasp", scene, KINEMATICS, name, square, 0.9)
    assert grasp.reached and grasp.horizontal < 1e-3 and grasp.height == pytest.approx(-0.015, abs=1e-3)
    # the same as the task's own test
    assert grasp.reached == pregrasp.grasped(KINEMATICS, square, 0.9, cube)
    text = step_text(grasp)
    assert text.startswith(f" | {name} cube:  0.0 cm off axis, -1.5 cm above its top, yaw ") and text.endswith(
        "gripper 0.90  grasped")
    # A quarter turn is square again (the cube's faces repeat every 90 degrees).
    assert judge("pregrasp", scene, KINEMATICS, name, _pose(cube, yaw=np.pi / 2), 0.9).reached
    failures = {
        "gripper open": (square, 0.5),
        "off axis": (_pose(cube, dx=0.02), 0.9),
        "turned 20 deg": (_pose(cube, yaw=np.deg2rad(20)), 0.9),
        "above the band": (_pose(cube, depth=-0.02), 0.9),
    }
    for why, (joints, gripper) in failures.items():
        j = judge("pregrasp", scene, KINEMATICS, name, joints, gripper)
        assert not j.reached, why
        assert "grasped" not in step_text(j), why
    # Another cube of the scene is not grasped from here.
    other = next(n for n in scene.names if n != name)
    assert not judge("pregrasp", scene, KINEMATICS, other, square, 0.9).reached


def test_which_cube_an_instruction_names_in_either_task():
    from vla_pruner_ros.sim.scene import Scene

    scene = PregraspScene(1)
    left = next(n for n in scene.names if n.startswith("left"))
    assert named_cube(f"grasp the {left} cube", scene, "pregrasp") == left
    assert named_cube(f"Grasp the {left.upper()} cube", scene, "pregrasp") == left
    colour = left.split()[1]
    assert named_cube(f"grasp the {colour} cube", scene, "pregrasp") is None  # which of the two?
    missing = next(c for c in ("red", "green", "blue") if c not in {c.colour for c in scene.cubes})
    assert named_cube(f"grasp the left {missing} cube", scene, "pregrasp") is None
    assert named_cube("move the gripper above the blue cube", Scene(0), "above") == "blue"
    assert named_cube("grasp the left red cube", Scene(0), "above") == "red"
    assert named_cube("wave", Scene(0), "above") is None


def test_the_tracker_reports_the_first_grasp_and_the_closest_pass():
    tracker = TargetTracker("pregrasp", 1, KINEMATICS)
    name = tracker.scene.names[2]
    cube = tracker.scene.cube(name)
    instruction = f"grasp the {name} cube"
    assert tracker.step(instruction, None, 0.0, 0) == "" and tracker.summary() is None  # no joint state yet
    tracker.step(instruction, HOME_JOINTS, 0.0, 1)
    tracker.step(instruction, _pose(cube, dx=0.006), 0.0, 2)  # closest, but open
    summary = tracker.summary()
    assert summary.startswith(f"[demo] target not reached: closest 0.6 cm off the {name} cube's axis, there -1.5 cm "
                              "above its top, yaw 0.0 deg, gripper 0.00 (pregrasp success test: within 1.2 cm of its "
                              "axis, square within 8 deg, gripper closed (>= 0.8)"), summary
    assert "grasped" in tracker.step(instruction, _pose(cube, dx=0.008), 0.95, 7)
    assert "grasped" in tracker.step(instruction, _pose(cube), 0.95, 8)
    assert tracker.summary() == (
        f"[demo] target reached: grasped the {name} cube at step 7 (pregrasp success test: within 1.2 cm of its "
        "axis, square within 8 deg, gripper closed); closest 0.0 cm")
    tracker.reset()  # a new instruction
    assert tracker.summary() is None


def test_the_above_task_keeps_its_console_text():
    tracker = TargetTracker("above", 0, KINEMATICS)
    cube = tracker.scene.cube("green")
    target = np.array([cube.position[0] + 0.01, cube.position[1], cube.top + 0.06])
    joints = KINEMATICS.inverse_kinematics(target, HOME_JOINTS).joints
    text = tracker.step("move the gripper above the green cube", joints, 0.0, 4)
    assert text == " | green cube:   1.0 cm away,   6.0 cm above  reached"
    assert tracker.summary() == ("[demo] target reached: the green cube at step 4 (gripper within 2.5 cm at hover "
                                 "height, eval-sim's success test); closest 1.0 cm")
    j = judge("above", tracker.scene, KINEMATICS, "green", HOME_JOINTS, 0.0)
    assert summary_line(None, None, j).startswith("[demo] target not reached: closest ")


# --- the demo ----------------------------------------------------------------------------------


def test_demo_task_reaches_the_plan_and_the_monitor(tiny_checkpoint):
    from vla_pruner_ros.tools.demo import _launch_values, add_arguments, sim_scene

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).task == DEFAULT_SIM_TASK
    with pytest.raises(SystemExit):
        parser.parse_args(["--task", "grasp"])
    args = parser.parse_args(["--task", "pregrasp", "--checkpoint", str(tiny_checkpoint), "--scene-seed", "4"])
    values = _launch_values(args)
    assert values["sim_task"] == "pregrasp"
    plan = plan_launch(values)
    assert sim_scene(plan) == {"scene_seed": 4, "task": "pregrasp"}
    assert plan.nodes[0].parameters[-1]["instruction"] == f"grasp the {draw_episode(4)[1]} cube"
    # A task or seed given as a launch argument is what the monitor judges too.
    args = parser.parse_args(["--checkpoint", str(tiny_checkpoint), "--launch-arg", "sim_task:=pregrasp",
                              "--launch-arg", "scene_seed:=6"])
    assert sim_scene(plan_launch(_launch_values(args))) == {"scene_seed": 6, "task": "pregrasp"}


def test_demo_monitor_judges_a_grasp_from_joint_states(capsys):
    pytest.importorskip("rclpy")
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import JointState

    from ros_harness import RosHarness, wait_for
    from vla_pruner_ros.msg import PrunerStats
    from vla_pruner_ros.tools.monitor import DemoMonitor

    seed = 5
    scene, first, _, _ = draw_episode(seed)
    cube = scene.cube(first)
    harness = RosHarness()
    try:
        monitor = harness.add(DemoMonitor(scene_seed=seed, task="pregrasp", instruction=f"grasp the {first} cube",
                                          policy_node="pregrasp_test_policy", context=harness.context))
        sender = harness.node("pregrasp_monitor_sender")
        stats = sender.create_publisher(PrunerStats, "/pregrasp_test_policy/stats",
                                        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        joints = sender.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        wait_for(lambda: stats.get_subscription_count() > 0 and joints.get_subscription_count() > 0, 20.0,
                 message="the monitor's subscriptions")
        names = [f"joint{i}" for i in range(1, 7)] + [GRIPPER_JOINT_NAME]
        for step, (pose, gripper) in enumerate([(_pose(cube, dx=0.005), 0.0), (_pose(cube), 0.9)]):
            state = JointState(name=names, position=[*map(float, pose), gripper * GRIPPER_CLOSED_ANGLE])
            # the gripper as /joint_states carries it (drive_joint angle) reaches the monitor
            wait_for(lambda: joints.publish(state) or (
                monitor._joints is not None and np.allclose(monitor._joints, pose)
                and monitor._gripper == pytest.approx(gripper)), 20.0, message=f"joint state {step}")
            stats.publish(PrunerStats(step_index=step + 1, method="none", total_ms=10.0,
                                      visual_tokens_before=512, visual_tokens_after=512))
            wait_for(lambda: monitor._steps == step + 1, 20.0, message=f"stats of step {step + 1}")
        monitor.print_summary()
    finally:
        harness.close()
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step")]
    assert len(lines) == 2, out
    assert f"| {first} cube:  0.5 cm off axis" in lines[0] and "gripper 0.00" in lines[0], out
    assert "grasped" not in lines[0] and lines[1].endswith("gripper 0.90  grasped"), out
    assert f"[demo] target reached: grasped the {first} cube at step 2 (pregrasp success test" in out, out
