"""The ROS user's path: a plain `colcon build` install tree, `colcon test` where launch_testing is
installed, Ctrl-C/SIGTERM while a node is still importing torch, no node outliving its launch."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VLA_PRUNER_ROOT", "PYTHONPATH")}
    env.update(extra)
    return env


def test_plain_colcon_install_tree_finds_the_shipped_checkpoint_and_configs(tmp_path):
    """Plain `colcon build` copies the Python package to lib/python3.X/site-packages and the data
    (CMakeLists.txt install rules) to share/vla_pruner_ros: the defaults come from the share
    directory, found through the ament index, not from next to the Python package."""
    prefix = tmp_path / "install" / "vla_pruner_ros"
    site = prefix / "lib" / "python3.11" / "site-packages"
    shutil.copytree(ROOT / "vla_pruner_ros", site / "vla_pruner_ros",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    share = prefix / "share" / "vla_pruner_ros"
    shutil.copytree(ROOT / "config", share / "config")
    (share / "checkpoints").mkdir(parents=True)
    (share / "checkpoints" / "xarm6_sim_reach").symlink_to(ROOT / "checkpoints" / "xarm6_sim_reach")
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "vla_pruner_ros").write_text("")
    # CMakeLists.txt installs exactly these (checked here so that the layout above stays true).
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert "install(DIRECTORY launch config DESTINATION share/${PROJECT_NAME})" in cmake
    assert "install(DIRECTORY checkpoints/xarm6_sim_reach DESTINATION share/${PROJECT_NAME}/checkpoints)" in cmake

    script = textwrap.dedent("""
        from vla_pruner_ros.control import launch_logic
        from vla_pruner_ros.control.launch_logic import default_checkpoint, plan_launch
        print(launch_logic.__file__)
        print(default_checkpoint())
        plan = plan_launch({})
        print(plan.nodes[0].parameters[0])
        print(plan.nodes[0].parameters[-1]["robot_config"])
        print(plan.nodes[0].parameters[1])
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env=_clean_env(PYTHONPATH=str(site), AMENT_PREFIX_PATH=str(prefix)))
    assert result.returncode == 0, result.stderr
    module, checkpoint, params_file, robot_config, shipped = result.stdout.split("\n")[:5]
    assert module.startswith(str(site))  # really the install tree's copy
    assert checkpoint == str(share / "checkpoints" / "xarm6_sim_reach")
    assert params_file == str(share / "config" / "policy.yaml")
    assert robot_config == str(share / "config" / "xarm6.yaml")
    assert shipped == str(share / "config" / "sim_reach.yaml")  # the shipped policy's own pruning


def test_install_tree_without_any_checkpoint_is_refused_in_one_line(tmp_path):
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "vla_pruner_ros", site / "vla_pruner_ros",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    script = "from vla_pruner_ros.control.launch_logic import default_checkpoint; default_checkpoint()"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env=_clean_env(PYTHONPATH=str(site), AMENT_PREFIX_PATH=str(tmp_path)))
    assert result.returncode != 0
    assert "LaunchRefused: no default checkpoint" in result.stderr and "checkpoint:=" in result.stderr


def test_pytest_starts_where_launch_testing_is_installed(tmp_path):
    """A ROS 2 install's launch_testing registers a pytest plugin with a hook signature pytest 9
    refuses (`pytest_pycollect_makemodule(path, parent)`): installed as a stand-in with the same
    hook and entry-point name, pytest must still collect and run the suite as `colcon test` does."""
    # launch_testing's plugin, and launch_testing_ros' ("launch_ros"), which implements a hook that
    # only launch_testing's plugin declares.
    (tmp_path / "stand_in_launch_testing.py").write_text(
        "def pytest_pycollect_makemodule(path, parent):\n    return None\n")
    (tmp_path / "stand_in_launch_testing_ros.py").write_text(
        "def pytest_launch_collect_makemodule(path, parent, entrypoint):\n    return None\n")
    for name, module, entry in [("launch_testing", "stand_in_launch_testing", "launch_testing"),
                                ("launch_testing_ros", "stand_in_launch_testing_ros", "launch_ros")]:
        dist = tmp_path / f"{name}-3.8.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 3.8.0\n")
        (dist / "entry_points.txt").write_text(f"[pytest11]\n{entry} = {module}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "test/test_launch_logic.py", "-k", "bad_launch_arguments"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


def _installed_executable(node: str) -> str:
    """The Python text of lib/vla_pruner_ros/<node> as CMakeLists.txt writes it."""
    import re

    cmake = (ROOT / "CMakeLists.txt").read_text()
    text = re.search(r'file\(WRITE "\$\{wrapper\}"\s+"(.*?)"\)', cmake, re.S).group(1)
    text = text.replace("\\n", "\n").replace('\\"', '"').replace("${node}", node)
    assert text.startswith("#!/usr/bin/env python3\nimport os, signal, sys\n"), text
    return text


def _start_policy_node(command_style: str, checkpoint, **env):
    if command_style == "module":  # how the demo starts nodes
        command = [sys.executable, "-m", "vla_pruner_ros.nodes.policy_node"]
    else:  # lib/vla_pruner_ros/policy_node, the executable ros2 launch/ros2 run start: CMakeLists.txt's text
        command = [sys.executable, "-c", _installed_executable("policy_node")]
    command += ["--ros-args", "-p", f"checkpoint:={checkpoint}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=dict(os.environ, **env))


@pytest.mark.parametrize("signal_name, delay, command_style", [
    ("SIGINT", 0.5, "module"), ("SIGTERM", 1.5, "module"), ("SIGINT", 2.5, "module"),
    ("SIGTERM", 0.5, "executable"), ("SIGINT", 1.5, "executable"), ("SIGTERM", 2.5, "executable"),
])
def test_a_signal_during_start_up_is_a_clean_exit(tiny_checkpoint, signal_name, delay, command_style):
    """0.5-2.5 s after start a node is importing torch (or rclpy, or loading the model): Ctrl-C or
    SIGTERM there ends it with exit code 0 and no traceback."""
    process = _start_policy_node(command_style, tiny_checkpoint)
    try:
        time.sleep(delay)
        process.send_signal(getattr(signal, signal_name))
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("when, node, ready_line", [
    ("starting", "policy_node", None),
    ("running", "sim_xarm6", "listening on"),
])
def test_a_launched_node_stops_when_its_launch_process_dies(tiny_checkpoint, tmp_path, when, node, ready_line):
    """ros2 launch starts nodes with VLA_PRUNER_EXIT_WITH_PARENT=1 (launch/xarm6.launch.py): when the
    launch process dies, however (here SIGKILL), its nodes get SIGINT and stop."""
    pytest.importorskip("rclpy")
    pid_file = tmp_path / "pid"
    parent_script = textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-m", "vla_pruner_ros.nodes.{node}", "--ros-args",
                                  "-p", "checkpoint:={tiny_checkpoint}"],
                                 env=dict(os.environ, VLA_PRUNER_EXIT_WITH_PARENT="1"),
                                 stdout=open({str(tmp_path / 'node.log')!r}, "w"), stderr=subprocess.STDOUT)
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_script], cwd=ROOT, env=dict(os.environ))
    node_pid = None
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the parent did not start the node"
            time.sleep(0.05)
        node_pid = int(pid_file.read_text())
        if when == "running":
            deadline = time.monotonic() + 120
            while ready_line not in (tmp_path / "node.log").read_text():
                assert time.monotonic() < deadline and _alive(node_pid), (tmp_path / "node.log").read_text()
                time.sleep(0.1)
        else:
            time.sleep(0.3)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _alive(node_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(node_pid), "the node outlived its launch process"
        log = (tmp_path / "node.log").read_text()
        assert "Traceback" not in log, log
    finally:
        if parent.poll() is None:
            parent.kill()
        if node_pid is not None and _alive(node_pid):
            os.kill(node_pid, signal.SIGKILL)


@pytest.mark.parametrize("ros_args", [
    ["-p", "checkpoint:="],                      # an override with nothing after ':='
    ["--params-file", "{params_file}"],          # a YAML file that does not parse
])
def test_malformed_ros_arguments_end_in_one_line_without_a_traceback(tmp_path, ros_args):
    """A malformed `-p` or `--params-file` stops the node at start-up with exit code 1 and one
    line of ours naming the cause (rcl logs its own '[ERROR] [rcl]: ...' line first), never a
    Python traceback."""
    params_file = tmp_path / "broken.yaml"
    params_file.write_text("sim_xarm6:\n  ros__parameters: [unclosed\n", encoding="utf-8")
    args = [a.format(params_file=params_file) for a in ros_args]
    result = subprocess.run([sys.executable, "-m", "vla_pruner_ros.nodes.sim_xarm6", "--ros-args", *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    ours = [line for line in output.splitlines() if line.startswith("[sim_xarm6] fatal:")]
    assert len(ours) == 1 and "invalid ROS arguments" in ours[0], output
    others = [line for line in output.splitlines() if line.strip() and not line.startswith("[sim_xarm6]")
              and "[rcl]" not in line]
    assert not others, output
