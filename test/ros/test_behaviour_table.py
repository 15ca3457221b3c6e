"""The confusion table of `vla-ros sim-eval --instruction ...`: instruction given against the
behaviour an episode completed, with 95% Wilson intervals, built from per-episode results."""

import pytest
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from vla_ros.ros import sim_eval
from vla_ros.ros.episodes import (EpisodeResult, completed_behaviours, confusion_table, format_confusion_table,
                                  guard_counts_since, instructed_behaviour, summarize, wilson_interval)
from vla_ros.sim.behaviours import LIFT_PLACE, NONE, TRANSFER

HAND_OVER, LIFT = "transfer the cube to the left arm", "lift the cube with the right arm and put it back down"


def episode(index: int, instruction: str, behaviour: str) -> EpisodeResult:
    return EpisodeResult(episode=index, seed=1001 + index, success=behaviour == TRANSFER, max_reward=0.0, steps=400,
                         time_to_success_s=None, commands_published=400, instruction=instruction, behaviour=behaviour)


def test_each_episode_counts_once_in_its_instructions_row():
    results = ([episode(i, HAND_OVER, TRANSFER) for i in range(8)] + [episode(8, HAND_OVER, NONE)]
               + [episode(9 + i, LIFT, LIFT_PLACE) for i in range(3)] + [episode(12, LIFT, TRANSFER)])
    table = confusion_table(results)
    assert list(table) == [HAND_OVER, LIFT]
    assert table[HAND_OVER]["episodes"] == 9 and table[LIFT]["episodes"] == 4
    assert [table[HAND_OVER][c]["count"] for c in (TRANSFER, LIFT_PLACE, NONE)] == [8, 0, 1]
    assert [table[LIFT][c]["count"] for c in (TRANSFER, LIFT_PLACE, NONE)] == [1, 3, 0]
    assert table[LIFT][LIFT_PLACE]["rate"] == 0.75
    assert table[LIFT][LIFT_PLACE]["rate_95ci"] == wilson_interval(3, 4)
    assert summarize(results)["confusion"] == table
    text = format_confusion_table(table)
    assert text.splitlines()[0] == "| instruction given | transfer | lift_place | none |"
    assert f"| {LIFT} | 1/4 = 25% " in text and "3/4 = 75% (30-95%)" in text


def test_success_as_instructed_counts_the_behaviour_each_instruction_asks_for():
    """`successes` is the transfer reward whatever was asked; a lift run reads its own rate here."""
    results = ([episode(i, LIFT, LIFT_PLACE) for i in range(3)] + [episode(3, LIFT, TRANSFER)]
               + [episode(4, HAND_OVER, TRANSFER), episode(5, HAND_OVER, NONE), episode(6, "wave", TRANSFER)])
    assert instructed_behaviour(LIFT) == LIFT_PLACE and instructed_behaviour(HAND_OVER) == TRANSFER
    assert instructed_behaviour("wave") is None
    summary = summarize(results)
    assert summary["successes"] == 3  # two transfers asked for other things
    assert summary["completed_as_instructed"] == {"episodes": 6, "completed": 4, "rate": 4 / 6,
                                                  "rate_95ci": wilson_interval(4, 6)}
    assert summarize([episode(0, "wave", TRANSFER)])["completed_as_instructed"]["rate"] is None


def test_each_episode_reports_what_the_guard_counted_during_it():
    """The guard's counters are cumulative over the session; each episode reports its own growth."""
    first, second, third = episode(0, HAND_OVER, TRANSFER), episode(1, HAND_OVER, NONE), episode(2, HAND_OVER, NONE)
    first.guard = {"state": "latched", "count:forwarded": 800, "count:latches:timeout": 1}
    second.guard = {"state": "latched", "count:forwarded": 1000, "count:latches:timeout": 2,
                    "count:refused:latched": 350}  # latched mid-episode: the rest was refused
    third.guard = {"state": "latched", "count:forwarded": 1800, "count:latches:timeout": 3,
                   "count:refused:latched": 350}
    assert guard_counts_since(first, None) == {"forwarded": 800, "latches:timeout": 1}
    assert guard_counts_since(second, first) == {"forwarded": 200, "latches:timeout": 1, "refused:latched": 350}
    assert summarize([first, second, third])["per_episode"][2]["guard"] == {"forwarded": 800, "latches:timeout": 1}


def test_wilson_interval_matches_known_values():
    assert wilson_interval(41, 50) == pytest.approx([0.6920, 0.9023], abs=1e-3)  # the shipped policy's row
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and high == pytest.approx(0.0713, abs=1e-3)
    assert wilson_interval(50, 50)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == [0.0, 1.0]


def test_sim_node_behaviour_messages_parse_to_completion_steps():
    status = DiagnosticStatus(values=[KeyValue(key=TRANSFER, value=""), KeyValue(key=LIFT_PLACE, value="224")])
    assert completed_behaviours(status) == {TRANSFER: None, LIFT_PLACE: 224}
    assert completed_behaviours(None) == {TRANSFER: None, LIFT_PLACE: None}  # never heard from sim_node


@pytest.mark.parametrize("texts", [["same", "same"], ["  "]])
def test_instructions_must_be_distinct_and_non_empty(tmp_path, capsys, texts):
    (tmp_path / "config.json").write_text("{}")
    args = ["--checkpoint", str(tmp_path), "--report", str(tmp_path / "r.json")]
    for text in texts:
        args += ["--instruction", text]
    with pytest.raises(SystemExit) as exit_info:
        sim_eval.main(args)
    assert exit_info.value.code == 2
    assert "--instruction" in capsys.readouterr().err
