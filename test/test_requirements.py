"""The robot's requirements file must pin exactly what the tested venv pins (no drift between what
CI tests and what a robot installs)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            package, _, version = line.partition("==")
            assert version, f"{name}: '{line}' is not pinned with =="
            pins[package.lower().replace("_", "-")] = version
    return pins


def test_robot_requirements_match_the_tested_pins():
    tested, robot = _pins("requirements.txt"), _pins("requirements-robot.txt")
    assert robot, "requirements-robot.txt is empty"
    mismatched = {p: (v, tested.get(p)) for p, v in robot.items() if tested.get(p) != v}
    assert not mismatched, f"robot pin != tested pin: {mismatched}"
