"""Start the VLA-Pruner policy for the xArm6, on the simulated arm (default) or a real one.

    ros2 launch vla_pruner_ros xarm6.launch.py                       # simulated arm + cameras
    ros2 launch vla_pruner_ros xarm6.launch.py use_sim:=false robot_ip:=192.168.1.xxx realsense:=true
    ros2 launch vla_pruner_ros xarm6.launch.py record:=true rviz:=true
    ros2 launch vla_pruner_ros xarm6.launch.py sim_task:=pregrasp checkpoint:=<a pregrasp policy>

The decisions live in vla_pruner_ros.control.launch_logic (unit-tested); this file only turns
its plan into launch actions.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, LogInfo, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from vla_pruner_ros.control.launch_logic import EXIT_WITH_PARENT_ENV, LAUNCH_ARGUMENTS, plan_launch

# Every process started here stops (SIGINT) when this launch process dies, however it dies.
_ENV = {EXIT_WITH_PARENT_ENV: "1"}


def _setup(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    # Checks everything the options need (rviz2, xarm_ros2, ...) and raises a one-line reason
    # before any action is returned: a refused launch starts nothing.
    plan = plan_launch(values)
    actions = [LogInfo(msg=message) for message in plan.messages]
    actions += [
        Node(package=spec.package, executable=spec.executable, name=spec.name,
             parameters=spec.parameters, remappings=spec.remappings, output="screen", emulate_tty=True,
             additional_env=_ENV)
        for spec in plan.nodes
    ]
    for include in plan.includes:
        source = PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare(include.package), "launch", include.launch_file]))
        actions.append(IncludeLaunchDescription(source, launch_arguments=include.arguments.items()))
    if plan.record_command:
        actions.append(ExecuteProcess(cmd=plan.record_command, output="screen", additional_env=_ENV))
    if plan.rviz_config:
        actions.append(Node(package="rviz2", executable="rviz2", arguments=["-d", plan.rviz_config], output="log"))
    return actions


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=text)
                for name, (default, text) in LAUNCH_ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=_setup)])
