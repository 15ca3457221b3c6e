"""The profile variant for the newer Interbotix camera names changes the camera topics and
nothing else, so checkpoints made for aloha_stationary run on it unchanged."""

from dataclasses import fields

from vla_ros.robot.profile import load_profile

INTERBOTIX_CAMERAS = {"cam_high": "camera_high", "cam_low": "camera_low",
                      "cam_left_wrist": "camera_wrist_left", "cam_right_wrist": "camera_wrist_right"}


def test_camera_topics_use_the_interbotix_instance_names():
    profile = load_profile("aloha_stationary_camera_names")
    topics = {camera.name: camera.topic for camera in profile.cameras}
    assert topics == {key: f"/{instance}/camera/color/image_rect_raw" for key, instance in INTERBOTIX_CAMERAS.items()}


def test_everything_but_the_camera_topics_equals_aloha_stationary():
    variant, base = load_profile("aloha_stationary_camera_names"), load_profile("aloha_stationary")
    assert variant.camera_names == base.camera_names
    assert [(c.width, c.height) for c in variant.cameras] == [(c.width, c.height) for c in base.cameras]
    different = {f.name for f in fields(base) if repr(getattr(variant, f.name)) != repr(getattr(base, f.name))}
    assert different == {"name", "source", "cameras"}
