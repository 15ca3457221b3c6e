"""Simulation bringup: the MuJoCo ALOHA (sim_node) and policy_node, wired by the robot profile.

ros2 launch vla_ros sim.launch.py checkpoint:=/path/to/ckpt
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    config = FindPackageShare("vla_ros")
    return LaunchDescription([
        DeclareLaunchArgument("profile", default_value="aloha_sim",
                              description="robot profile name (config/<name>.yaml) or path"),
        DeclareLaunchArgument("checkpoint", description="policy checkpoint directory"),
        DeclareLaunchArgument("instruction", default_value="", description="language instruction"),
        DeclareLaunchArgument("task", default_value="transfer_cube",
                              description="simulated task: transfer_cube or insertion"),
        Node(
            package="vla_ros",
            executable="sim_node",
            name="sim_node",
            output="screen",
            parameters=[
                PathJoinSubstitution([config, "config", "sim_node.yaml"]),
                {"profile": LaunchConfiguration("profile"), "task": LaunchConfiguration("task")},
            ],
        ),
        Node(
            package="vla_ros",
            executable="policy_node",
            name="policy_node",
            output="screen",
            parameters=[
                PathJoinSubstitution([config, "config", "policy_node.yaml"]),
                {
                    "profile": LaunchConfiguration("profile"),
                    "checkpoint": LaunchConfiguration("checkpoint"),
                    "instruction": LaunchConfiguration("instruction"),
                },
            ],
        ),
    ])
