"""launch_testing: `xarm6.launch.py use_sim:=true` brings up the system, a trajectory arrives and
a parameter change takes effect.

Run with `launch_test test/xarm6_sim.launch_test.py` (colcon test does, through
add_launch_test, where launch_testing_ament_cmake is installed); test_launch_logic.py runs it
from the pytest suite where launch_testing is importable and skips with the reason otherwise.
"""
import os
import time
import unittest
from pathlib import Path

import pytest

import launch_testing
import launch_testing.actions
import launch_testing.asserts
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

import rclpy
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from trajectory_msgs.msg import JointTrajectory

from vla_pruner_ros.msg import RetainedTokenMask

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "xarm6.launch.py"


@pytest.mark.launch_test
def generate_test_description():
    arguments = {"use_sim": "true"}
    checkpoint = os.environ.get("VLA_PRUNER_TEST_CHECKPOINT")
    if checkpoint:
        arguments["checkpoint"] = checkpoint
    return LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
                                 launch_arguments=arguments.items()),
        launch_testing.actions.ReadyToTest(),
    ])


class TestSimulatedSystem(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.node = rclpy.create_node("launch_test_probe")

    @classmethod
    def tearDownClass(cls):
        cls.node.destroy_node()
        rclpy.shutdown()

    def _wait(self, store, predicate, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=0.1)
            if any(predicate(msg) for msg in store):
                return True
        return False

    def test_trajectory_arrives_and_keep_ratio_changes_the_mask(self):
        trajectories, masks = [], []
        self.node.create_subscription(JointTrajectory, "/xarm6_traj_controller/joint_trajectory",
                                      trajectories.append, 10)
        self.node.create_subscription(RetainedTokenMask, "/vla_pruner_policy/retained_tokens", masks.append, 10)
        self.assertTrue(self._wait(trajectories, lambda m: len(m.points) > 0, 120.0), "no trajectory arrived")
        client = self.node.create_client(SetParameters, "/vla_pruner_policy/set_parameters")
        self.assertTrue(client.wait_for_service(timeout_sec=10.0))
        request = SetParameters.Request(parameters=[Parameter("prune.keep_ratio", value=0.125).to_parameter_msg()])
        future = client.call_async(request)
        rclpy.spin_until_future_complete(self.node, future, timeout_sec=10.0)
        self.assertTrue(future.result().results[0].successful)
        masks.clear()
        self.assertTrue(self._wait(masks, lambda m: not m.warmup and len(m.kept_indices)
                                   == max(1, int(m.num_visual_tokens * 0.125 + 0.5)), 60.0),
                        "no mask with the new number of kept tokens")


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_nodes_exit_cleanly(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, 130])
