"""`vla-ros demo`, what `make demo` runs: the bundled checkpoint drives the simulated ALOHA
through sim_node and policy_node (separate processes), and the summary says what ran."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vla_ros.ros import demo

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(300)]


def test_demo_runs_the_bundled_checkpoint_through_ros(tmp_path, ros_domain, capsys):
    bundled = demo.bundled_checkpoint()
    assert bundled is not None, "the package installs no default checkpoint (setup.py data_files)"
    code = demo.main(["--episode-steps", "60", "--output", str(tmp_path), "--video"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["checkpoint_origin"] == "bundled default"
    assert Path(summary["checkpoint"]) == bundled
    assert summary["episodes"] == 1
    assert summary["commands_published_per_episode"][0] > 0, "no command reached the simulated arms"
    assert summary["per_episode"][0]["seed"] == 1001, "the demo's cube pose must be one the policy never saw"
    assert (tmp_path / "episode0.mp4").stat().st_size > 0


@pytest.mark.parametrize("size", ["96by128", "95x128"])
def test_bad_image_size_is_a_usage_error(tmp_path, capsys, size):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--output", str(tmp_path), "--image-size", size])
    assert exit_info.value.code == 2
    assert "image size" in capsys.readouterr().err
