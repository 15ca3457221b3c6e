"""Bundled profiles are found from an install that is not on the ament path: an unsourced colcon
workspace keeps the package in <prefix>/lib/python3.X/site-packages and the profiles in
<prefix>/share/vla_ros/config, while the interpreter's own prefix is the distro's."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_profiles_found_from_an_unsourced_colcon_style_install(tmp_path):
    prefix = tmp_path / "install" / "vla_ros"
    site = prefix / "lib" / "python3.10" / "site-packages"
    shutil.copytree(ROOT / "vla_ros", site / "vla_ros", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "config", prefix / "share" / "vla_ros" / "config")
    env = {key: value for key, value in os.environ.items() if key != "AMENT_PREFIX_PATH"}
    env["PYTHONPATH"] = str(site)
    code = ("from vla_ros.robot.profile import config_dir, load_profile; import vla_ros; "
            "print(vla_ros.__file__); print(config_dir()); print(load_profile('aloha_stationary').name)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    package_file, found, name = result.stdout.split()
    assert package_file.startswith(str(site)), "the copied install was not the one imported"
    assert Path(found) == prefix / "share" / "vla_ros" / "config"
    assert name
