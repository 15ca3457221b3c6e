"""Per-topic diagnostics grade rate and stamp age like diagnostic_updater's FrequencyStatus and
TimeStampStatus: OK when both are within the node's limits, WARN or ERROR, with a message that
says why, names an aggregator can group and the device's hardware_id."""

import pytest
from diagnostic_msgs.msg import DiagnosticStatus

from vla_ros.ros.topic_diagnostics import TopicMonitor

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


def monitor(**overrides):
    arguments = dict(name="policy_node: input camera cam_high", topic="/cam_high/image", hardware_id="aloha/cam_high",
                     min_rate=20.0, max_age=0.15, start=0.0)
    arguments.update(overrides)
    return TopicMonitor(**arguments)


def feed(topic, start, end, rate, latency):
    """Messages every 1/rate s from `start` to `end`, each received `latency` s after its stamp."""
    t = start
    while t < end - 1e-9:
        topic.record(t + latency, t)
        t += 1.0 / rate


def values(status):
    return {kv.key: kv.value for kv in status.values}


def test_steady_fresh_topic_is_ok():
    topic = monitor()
    feed(topic, 0.0, 10.0, rate=30.0, latency=0.02)
    status = topic.status(10.0)
    assert status.level == OK, status.message
    assert status.name == "policy_node: input camera cam_high" and status.hardware_id == "aloha/cam_high"
    assert float(values(status)["rate_hz"]) == pytest.approx(30.0, rel=0.02)
    assert values(status)["events_total"] == "300"


def test_silence_is_an_error():
    status = monitor().status(3.0)
    assert status.level == ERROR and "no message" in status.message
    assert values(status)["newest_stamp_age_s"] == "none"


def test_slow_rate_warns():
    topic = monitor()
    feed(topic, 0.0, 10.0, rate=10.0, latency=0.02)
    status = topic.status(10.0)
    assert status.level == WARN and "below 20 Hz" in status.message


def test_rate_within_tolerance_is_ok():
    topic = monitor()
    feed(topic, 0.0, 10.0, rate=18.5, latency=0.02)  # 7.5 % under 20 Hz, inside the 10 % tolerance
    assert topic.status(10.0).level == OK


def test_stale_newest_stamp_is_an_error_and_recovers():
    topic = monitor()
    feed(topic, 0.0, 5.0, rate=30.0, latency=0.02)
    stale = topic.status(5.5)  # 0.5 s with nothing new
    assert stale.level == ERROR and "newest stamp" in stale.message
    feed(topic, 5.5, 11.0, rate=30.0, latency=0.02)
    assert topic.status(11.0).level == OK  # the stale period has left the window


def test_an_old_stamp_in_the_window_warns():
    topic = monitor()
    feed(topic, 0.0, 10.0, rate=30.0, latency=0.02)
    topic.record(10.0, 9.7)  # one frame 0.3 s late
    feed(topic, 10.0, 10.5, rate=30.0, latency=0.02)
    status = topic.status(10.5)
    assert status.level == WARN and "0.300 s old" in status.message


def test_stamps_from_the_future_warn():
    topic = monitor()
    feed(topic, 0.0, 10.0, rate=30.0, latency=-0.5)  # the sender's clock runs 0.5 s ahead
    status = topic.status(10.0)
    assert status.level == WARN and "ahead of this clock" in status.message


def test_unstamped_messages_are_an_error():
    topic = monitor()
    for i in range(100):
        topic.record(i / 30.0, 0.0)
    status = topic.status(100 / 30.0)
    assert status.level == ERROR and "without a header stamp" in status.message


def test_rate_right_after_start_uses_the_elapsed_time():
    topic = monitor(start=100.0)
    feed(topic, 100.0, 101.0, rate=30.0, latency=0.01)
    assert float(values(topic.status(101.0))["rate_hz"]) == pytest.approx(30.0, rel=0.05)
