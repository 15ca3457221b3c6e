"""Run ROS nodes as separate processes and talk to them over DDS (tests, benchmarks, the demo).

A node under test runs as its own process on the test's ROS domain (``ROS_DOMAIN_ID`` exported
by the ``ros_domain`` fixture); the test talks to it over DDS through an in-process rclpy context
bound to the same domain. Every wait has a timeout, and every failure message carries the
child's stderr, because a node that died at start-up otherwise just looks like a silent topic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import rclpy
from rclpy.client import Client
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile

from vla_ros.ros.qos import state_qos


def ros_args(params: Mapping[str, Any] | None = None, params_file: str | None = None) -> list[str]:
    """``--ros-args -p name:=value ...`` for a node's command line."""
    args = ["--ros-args"]
    if params_file:
        args += ["--params-file", str(params_file)]
    for name, value in (params or {}).items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        args += ["-p", f"{name}:={text}"]
    return args


def module_command(module: str) -> list[str]:
    """Run a node module with this interpreter (the source tree, no reinstall needed)."""
    return [sys.executable, "-m", module]


class NodeProcess:
    """A node started as a subprocess; use as a context manager so it is always stopped."""

    def __init__(self, command: Sequence[str], params: Mapping[str, Any] | None = None,
                 params_file: str | None = None, domain_id: int | None = None,
                 env: Mapping[str, str] | None = None):
        self.command = [*command, *ros_args(params, params_file)]
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        if domain_id is not None:
            self.env["ROS_DOMAIN_ID"] = str(domain_id)
        self._stdout = tempfile.TemporaryFile()
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self._stdout, stderr=self._stderr)

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT (a clean ROS shutdown), then SIGKILL if it does not exit in ``timeout``."""
        if self.alive():
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def _read(self, stream) -> str:
        stream.flush()
        stream.seek(0)
        return stream.read().decode(errors="replace")

    def stdout(self) -> str:
        return self._read(self._stdout)

    def stderr(self) -> str:
        return self._read(self._stderr)

    def report(self) -> str:
        """What to show when a test fails: command, exit status and the output tails."""
        status = "running" if self.alive() else f"exited with {self.process.returncode}"
        return (f"{' '.join(self.command)} ({status})\n--- stderr ---\n{self.stderr()[-4000:]}"
                f"\n--- stdout ---\n{self.stdout()[-2000:]}")


@contextmanager
def ros_context(domain_id: int | None = None) -> Iterator[Context]:
    """An rclpy context of its own on ``domain_id`` (default: $ROS_DOMAIN_ID)."""
    if domain_id is None:
        domain_id = int(os.environ.get("ROS_DOMAIN_ID", "0"))
    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


class Probe:
    """An in-process node to talk to a node under test: subscribe, publish, call, wait."""

    def __init__(self, context: Context, name: str = "test_probe"):
        self.node = Node(name, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.received: dict[str, list] = {}
        self.receipt_times: dict[str, list[float]] = {}
        self.clients: dict[str, Client] = {}

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def subscribe(self, msg_type, topic: str, qos: QoSProfile | None = None) -> list:
        """Record every message on ``topic``; returns the (growing) list."""
        if topic in self.received:
            raise ValueError(f"already subscribed to {topic}: a second subscription would record every message twice")
        messages = self.received[topic] = []
        times = self.receipt_times[topic] = []

        def record(msg):
            times.append(time.monotonic())
            messages.append(msg)

        self.node.create_subscription(msg_type, topic, record, qos or state_qos())
        return messages

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.executor.spin_once(timeout_sec=min(remaining, 0.05))

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str = "condition",
                 process: NodeProcess | None = None) -> None:
        """Spin until ``condition()`` holds; on timeout fail with ``process``'s output."""
        deadline = time.monotonic() + timeout
        while not condition():
            if process is not None and not process.alive():
                raise AssertionError(f"node died while waiting for {what}:\n{process.report()}")
            if time.monotonic() > deadline:
                details = f"\n{process.report()}" if process is not None else ""
                raise AssertionError(f"timed out after {timeout} s waiting for {what}{details}")
            self.executor.spin_once(timeout_sec=0.05)

    def wait_for_messages(self, topic: str, count: int, timeout: float,
                          process: NodeProcess | None = None) -> list:
        messages = self.received[topic]
        self.wait_for(lambda: len(messages) >= count, timeout, f"{count} messages on {topic}", process)
        return messages

    def wait_for_subscribers(self, publisher, count: int, timeout: float,
                             process: NodeProcess | None = None) -> None:
        self.wait_for(lambda: publisher.get_subscription_count() >= count, timeout,
                      f"{count} subscribers of {publisher.topic_name}", process)

    def call(self, srv_type, name: str, request, timeout: float, process: NodeProcess | None = None):
        """Call a service once it is available; returns the response.

        One client per service, reused by every call. Why: a new client's response reader may not
        yet be matched by the server's response writer when service_is_ready() already holds, and
        a response sent then is lost (ros2/rmw_fastrtps#842, ros2/rmw_cyclonedds#74). A client per
        call ran that race on every call, and the clients it left behind slowed discovery until
        sim-eval runs stopped on '/sim_node/reset' timeouts after 25-32 episodes."""
        client = self.clients.get(name)
        if client is None:
            client = self.clients[name] = self.node.create_client(srv_type, name)
        elif client.srv_type is not srv_type:
            raise ValueError(f"service {name} was called as {client.srv_type.__name__}, now as {srv_type.__name__}")
        self.wait_for(client.service_is_ready, timeout, f"service {name}", process)
        future = client.call_async(request)
        self.wait_for(future.done, timeout, f"response from {name}", process)
        return future.result()
