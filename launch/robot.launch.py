"""Robot bringup: policy_node driving the real arms, configured by a params file.

ros2 launch vla_ros robot.launch.py checkpoint:=/path/to/ckpt instruction:="fold the towel"
The node starts DISARMED; arm it with: ros2 service call /policy_node/enable std_srvs/srv/SetBool "{data: true}"
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("profile", default_value="aloha_stationary",
                              description="robot profile name (config/<name>.yaml) or path"),
        DeclareLaunchArgument("checkpoint", description="policy checkpoint directory"),
        DeclareLaunchArgument("instruction", default_value="", description="language instruction"),
        DeclareLaunchArgument("dry_run", default_value="false",
                              description="publish to shadow topics instead of the arms"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("vla_ros"), "config", "policy_node.yaml"]),
            description="policy_node parameters"),
        Node(
            package="vla_ros",
            executable="policy_node",
            name="policy_node",
            output="screen",
            parameters=[
                LaunchConfiguration("params_file"),
                {
                    "profile": LaunchConfiguration("profile"),
                    "checkpoint": LaunchConfiguration("checkpoint"),
                    "instruction": LaunchConfiguration("instruction"),
                    "dry_run": LaunchConfiguration("dry_run"),
                },
            ],
        ),
    ])
