"""Ranking labels by size, sharing them across tasks, pins, mapping and the plan JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from labelsharing.errors import LabelSharingError
from labelsharing.plan import LabelStats, SharedLabelPlan, measure_label_sizes, rank_labels_by_size, read_pins


def stats(**sizes: float) -> dict[str, LabelStats]:
    """Label stats whose values follow the keyword order (1, 2, ...)."""
    return {name: LabelStats(value=i + 1, relative_size=size, presence=1.0) for i, (name, size) in enumerate(sizes.items())}


def test_measure_label_sizes_known_fractions():
    a = np.zeros((10, 10), dtype=np.uint8)
    a[:5] = 1  # 50 %
    a[5, :2] = 2  # 2 %
    b = np.zeros((4, 5), dtype=np.uint8)
    b[0, :2] = 1  # 10 %, label 2 absent
    result = measure_label_sizes([a, b], {"background": 0, "one": 1, "two": 2})
    assert result["one"] == LabelStats(1, pytest.approx(0.30), 1.0)
    assert result["two"].relative_size == pytest.approx(0.01)
    assert result["two"].presence == 0.5
    assert "background" not in result


def test_measure_label_sizes_without_images_is_an_error():
    with pytest.raises(LabelSharingError, match="No label maps"):
        measure_label_sizes([], {"a": 1})


@pytest.mark.parametrize(
    "task_stats, expected",
    [
        # largest first, independent of label values
        ({"T": stats(small=0.01, big=0.5, mid=0.1)}, {"T": {"big": 1, "mid": 2, "small": 3}}),
        # rank r of every task -> shared r; n_shared = largest label count
        (
            {"A": stats(a1=0.3, a2=0.2), "B": stats(b1=0.01, b2=0.02, b3=0.4)},
            {"A": {"a1": 1, "a2": 2}, "B": {"b3": 1, "b2": 2, "b1": 3}},
        ),
        # ties broken by label value (x has value 1, y value 2)
        ({"T": stats(x=0.2, y=0.2)}, {"T": {"x": 1, "y": 2}}),
        ({"T": {"y": LabelStats(1, 0.2, 1), "x": LabelStats(2, 0.2, 1)}}, {"T": {"y": 1, "x": 2}}),
    ],
)
def test_build_ranks_and_shares(task_stats, expected):
    plan = SharedLabelPlan.build(task_stats)
    assert {t: {n: a.shared for n, a in plan.labels(t).items()} for t in plan.task_names} == expected
    assert plan.n_shared == max(len(s) for s in task_stats.values())


def test_rank_labels_by_size_order():
    assert rank_labels_by_size(stats(a=0.1, b=0.3, c=0.2)) == ["b", "c", "a"]


def test_pins_are_kept_and_others_ranked_around_them():
    plan = SharedLabelPlan.build(
        {"A": stats(big=0.5, mid=0.2, small=0.1), "B": stats(p=0.4, q=0.3, r=0.2)},
        pins={"A": {"small": 1}},
    )
    assert {n: a.shared for n, a in plan.labels("A").items()} == {"small": 1, "big": 2, "mid": 3}
    assert {n: a.shared for n, a in plan.labels("B").items()} == {"p": 1, "q": 2, "r": 3}
    assert plan.group(1) == {"A": "small", "B": "p"}


@pytest.mark.parametrize(
    "pins, message",
    [
        ({"A": {"big": 1, "mid": 1}}, "two labels of task 'A'"),
        ({"A": {"big": 4}}, "impossible: shared labels run from 1 to 3"),
        ({"A": {"big": 0}}, "impossible"),
        ({"A": {"nope": 1}}, "unknown label"),
        ({"Z": {"big": 1}}, "unknown task"),
    ],
)
def test_invalid_pins(pins, message):
    with pytest.raises(LabelSharingError, match=message):
        SharedLabelPlan.build({"A": stats(big=0.5, mid=0.2, small=0.1)}, pins=pins)


def test_read_pins_rejects_non_integers(tmp_path):
    path = tmp_path / "pins.json"
    path.write_text(json.dumps({"A": {"big": "1"}}))
    with pytest.raises(LabelSharingError, match="must be an integer"):
        read_pins(path)
    path.write_text(json.dumps({"A": {"big": 2}}))
    assert read_pins(path) == {"A": {"big": 2}}


def test_fragile_ranking_warns_only_for_close_sizes():
    plan = SharedLabelPlan.build({"T": stats(a=0.100, b=0.095, c=0.01)})
    assert len(plan.warnings) == 1
    assert "'a'" in plan.warnings[0] and "'b'" in plan.warnings[0]


def test_to_shared_from_shared_round_trip():
    plan = SharedLabelPlan.build({"A": stats(s=0.1, b=0.5), "B": stats(only=0.3)})
    local = np.array([[0, 1, 2], [2, 1, 0]])  # s=1 -> shared 2, b=2 -> shared 1
    shared = plan.to_shared("A", local)
    np.testing.assert_array_equal(shared, [[0, 2, 1], [1, 2, 0]])
    np.testing.assert_array_equal(plan.from_shared("A", shared), local)
    # shared labels the task does not use become background
    np.testing.assert_array_equal(plan.from_shared("B", np.array([0, 1, 2])), [0, 1, 0])


def test_to_shared_rejects_undeclared_values_and_unknown_tasks():
    plan = SharedLabelPlan.build({"Abdomen": stats(a=0.1)})
    with pytest.raises(LabelSharingError, match=r"\[5\]"):
        plan.to_shared("Abdomen", np.array([0, 1, 5]))
    with pytest.raises(LabelSharingError, match="Did you mean 'Abdomen'"):
        plan.to_shared("abdomen", np.array([0]))


def test_plan_json_round_trip_and_shape(tmp_path):
    plan = SharedLabelPlan.build({"A": stats(x=0.25, y=0.5), "B": stats(z=0.125)})
    path = tmp_path / "plan.json"
    plan.save_json(path)
    data = json.loads(path.read_text())
    assert data == {
        "n_shared": 2,
        "tasks": {
            "A": {"labels": {"y": {"value": 2, "relative_size": 0.5, "presence": 1.0, "shared": 1},
                             "x": {"value": 1, "relative_size": 0.25, "presence": 1.0, "shared": 2}}},
            "B": {"labels": {"z": {"value": 1, "relative_size": 0.125, "presence": 1.0, "shared": 1}}},
        },
    }
    assert SharedLabelPlan.load_json(path) == plan


def test_from_dict_rejects_broken_plans():
    bad = {"n_shared": 1, "tasks": {"A": {"labels": {"x": {"value": 1, "shared": 1}, "y": {"value": 2, "shared": 1}}}}}
    with pytest.raises(LabelSharingError, match="two labels onto one shared label"):
        SharedLabelPlan.from_dict(bad)
    with pytest.raises(LabelSharingError, match="Not a valid"):
        SharedLabelPlan.from_dict({"tasks": {}})


def test_add_task_keeps_old_tasks_and_grows_when_needed():
    plan = SharedLabelPlan.build({"A": stats(a1=0.3, a2=0.1)})
    same = plan.add_task("B", stats(b1=0.05, b2=0.2))
    assert same.n_shared == 2 and same.labels("A") == plan.labels("A")
    assert {n: a.shared for n, a in same.labels("B").items()} == {"b2": 1, "b1": 2}
    grown = plan.add_task("C", stats(c1=0.1, c2=0.2, c3=0.3))
    assert grown.n_shared == 3 and grown.labels("A") == plan.labels("A")
    with pytest.raises(LabelSharingError, match="already has a task named 'A'"):
        plan.add_task("A", stats(q=0.1))
