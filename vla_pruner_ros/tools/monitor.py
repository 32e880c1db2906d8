"""The demo's console: one line per policy step, diagnostics when they change, and the
instruction typed by the user forwarded to the policy. What a line says about the named cube, and
whether the task's success test held, is ``tools/demo_target`` (no ROS); this node only feeds it."""
from __future__ import annotations

import csv
import math
import statistics

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from vla_pruner_ros.control.runner import format_stats_line
from vla_pruner_ros.msg import PrunerStats
from vla_pruner_ros.sim.robot import GRIPPER_JOINT_NAME
from vla_pruner_ros.tools.demo_target import TargetTracker, gripper_fraction

_LEVELS = {DiagnosticStatus.OK: "OK", DiagnosticStatus.WARN: "WARN", DiagnosticStatus.ERROR: "ERROR",
           DiagnosticStatus.STALE: "STALE"}


def stats_to_fields(msg: PrunerStats) -> dict:
    return {name: getattr(msg, name) for name in msg.get_fields_and_field_types()}


class DemoMonitor(Node):
    def __init__(self, scene_seed: int = 0, policy_node: str = "vla_pruner_policy", instruction: str = "",
                 stats_csv: str | None = None, context=None, task: str = "above"):
        super().__init__("vla_pruner_demo_monitor", context=context)
        # Per instruction: the first step at which eval-sim's success test held, and the closest pass.
        self._target = TargetTracker(task, scene_seed)
        self._joints: np.ndarray | None = None
        self._gripper = 0.0  # 0 open .. 1 closed, from the gripper joint of /joint_states
        self._instruction = instruction
        self._last_diag: tuple[int, str] | None = None
        self._latencies: list[float] = []
        self._input_ages: list[float] = []  # ms: oldest input of a step when its stats arrive here
        self._holds = 0  # diagnostics that went to ERROR (a held step: stale or bad input)
        self._steps = 0
        # Latency budget (prune.target_ms > 0), each step after warm-up: (target_ms, total_ms, chosen_keep_ratio)
        self._budget: list[tuple[float, float, float]] = []
        self._csv_file = open(stats_csv, "w", newline="") if stats_csv else None
        self._csv: csv.DictWriter | None = None
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(PrunerStats, f"/{policy_node}/stats", self._on_stats, reliable)
        self.create_subscription(JointState, "/joint_states", self._on_joints, qos_profile_sensor_data)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, reliable)
        self.create_subscription(String, f"/{policy_node}/instruction", self._on_instruction, QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        # Latched, like a `ros2 topic pub` a user would expect a late recorder to catch.
        self._instruction_pub = self.create_publisher(String, "/instruction", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))

    def send_instruction(self, text: str) -> None:
        self._instruction_pub.publish(String(data=text))
        print(f"[demo] instruction -> {text!r}")

    def _on_instruction(self, msg: String) -> None:
        if msg.data != self._instruction:
            self._target.reset()
        self._instruction = msg.data

    def _on_joints(self, msg: JointState) -> None:
        names = list(msg.name)
        if all(f"joint{i}" in names for i in range(1, 7)):
            self._joints = np.array([msg.position[names.index(f"joint{i}")] for i in range(1, 7)])
        if GRIPPER_JOINT_NAME in names and len(msg.position) > names.index(GRIPPER_JOINT_NAME):
            self._gripper = gripper_fraction(msg.position[names.index(GRIPPER_JOINT_NAME)])

    def _target_text(self, step_index: int) -> str:
        return self._target.step(self._instruction, self._joints, self._gripper, step_index)

    def _on_stats(self, msg: PrunerStats) -> None:
        fields = stats_to_fields(msg)
        self._steps += 1
        if not fields["warmup"]:
            self._latencies.append(fields["total_ms"])
            if fields["target_ms"] > 0:
                self._budget.append((fields["target_ms"], fields["total_ms"], fields["chosen_keep_ratio"]))
        if self._csv_file is not None:
            self._write_row(fields)
        if msg.input_stamps:
            oldest = min(stamp.sec + stamp.nanosec * 1e-9 for stamp in msg.input_stamps)
            self._input_ages.append((self.get_clock().now().nanoseconds * 1e-9 - oldest) * 1e3)
        print(format_stats_line(fields) + self._target_text(fields["step_index"]), flush=True)

    def _write_row(self, fields: dict) -> None:
        # One row per step: the scalar fields, the header stamp, and when the monitor got it (wall clock,
        # so that a run can be lined up with what else the machine did, e.g. a competing load).
        row = {"received_s": self.get_clock().now().nanoseconds * 1e-9,
               "stamp_s": fields["header"].stamp.sec + fields["header"].stamp.nanosec * 1e-9}
        row.update({name: value for name, value in fields.items()
                    if name not in ("header", "input_names", "input_stamps")})
        if self._csv is None:
            self._csv = csv.DictWriter(self._csv_file, fieldnames=list(row))
            self._csv.writeheader()
        self._csv.writerow(row)
        self._csv_file.flush()

    def close(self) -> None:
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = None

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if not status.name.endswith(": policy"):
                continue
            key = (status.level, status.message)
            if key != self._last_diag:
                self._last_diag = key
                level = _LEVELS.get(status.level, str(status.level))
                self._holds += status.level == DiagnosticStatus.ERROR
                print(f"[policy {level}] {status.message}", flush=True)

    def print_summary(self) -> None:
        summary = self._target.summary()
        if summary is not None:
            print(summary)
        if self._latencies:
            print(f"[demo] {self._steps} steps; policy latency after warm-up: median "
                  f"{statistics.median(self._latencies):.1f} ms (min {min(self._latencies):.1f}, "
                  f"max {max(self._latencies):.1f})")
        else:
            print(f"[demo] {self._steps} steps")
        if self._budget:
            for target in sorted({t for t, _, _ in self._budget}):
                steps = [(ms, ratio) for t, ms, ratio in self._budget if t == target]
                within = sum(ms <= 1.05 * target for ms, _ in steps)
                ratios = [ratio for _, ratio in steps if not math.isnan(ratio)]
                chosen = (f"; chosen keep ratio median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
                          f"max {max(ratios):.2f})") if ratios else ""
                print(f"[demo] latency budget {target:g} ms: {within}/{len(steps)} steps after warm-up within +5 % "
                      f"({within / len(steps):.0%}){chosen}")
        if self._input_ages:
            print(f"[demo] age of a step's oldest input when its stats arrived: median "
                  f"{statistics.median(self._input_ages):.0f} ms, max {max(self._input_ages):.0f} ms; "
                  f"ERROR holds: {self._holds}")
