"""Camera regions of interest: one region, cut the same way in training batches and at run time."""

import json

import numpy as np
import pytest
import torch

from test_finetune import PROFILE, TASK, train, write_config, write_dataset
from vla_ros.data.lerobot import LeRobotDataset
from vla_ros.policy.batches import DatasetSamples, resize_frames
from vla_ros.policy.checkpoint import build_random_policy, load_checkpoint
from vla_ros.policy.crop import check_region, crop_frames, region_pixels
from vla_ros.policy.model import ConfigError, PolicyConfig
from vla_ros.policy.runtime import PolicyRuntime

WORKSPACE = [0.375, 0.4125, 0.4, 0.3]  # config/train_transfer_cube.yaml's region


def test_a_region_is_the_same_pixels_at_any_frame_size():
    rows, cols = region_pixels(240, 320, WORKSPACE)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (90, 186, 132, 228)
    rows, cols = region_pixels(480, 640, WORKSPACE)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (180, 372, 264, 456)
    rows, cols = region_pixels(4, 4, [0.99, 0.0, 0.01, 1.0])
    assert rows == slice(3, 4), "a sliver of a small frame is still one pixel"
    frames = np.arange(2 * 240 * 320 * 3, dtype=np.uint32).reshape(2, 240, 320, 3)
    cropped = crop_frames(frames, WORKSPACE)
    assert cropped.shape == (2, 96, 96, 3) and cropped[1, 0, 0, 0] == frames[1, 90, 132, 0]
    assert crop_frames(frames, None) is frames


@pytest.mark.parametrize("region, message", [
    ([0.1, 0.2, 0.3], "4 finite numbers"),
    ([0.1, 0.2, 0.3, float("nan")], "4 finite numbers"),
    ("top", "4 numbers"),
    ([0.5, 0.0, 0.6, 1.0], "top \\+ height <= 1"),
    ([0.0, -0.1, 0.5, 0.5], "left >= 0"),
    ([0.0, 0.0, 0.0, 0.5], "height, width > 0"),
])
def test_bad_regions_are_clear_errors(region, message):
    with pytest.raises(ValueError, match=message):
        check_region(region)


def test_policy_config_carries_regions_and_rejects_bad_ones():
    config = build_random_policy("tiny", PROFILE).config
    values = config.to_dict()
    assert values["camera_crops"] == {}, "a policy without regions sees whole frames"
    values["camera_crops"] = {"cam_high": WORKSPACE}
    restored = PolicyConfig.from_dict(json.loads(json.dumps(values)))
    assert restored.camera_crops == {"cam_high": tuple(WORKSPACE)}
    with pytest.raises(ConfigError, match="camera 'cam_wrist', which is not in camera_keys"):
        PolicyConfig.from_dict({**values, "camera_crops": {"cam_wrist": WORKSPACE}})
    with pytest.raises(ConfigError, match=r"camera_crops\['cam_high'\]"):
        PolicyConfig.from_dict({**values, "camera_crops": {"cam_high": [0, 0, 2, 1]}})
    with pytest.raises(ConfigError, match="camera_crops must map"):
        PolicyConfig.from_dict({**values, "camera_crops": [WORKSPACE]})


def test_runtime_looks_only_inside_the_region():
    policy = build_random_policy("tiny", PROFILE, cameras=["cam_high"], seed=3)
    torch.nn.init.normal_(policy.head.velocity_out.weight, std=0.3)  # a random head's output is constant
    policy.config.camera_crops = {"cam_high": (0.25, 0.25, 0.5, 0.5)}
    runtime = PolicyRuntime.from_policy(policy, deterministic=True)
    runtime.set_instruction(TASK)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    outside = frame.copy()
    outside[:16] = 255 - outside[:16]
    inside = frame.copy()
    inside[24:40, 24:40] = 255 - inside[24:40, 24:40]
    chunk = runtime.predict({"cam_high": frame}, PROFILE.start_pose)
    np.testing.assert_array_equal(runtime.predict({"cam_high": outside}, PROFILE.start_pose), chunk)
    assert np.abs(runtime.predict({"cam_high": inside}, PROFILE.start_pose) - chunk).max() > 1e-4
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        runtime.predict({"cam_high": frame[..., 0]}, PROFILE.start_pose)
    runtime.config.camera_crops = {}
    np.testing.assert_allclose(runtime.predict({"cam_high": frame[16:48, 16:48]}, PROFILE.start_pose), chunk,
                               atol=1e-5, err_msg="the region is what the model sees, cut before the resize")


def test_training_batches_hold_the_resized_region(tmp_path):
    root = write_dataset(tmp_path / "ds", episodes=1, frames=4, size=(48, 64))
    dataset = LeRobotDataset(root)
    samples = DatasetSamples(dataset, [0], ["cam_high"], 4, (16, 16), crops={"cam_high": [0.5, 0.25, 0.5, 0.5]})
    expected = resize_frames(dataset.video_frames(0, "cam_high")[:, 24:48, 16:48], (16, 16))
    np.testing.assert_array_equal(samples.episodes[0].images["cam_high"], expected)
    native = DatasetSamples(dataset, [0], ["cam_high"], 4, (24, 32), crops={"cam_high": [0.5, 0.25, 0.5, 0.5]})
    assert native.episodes[0].images["cam_high"].flags["C_CONTIGUOUS"], "a same-size crop is copied, not a view"
    with pytest.raises(ValueError, match="crop region"):
        DatasetSamples(dataset, [0], ["cam_high"], 4, (16, 16), crops={"cam_high": [0.5, 0.5, 0.6, 0.1]})


def test_train_stores_the_region_in_the_checkpoint_and_rejects_bad_ones(tmp_path, capsys):
    root = write_dataset(tmp_path / "ds", episodes=2, frames=8, size=(48, 64))
    config = write_config(tmp_path / "c.yaml", model={"camera_crops": {"cam_high": [0.5, 0.25, 0.5, 0.5]}},
                          data={"held_out_episodes": 0}, train={"batch_size": 2})
    assert train(root, tmp_path / "run", "--config", config, "--steps", "1") == 0
    policy = load_checkpoint(tmp_path / "run" / "policy")
    assert policy.config.camera_crops == {"cam_high": (0.5, 0.25, 0.5, 0.5)}
    tuned_config = write_config(tmp_path / "t.yaml", data={"held_out_episodes": 0}, train={"batch_size": 2})
    assert train(root, tmp_path / "tuned", "--init", str(tmp_path / "run" / "policy"), "--config", tuned_config,
                 "--steps", "1") == 0
    assert load_checkpoint(tmp_path / "tuned" / "policy").config.camera_crops == policy.config.camera_crops, \
        "fine-tuning keeps the regions the checkpoint learnt on"
    capsys.readouterr()
    bad = write_config(tmp_path / "bad.yaml", model={"camera_crops": {"cam_low": [0, 0, 1, 1]}})
    assert train(root, tmp_path / "bad", "--config", bad) == 1
    error = capsys.readouterr().err
    assert error.startswith("vla-ros train: model.camera_crops:") and "cam_low" in error, error
    assert not (tmp_path / "bad").exists()
