"""Shared pytest set-up.

ROS tests use real rclpy over Fast DDS on loopback. Each test session gets its own
ROS_DOMAIN_ID so that a demo (or another test run) on the same machine cannot cross-talk.
"""
import os

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
# dtype "auto" means bf16 on a CPU with native bf16 and float32 elsewhere: pin it to float32 so the
# suite computes the same numbers on every machine (node subprocesses inherit it). Tests of the bf16
# path ask for bfloat16 explicitly; test_precision.py tests "auto" itself with the probe mocked.
os.environ.setdefault("VLA_PRUNER_AUTO_DTYPE", "float32")
if "VLA_PRUNER_TEST_KEEP_DOMAIN" not in os.environ:
    os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny OFT-format checkpoint (random weights), written once per test session."""
    from vla_pruner_ros.model import make_checkpoint

    return make_checkpoint("tiny", tmp_path_factory.mktemp("checkpoints") / "tiny", seed=0)
