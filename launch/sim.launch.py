"""Simulation bringup: the MuJoCo ALOHA (sim_node) and policy_node, wired by the robot profile,
with arm_guard as the last hop before the simulated drivers, as on the robot.

ros2 launch vla_ros sim.launch.py checkpoint:=/path/to/ckpt

sim_node publishes the simulation time on /clock and policy_node and arm_guard run on it
(use_sim_time), as with Gazebo: stepping at wall-clock speed (real_time:=true) or as fast as it can,
the simulation and its commander share one clock, also when a loaded machine slows the simulation
below real time. sim_node also waits (up to 0.1 s) for the goal of each step while it is being
commanded (lockstep_timeout), so that no goal acts a step later than it was computed for. Arguments are checked before any process starts (vla_ros.ros.launch_args). Add
nodes in launch_setup().
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from vla_ros.ros import launch_args

BOOLEAN = ("true", "false")
GUARD_INPUT = "/arm_guard/in"  # policy_node's command_namespace = arm_guard's input_namespace


def launch_setup(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    config = FindPackageShare("vla_ros")
    profile = launch_args.profile(arg("profile"))
    real_time = launch_args.boolean("real_time", arg("real_time"))
    common = {"namespace": launch_args.namespace(arg("namespace")),
              "remappings": launch_args.remappings(arg("remap")), "output": "screen"}
    sim_node = Node(
        package="vla_ros", executable="sim_node", name="sim_node", **common,
        parameters=[
            PathJoinSubstitution([config, "config", "sim_node.yaml"]),
            {"profile": profile, "task": arg("task"), "real_time": real_time, "publish_clock": True,
             "lockstep_timeout": 0.1},
        ],
    )
    policy_node = Node(
        package="vla_ros", executable="policy_node", name="policy_node", **common,
        parameters=[
            PathJoinSubstitution([config, "config", "policy_node.yaml"]),
            {
                "profile": profile,
                "checkpoint": launch_args.checkpoint(arg("checkpoint")),
                # a string whatever it reads like: launch_ros would parse 'yes' or '1' as YAML
                "instruction": ParameterValue(arg("instruction"), value_type=str),
                "command_namespace": GUARD_INPUT,
                "use_sim_time": True,  # sim_node's /clock
            },
        ],
    )
    arm_guard = Node(
        package="vla_ros", executable="arm_guard", name="arm_guard", **common,
        parameters=[
            PathJoinSubstitution([config, "config", "arm_guard.yaml"]),
            {"profile": profile, "input_namespace": GUARD_INPUT, "use_sim_time": True,
             "simulation_clock": True},
        ],
    )
    return [sim_node, arm_guard, policy_node]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("profile", default_value="aloha_sim",
                              description="robot profile name (config/<name>.yaml) or path"),
        DeclareLaunchArgument("checkpoint", description="policy checkpoint directory"),
        DeclareLaunchArgument("instruction", default_value="", description="language instruction (free text)"),
        DeclareLaunchArgument("task", default_value="transfer_cube", choices=("transfer_cube", "insertion"),
                              description="simulated task"),
        DeclareLaunchArgument("real_time", default_value="true", choices=BOOLEAN,
                              description="true: simulate at wall-clock speed; false: as fast as possible "
                                          "(either way on the simulation's /clock)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of both nodes (their ~/ services and topics)"),
        DeclareLaunchArgument("remap", default_value="",
                              description="topic remappings 'from:=to from2:=to2', applied to both nodes"),
        OpaqueFunction(function=launch_setup),
    ])
