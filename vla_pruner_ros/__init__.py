"""vla_pruner_ros: OpenVLA-OFT with VLA-Pruner visual-token pruning for the xArm6.

The hand-written modules and the ``msg`` subpackage that colcon generates from
``msg/*.msg`` live in two different directories (the source tree and the install
tree).  ``extend_path`` lets ``import vla_pruner_ros.msg`` find the generated half
even when the source folder is first on ``sys.path`` (e.g. pytest from the repo root).
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
