"""What xarm6.launch.py starts, tested without `launch` installed (the file is a thin shell)."""
import ast
from pathlib import Path

import pytest

from vla_pruner_ros.control.launch_logic import LAUNCH_ARGUMENTS, LaunchRefused, plan_launch, record_topics

ROOT = Path(__file__).resolve().parents[1]


def everything_installed(package):
    return True


def on_path(command):
    return f"/opt/ros/kilted/bin/{command}"


def test_sim_plan_starts_policy_sim_arm_and_cameras():
    plan = plan_launch({})
    assert [n.executable for n in plan.nodes] == ["policy_node", "sim_xarm6", "sim_cameras"]
    assert plan.includes == [] and plan.record_command is None and plan.rviz_config is None
    policy = plan.nodes[0]
    params_file, *layered, overrides = policy.parameters
    assert params_file.endswith("config/policy.yaml") and Path(params_file).is_file()
    assert all(Path(path).is_file() for path in layered)
    assert overrides["autostart"] is True  # sim: motion on at start-up
    assert overrides["checkpoint"]


def test_real_plan_needs_robot_ip_and_includes_xarm_controller():
    with pytest.raises(ValueError, match="robot_ip"):
        plan_launch({"use_sim": "false"})
    plan = plan_launch({"use_sim": "false", "robot_ip": "192.168.1.203", "realsense": "true",
                        "fixed_camera_serial": "123", "rviz": "true"}, installed=everything_installed)
    assert [n.executable for n in plan.nodes] == ["policy_node"]
    assert plan.nodes[0].parameters[-1]["autostart"] is False  # real arm: motion off until enabled
    xarm, *cameras = plan.includes
    assert (xarm.package, xarm.launch_file) == ("xarm_controller", "xarm6_control_rviz_display.launch.py")
    assert xarm.arguments["robot_ip"] == "192.168.1.203"
    assert [c.arguments["camera_name"] for c in cameras] == ["fixed_camera", "wrist_camera"]
    assert cameras[0].arguments["serial_no"] == "'123'"
    assert plan.rviz_config.endswith("vla_pruner.rviz") and Path(plan.rviz_config).is_file()


def test_record_starts_ros2_bag_record_with_the_configured_topics():
    plan = plan_launch({"record": "true", "record_storage": "sqlite3", "record_dir": "/tmp/run1"},
                       installed=everything_installed, which=on_path)
    assert plan.record_tool == "ros2 bag record" and plan.messages[-1] == "recording with ros2 bag record (sqlite3)"
    command = plan.record_command
    assert command[:5] == ["ros2", "bag", "record", "--storage", "sqlite3"]
    assert command[5:7] == ["-o", "/tmp/run1"]
    assert command[7:] == record_topics()
    assert "/joint_states" in command and "/vla_pruner_policy/retained_tokens" in command
    with pytest.raises(ValueError, match="mcap or sqlite3"):
        plan_launch({"record": "true", "record_storage": "bag"})


def test_bad_launch_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown launch argument"):
        plan_launch({"use_simulation": "true"})
    with pytest.raises(ValueError, match="expected true or false"):
        plan_launch({"use_sim": "maybe"})


def test_node_command_line_carries_parameters_and_remappings():
    plan = plan_launch({"instruction": "move the gripper above the blue cube"})
    command = plan.nodes[0].command(python="python3")
    assert command[:3] == ["python3", "-m", "vla_pruner_ros.nodes.policy_node"]
    assert command[3:6] == ["--ros-args", "-r", "__node:=vla_pruner_policy"]
    assert "--params-file" in command
    assert "instruction:='move the gripper above the blue cube'" in command
    assert "autostart:=true" in command


def test_launch_file_declares_every_argument_and_uses_the_plan():
    source = (ROOT / "launch" / "xarm6.launch.py").read_text()
    tree = ast.parse(source)  # valid Python even where `launch` is not installed
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert {"LAUNCH_ARGUMENTS", "plan_launch", "Node", "IncludeLaunchDescription"} <= imported
    assert "generate_launch_description" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert set(LAUNCH_ARGUMENTS) >= {"use_sim", "robot_ip", "checkpoint", "params_file", "rviz", "record"}


def test_launch_file_builds_a_description_where_launch_is_installed():
    # (The repository's own launch/ folder is importable as a namespace package named
    # `launch`, so check for the real package's content.)
    try:
        from launch import LaunchDescription  # noqa: F401
        import launch_ros.actions  # noqa: F401
    except ImportError:
        pytest.skip("ROS 2 `launch`/`launch_ros` are not installed (not installable from PyPI here)")
    import importlib.util

    spec = importlib.util.spec_from_file_location("xarm6_launch", ROOT / "launch" / "xarm6.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {getattr(entity, "name", None) for entity in description.entities}
    assert {"use_sim", "robot_ip", "checkpoint"} <= names


def test_launch_testing_brings_up_the_simulated_system():
    """Runs test/xarm6_sim.launch_test.py with launch_testing where it is installed."""
    import shutil
    import subprocess
    import sys

    try:
        import launch_testing.launch_test  # noqa: F401
        import launch_ros.actions  # noqa: F401
    except ImportError:
        pytest.skip("ROS 2 launch_testing / launch_ros are not installed (not installable from PyPI here); "
                    "run `launch_test test/xarm6_sim.launch_test.py` in a full ROS install")
    command = [shutil.which("launch_test")] if shutil.which("launch_test") else [
        sys.executable, "-c", "import sys; from launch_testing.launch_test import main; sys.exit(main())"]
    result = subprocess.run(command + [str(ROOT / "test" / "xarm6_sim.launch_test.py")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("values, missing_package", [
    ({"rviz": "true"}, "rviz2"),
    ({"use_sim": "false", "robot_ip": "192.168.1.203"}, "xarm_controller"),
    ({"use_sim": "false", "robot_ip": "192.168.1.203", "realsense": "true"}, "xarm_controller"),
])
def test_an_option_whose_package_is_missing_is_refused_before_anything_starts(values, missing_package):
    """The launch file calls plan_launch before it returns any action: a refusal starts no node."""
    looked_up = []

    def installed(package):
        looked_up.append(package)
        return package not in ("rviz2", "xarm_controller", "realsense2_camera")

    with pytest.raises(LaunchRefused) as refused:
        plan_launch(values, installed=installed)
    message = str(refused.value)
    assert "\n" not in message and f"needs the ROS 2 package {missing_package}" in message
    assert "nothing was started" in message
    assert missing_package in looked_up
    # With the package there, the same options plan normally.
    plan = plan_launch(values, installed=everything_installed)
    assert plan.nodes and plan.record_command is None


def test_record_without_rosbag2_falls_back_to_the_projects_recorder():
    def installed(package):
        return package not in ("ros2bag", "rosbag2_storage_mcap")

    for which in (on_path, lambda command: None):  # the ros2 command, or no ros2 at all
        plan = plan_launch({"record": "true", "record_dir": "/tmp/run2"}, installed=installed, which=which)
        assert plan.record_tool == "vla-pruner record"
        command = plan.record_command
        assert command[1:] == ["-m", "vla_pruner_ros.tools.cli", "record", "--storage", "mcap", "-o", "/tmp/run2",
                               "--topics"] + record_topics()
        assert any("recording with vla-pruner record (mcap)" in m and "not installed" in m for m in plan.messages)
    # rosbag2 without its mcap plug-in: sqlite3 is recorded by ros2 bag, mcap by the fallback.
    def no_mcap(package):
        return package != "rosbag2_storage_mcap"

    plan = plan_launch({"record": "true"}, installed=no_mcap, which=on_path)
    assert plan.record_tool == "vla-pruner record"
    plan = plan_launch({"record": "true", "record_storage": "sqlite3"}, installed=no_mcap, which=on_path)
    assert plan.record_tool == "ros2 bag record" and "-o" not in plan.record_command


def test_the_fallback_recorder_command_records_the_topics(tmp_path):
    """The command of the fallback really records (same storage, topics of record_topics.yaml)."""
    import os
    import subprocess
    import time

    rclpy = pytest.importorskip("rclpy")
    from sensor_msgs.msg import JointState

    out = tmp_path / "bag"
    plan = plan_launch({"record": "true", "record_dir": str(out)}, installed=lambda package: False)
    rclpy.init()
    node = rclpy.create_node("fallback_record_probe")
    publisher = node.create_publisher(JointState, "/joint_states", 10)
    process = subprocess.Popen(plan.record_command + ["--duration", "8"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            publisher.publish(JointState(name=["joint1"], position=[0.1]))
            time.sleep(0.05)
        output = process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
        node.destroy_node()
        rclpy.shutdown()
    assert process.returncode == 0, output
    from vla_pruner_ros.bags import describe

    info = describe(out)
    assert info.storage == "mcap", output
    assert info.topics["/joint_states"].count > 0, output


def test_the_shipped_sim_policy_runs_the_pruning_its_table_chose(tmp_path):
    """policy.yaml keeps the paper's method for real checkpoints; the shipped sim policy, run by
    default, gets config/sim_reach.yaml layered on top (before the launch's own values), and only then."""
    import yaml

    from vla_pruner_ros.control.launch_logic import SHIPPED_CHECKPOINT, pruning_in

    if not (ROOT / SHIPPED_CHECKPOINT / "config.json").is_file():
        pytest.skip("the shipped sim checkpoint is not in this checkout")
    plan = plan_launch({})
    params_file, shipped, overrides = plan.nodes[0].parameters
    assert shipped.endswith("config/sim_reach.yaml")
    assert pruning_in(shipped) == {"method": "fastv_all_rows", "keep_ratio": 0.25}
    assert pruning_in(params_file)["method"] == "vla_pruner"  # unchanged for real OFT checkpoints
    assert overrides["checkpoint"].endswith(str(SHIPPED_CHECKPOINT))
    assert any("fastv_all_rows keep 0.25" in message and "sim_reach.yaml" in message for message in plan.messages)
    # The node command line applies the files in this order, so a -p from the demo still wins.
    command = plan.nodes[0].command()
    files = [command[i + 1] for i, arg in enumerate(command) if arg == "--params-file"]
    assert files == [params_file, shipped]
    # Naming a checkpoint or a parameter file turns the layer off: you get what you named.
    own = tmp_path / "mine.yaml"
    own.write_text(yaml.safe_dump({"vla_pruner_policy": {"ros__parameters": {"prune": {"method": "divprune"}}}}))
    for values in ({"checkpoint": overrides["checkpoint"]}, {"params_file": str(own)}):
        parameters = plan_launch(values).nodes[0].parameters
        assert len(parameters) == 2 and not any(str(p).endswith("sim_reach.yaml") for p in parameters[:-1])
        assert plan_launch(values).messages == []
