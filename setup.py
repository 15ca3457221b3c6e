"""ament_python package: `colcon build` on a ROS 2 machine, `pip install .` into a venv."""

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vla_ros"


def tree(source: str, destination: str) -> list[tuple[str, list[str]]]:
    """data_files entries installing every file under `source` at the same relative place."""
    entries = {}
    for path in sorted(glob(f"{source}/**/*", recursive=True)):
        if os.path.isfile(path):
            entries.setdefault(os.path.join(destination, os.path.dirname(path)), []).append(path)
    return list(entries.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        *tree("checkpoints", f"share/{PACKAGE}"),  # the bundled default policy (`make demo`)
    ],
    install_requires=["setuptools"],
    # colcon test runs pytest only for a package that declares it as a test dependency.
    extras_require={"test": ["pytest", "hypothesis"]},
    tests_require=["pytest", "hypothesis"],
    zip_safe=True,
    maintainer="vla_ros maintainers",
    maintainer_email="maintainers@vla-ros.invalid",
    description="One-step VLA policies for bimanual ALOHA-style arms on ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "vla-ros = vla_ros.cli:main",
            "sim_node = vla_ros.ros.sim_node:main",
            "policy_node = vla_ros.ros.policy_node:main",
            "recorder_node = vla_ros.ros.recorder_node:main",
            "scripted_leader = vla_ros.ros.scripted_leader:main",
            "bag_player = vla_ros.ros.bag_player:main",
            "arm_guard = vla_ros.ros.arm_guard:main",
        ],
    },
)
