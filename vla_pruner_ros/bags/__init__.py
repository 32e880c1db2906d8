"""Bag I/O shared by the recorder (``vla-pruner record``) and the offline replay.

Pure Python on top of ``rosbags``: nothing here needs rclpy or a ROS build, except
``deserialize_ros`` which returns the rclpy message class a node would receive.

    from vla_pruner_ros.bags import open_bag, require_topics
    with open_bag("episode_0") as bag:          # directory, .mcap or .db3
        bag.require({"/joint_states": "sensor_msgs/msg/JointState"})
        for message in bag.messages(["/joint_states"]):
            joint_state = bag.deserialize(message)
"""
from .errors import BagError, BagWriteError, MessageTypeError
from .reader import BagInfo, BagMessage, BagReader, TopicSummary, describe, open_bag, require_topics
from .types import (
    deserialize,
    deserialize_ros,
    ensure_types,
    message_definition,
    normalize_type,
    own_message_types,
    ros_message_class,
    serialize,
    typestore,
)
from .writer import DEFAULT_RESERVE_BYTES, STORAGES, BagWriter, ros_type_name

__all__ = [
    "BagError", "BagWriteError", "MessageTypeError",
    "BagInfo", "BagMessage", "BagReader", "TopicSummary", "describe", "open_bag", "require_topics",
    "deserialize", "deserialize_ros", "ensure_types", "message_definition", "normalize_type",
    "own_message_types", "ros_message_class", "serialize", "typestore",
    "DEFAULT_RESERVE_BYTES", "STORAGES", "BagWriter", "ros_type_name",
]
