"""What ``launch/xarm6.launch.py`` starts, as plain data.

The launch file only turns these descriptions into launch_ros actions, so the decisions
(which nodes for sim or real, which parameters, which topics are recorded) are testable
without ``launch`` installed, and ``vla-pruner demo`` starts the very same nodes as
processes where ``ros2 launch`` is not available.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vla_pruner_ros.nodes._startup import EXIT_WITH_PARENT_ENV  # noqa: F401 - the launch file sets it

PACKAGE = "vla_pruner_ros"

# The simulated tasks the hardware-free system can run (use_sim:=true): "above" reaches over the named
# cube of a three-cube scene (sim/task.py), "pregrasp" closes the gripper square on one of four cubes
# named by side and colour (sim/pregrasp.py). The launch argument's and `vla-pruner demo --task`'s default.
SIM_TASKS = ("above", "pregrasp")
DEFAULT_SIM_TASK = "above"

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
    "sim_task": (DEFAULT_SIM_TASK, "use_sim:=true: the simulated task, " + " or ".join(SIM_TASKS)
                 + " (sets the scene, the default checkpoint and the default instruction)"),
}


class LaunchRefused(ValueError):
    """A launch argument asks for something this machine cannot do: nothing is started."""


SHIPPED_CHECKPOINT = Path("checkpoints") / "xarm6_sim_reach"  # installed to share/vla_pruner_ros/
TINY_CHECKPOINT = Path("artifacts") / "checkpoints" / "tiny"  # written by scripts/setup.sh (checkout only)
# The pruning settings chosen for the shipped sim policy from its own closed-loop table, layered over
# params_file when the launch runs that policy by default (see shipped_policy_parameters).
SHIPPED_POLICY_PARAMS = Path("config") / "sim_reach.yaml"
# Per simulated task: (shipped policy, its pruning settings). The pregrasp policy has no tiny fallback:
# without it a launch needs checkpoint:= (the reach policy cannot do that task).
SHIPPED_SIM_POLICIES: dict[str, tuple[Path, Path]] = {
    "above": (SHIPPED_CHECKPOINT, SHIPPED_POLICY_PARAMS),
    "pregrasp": (Path("checkpoints") / "xarm6_sim_pregrasp", Path("config") / "sim_pregrasp.yaml"),
}


def source_root() -> Path | None:
    """The source checkout this module was imported from, or None when it runs from an install
    tree (plain ``colcon build`` copies the Python package to lib/python3.X/site-packages)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "package.xml").is_file() and (root / "launch").is_dir() else None


def installed_share() -> Path | None:
    """share/vla_pruner_ros of the colcon install found through the ament index, if any."""
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory(PACKAGE))
    except Exception:  # noqa: BLE001 - not built with colcon, or ament_index not importable
        return None
    return share if share.is_dir() else None


def data_roots() -> list[Path]:
    """Where the package's data (config/, checkpoints/, launch/) is looked for, first match wins:
    $VLA_PRUNER_ROOT (set by .env.sh), the source checkout, the installed share directory."""
    roots = []
    if os.environ.get("VLA_PRUNER_ROOT"):
        roots.append(Path(os.environ["VLA_PRUNER_ROOT"]))
    for root in (source_root(), installed_share()):
        if root is not None and root not in roots:
            roots.append(root)
    return roots


def package_share() -> Path:
    """The directory holding config/ (and the shipped checkpoint): a checkout's root or the
    installed share directory."""
    for root in data_roots():
        if (root / "config" / "policy.yaml").is_file():
            return root
    return Path(__file__).resolve().parents[2]


def check_sim_task(task: str) -> str:
    if task not in SIM_TASKS:
        raise LaunchRefused(f"sim_task must be one of {', '.join(SIM_TASKS)}, got {task!r}")
    return task


def default_checkpoint(task: str = "above") -> str:
    """The checkpoint the launch and the demo use when none is given: the shipped sim policy of
    ``task`` (checkpoints/xarm6_sim_reach for "above", checkpoints/xarm6_sim_pregrasp for "pregrasp":
    in the checkout, or installed to the share directory); for "above" else the random-weight tiny
    checkpoint that scripts/setup.sh writes into a checkout."""
    shipped = SHIPPED_SIM_POLICIES[check_sim_task(task)][0]
    roots = data_roots()
    for relative in (shipped, TINY_CHECKPOINT) if task == "above" else (shipped,):
        for root in roots:
            if (root / relative / "config.json").is_file():
                return str(root / relative)
    searched = ", ".join(str(root / shipped) for root in roots) or "no source checkout or install found"
    if task != "above":
        raise LaunchRefused(f"sim_task {task}: no shipped {task} policy ({searched}); pass checkpoint:=<OFT "
                            f"checkpoint directory of a {task} policy>")
    raise LaunchRefused(f"no default checkpoint ({searched}); pass checkpoint:=<OFT checkpoint directory>")


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
    record_command: list[str] | None  # the recorder's command line when record:=true
    rviz_config: str | None
    record_tool: str | None = None  # "ros2 bag record" or "vla-pruner record" (no rosbag2 here)
    messages: list[str] = field(default_factory=list)  # what the launch says before it starts anything


def ros_package_installed(package: str) -> bool:
    """True when ``package`` is in the ament index (what ``ros2 launch``/``ros2 run`` look in)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return False
    try:
        get_package_prefix(package)
    except (PackageNotFoundError, ValueError):
        return False
    return True


def rosbag2_available(storage: str, installed=ros_package_installed, which=shutil.which) -> bool:
    """``ros2 bag record --storage <storage>`` can run: the ros2 command, its bag verb and the
    storage plug-in are installed."""
    plugin = {"mcap": "rosbag2_storage_mcap", "sqlite3": "rosbag2_storage_default_plugins"}[storage]
    return bool(which("ros2")) and installed("ros2bag") and installed(plugin)


def node_parameters(params_file: str | os.PathLike, node_name: str = "vla_pruner_policy") -> dict:
    """One node's parameters in a ROS parameter file, by their dotted ROS names (the file nests
    ``prune: {method: ...}``; the node sees ``prune.method``). {} when the file has none for it."""
    data = yaml.safe_load(Path(params_file).read_text()) or {}
    flat: dict = {}

    def walk(prefix: str, mapping: dict) -> None:
        for key, value in mapping.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            else:
                flat[f"{prefix}{key}"] = value

    walk("", (data.get(node_name) or {}).get("ros__parameters") or {})
    return flat


def pruning_in(params_file: str, node_name: str = "vla_pruner_policy") -> dict:
    """The ``prune.*`` settings of a policy parameter file, without the prefix ({} when none)."""
    return {name[len("prune."):]: value for name, value in node_parameters(params_file, node_name).items()
            if name.startswith("prune.")}


def shipped_policy_parameters(values: dict[str, str], resolved: dict[str, str]) -> str | None:
    """config/sim_reach.yaml (config/sim_pregrasp.yaml for sim_task:=pregrasp) when the launch runs
    that task's shipped sim policy by default (no ``checkpoint:=`` and no ``params_file:=`` given),
    else None.

    policy.yaml's pruning defaults are the paper's method for a real OFT checkpoint; the shipped sim
    policy has its own measured best (its 200-episode paired table), so the demo and the sim launch
    run that. A user who names a checkpoint or a parameter file gets exactly what they named."""
    if values.get("checkpoint") or values.get("params_file"):
        return None
    checkpoint, params = SHIPPED_SIM_POLICIES[_policy_task(resolved)]
    if Path(resolved["checkpoint"]).parts[-len(checkpoint.parts):] != checkpoint.parts:
        return None  # the tiny fallback checkpoint (no shipped policy here): policy.yaml alone
    path = package_share() / params
    return str(path) if path.is_file() else None


def _policy_task(resolved: dict[str, str]) -> str:
    """The task whose shipped policy is the default: sim_task with use_sim:=true, else "above"."""
    return resolved.get("sim_task", DEFAULT_SIM_TASK) if _truthy(resolved["use_sim"]) else "above"


def default_instruction(task: str, scene_seed: int) -> str | None:
    """The instruction a launch of ``task`` starts with when none is given: None for "above"
    (policy.yaml's), for "pregrasp" the first target of ``draw_episode(scene_seed)`` in the text the
    pregrasp policies are trained on (sim.task.make_episode builds it, as SimEnv does)."""
    if check_sim_task(task) == "above":
        return None
    from vla_pruner_ros.sim.task import make_episode

    return make_episode(int(scene_seed), task).instruction


def resolve_arguments(values: dict[str, str]) -> dict[str, str]:
    """Launch argument values with defaults filled in and unknown names refused."""
    unknown = set(values) - set(LAUNCH_ARGUMENTS)
    if unknown:
        raise ValueError(f"unknown launch argument(s) {sorted(unknown)}; known: {sorted(LAUNCH_ARGUMENTS)}")
    resolved = {name: str(values.get(name, default)) for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    check_sim_task(resolved["sim_task"])
    share = package_share()
    resolved["checkpoint"] = resolved["checkpoint"] or default_checkpoint(_policy_task(resolved))
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


def plan_launch(values: dict[str, str], installed=ros_package_installed, which=shutil.which) -> LaunchPlan:
    """The nodes, includes, recorder and RViz that these launch arguments ask for.

    Everything an option needs from outside this package (rviz2, xarm_ros2, realsense2_camera) is
    checked here, before anything starts: a launch that fails half-way would leave the nodes it
    already started running. ``installed(package)`` and ``which(command)`` are the look-ups (the
    ament index and PATH by default).
    """
    args = resolve_arguments(values)
    use_sim = _truthy(args["use_sim"])
    autostart = _truthy(args["autostart"]) if args["autostart"] else use_sim
    rviz = _truthy(args["rviz"])
    record = _truthy(args["record"])
    # Parameter files first, then the launch's own values (ROS applies them in order: last wins).
    overrides = {"checkpoint": args["checkpoint"], "robot_config": args["robot_config"], "autostart": autostart}
    task = args["sim_task"] if use_sim else None
    instruction = args["instruction"] or (default_instruction(task, int(args["scene_seed"])) if task else None)
    if instruction:
        overrides["instruction"] = instruction
    shipped = shipped_policy_parameters(values, args)
    policy_parameters: list = [args["params_file"], *([shipped] if shipped else []), overrides]
    nodes = [NodeSpec("policy_node", "vla_pruner_policy", policy_parameters)]
    includes: list[IncludeSpec] = []
    if use_sim:
        nodes.append(NodeSpec("sim_xarm6", "sim_xarm6", [{"robot_config": args["robot_config"]}]))
        nodes.append(NodeSpec("sim_cameras", "sim_cameras", [{"scene_seed": int(args["scene_seed"]), "task": task}]))
    else:
        if not args["robot_ip"]:
            raise LaunchRefused("use_sim:=false needs robot_ip:=<address of the xArm controller box>")
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
    storage = args["record_storage"]
    if record and storage not in ("mcap", "sqlite3"):
        raise LaunchRefused(f"record_storage must be mcap or sqlite3, got {storage!r}")
    # What the options need, all checked before anything starts.
    needs = [(include.package, _INSTALL_HINTS.get(include.package, ""), f"use_sim:=false ({include.launch_file})"
              if include.package == "xarm_controller" else "realsense:=true") for include in includes]
    if rviz:
        needs.append(("rviz2", "sudo apt install ros-$ROS_DISTRO-rviz2", "rviz:=true"))
    missing = {package: (hint, option) for package, hint, option in needs if not installed(package)}
    if missing:
        package, (hint, option) = next(iter(missing.items()))
        more = f" (also missing: {', '.join(list(missing)[1:])})" if len(missing) > 1 else ""
        raise LaunchRefused(f"{option} needs the ROS 2 package {package}, which is not installed{more}; "
                            f"nothing was started. Install it ({hint}) or leave the option out")
    plan = LaunchPlan(nodes, includes, None, None)
    if task and task != "above":
        plan.messages.append(f"sim task {task}, scene seed {args['scene_seed']}: instruction {instruction!r}")
    if shipped:
        prune = pruning_in(shipped)
        shipped_params = SHIPPED_SIM_POLICIES[_policy_task(args)][1]
        # Settings besides pruning that the file changes (pregrasp: actions_per_step), named so a user
        # comparing against policy.yaml sees them.
        others = {name: value for name, value in node_parameters(shipped).items() if not name.startswith("prune.")}
        also = "; also " + ", ".join(f"{name} {value}" for name, value in sorted(others.items())) if others else ""
        plan.messages.append(f"shipped sim policy: pruning {prune.get('method', '?')} keep {prune.get('keep_ratio', '?')} "
                             f"from {shipped_params}, its closed-loop table's choice{also} (others: params_file:=, or "
                             "the demo's --method/--keep-ratio)")
    if record:
        topics = record_topics()
        if rosbag2_available(storage, installed, which):
            command = ["ros2", "bag", "record", "--storage", storage]
            if args["record_dir"]:
                command += ["-o", args["record_dir"]]
            plan.record_command = command + topics
            plan.record_tool = "ros2 bag record"
            plan.messages.append(f"recording with ros2 bag record ({storage})")
        else:
            # Same topics and storage, written by this package's own recorder (rclpy + rosbags).
            command = [sys.executable, "-m", f"{PACKAGE}.tools.cli", "record", "--storage", storage]
            if args["record_dir"]:
                command += ["-o", args["record_dir"]]
            plan.record_command = command + ["--topics"] + topics
            plan.record_tool = "vla-pruner record"
            plan.messages.append(f"rosbag2 (ros2 bag, {storage} storage) is not installed: recording with "
                                 f"vla-pruner record ({storage}) instead")
    if rviz:
        plan.rviz_config = str(package_share() / "config" / "vla_pruner.rviz")
    return plan


_INSTALL_HINTS = {
    "xarm_controller": "build xarm_ros2 in this workspace: https://github.com/xArm-Developer/xarm_ros2",
    "realsense2_camera": "sudo apt install ros-$ROS_DISTRO-realsense2-camera",
}
