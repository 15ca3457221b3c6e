"""The robot's requirements file pins what the tested venv pins wherever its lines apply to the
tested Python (no drift between what CI tests and what a robot installs), names every package once
for each distro's Python, and differs from the tested pins only where the distro forces it.
Whether each distro's selection resolves on PyPI is checked by `make check-robot-requirements`."""

import importlib.util
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_robot_requirements", ROOT / "tools" / "check_robot_requirements.py")
check_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_tool)
DISTRO_PYTHONS = ("3.10", "3.11", "3.12")  # Humble; the tested venv; Jazzy and Kilted
# Robot pins that differ from the tested venv on purpose (the reasons are in requirements-robot.txt):
# the distro's message modules and cv_bridge are built against numpy 1.x, and pyarrow 26 needs numpy 2.
DISTRO_ABI_PINS = {"numpy", "pyarrow"}


def _pins(name: str, python_version: str) -> dict[str, str]:
    """{normalised name: version} of the lines whose markers hold on `python_version` (selected
    exactly as the PyPI check selects them)."""
    pins = {}
    for line in check_tool.requirements_for(str(ROOT / name), python_version):
        requirement = Requirement(line)
        key = requirement.name.lower().replace("_", "-")
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{name}: '{line}' is not pinned with =="
        assert key not in pins, f"{name}: {key} is pinned twice for Python {python_version}"
        pins[key] = specifiers[0].version
    return pins


def test_robot_requirements_match_the_tested_pins():
    tested_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    tested, robot = _pins("requirements.txt", tested_python), _pins("requirements-robot.txt", tested_python)
    assert robot, "requirements-robot.txt is empty"
    mismatched = {p: (v, tested.get(p)) for p, v in robot.items() if tested.get(p) != v and p not in DISTRO_ABI_PINS}
    assert not mismatched, f"robot pin != tested pin: {mismatched}"
    assert DISTRO_ABI_PINS <= set(robot), "the distro ABI exceptions name packages the robot no longer pins"


def test_every_distro_python_gets_the_same_packages():
    selections = {version: set(_pins("requirements-robot.txt", version)) for version in DISTRO_PYTHONS}
    assert len({frozenset(packages) for packages in selections.values()}) == 1, selections


def test_robot_numpy_is_the_distro_abi():
    for version in DISTRO_PYTHONS:
        assert _pins("requirements-robot.txt", version)["numpy"].startswith("1."), version


def _fake_pip(monkeypatch, outputs: list[str], returncode: int = 1) -> list[str]:
    calls = []

    def resolve(requirements, python_version):
        calls.append(python_version)
        return subprocess.CompletedProcess([], returncode, stdout="", stderr=outputs[len(calls) - 1])

    monkeypatch.setattr(check_tool, "pip_resolve", resolve)
    monkeypatch.setattr(check_tool, "BACKOFF_S", 0)
    return calls


def test_check_fails_on_a_resolution_failure_without_retrying(monkeypatch, capsys):
    calls = _fake_pip(monkeypatch, ["ERROR: No matching distribution found for transformers==5.24.0"])
    assert check_tool.check(str(ROOT / "requirements-robot.txt"), "3.10") == "failed"
    assert calls == ["3.10"]
    assert "DOES NOT RESOLVE" in capsys.readouterr().out


def test_check_retries_network_errors_and_does_not_fail_ci_when_pypi_stays_down(monkeypatch, capsys):
    down = "WARNING: Retrying ... Read timed out.\nERROR: Could not find a version that satisfies the requirement torch"
    calls = _fake_pip(monkeypatch, [down] * check_tool.ATTEMPTS)
    assert check_tool.check(str(ROOT / "requirements-robot.txt"), "3.12") == "unreachable"
    assert len(calls) == check_tool.ATTEMPTS
    assert "NOT CHECKED" in capsys.readouterr().out
    _fake_pip(monkeypatch, [down] * check_tool.ATTEMPTS)
    assert check_tool.main([str(ROOT / "requirements-robot.txt"), "--python", "3.12"]) == 0


def test_check_main_exit_codes(monkeypatch):
    _fake_pip(monkeypatch, ["ERROR: ResolutionImpossible"])
    assert check_tool.main([str(ROOT / "requirements-robot.txt"), "--python", "3.10"]) == 1
    _fake_pip(monkeypatch, ["Would install torch-2.13.0"], returncode=0)
    assert check_tool.main([str(ROOT / "requirements-robot.txt"), "--python", "3.10"]) == 0


def test_torch_is_checked_for_a_wheel_of_the_pinned_version(monkeypatch):
    calls = []

    def pip(arguments):
        calls.append(arguments[0])
        listing = "torch (2.14.1)\nAvailable versions: 2.14.1, 2.12.0\n" if arguments[0] == "index" else "Would install x-1"
        return subprocess.CompletedProcess([], 0, stdout=listing, stderr="")

    monkeypatch.setattr(check_tool, "_pip", pip)
    result = check_tool.pip_resolve(["torch==2.13.0", "tqdm==4.70.1"], "3.10")
    assert result.returncode == 1 and "No matching distribution found for torch==2.13.0" in result.stderr
    assert calls == ["index"]
    calls.clear()
    assert check_tool.pip_resolve(["torch==2.12.0", "tqdm==4.70.1"], "3.10").returncode == 0
    assert calls == ["index", "install"]
