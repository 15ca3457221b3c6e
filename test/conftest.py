"""Test-wide setup: ROS traffic stays on loopback, no hub lookups, headless rendering, and
every ROS test gets a ROS domain of its own so that parallel runs never cross-talk."""

import os
import sys

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)

import pytest  # noqa: E402


@pytest.fixture
def ros_domain(monkeypatch):
    """A ROS domain id reserved for this test; exported so that child processes use it too."""
    from domain_coordinator import domain_id

    with domain_id() as did:
        monkeypatch.setenv("ROS_DOMAIN_ID", str(did))
        yield int(did)


@pytest.fixture(scope="module")
def domain():
    """A ROS domain id for all tests of one module (a node started once and shared by them);
    passed explicitly to the processes and contexts those tests start."""
    from domain_coordinator import domain_id

    with domain_id() as did:
        yield int(did)
