"""Robot bringup: policy_node driving the real arms, configured by a params file.

ros2 launch vla_ros robot.launch.py checkpoint:=/path/to/ckpt instruction:="fold the towel"
The node starts DISARMED; arm it with: ros2 service call /policy_node/enable std_srvs/srv/SetBool "{data: true}"
arm_guard is the last hop before the drivers (docs/arm_guard.md): policy_node publishes on its input,
and after a hold it forwards nothing until: ros2 service call /arm_guard/rearm std_srvs/srv/Trigger

Arguments are checked before any process starts (vla_ros.ros.launch_args): a bad value stops the
launch with one line naming the argument. Add nodes in launch_setup().
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

    use_sim_time = launch_args.boolean("use_sim_time", arg("use_sim_time"))
    namespace = launch_args.namespace(arg("namespace"))
    # the guard's input under the namespace too, so that two namespaced robots never share it
    guard_input = "/" + "/".join(part for part in (namespace.strip("/"), GUARD_INPUT.strip("/")) if part)
    common = {"namespace": namespace, "remappings": launch_args.remappings(arg("remap")), "output": "screen"}
    policy_node = Node(
        package="vla_ros", executable="policy_node", name="policy_node", **common,
        parameters=[
            arg("params_file"),
            {
                "profile": launch_args.profile(arg("profile")),
                "checkpoint": launch_args.checkpoint(arg("checkpoint")),
                # a string whatever it reads like: launch_ros would parse 'yes' or '1' as YAML
                "instruction": ParameterValue(arg("instruction"), value_type=str),
                "dry_run": launch_args.boolean("dry_run", arg("dry_run")),
                "command_namespace": guard_input,
                "use_sim_time": use_sim_time,
            },
        ],
    )
    arm_guard = Node(
        package="vla_ros", executable="arm_guard", name="arm_guard", **common,
        parameters=[
            arg("guard_params_file"),
            {"profile": launch_args.profile(arg("profile")), "input_namespace": guard_input,
             "use_sim_time": use_sim_time},
        ],
    )
    return [arm_guard, policy_node]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("profile", default_value="aloha_stationary",
                              description="robot profile name (config/<name>.yaml) or path"),
        DeclareLaunchArgument("checkpoint", description="policy checkpoint directory"),
        DeclareLaunchArgument("instruction", default_value="", description="language instruction (free text)"),
        DeclareLaunchArgument("dry_run", default_value="false", choices=BOOLEAN,
                              description="publish to shadow topics instead of the arms"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=BOOLEAN,
                              description="follow /clock (bag replay with --clock, a simulator)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the nodes (their ~/ services and topics)"),
        DeclareLaunchArgument("remap", default_value="",
                              description="topic remappings 'from:=to from2:=to2', e.g. to rename the "
                                          "profile's camera or joint topics"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("vla_ros"), "config", "policy_node.yaml"]),
            description="policy_node parameters"),
        DeclareLaunchArgument(
            "guard_params_file",
            default_value=PathJoinSubstitution([FindPackageShare("vla_ros"), "config", "arm_guard.yaml"]),
            description="arm_guard parameters (command_timeout, estop_torque_off, ...)"),
        OpaqueFunction(function=launch_setup),
    ])
