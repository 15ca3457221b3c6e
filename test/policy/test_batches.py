"""Training chunks never pair frames across a gap left by dropped frames (issue 19, item 5)."""

import numpy as np

from vla_ros.data.lerobot import LeRobotDataset, LeRobotWriter
from vla_ros.policy.batches import DatasetSamples

FPS = 50


def test_chunks_stop_at_a_timestamp_gap(tmp_path):
    root = tmp_path / "ds"
    slots = [0, 1, 2, 5, 6, 7, 8]  # frames at slots 3 and 4 were dropped
    with LeRobotWriter(root, FPS, "test", ["a", "b"], ["a", "b"], {"cam": (16, 16)}) as writer:
        writer.start_episode("task")
        for i, slot in enumerate(slots):
            writer.add_frame([i, 0], [10 * i, 0], {"cam": np.full((16, 16, 3), 20 * i, np.uint8)},
                             timestamp=3.0 + slot / FPS)
        writer.save_episode(block=True)
    samples = DatasetSamples(LeRobotDataset(root), [0], ["cam"], horizon=4, image_size=(8, 8))
    actions, is_pad = samples.chunk(0, 1)  # frames 1, 2 | gap | 3, 4
    assert is_pad.tolist() == [False, False, True, True]
    assert actions[:, 0].tolist() == [10, 20, 20, 20]
    actions, is_pad = samples.chunk(0, 3)  # starts after the gap: 3, 4, 5, 6
    assert is_pad.tolist() == [False] * 4 and actions[:, 0].tolist() == [30, 40, 50, 60]
    actions, is_pad = samples.chunk(0, 5)  # the episode's end pads as before
    assert is_pad.tolist() == [False, False, True, True] and actions[:, 0].tolist() == [50, 60, 60, 60]
