"""The dev venv is laid out like a colcon install, so ros2 run and launch_ros find what they look
for under the ament prefix: executables in <prefix>/lib/vla_ros, launch and config files in
<prefix>/share/vla_ros. (launch_ros fails with "libexec directory .../lib/vla_ros does not exist"
otherwise.) The venv is the one `make` installs; the prefix is the running interpreter's."""

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = Path(sys.prefix)


def _console_scripts() -> list[str]:
    return re.findall(r'"([\w-]+) = [\w.]+:\w+"', (ROOT / "setup.py").read_text())


def test_every_executable_is_in_lib_vla_ros():
    names = _console_scripts()
    assert "policy_node" in names
    for name in names:
        executable = PREFIX / "lib" / "vla_ros" / name
        assert executable.is_file() and os.access(executable, os.X_OK), f"{executable} missing (run make venv)"


def test_launch_and_config_files_are_installed_in_share():
    share = PREFIX / "share" / "vla_ros"
    for folder in ("launch", "config"):
        for source in (ROOT / folder).iterdir():
            if source.suffix in (".py", ".yaml"):
                assert (share / folder / source.name).is_file(), f"{share / folder / source.name} missing (run make venv)"
