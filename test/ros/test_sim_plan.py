"""sim_node's trajectory following and its documented defaults, without starting ROS."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from vla_ros.ros.sim_node import PARAMETERS, ArmPlan

CONFIG = Path(__file__).resolve().parents[2] / "config" / "sim_node.yaml"


def test_plan_interpolates_from_current_state_then_holds():
    current = np.zeros(7)
    targets = np.array([np.full(7, 1.0), np.full(7, 3.0)])
    plan = ArmPlan.from_trajectory(10.0, current, np.array([0.5, 1.5]), targets)
    np.testing.assert_allclose(plan.sample(10.0), 0.0)
    np.testing.assert_allclose(plan.sample(10.25), 0.5)
    np.testing.assert_allclose(plan.sample(11.0), 2.0)
    np.testing.assert_allclose(plan.sample(20.0), 3.0)  # held after the last point


def test_plan_with_point_at_zero_starts_there():
    plan = ArmPlan.from_trajectory(0.0, np.full(7, 9.0), np.array([0.0, 1.0]), np.array([np.zeros(7), np.ones(7)]))
    np.testing.assert_allclose(plan.sample(0.0), 0.0)
    np.testing.assert_allclose(plan.sample(0.5), 0.5)


def test_params_file_documents_every_parameter_with_its_default():
    values = yaml.safe_load(CONFIG.read_text())["sim_node"]["ros__parameters"]
    assert values == {spec.name: spec.default for spec in PARAMETERS}
    for spec in PARAMETERS:
        assert spec.validate(values[spec.name]) == spec.default


@pytest.mark.parametrize("spec", PARAMETERS, ids=lambda s: s.name)
def test_every_parameter_is_described(spec):
    assert len(spec.description) > 10
