"""ROS 2 nodes: thin translation between messages and the pure core (``control``, ``model``, ``sim``)."""
