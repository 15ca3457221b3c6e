"""Resolve requirements-robot.txt against PyPI for each ROS 2 distro's Python, wheels only.

Humble runs Python 3.10, Jazzy and Kilted 3.12; 3.11 is the tested venv's. pip resolves the file
(dependencies included, torch excepted: see below) without installing, ignoring this machine's pip
configuration and local wheel directories, so a pass means a robot can install the file from PyPI.

torch is only checked for a wheel of the pinned version on each Python (`pip index versions`): its
CUDA dependency tree is pinned by torch itself, and resolving it means downloading about 1.5 GB of
wheels per Python, since pip reads a wheel's dependencies from the wheel when the index offers no
separate metadata file. Everything else is resolved with its dependencies.

A resolution failure fails. A network failure (PyPI slow or unreachable) is retried; if PyPI stays
unreachable the check prints one line saying it was not done and exits 0, so CI is not red
because of someone else's outage.

Usage: python tools/check_robot_requirements.py [requirements-robot.txt] [--python 3.10 ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.requirements import Requirement

DISTRO_PYTHONS = {"3.10": "Humble", "3.11": "tested venv", "3.12": "Jazzy, Kilted"}
NETWORK_ERRORS = ("Max retries exceeded", "ConnectionError", "ConnectTimeout", "Read timed out",
                  "Could not fetch URL", "NewConnectionError", "Temporary failure in name resolution",
                  "ProxyError", "HTTP error 5", "IncompleteRead", "Connection reset", "Connection broken")
WHEEL_ONLY = {"torch"}  # checked for a wheel, not resolved (see above)
ATTEMPTS = 3
BACKOFF_S = 30


def requirements_for(path: str, python_version: str) -> list[str]:
    """The file's requirements whose environment markers hold on `python_version`.

    pip evaluates markers against the Python it runs on, even with --python-version, so the
    selection for another Python is made here."""
    selected = []
    for line in Path(path).read_text().splitlines():
        text = line.split("#")[0].strip()
        if text:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(
                    {"python_version": python_version, "python_full_version": f"{python_version}.0"}):
                selected.append(f"{requirement.name}{requirement.specifier}")
    return selected


def _pip(arguments: list[str]) -> subprocess.CompletedProcess:
    """pip against PyPI only: --isolated ignores this machine's configuration and local wheels."""
    command = [sys.executable, "-m", "pip", "--isolated", *arguments, "--index-url", "https://pypi.org/simple",
               "--timeout", "60", "--retries", "5", "--disable-pip-version-check"]
    cert = os.environ.get("PIP_CERT")
    if cert:  # --isolated drops the environment, including a site CA bundle
        command += ["--cert", cert]
    return subprocess.run(command, capture_output=True, text=True)


def pip_resolve(requirements: list[str], python_version: str) -> subprocess.CompletedProcess:
    """pip's dry-run resolution for another Python, wheels only. Requirements in WHEEL_ONLY are
    looked up with `pip index versions` instead; a missing version is reported as pip reports one."""
    for requirement in (Requirement(text) for text in requirements):
        if requirement.name in WHEEL_ONLY:
            result = _pip(["index", "versions", requirement.name, "--python-version", python_version,
                           "--only-binary=:all:"])
            available = next((line.split(":", 1)[1] for line in result.stdout.splitlines()
                              if line.startswith("Available versions:")), "")
            if result.returncode != 0 or not any(v in {s.strip() for s in available.split(",")}
                                                 for v in (spec.version for spec in requirement.specifier)):
                error = f"ERROR: No matching distribution found for {requirement}"
                return subprocess.CompletedProcess(result.args, 1, result.stdout, result.stderr + "\n" + error)
    resolved = [text for text in requirements if Requirement(text).name not in WHEEL_ONLY]
    with tempfile.TemporaryDirectory() as target:  # --target is required by --python-version
        return _pip(["install", "--dry-run", "--ignore-installed", "--only-binary=:all:", "--python-version",
                     python_version, "--target", target, *resolved])


def check(requirements: str, python_version: str) -> str:
    """'ok', 'failed' or 'unreachable', with one line printed per outcome."""
    label = f"{requirements} on Python {python_version} ({DISTRO_PYTHONS.get(python_version, '?')})"
    for attempt in range(1, ATTEMPTS + 1):
        started = time.monotonic()
        result = pip_resolve(requirements_for(requirements, python_version), python_version)
        elapsed = time.monotonic() - started
        output = result.stdout + result.stderr
        if result.returncode == 0:
            installs = next((line for line in output.splitlines() if line.startswith("Would install")), "")
            print(f"resolves: {label} in {elapsed:.0f} s: {len(installs.split()) - 2} packages "
                  f"(+ a wheel of {', '.join(sorted(WHEEL_ONLY))})")
            return "ok"
        if not any(marker in output for marker in NETWORK_ERRORS):
            errors = [line for line in output.splitlines() if line.startswith("ERROR")]
            print(f"DOES NOT RESOLVE: {label}: {' | '.join(errors[-2:]) or output.strip()[-500:]}")
            return "failed"
        print(f"network error on attempt {attempt}/{ATTEMPTS} for {label}; retrying in {BACKOFF_S} s")
        time.sleep(BACKOFF_S)
    print(f"NOT CHECKED: PyPI unreachable after {ATTEMPTS} attempts for {label}")
    return "unreachable"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requirements", nargs="?", default="requirements-robot.txt")
    parser.add_argument("--python", action="append", dest="pythons", help="e.g. 3.10 (repeatable)")
    args = parser.parse_args(argv)
    versions = args.pythons or list(DISTRO_PYTHONS)
    with ThreadPoolExecutor(len(versions)) as pool:  # network-bound: the Pythons resolve side by side
        outcomes = list(pool.map(lambda version: check(args.requirements, version), versions))
    return 1 if "failed" in outcomes else 0


if __name__ == "__main__":
    sys.exit(main())
