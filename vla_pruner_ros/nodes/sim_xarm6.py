"""Simulated xArm6: follows JointTrajectory commands like xarm_ros2's xarm6_traj_controller
(velocity-limited) and publishes /joint_states at 100 Hz. The arm model is
``vla_pruner_ros.sim.robot.SimArm``; this node only translates messages."""
from __future__ import annotations

import threading
import time

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

from vla_pruner_ros.control.robot_config import load_robot_config
from vla_pruner_ros.sim.robot import GRIPPER_CLOSED_ANGLE, SimArm

from ._common import RateLimitedLogger, descriptor, spin_node


class SimXArm6Node(Node):
    def __init__(self, node_name: str = "sim_xarm6", **kwargs):
        super().__init__(node_name, **kwargs)
        self.declare_parameter("robot_config", "", descriptor("Robot config YAML (topics, joint names).", True))
        self.declare_parameter("publish_rate", 100.0, descriptor("Joint state rate (Hz).", True, 1.0, 1000.0))
        self.declare_parameter("max_joint_velocity", 3.14, descriptor(
            "Velocity limit of every simulated joint (rad/s).", True, 0.01, 10.0))
        robot = load_robot_config(self.get_parameter("robot_config").value or None)
        self._log = RateLimitedLogger(self.get_logger())
        self._arm = SimArm(velocity_limits=self.get_parameter("max_joint_velocity").value)
        self._lock = threading.Lock()
        self._joint_names = list(robot.joints)
        self._gripper_joint = robot.gripper_joint
        self._gripper_plan: tuple[float, list[float], list[float]] | None = None  # (received, times, 0..1 targets)
        # Commands: reliable, like the ros2_control controller's subscription.
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(JointTrajectory, robot.trajectory_topic, self._on_trajectory, reliable)
        self.create_subscription(JointTrajectory, robot.gripper_topic, self._on_gripper, reliable)
        self._state_pub = self.create_publisher(JointState, "/joint_states", reliable)
        self._last_tick = time.monotonic()
        self.create_timer(1.0 / self.get_parameter("publish_rate").value, self._tick)
        self.get_logger().info(f"simulated xArm6 listening on {robot.trajectory_topic}")

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        with self._lock:
            if not msg.points:
                # An empty trajectory stops the controller where the arm is (as ros2_control's does).
                self._arm.set_target(self._arm.joints.copy())
                return
            times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
            positions = [list(p.positions) for p in msg.points]
            try:
                self._arm.set_trajectory(times, positions, joint_names=list(msg.joint_names))
            except ValueError as error:
                self._log("warning", "trajectory", f"rejected trajectory: {error}")

    def _on_gripper(self, msg: JointTrajectory) -> None:
        if not msg.points or self._gripper_joint not in msg.joint_names:
            return
        index = list(msg.joint_names).index(self._gripper_joint)
        # Followed point by point in time, like the arm's trajectory and xarm_ros2's gripper trajectory
        # controller (not held at the first point: a chunk that closes the gripper along its points
        # would never close it). The model's gripper state is 0 (open) .. 1 (closed); the joint 0 .. 0.85 rad.
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        values = [min(1.0, max(0.0, p.positions[index] / GRIPPER_CLOSED_ANGLE)) for p in msg.points]
        if times[0] < 0 or any(b <= a for a, b in zip(times, times[1:])):
            self._log("warning", "gripper",
                      f"rejected gripper trajectory: times must be >= 0 and increasing, got {times}")
            return
        with self._lock:
            if times[0] > 0:  # from the target at receipt to the first point
                times, values = [0.0, *times], [self._arm.gripper_target, *values]
            self._gripper_plan = (time.monotonic(), times, values)

    def _tick(self) -> None:
        now = time.monotonic()
        dt = min(0.1, now - self._last_tick)  # a stalled timer must not teleport the arm
        self._last_tick = now
        with self._lock:
            if self._gripper_plan is not None:
                received, times, values = self._gripper_plan
                self._arm.set_gripper(float(np.interp(now - received, times, values)))
            if dt > 0:
                self._arm.step(dt)
            state = self._arm.joint_state(include_gripper=True)
        msg = JointState(name=state["name"], position=state["position"], velocity=state["velocity"])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._state_pub.publish(msg)


def main(args=None) -> int:
    return spin_node(SimXArm6Node, args, num_threads=1)  # one thread: see spin_node


if __name__ == "__main__":
    raise SystemExit(main())
