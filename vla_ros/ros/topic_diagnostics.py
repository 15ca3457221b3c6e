"""Diagnostics per input topic: message rate and stamp age, graded OK / WARN / ERROR.

The checks of diagnostic_updater's FrequencyStatus (events over a sliding window against a minimum
rate with a tolerance) and TimeStampStatus (receipt time minus header stamp, too old or in the
future), folded into one DiagnosticStatus per topic as its TopicDiagnostic does. diagnostic_updater
is not a dependency: its Python package is not on PyPI, and the thresholds here come from the
node's own staleness limits, so a WARN or ERROR means the policy held or is about to.

Status names follow diagnostic_updater's '<node name>: <task>' ('policy_node: input camera
cam_high'), so a diagnostic_aggregator analyzer groups them with `startswith: ['policy_node: input']`;
hardware_id names the robot profile and the device. Call record() and status() from one thread
(the node's executor).
"""

from __future__ import annotations

from collections import deque

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

RATE_TOLERANCE = 0.1  # FrequencyStatus's default: WARN below min_rate * (1 - tolerance)
WINDOW = 5.0  # seconds of history behind each status (FrequencyStatus: 5 updates of 1 s)


class TopicMonitor:
    """Rate and stamp age of one input topic over a sliding window of receipt times (seconds)."""

    def __init__(self, name: str, topic: str, hardware_id: str, min_rate: float, max_age: float, start: float,
                 window: float = WINDOW, tolerance: float = RATE_TOLERANCE):
        self.name, self.topic, self.hardware_id = name, topic, hardware_id
        self.min_rate, self.max_age, self.window, self.tolerance = min_rate, max_age, window, tolerance
        self.start = start
        self.total = 0
        self.newest_stamp: float | None = None
        self._events: deque[tuple[float, float | None]] = deque()  # (receipt time, age or None if unstamped)

    def record(self, receipt_time: float, stamp: float) -> None:
        """One message received at `receipt_time` carrying header stamp `stamp` (0 = unstamped)."""
        self.total += 1
        if stamp == 0.0:
            self._events.append((receipt_time, None))
            return
        self._events.append((receipt_time, receipt_time - stamp))
        self.newest_stamp = stamp if self.newest_stamp is None else max(self.newest_stamp, stamp)

    def status(self, now: float) -> DiagnosticStatus:
        while self._events and self._events[0][0] < now - self.window:
            self._events.popleft()
        span = min(self.window, max(now - self.start, 1e-9))
        count = len(self._events)
        rate = count / span
        ages = [age for _, age in self._events if age is not None]
        newest_age = None if self.newest_stamp is None else now - self.newest_stamp
        problems: list[tuple[bytes, str]] = []  # (DiagnosticStatus level, text)
        if count == 0:
            problems.append((DiagnosticStatus.ERROR, f"no message in the last {span:.1f} s"))
        else:
            if rate < self.min_rate * (1.0 - self.tolerance):
                problems.append((DiagnosticStatus.WARN, f"rate {rate:.1f} Hz below {self.min_rate:g} Hz"))
            if len(ages) < count:
                problems.append((DiagnosticStatus.ERROR, f"{count - len(ages)} messages without a header stamp"))
        if newest_age is not None and newest_age > self.max_age:
            problems.append((DiagnosticStatus.ERROR, f"newest stamp {newest_age:.3f} s old (limit {self.max_age:g} s)"))
        elif ages and max(ages) > self.max_age:
            problems.append((DiagnosticStatus.WARN, f"stamps up to {max(ages):.3f} s old in the last "
                                                    f"{span:.1f} s (limit {self.max_age:g} s)"))
        if ages and min(ages) < -self.max_age:
            problems.append((DiagnosticStatus.WARN, f"stamps up to {-min(ages):.3f} s ahead of this clock"))
        level = max((level for level, _ in problems), default=DiagnosticStatus.OK)
        message = "; ".join(text for _, text in problems) or f"{rate:.1f} Hz, stamps {max(ages):.3f} s old at most"
        values = {
            "topic": self.topic, "rate_hz": f"{rate:.2f}", "min_rate_hz": f"{self.min_rate:g}",
            "events_in_window": count, "events_total": self.total, "window_s": f"{span:.2f}",
            "newest_stamp_age_s": "none" if newest_age is None else f"{newest_age:.4f}",
            "max_stamp_age_in_window_s": f"{max(ages):.4f}" if ages else "none", "max_age_s": f"{self.max_age:g}",
        }
        return DiagnosticStatus(level=level, name=self.name, message=message, hardware_id=self.hardware_id,
                                values=[KeyValue(key=key, value=str(value)) for key, value in values.items()])
