"""What ``launch/xarm6.launch.py`` starts, as plain data.

The launch file only turns these descriptions into launch_ros actions, so the decisions
(which nodes for sim or real, which parameters, which topics are recorded) are testable
without ``launch`` installed, and ``vla-pruner demo`` starts the very same nodes as
processes where ``ros2 launch`` is not available.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PACKAGE = "vla_pruner_ros"

# Launch arguments: name -> (default, description). Defaults that are paths are resolved at launch.
LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "use_sim": ("true", "true: simulated xArm6 and cameras; false: the real arm through xarm_ros2"),
    "robot_ip": ("", "IP address of the xArm controller box (use_sim:=false)"),
    "checkpoint": ("", "OFT checkpoint directory (default: the set-up's shipped sim policy)"),
    "params_file": ("", "policy node parameters (default: config/policy.yaml)"),
    "robot_config": ("", "joints, limits and action mapping (default: config/xarm6.yaml)"),
    "instruction": ("", "task instruction at start-up (also settable on the instruction topic)"),
    "autostart": ("", "enable motion at start-up (default: true in sim, false on the real arm)"),
    "rviz": ("false", "start RViz with config/vla_pruner.rviz"),
    "record": ("false", "record the topics of config/record_topics.yaml with ros2 bag record"),
    "record_dir": ("", "where record:=true writes the bag (default: ./vla_pruner_<time>)"),
    "record_storage": ("mcap", "rosbag2 storage of record:=true: mcap or sqlite3"),
    "realsense": ("false", "use_sim:=false: also start two realsense2_camera nodes"),
    "fixed_camera_serial": ("", "serial number of the fixed camera (realsense:=true)"),
    "wrist_camera_serial": ("", "serial number of the wrist camera (realsense:=true)"),
    "add_gripper": ("true", "use_sim:=false: the xArm gripper is mounted"),
    "xarm_launch": ("xarm6_control_rviz_display.launch.py",
                    "xarm_controller launch file that starts the driver and xarm6_traj_controller"),
    "scene_seed": ("0", "use_sim:=true: seed of the simulated cube layout"),
}


def package_share() -> Path:
    """The installed share directory, or the source checkout when not built with colcon."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:
        return Path(__file__).resolve().parents[2]


def default_checkpoint() -> str:
    """The checkpoint the demo uses when none is given: the trained sim policy if present,
    else the random-weight tiny checkpoint that the set-up writes."""
    root = Path(os.environ.get("VLA_PRUNER_ROOT", Path(__file__).resolve().parents[2]))
    for candidate in (root / "checkpoints" / "xarm6_sim_reach", root / "artifacts" / "checkpoints" / "tiny"):
        if (candidate / "config.json").is_file():
            return str(candidate)
    return str(root / "artifacts" / "checkpoints" / "tiny")


def _truthy(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass
class NodeSpec:
    executable: str  # an executable of this package (lib/vla_pruner_ros/<executable>)
    name: str
    parameters: list = field(default_factory=list)  # dicts and/or parameter file paths
    remappings: list[tuple[str, str]] = field(default_factory=list)
    package: str = PACKAGE

    def command(self, python: str = sys.executable) -> list[str]:
        """A command line that runs this node without ``ros2 run`` (for ``vla-pruner demo``)."""
        if self.package != PACKAGE:
            raise ValueError(f"only {PACKAGE} nodes can run without ros2 launch, not {self.package}")
        command = [python, "-m", f"{PACKAGE}.nodes.{self.executable}", "--ros-args", "-r", f"__node:={self.name}"]
        for item in self.parameters:
            if isinstance(item, dict):
                for key, value in item.items():
                    command += ["-p", f"{key}:={_ros_arg_value(value)}"]
            else:
                command += ["--params-file", str(item)]
        for source, target in self.remappings:
            command += ["-r", f"{source}:={target}"]
        return command


def _ros_arg_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # Quoted, so that e.g. "true" or "3" stays a string when ROS parses the value as YAML.
        return yaml.safe_dump(value, default_style="'").strip()
    return str(value)


@dataclass
class IncludeSpec:
    package: str
    launch_file: str  # relative to the package's launch/ directory
    arguments: dict[str, str] = field(default_factory=dict)


@dataclass
class LaunchPlan:
    nodes: list[NodeSpec]
    includes: list[IncludeSpec]
    record_command: list[str] | None  # ros2 bag record ... when record:=true
    rviz_config: str | None


def resolve_arguments(values: dict[str, str]) -> dict[str, str]:
    """Launch argument values with defaults filled in and unknown names refused."""
    unknown = set(values) - set(LAUNCH_ARGUMENTS)
    if unknown:
        raise ValueError(f"unknown launch argument(s) {sorted(unknown)}; known: {sorted(LAUNCH_ARGUMENTS)}")
    resolved = {name: str(values.get(name, default)) for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    share = package_share()
    resolved["checkpoint"] = resolved["checkpoint"] or default_checkpoint()
    resolved["params_file"] = resolved["params_file"] or str(share / "config" / "policy.yaml")
    resolved["robot_config"] = resolved["robot_config"] or str(share / "config" / "xarm6.yaml")
    return resolved


def record_topics(path: str | os.PathLike | None = None) -> list[str]:
    path = Path(path) if path else package_share() / "config" / "record_topics.yaml"
    data = yaml.safe_load(Path(path).read_text()) or {}
    topics = data.get("topics")
    if not isinstance(topics, list) or not all(isinstance(t, str) and t.startswith("/") for t in topics):
        raise ValueError(f"{path}: expected 'topics:' with a list of absolute topic names")
    return topics


def plan_launch(values: dict[str, str]) -> LaunchPlan:
    args = resolve_arguments(values)
    use_sim = _truthy(args["use_sim"])
    autostart = _truthy(args["autostart"]) if args["autostart"] else use_sim
    policy_parameters: list = [args["params_file"], {
        "checkpoint": args["checkpoint"],
        "robot_config": args["robot_config"],
        "autostart": autostart,
    }]
    if args["instruction"]:
        policy_parameters[1]["instruction"] = args["instruction"]
    nodes = [NodeSpec("policy_node", "vla_pruner_policy", policy_parameters)]
    includes: list[IncludeSpec] = []
    if use_sim:
        nodes.append(NodeSpec("sim_xarm6", "sim_xarm6", [{"robot_config": args["robot_config"]}]))
        nodes.append(NodeSpec("sim_cameras", "sim_cameras", [{"scene_seed": int(args["scene_seed"])}]))
    else:
        if not args["robot_ip"]:
            raise ValueError("use_sim:=false needs robot_ip:=<address of the xArm controller box>")
        includes.append(IncludeSpec("xarm_controller", args["xarm_launch"], {
            "robot_ip": args["robot_ip"],
            "add_gripper": "true" if _truthy(args["add_gripper"]) else "false",
        }))
        if _truthy(args["realsense"]):
            for camera in ("fixed_camera", "wrist_camera"):
                includes.append(IncludeSpec("realsense2_camera", "rs_launch.py", {
                    "camera_name": camera,
                    "camera_namespace": "",
                    "serial_no": f"'{args[camera + '_serial']}'" if args[camera + "_serial"] else "''",
                }))
    record_command = None
    if _truthy(args["record"]):
        storage = args["record_storage"]
        if storage not in ("mcap", "sqlite3"):
            raise ValueError(f"record_storage must be mcap or sqlite3, got {storage!r}")
        command = ["ros2", "bag", "record", "--storage", storage]
        if args["record_dir"]:
            command += ["-o", args["record_dir"]]
        record_command = command + record_topics()
    rviz = str(package_share() / "config" / "vla_pruner.rviz") if _truthy(args["rviz"]) else None
    return LaunchPlan(nodes, includes, record_command, rviz)
