"""``vla-pruner demo``: the hardware-free system without ``ros2 launch``.

Starts the nodes that ``launch/xarm6.launch.py use_sim:=true`` starts (same plan, from
``control.launch_logic``) as child processes, then prints one line per policy step
(method, keep ratio, tokens kept, latency, distance of the gripper to the named cube) until
Ctrl-C. Type a new instruction and press Enter to change the task while it runs.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def add_arguments(parser) -> None:
    from vla_pruner_ros.control.launch_logic import DEFAULT_SIM_TASK, SIM_TASKS

    parser.add_argument("--checkpoint", default="",
                        help="OFT checkpoint directory (default: the shipped sim policy of --task)")
    parser.add_argument("--task", default=DEFAULT_SIM_TASK, choices=SIM_TASKS,
                        help="simulated task (launch argument sim_task): above = reach over the named cube of three, "
                             "pregrasp = close the gripper square on the named one of four cubes ('left red', ...); "
                             f"default {DEFAULT_SIM_TASK}")
    parser.add_argument("--method", default=None,
                        help="pruning method (default: config/policy.yaml's), with PrunerConfig fields as in eval-sim: "
                             "METHOD:FIELD=VALUE..., e.g. vla_pruner:target_ms=30:min_keep_ratio=0.1 (each field "
                             "becomes the node's prune.* parameter)")
    parser.add_argument("--keep-ratio", type=float, default=None, help="fraction of visual tokens kept")
    parser.add_argument("--instruction", default="",
                        help="task instruction at start-up (default: config/policy.yaml's; for --task pregrasp, "
                             "the seed's first target as in eval-sim)")
    parser.add_argument("--scene-seed", type=int, default=0, help="seed of the simulated cube layout")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    parser.add_argument("--launch-arg", action="append", default=[], metavar="NAME:=VALUE",
                        help="any other launch argument of xarm6.launch.py (repeatable)")
    parser.add_argument("--log-dir", default="", help="where the nodes' logs go (default: $ROS_LOG_DIR/demo)")
    parser.add_argument("--stats-csv", default="",
                        help="also write every PrunerStats message (one row per policy step) to this CSV file")


def method_parameters(method: str) -> dict:
    """The policy node's ``prune.*`` parameters for ``--method`` (a method or a variant
    ``METHOD:FIELD=VALUE...``, validated like eval-sim's); ValueError naming the problem."""
    from vla_pruner_ros.pruning.config import pruner_setting
    from vla_pruner_ros.pruning.variants import split_method

    name, fields = split_method(method)
    parameters = {"prune.method": name}
    for field, value in fields.items():
        ros_name = pruner_setting(field).ros_name
        if ros_name is None:
            raise ValueError(f"{method!r}: {field} is not a policy node parameter (an offline-only setting)")
        parameters[ros_name] = list(value) if isinstance(value, tuple) else value
    return parameters


def _launch_values(args) -> dict[str, str]:
    values = {"use_sim": "true", "scene_seed": str(args.scene_seed), "sim_task": args.task}
    if args.checkpoint:
        values["checkpoint"] = args.checkpoint
    if args.instruction:
        values["instruction"] = args.instruction
    for item in args.launch_arg:
        if ":=" not in item:
            raise SystemExit(f"--launch-arg expects NAME:=VALUE, got {item!r}")
        name, value = item.split(":=", 1)
        values[name] = value
    return values


def sim_scene(plan) -> dict:
    """The simulated cameras' ``scene_seed`` and ``task`` in a plan: the scene the monitor judges
    (also when they were given as --launch-arg)."""
    cameras = next((spec for spec in plan.nodes if spec.executable == "sim_cameras"), None)
    if cameras is None:  # use_sim:=false given as --launch-arg: no scene to judge
        return {"scene_seed": 0, "task": "above"}
    return {name: cameras.parameters[0][name] for name in ("scene_seed", "task")}


def _parent_death_signal():
    """A pre-exec hook (Linux) that makes the child get SIGINT when the demo dies without stopping
    it (e.g. SIGKILL), so no node keeps running, and publishing, after its demo is gone. libc is
    looked up here, in the parent: the hook itself runs between fork and exec and must not import
    (the demo has DDS threads by then)."""
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGINT)  # 1 = PR_SET_PDEATHSIG


class _Children:
    """Child node processes in their own sessions, stopped with SIGINT (clean shutdown)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self._pre_exec = _parent_death_signal()

    def start(self, name: str, command: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "w")
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True, preexec_fn=self._pre_exec)

    def exited(self) -> list[tuple[str, int]]:
        return [(name, p.returncode) for name, p in self.processes.items() if p.poll() is not None]

    def log_tail(self, name: str, lines: int = 15) -> str:
        text = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        for name, process in self.processes.items():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"[demo] {name} did not stop in {timeout:.0f} s: killing it", file=sys.stderr)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def run(args) -> int:
    from vla_pruner_ros.control.launch_logic import node_parameters, plan_launch

    values = _launch_values(args)
    try:
        plan = plan_launch(values)
    except ValueError as error:  # a bad launch argument, no checkpoint, a missing package: one line
        print(f"[demo] error: {error}", file=sys.stderr)
        return 2
    policy_spec = next(spec for spec in plan.nodes if spec.executable == "policy_node")
    scene = sim_scene(plan)
    overrides = policy_spec.parameters[-1]  # the launch's own values come after the parameter files
    if args.method:
        try:
            overrides.update(method_parameters(args.method))
        except ValueError as error:
            print(f"[demo] error: --method: {error}", file=sys.stderr)
            return 2
    if args.keep_ratio is not None:
        overrides["prune.keep_ratio"] = args.keep_ratio
    log_dir = Path(args.log_dir or Path(os.environ.get("ROS_LOG_DIR", "/tmp")) / "demo")
    log_dir.mkdir(parents=True, exist_ok=True)

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from vla_pruner_ros.tools.monitor import DemoMonitor

    children = _Children(log_dir)
    checkpoint = overrides["checkpoint"]
    print(f"[demo] simulated xArm6 + cameras + policy node; checkpoint: {checkpoint}")
    print(f"[demo] node logs: {log_dir}/<node>.log")
    for message in plan.messages:
        print(f"[demo] {message}")
    if overrides.get("dtype", "auto") == "auto" and overrides.get("device", "auto") in ("auto", "cpu"):
        from vla_pruner_ros.model.precision import resolve_dtype

        print(f"[demo] policy dtype: {resolve_dtype('auto', 'cpu').describe()}")
    # Our own signal handling: rclpy's would shut the context down under a running spin_once
    # (a race that surfaces as a random RCLError). Ctrl-C and SIGTERM ask the loop to stop, then the
    # nodes are stopped in order. (Set explicitly: a shell starts background jobs with SIGINT ignored.)
    stop = threading.Event()
    signalled: list[int] = []

    def request_stop(signum, frame) -> None:
        signalled.append(signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
    # The monitor subscribes before the nodes start, so that it sees the policy's first steps.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    instruction = overrides.get("instruction") or str(
        node_parameters(policy_spec.parameters[0], policy_spec.name).get("instruction", ""))
    monitor = DemoMonitor(scene_seed=scene["scene_seed"], policy_node=policy_spec.name, instruction=instruction,
                          stats_csv=args.stats_csv or None, task=scene["task"])
    for spec in plan.nodes:
        children.start(spec.name, spec.command())
    print("[demo] loading the policy ... (type an instruction + Enter to change the task, Ctrl-C to stop)")
    started = time.monotonic()
    code = 0
    try:
        while not stop.is_set():
            rclpy.spin_once(monitor, timeout_sec=0.1)
            for name, returncode in children.exited():
                print(f"[demo] {name} exited with code {returncode}; its log ends with:\n"
                      f"{children.log_tail(name)}", file=sys.stderr)
                code = 1
                stop.set()
            if args.duration and time.monotonic() - started > args.duration:
                stop.set()
            if sys.stdin.isatty() and select.select([sys.stdin], [], [], 0)[0]:
                line = sys.stdin.readline().strip()
                if line:
                    monitor.send_instruction(line)
    finally:
        if signalled:
            print()  # past the terminal's "^C"
        print("[demo] stopping nodes ...")
        children.stop()
        monitor.print_summary()
        monitor.close()
        monitor.destroy_node()
        rclpy.try_shutdown()
    return code
