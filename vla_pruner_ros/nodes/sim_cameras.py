"""Simulated fixed and wrist cameras: renders the table, cubes and the arm at its current
joint state (``vla_pruner_ros.sim.render``) and publishes both views as rgb8 images. For RViz it
also publishes the same workcell as a ``visualization_msgs/MarkerArray`` on ``~/scene_markers``
(frame ``link_base``), where visualization_msgs is installed. The ``task`` parameter picks the
scene: "above" (three cubes, ``sim.scene.Scene``) or "pregrasp" (four cubes, two colours x two,
``sim.pregrasp.PregraspScene``), both from ``scene_seed``."""
from __future__ import annotations

import threading

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState

from vla_pruner_ros.control.images import rgb_to_image_fields
from vla_pruner_ros.control.inputs import joint_positions_from_msg, optional_joint_position
from vla_pruner_ros.sim.kinematics import HOME_JOINTS, JOINT_NAMES, XArm6Kinematics
from vla_pruner_ros.sim.markers import FRAME_ID, arm_primitives, scene_primitives
from vla_pruner_ros.sim.render import Renderer
from vla_pruner_ros.sim.robot import GRIPPER_CLOSED_ANGLE, GRIPPER_JOINT_NAME
from vla_pruner_ros.sim.task import SCENES, make_scene

from ._common import descriptor, spin_node

VIEWS = {"fixed": "/fixed_camera/color/image_raw", "wrist": "/wrist_camera/color/image_raw"}


class SimCamerasNode(Node):
    def __init__(self, node_name: str = "sim_cameras", **kwargs):
        super().__init__(node_name, **kwargs)
        self.declare_parameter("scene_seed", 0, descriptor("Seed of the cube layout.", True, 0, 2**31 - 1))
        self.declare_parameter("task", "above", descriptor(
            "Simulated task whose scene is rendered: above (three cubes) or pregrasp (four cubes).", True,
            constraints="one of: " + ", ".join(SCENES)))
        self.declare_parameter("width", 224, descriptor("Image width (px).", True, 16, 1920))
        self.declare_parameter("height", 224, descriptor("Image height (px).", True, 16, 1080))
        self.declare_parameter("rate", 30.0, descriptor("Frames per second of each view.", True, 0.1, 120.0))
        for view, topic in VIEWS.items():
            self.declare_parameter(f"topics.{view}", topic, descriptor(f"Topic of the {view} view.", True))
            # Live switch, e.g. to see how the policy node reacts to a camera that stops.
            self.declare_parameter(f"publish.{view}", True, descriptor(f"Publish the {view} view."))
        task = self.get_parameter("task").value
        self._scene = make_scene(task, self.get_parameter("scene_seed").value)
        self._kinematics = XArm6Kinematics()
        self._renderer = Renderer(self.get_parameter("width").value, self.get_parameter("height").value)
        self._joints = np.array(HOME_JOINTS, dtype=np.float64)
        self._gripper = 0.0
        self._lock = threading.Lock()
        self.create_subscription(JointState, "/joint_states", self._on_joints, qos_profile_sensor_data)
        # Cameras publish reliably, like realsense2_camera's default; subscribers pick their QoS.
        qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self._image_pubs = {view: self.create_publisher(Image, self.get_parameter(f"topics.{view}").value, qos)
                            for view in VIEWS}
        self.create_timer(1.0 / self.get_parameter("rate").value, self._tick)
        self.declare_parameter("markers_rate", 10.0, descriptor(
            "RViz markers of the arm, table and cubes per second (0: none).", True, 0.0, 60.0))
        self._markers_pub = None
        markers_rate = self.get_parameter("markers_rate").value
        try:
            from visualization_msgs.msg import Marker, MarkerArray
        except ImportError:  # a minimal install without visualization_msgs: images only
            Marker = MarkerArray = None
            if markers_rate > 0:
                self.get_logger().info("visualization_msgs is not installed: no RViz markers")
        if MarkerArray is not None and markers_rate > 0:
            self._marker_types = Marker, MarkerArray
            self._markers_pub = self.create_publisher(MarkerArray, "~/scene_markers", 2)
            self._scene_shapes = scene_primitives(self._scene)
            self.create_timer(1.0 / markers_rate, self._publish_markers)
        names = getattr(self._scene, "names", None) or [c.colour for c in self._scene.cubes]
        colours = ", ".join(f"{name} at ({c.position[0]:.2f}, {c.position[1]:.2f})"
                            for name, c in zip(names, self._scene.cubes))
        scene = "" if task == "above" else f"{task} "
        self.get_logger().info(f"simulated cameras, {scene}scene seed {self._scene.seed}: cubes {colours}")

    def _on_joints(self, msg: JointState) -> None:
        try:
            joints = joint_positions_from_msg(msg, JOINT_NAMES)
        except ValueError:
            return
        gripper = optional_joint_position(msg, GRIPPER_JOINT_NAME)
        with self._lock:
            self._joints = joints
            if gripper is not None:
                self._gripper = min(1.0, max(0.0, gripper / GRIPPER_CLOSED_ANGLE))

    def _tick(self) -> None:
        with self._lock:
            joints, gripper = self._joints.copy(), self._gripper
        frames = self._kinematics.forward_kinematics(joints)
        views = self._renderer.render_views(self._scene, frames, gripper)
        stamp = self.get_clock().now().to_msg()
        for view, publisher in self._image_pubs.items():
            if not self.get_parameter(f"publish.{view}").value:
                continue
            msg = Image(**rgb_to_image_fields(views[view]))
            msg.header.stamp = stamp
            msg.header.frame_id = f"{view}_camera_color_optical_frame"  # realsense2_camera's name
            publisher.publish(msg)


    def _publish_markers(self) -> None:
        Marker, MarkerArray = self._marker_types
        with self._lock:
            joints, gripper = self._joints.copy(), self._gripper
        shapes = {"scene": self._scene_shapes,
                  "arm": arm_primitives(self._kinematics.forward_kinematics(joints), gripper)}
        kinds = {"cube": Marker.CUBE, "cylinder": Marker.CYLINDER, "sphere": Marker.SPHERE}
        stamp = self.get_clock().now().to_msg()
        markers = []
        for namespace, primitives in shapes.items():
            for index, shape in enumerate(primitives):
                marker = Marker(ns=namespace, id=index, type=kinds[shape.kind], action=Marker.ADD)
                marker.header.frame_id = FRAME_ID
                marker.header.stamp = stamp
                marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = shape.position
                (marker.pose.orientation.x, marker.pose.orientation.y, marker.pose.orientation.z,
                 marker.pose.orientation.w) = shape.orientation
                marker.scale.x, marker.scale.y, marker.scale.z = shape.scale
                marker.color.r, marker.color.g, marker.color.b, marker.color.a = shape.rgba
                markers.append(marker)
        self._markers_pub.publish(MarkerArray(markers=markers))


def main(args=None) -> int:
    return spin_node(SimCamerasNode, args, num_threads=1)  # one thread: see spin_node


if __name__ == "__main__":
    raise SystemExit(main())
