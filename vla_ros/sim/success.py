"""Success rates of simulated episodes, with the interval every report in vla_ros gives them."""

from __future__ import annotations

import math

Z_95 = 1.959964


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> list[float]:
    """The 95% Wilson score interval of a success rate ([0, 1] when there were no trials): unlike
    the normal approximation it stays inside [0, 1] and is honest at 0/n and n/n."""
    if not trials:
        return [0.0, 1.0]
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return [max(0.0, centre - half), min(1.0, centre + half)]
