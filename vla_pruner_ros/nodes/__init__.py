"""ROS 2 nodes: thin translation between messages and the pure core (``control``, ``model``, ``sim``)."""
import sys as _sys

# `python -m vla_pruner_ros.nodes.<node>` (how the demo starts nodes): this package is imported
# while sys.argv[0] is still "-m", before the node module and its torch import. Take over
# SIGINT/SIGTERM now, so that a Ctrl-C during the imports is a clean exit (see _startup).
if _sys.argv[:1] == ["-m"]:
    from . import _startup

    _startup.begin()
