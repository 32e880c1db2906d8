"""Pure logic of the ROS layer (no rclpy import): parameters, robot mapping, safety,
input freshness, image conversion, overlays and the per-step policy runner.

The nodes in ``vla_pruner_ros.nodes`` translate messages to and from these functions;
the offline replay tool calls the same functions on messages read from a bag.
"""
