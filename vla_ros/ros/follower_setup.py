"""The follower setup the ALOHA scripts perform before a policy runs, through xs_sdk's services.

The stock follower motor configs start the gripper in ``linear_position`` mode, where a goal is a
distance in metres; vla_ros (like the ALOHA scripts) commands the gripper joint angle in
radians. So, for each follower, in the ALOHA scripts' order:
1. ``<driver_namespace>/reboot_motors``: reboot the gripper motor (clears an overload error)
   and torque it on again;
2. ``<driver_namespace>/set_operating_modes``: the arm group to ``position``, the gripper to
   ``current_based_position``;
3. ``<driver_namespace>/torque_enable``: torque on the arm group and the gripper.
The driver's responses are empty, so a refused request shows only in the driver's log; a missing
service is an error that names it.

Also the server side, :class:`InterbotixDriverServices`: sim_node answers the same services and
applies them to its :class:`~vla_ros.ros.command_interfaces.InterbotixDriverState`.
"""

from __future__ import annotations

import threading
import time

from vla_ros.robot.profile import RobotProfile
from vla_ros.ros.command_interfaces import CommandRejected, InterbotixDriverState, require_interbotix_msgs

try:
    from interbotix_xs_msgs.srv import OperatingModes, Reboot, TorqueEnable
except ImportError:  # pragma: no cover - see command_interfaces.INTERBOTIX_MISSING
    OperatingModes = Reboot = TorqueEnable = None


class FollowerSetupError(RuntimeError):
    """A follower driver's setup service is missing or did not answer."""


def setup_requests(profile: RobotProfile, arm) -> list[tuple[str, type, dict]]:
    """(service name, type, request fields) in the order the ALOHA scripts call them."""
    ns, group, gripper = arm.driver_namespace, profile.interbotix_arm_group, arm.gripper_joint
    return [
        (f"{ns}/reboot_motors", Reboot, dict(cmd_type="single", name=gripper, enable=True, smart_reboot=True)),
        (f"{ns}/set_operating_modes", OperatingModes, dict(cmd_type="group", name=group, mode="position",
                                                           profile_type="velocity")),
        (f"{ns}/set_operating_modes", OperatingModes, dict(cmd_type="single", name=gripper,
                                                           mode="current_based_position", profile_type="velocity")),
        (f"{ns}/torque_enable", TorqueEnable, dict(cmd_type="group", name=group, enable=True)),
        (f"{ns}/torque_enable", TorqueEnable, dict(cmd_type="single", name=gripper, enable=True)),
    ]


def run_follower_setup(node, profile: RobotProfile, timeout: float, stop: threading.Event | None = None) -> None:
    """Call every follower's setup services and wait for each answer (the node must be spun by
    another thread). Raises FollowerSetupError naming the first service that is missing or silent."""
    require_interbotix_msgs()
    for arm in profile.arms:
        if not arm.driver_namespace:
            raise FollowerSetupError(f"arm '{arm.name}' has no driver_namespace in profile {profile.name}: "
                                     f"cannot find its xs_sdk services")
        for name, srv_type, fields in setup_requests(profile, arm):
            client = node.create_client(srv_type, name)
            try:
                if not client.wait_for_service(timeout_sec=timeout):
                    raise FollowerSetupError(f"service {name} ({srv_type.__name__}) is not available after "
                                             f"{timeout:g} s: is the Interbotix xs_sdk driver of arm '{arm.name}' "
                                             f"running (aloha_bringup)?")
                future = client.call_async(srv_type.Request(**fields))
                deadline = time.monotonic() + timeout
                while not future.done():
                    if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
                        raise FollowerSetupError(f"service {name} did not answer within {timeout:g} s")
                    time.sleep(0.01)
            finally:
                node.destroy_client(client)


class InterbotixDriverServices:
    """xs_sdk's reboot_motors, set_operating_modes and torque_enable for each follower,
    applied to a driver state. As in xs_sdk, a bad name or cmd_type is logged and the (empty)
    response returned; nothing changes."""

    def __init__(self, node, profile: RobotProfile, state: InterbotixDriverState):
        require_interbotix_msgs()
        self.node, self.state = node, state
        for index, arm in enumerate(profile.arms):
            if not arm.driver_namespace:
                continue
            ns = arm.driver_namespace
            node.create_service(Reboot, f"{ns}/reboot_motors", lambda q, r, i=index: self._reboot(i, q, r))
            node.create_service(OperatingModes, f"{ns}/set_operating_modes", lambda q, r, i=index: self._modes(i, q, r))
            node.create_service(TorqueEnable, f"{ns}/torque_enable", lambda q, r, i=index: self._torque(i, q, r))

    def _joints(self, request):
        try:
            return self.state.joints_for(request.cmd_type, request.name)
        except CommandRejected as exc:
            self.node.get_logger().error(str(exc))
            return ()

    def _reboot(self, arm_index, request, response):
        for joint in self._joints(request):
            self.state.reboots[arm_index] += 1
            self.state.torque[arm_index][joint] = bool(request.enable)
        return response

    def _modes(self, arm_index, request, response):
        for joint in self._joints(request):
            self.state.modes[arm_index][joint] = request.mode
        return response

    def _torque(self, arm_index, request, response):
        for joint in self._joints(request):
            self.state.torque[arm_index][joint] = bool(request.enable)
        return response
