"""The recording benchmark runs end to end and accounts for every tick (no timing assertions)."""

import json

from vla_ros.data import bench_record


def test_bench_record_small(capsys):
    assert bench_record.main(["--seconds", "0.2", "--cameras", "2", "--height", "32", "--width", "48"]) == 0
    report = json.loads(capsys.readouterr().out)
    (episode,) = report["episodes"]
    assert episode["ticks"] == 10
    assert episode["frames_recorded"] + episode["frames_dropped"] == episode["ticks"]
    assert report["validated"] is True and report["cameras"] == 2
