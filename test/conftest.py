"""Shared pytest set-up.

ROS tests use real rclpy over Fast DDS on loopback. Each test session gets its own
ROS_DOMAIN_ID so that a demo (or another test run) on the same machine cannot cross-talk.
"""
import os

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
if "VLA_PRUNER_TEST_KEEP_DOMAIN" not in os.environ:
    os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny OFT-format checkpoint (random weights), written once per test session."""
    from vla_pruner_ros.model import make_checkpoint

    return make_checkpoint("tiny", tmp_path_factory.mktemp("checkpoints") / "tiny", seed=0)
