"""pip install of the pure-Python part (pruning core, model, sim, tools) for people without ROS.

ROS users build this package with colcon instead (CMakeLists.txt: messages + Python);
colcon ignores this file for an ament_cmake package.
"""
from setuptools import setup

setup()
