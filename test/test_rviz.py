"""What RViz shows with config/vla_pruner.rviz: the simulated arm, table and cubes as markers in the
fixed frame, and both retained-token overlays; every display's topic is one a node publishes."""
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from vla_pruner_ros.sim.kinematics import HOME_JOINTS, XArm6Kinematics
from vla_pruner_ros.sim.markers import FRAME_ID, arm_primitives, quaternion_from_matrix, scene_primitives
from vla_pruner_ros.sim.scene import Scene

ROOT = Path(__file__).resolve().parents[1]


def _rotation(q):
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def test_quaternions_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        a *= np.sign(np.linalg.det(a))
        assert np.allclose(_rotation(quaternion_from_matrix(a)), a, atol=1e-9)


def test_markers_place_cubes_and_arm_where_the_simulation_has_them():
    scene = Scene(seed=3)
    table, *cubes = scene_primitives(scene)
    assert table.position[2] < 0 and table.scale[0] > 1.0  # table top at z = 0, under the arm
    assert len(cubes) == len(scene.cubes)
    for shape, cube in zip(cubes, scene.cubes):
        assert np.allclose(shape.position, cube.position) and np.allclose(shape.scale, cube.size)
        assert shape.rgba[:3] == pytest.approx(tuple(c / 255 for c in cube.rgb))
    frames = XArm6Kinematics().forward_kinematics(np.array(HOME_JOINTS))
    arm = arm_primitives(frames, 0.0)
    cylinders = [s for s in arm if s.kind == "cylinder"]
    assert len(cylinders) >= 8 and sum(s.kind == "cube" for s in arm) == 3  # gripper body + 2 fingers
    for shape in cylinders:  # each cylinder's +z axis runs along its capsule, length = scale.z
        axis = _rotation(shape.orientation)[:, 2]
        ends = [np.asarray(shape.position) + sign * axis * shape.scale[2] / 2 for sign in (-1, 1)]
        spheres = [np.asarray(s.position) for s in arm if s.kind == "sphere"]
        assert all(min(np.linalg.norm(e - p) for p in spheres) < 1e-9 for e in ends)
    # The gripper is at the tool: its body is within a few cm of the TCP frame.
    tcp = frames[7, :3, 3]
    assert min(np.linalg.norm(np.asarray(s.position) - tcp) for s in arm if s.kind == "cube") < 0.1


def test_rviz_config_shows_markers_and_both_overlays_in_the_markers_frame():
    config = yaml.safe_load((ROOT / "config" / "vla_pruner.rviz").read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == FRAME_ID
    enabled = {d["Topic"]["Value"]: d["Class"] for d in manager["Displays"] if d.get("Enabled") and "Topic" in d}
    assert enabled == {
        "/sim_cameras/scene_markers": "rviz_default_plugins/MarkerArray",
        "/vla_pruner_policy/overlay/fixed": "rviz_default_plugins/Image",
        "/vla_pruner_policy/overlay/wrist": "rviz_default_plugins/Image",
    }
    # The node names behind those topics are the launch file's.
    from vla_pruner_ros.control.launch_logic import plan_launch

    names = {spec.executable: spec.name for spec in plan_launch({}).nodes}
    assert names["sim_cameras"] == "sim_cameras" and names["policy_node"] == "vla_pruner_policy"


def test_sim_cameras_publishes_the_markers_rviz_displays():
    rclpy = pytest.importorskip("rclpy")
    try:
        from visualization_msgs.msg import Marker, MarkerArray
    except ImportError:
        pytest.skip("visualization_msgs is not installed (requirements.txt installs it)")
    from sensor_msgs.msg import Image

    from ros_harness import RosHarness, wait_for
    from vla_pruner_ros.nodes.sim_cameras import SimCamerasNode

    harness = RosHarness(threads=3)
    try:
        cameras = harness.add(SimCamerasNode(context=harness.context))
        probe = harness.node("rviz_probe")
        got, frames = [], []
        probe.create_subscription(MarkerArray, "/sim_cameras/scene_markers", got.append, 2)
        probe.create_subscription(Image, "/fixed_camera/color/image_raw", lambda m: frames.append(m.header.frame_id), 2)
        wait_for(lambda: got and frames, 30.0, message="markers and a camera frame")
        markers = got[-1].markers
        assert {m.ns for m in markers} == {"scene", "arm"}
        assert all(m.header.frame_id == FRAME_ID and m.action == Marker.ADD for m in markers)
        assert sum(m.ns == "scene" for m in markers) == 1 + 3  # table + three cubes
        assert frames[-1] == "fixed_camera_color_optical_frame"
        del cameras
    finally:
        harness.close()
        time.sleep(0.1)
