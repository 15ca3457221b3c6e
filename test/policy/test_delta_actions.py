"""Delta joint actions with absolute grippers (issue 19, item 4): encoding, statistics, checkpoints
and inference, and a training run with the option on."""

import json

import numpy as np
import pytest
import torch

from test_finetune import PROFILE, TASK, train, write_config, write_dataset
from vla_ros.data.lerobot import LeRobotDataset
from vla_ros.policy.batches import DatasetSamples
from vla_ros.policy.checkpoint import build_random_policy, load_checkpoint, save_checkpoint
from vla_ros.policy.delta import arm_joint_names, delta_layout, from_delta, to_delta
from vla_ros.policy.model import ConfigError, PolicyConfig, VLAPolicy
from vla_ros.policy.runtime import PolicyRuntime

ARMS = arm_joint_names(PROFILE.vector_names, PROFILE.gripper_indices)
GRIPPERS = list(PROFILE.gripper_indices)


def test_arm_joints_are_every_dim_but_the_grippers():
    assert len(ARMS) == 12 and not any(name.endswith("gripper") for name in ARMS)
    assert GRIPPERS == [6, 13]


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_delta_round_trip_restores_absolute_targets_and_leaves_grippers_alone(kind):
    source, mask = delta_layout(PROFILE.vector_names, PROFILE.vector_names, ARMS)
    rng = np.random.default_rng(0)
    state = rng.uniform(-1, 1, (5, 14)).astype(np.float32)
    actions = rng.uniform(-1, 1, (5, 8, 14)).astype(np.float32)
    if kind == "torch":
        state, actions = torch.from_numpy(state), torch.from_numpy(actions)
        source, mask = torch.tensor(source), torch.tensor(mask)
    else:
        source, mask = np.array(source), np.array(mask, dtype=np.float32)
    delta = to_delta(actions, state, source, mask)
    back = from_delta(delta, state, source, mask)
    delta, back, state, actions = (np.asarray(x) for x in (delta, back, state, actions))
    np.testing.assert_allclose(back, actions, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(delta[..., GRIPPERS], actions[..., GRIPPERS])  # grippers absolute
    arms = [i for i in range(14) if i not in GRIPPERS]
    np.testing.assert_allclose(delta[..., arms], actions[..., arms] - state[:, None, arms], atol=1e-6, rtol=0)


def test_delta_dims_are_matched_by_name_not_position():
    source, mask = delta_layout(["b", "a", "g"], ["a", "b", "g"], ["a", "b"])
    assert source == [1, 0, 0] and mask == [1.0, 1.0, 0.0]
    delta = to_delta(np.array([[[10.0, 20.0, 0.5]]]), np.array([[2.0, 1.0, 0.3]]), np.array(source), np.array(mask))
    np.testing.assert_array_equal(delta, [[[9.0, 18.0, 0.5]]])
    with pytest.raises(ValueError, match=r"\['c'\] must name both an action dim and a state dim"):
        delta_layout(["a"], ["a", "c"], ["a", "c"])


def _delta_policy(seed=0) -> VLAPolicy:
    base = build_random_policy("tiny", PROFILE, seed=seed)
    config = PolicyConfig.from_dict({**base.config.to_dict(), "delta_actions": list(ARMS)})
    return VLAPolicy(config, base.backbone, base.stats)


def test_a_config_naming_an_unknown_delta_dim_is_refused():
    base = build_random_policy("tiny", PROFILE)
    with pytest.raises(ConfigError, match="delta action dims"):
        PolicyConfig.from_dict({**base.config.to_dict(), "delta_actions": ["left_elbow", "tail"]})
    with pytest.raises(ConfigError, match="twice"):
        PolicyConfig.from_dict({**base.config.to_dict(), "delta_actions": ["left_elbow", "left_elbow"]})


def test_the_loss_learns_offsets_from_the_recorded_state_not_the_noisy_one():
    """compute_loss subtracts reference_state (the recorded state) when the batch has it: the same
    targets as absolute actions shifted by the state noise, measured from the noisy state."""
    policy = _delta_policy()
    torch.nn.init.normal_(policy.head.velocity_out.weight, std=0.3)
    rng = np.random.default_rng(1)
    recorded = torch.from_numpy(rng.uniform(-0.5, 0.5, (3, 14)).astype(np.float32))
    noisy = recorded + 0.05 * torch.from_numpy(rng.standard_normal((3, 14)).astype(np.float32))
    actions = torch.from_numpy(rng.uniform(-0.5, 0.5, (3, 10, 14)).astype(np.float32))
    base = {"images": torch.zeros(3, 1, 32, 32, 3, dtype=torch.uint8), "instruction": [TASK] * 3, "state": noisy}
    arms = policy.delta_mask[None, None, :]
    shifted = actions + (noisy - recorded)[:, None, :] * arms

    def loss(**batch):
        return policy.compute_loss({**base, **batch}, torch.Generator().manual_seed(0))

    with torch.no_grad():
        with_reference = loss(actions=actions, reference_state=recorded)
        torch.testing.assert_close(with_reference, loss(actions=shifted), rtol=1e-5, atol=1e-6)
        # 0.05 rad of state noise moves a loss of about 8 by a few 1e-3 (equal would be within 1e-5)
        assert not torch.allclose(with_reference, loss(actions=actions), rtol=1e-4, atol=0)


def test_noisy_training_batches_keep_the_recorded_state_as_reference(tmp_path):
    root = write_dataset(tmp_path / "ds", episodes=1, frames=12)
    samples = DatasetSamples(LeRobotDataset(root), [0], ["cam_high"], 4, (8, 8), state_noise_std=0.1)
    batch = samples.batch_for_step(0, 6, seed=0)
    clean = samples.collate(np.random.default_rng([0, 0, 0]).integers(0, samples.num_frames, size=6))
    torch.testing.assert_close(batch["reference_state"], clean["state"], rtol=0, atol=0)
    assert not torch.allclose(batch["state"], clean["state"])


def test_delta_targets_are_every_unpadded_chunk_step_minus_its_state(tmp_path):
    from vla_ros.data.lerobot import LeRobotWriter

    root = tmp_path / "gapped"
    slots = [0, 1, 2, 5, 6, 7, 8]  # frames at slots 3 and 4 were dropped
    with LeRobotWriter(root, 50, "test", ["j", "g"], ["j", "g"], {"cam": (8, 8)}) as writer:
        writer.start_episode("task")
        for i, slot in enumerate(slots):
            writer.add_frame([i, -i], [10.0 * i, 0.5 * i], {"cam": np.zeros((8, 8, 3), np.uint8)},
                             timestamp=slot / 50)
        writer.save_episode(block=True)
    samples = DatasetSamples(LeRobotDataset(root), [0], ["cam"], horizon=3, image_size=(8, 8))
    start, target = samples.target_frames(0)
    for frame in range(len(slots)):  # exactly the steps chunk() does not pad
        _, is_pad = samples.chunk(0, frame)
        assert target[start == frame].tolist() == [frame + k for k in range(3) if not is_pad[k]]
    rows = samples.delta_targets([0, 0], [1.0, 0.0])
    np.testing.assert_allclose(rows[:, 0], 10.0 * target - start)  # joint: action(u) - state(t)
    np.testing.assert_allclose(rows[:, 1], 0.5 * target)           # gripper: absolute action(u)


def test_an_old_checkpoint_without_the_key_loads_as_absolute(tmp_path):
    policy = build_random_policy("tiny", PROFILE, seed=3)
    save_checkpoint(policy, tmp_path / "old")
    config_path = tmp_path / "old" / "config.json"
    data = json.loads(config_path.read_text())
    assert data.pop("delta_actions") == []
    config_path.write_text(json.dumps(data))  # as written before delta actions existed
    loaded = load_checkpoint(tmp_path / "old")
    assert loaded.config.delta_actions == ()
    normalised = torch.zeros(1, 10, 14)
    far_state = torch.full((1, 14), 5.0)
    torch.testing.assert_close(loaded.finish_actions(normalised, far_state),
                               loaded.normalizer.action_center.expand(1, 10, 14))


def test_a_delta_checkpoint_keeps_the_choice_and_predicts_absolute_targets_at_the_state(tmp_path):
    """The head outputs zero (its output layer is zero at initialisation), so the normalised chunk
    is 0 and decodes to the offsets' centre: state + centre for the arm joints, the centre itself
    for the grippers, wherever the arm is."""
    policy = _delta_policy()
    assert not policy.head.velocity_out.weight.any()
    save_checkpoint(policy, tmp_path / "delta")
    assert json.loads((tmp_path / "delta" / "config.json").read_text())["delta_actions"] == list(ARMS)
    runtime = PolicyRuntime(tmp_path / "delta", profile=PROFILE, deterministic=True)
    assert runtime.config.delta_actions == ARMS
    runtime.set_instruction(TASK)
    center = runtime.policy.normalizer.action_center.numpy().astype(np.float64)
    arms = [i for i in range(14) if i not in GRIPPERS]
    for offset in (0.0, 0.4):
        state = PROFILE.start_pose + offset
        chunk = runtime.predict({"cam_high": np.zeros((48, 64, 3), np.uint8)}, state)
        np.testing.assert_allclose(chunk[:, arms], (state[arms] + center[arms])[None].repeat(10, 0), atol=1e-5)
        np.testing.assert_allclose(chunk[:, GRIPPERS], center[GRIPPERS][None].repeat(10, 0), atol=1e-6)


@pytest.mark.parametrize("normalization", ["mean_std", "quantile"])
def test_one_training_step_with_delta_actions(tmp_path, normalization, capsys):
    """--delta-actions: statistics of the offsets (every chunk step from its chunk's state,
    grippers absolute), recorded in the checkpoint, and chunks near the state at inference."""
    root = write_dataset(tmp_path / "ds", episodes=2, frames=16)
    config = write_config(tmp_path / "c.yaml", model={"horizon": 4, "normalization": normalization},
                          data={"held_out_episodes": 0}, train={"batch_size": 4, "warmup_steps": 1})
    assert train(root, tmp_path / "run", "--config", config, "--steps", "1", "--delta-actions") == 0
    policy = load_checkpoint(tmp_path / "run" / "policy", profile=PROFILE)
    assert policy.config.delta_actions == ARMS and policy.config.normalization == normalization
    assert policy.stats.extra["action_targets"].startswith("offsets")

    dataset = LeRobotDataset(root)
    expected = []  # every (t, t + k) pair of each episode, written out here independently
    for index in range(2):
        episode = dataset.episode(index)
        for t in range(len(episode.state)):
            for u in range(t, min(t + 4, len(episode.state))):
                row = episode.action[u].astype(np.float64).copy()
                row[[i for i in range(14) if i not in GRIPPERS]] -= episode.state[t][
                    [i for i in range(14) if i not in GRIPPERS]]
                expected.append(row)
    expected = np.array(expected)
    assert len(expected) == 2 * (13 * 4 + 3 + 2 + 1)
    np.testing.assert_allclose(policy.stats.action["mean"], expected.mean(0), atol=1e-6)
    np.testing.assert_allclose(policy.stats.action["std"], expected.std(0), atol=1e-6)
    np.testing.assert_allclose(policy.stats.action["q01"], np.quantile(expected, 0.01, axis=0), atol=1e-6)
    np.testing.assert_allclose(policy.stats.action["q99"], np.quantile(expected, 0.99, axis=0), atol=1e-6)

    runtime = PolicyRuntime(tmp_path / "run" / "policy", profile=PROFILE, deterministic=True)
    runtime.set_instruction(TASK)
    center = runtime.policy.normalizer.action_center.numpy().astype(np.float64)
    scale = runtime.policy.normalizer.action_scale.numpy().astype(np.float64)
    arms = [i for i in range(14) if i not in GRIPPERS]
    for state in (dataset.episode(0).state[5].astype(np.float64), PROFILE.start_pose + 0.5):
        chunk = runtime.predict({"cam_high": np.zeros((32, 32, 3), np.uint8)}, state)
        assert chunk.shape == (4, 14)
        # one step from a zero output layer: the head's output is still near 0 in normalised units,
        # so the arm joints' absolute targets sit at state + the offsets' centre
        reference = center.copy()
        reference[arms] += state[arms]
        assert np.all(np.abs(chunk - reference) / scale < 0.05), np.abs(chunk - reference) / scale


def test_init_from_a_delta_checkpoint_keeps_delta_actions_and_refuses_switching_them_off(tmp_path):
    root = write_dataset(tmp_path / "ds", episodes=2, frames=12)
    save_checkpoint(_delta_policy(seed=2), tmp_path / "base")
    config = write_config(tmp_path / "c.yaml", data={"held_out_episodes": 0}, train={"batch_size": 2})
    assert train(root, tmp_path / "run", "--init", str(tmp_path / "base"), "--config", config, "--steps", "1") == 0
    assert load_checkpoint(tmp_path / "run" / "policy").config.delta_actions == ARMS
    assert train(root, tmp_path / "off", "--init", str(tmp_path / "base"), "--config", config,
                 "--no-delta-actions") == 1
    assert not (tmp_path / "off").exists()
