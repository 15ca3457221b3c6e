"""sim_node's goal following and its documented defaults, without starting ROS."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from vla_ros.ros.sim_node import PARAMETERS, JointPlan

CONFIG = Path(__file__).resolve().parents[2] / "config" / "sim_node.yaml"


def test_plan_interpolates_from_current_state_then_holds():
    plan = JointPlan.from_goal(10.0, 0.0, np.array([0.5, 1.5]), np.array([1.0, 3.0]))
    assert plan.sample(10.0) == pytest.approx(0.0)
    assert plan.sample(10.25) == pytest.approx(0.5)
    assert plan.sample(11.0) == pytest.approx(2.0)
    assert plan.sample(20.0) == pytest.approx(3.0)  # held after the last point


def test_a_goal_at_time_zero_applies_at_once_and_is_held():
    """xs_sdk goals (one point at 0): the joint's target is the goal from now on."""
    plan = JointPlan.from_goal(0.0, 9.0, np.array([0.0]), np.array([0.25]))
    assert plan.sample(0.0) == pytest.approx(0.25)
    assert plan.sample(100.0) == pytest.approx(0.25)


def test_params_file_documents_every_parameter_with_its_default():
    values = yaml.safe_load(CONFIG.read_text())["sim_node"]["ros__parameters"]
    assert values == {spec.name: spec.default for spec in PARAMETERS}
    for spec in PARAMETERS:
        assert spec.validate(values[spec.name]) == spec.default


@pytest.mark.parametrize("spec", PARAMETERS, ids=lambda s: s.name)
def test_every_parameter_is_described(spec):
    assert len(spec.description) > 10
