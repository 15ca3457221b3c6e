"""package.xml declares exactly the ROS packages the code imports, so rosdep installs what the
nodes need and nothing stale; and the licence it names ships with the package."""

import ast
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Python modules a robot takes from the distro (rosdep keys), not from PyPI.
DISTRO_PYTHON_KEYS = {"numpy": "python3-numpy", "yaml": "python3-yaml", "cv2": "python3-opencv"}
TEST_KEYS = {"pytest": "python3-pytest", "hypothesis": "python3-hypothesis"}


def _imported_modules(*folders: str) -> set[str]:
    modules = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"vla_ros", "__future__"}


def _is_ros_package(module: str, distributions: dict[str, list[str]]) -> bool:
    """A ROS package: installed here with its share/<name>/package.xml (the ROS wheels, the built
    Interbotix messages), or not installed at all (launch, launch_ros, cv_bridge are not on PyPI;
    every PyPI requirement is installed in the tested venv)."""
    return module not in distributions or (Path(sys.prefix) / "share" / module / "package.xml").is_file()


def _depends(kind: str) -> set[str]:
    return {element.text for element in ET.parse(ROOT / "package.xml").getroot().iter(kind)}


def _expected_exec_depends() -> set[str]:
    distributions = packages_distributions()
    expected = set()
    for module in _imported_modules("vla_ros", "launch"):
        if module in DISTRO_PYTHON_KEYS:
            expected.add(DISTRO_PYTHON_KEYS[module])
        elif _is_ros_package(module, distributions):
            expected.add(module)
    return expected


def test_exec_depends_are_exactly_the_imported_ros_packages():
    declared, expected = _depends("exec_depend"), _expected_exec_depends()
    assert {"rclpy", "rcl_interfaces", "sensor_msgs", "launch_ros"} <= expected, "import scan found too little"
    assert not expected - declared, f"imported but not in package.xml: {sorted(expected - declared)}"
    assert not declared - expected, f"in package.xml but not imported: {sorted(declared - expected)}"


def test_test_depends_cover_the_test_frameworks():
    used = {TEST_KEYS[module] for module in _imported_modules("test") if module in TEST_KEYS}
    assert used == set(TEST_KEYS.values())
    assert _depends("test_depend") == used


def test_licence_file_matches_package_xml():
    assert _depends("license") == {"Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
