"""Properties of the shared-label plan for random tasks, label sizes and pins (hypothesis).

For any set of tasks the plan maps each task's labels one-to-one onto shared labels
1..n_shared, with n_shared the largest label count; mapping a label map to shared labels and
back gives it back; pins are honoured or refused; the plan JSON round-trips; and the plan does
not depend on the order in which tasks and labels are given.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labelsharing.errors import LabelSharingError
from labelsharing.plan import LabelStats, SharedLabelPlan, rank_labels_by_size

PROPERTY = settings(max_examples=60, deadline=None)
NAMES = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=6)
# Few distinct sizes, so that ties (broken by label value) are common.
SIZES = st.sampled_from([0.0, 0.01, 0.1, 0.25]) | st.floats(0.0, 1.0)


@st.composite
def labels_of_a_task(draw, max_labels: int = 6) -> dict[str, LabelStats]:
    count = draw(st.integers(1, max_labels))
    names = draw(st.lists(NAMES, min_size=count, max_size=count, unique=True))
    values = draw(st.lists(st.integers(1, 40), min_size=count, max_size=count, unique=True))
    return {
        name: LabelStats(value, draw(SIZES), draw(st.floats(0.0, 1.0)))
        for name, value in zip(names, values)
    }


@st.composite
def tasks(draw, max_tasks: int = 4) -> dict[str, dict[str, LabelStats]]:
    names = draw(st.lists(NAMES, min_size=1, max_size=max_tasks, unique=True))
    return {name: draw(labels_of_a_task()) for name in names}


def _assert_bijection(plan: SharedLabelPlan, stats) -> None:
    assert plan.n_shared == max(len(labels) for labels in stats.values())
    assert sorted(plan.task_names) == sorted(stats)
    for task, labels in stats.items():
        assigned = plan.labels(task)
        assert set(assigned) == set(labels)
        shared = [a.shared for a in assigned.values()]
        assert len(set(shared)) == len(shared) and all(1 <= s <= plan.n_shared for s in shared)
        assert {name: a.value for name, a in assigned.items()} == {name: s.value for name, s in labels.items()}
        for s in range(1, plan.n_shared + 1):
            group = plan.group(s)
            assert task not in group or assigned[group[task]].shared == s


@PROPERTY
@given(stats=tasks())
def test_plan_is_a_bijection_per_task_ranked_by_size(stats):
    plan = SharedLabelPlan.build(stats)
    _assert_bijection(plan, stats)
    for task, labels in stats.items():
        ranked = rank_labels_by_size(labels)
        assert [plan.labels(task)[name].shared for name in ranked] == list(range(1, len(labels) + 1))


@PROPERTY
@given(stats=tasks(), data=st.data())
def test_from_shared_inverts_to_shared(stats, data):
    plan = SharedLabelPlan.build(stats)
    task = data.draw(st.sampled_from(sorted(stats)))
    values = [0] + [s.value for s in stats[task].values()]
    shape = data.draw(st.sampled_from([(7,), (3, 5), (2, 3, 4)]))
    array = np.asarray(data.draw(st.lists(st.sampled_from(values), min_size=int(np.prod(shape)),
                                          max_size=int(np.prod(shape))))).reshape(shape)
    shared = plan.to_shared(task, array)
    assert shared.shape == array.shape and shared.min(initial=0) >= 0 and shared.max(initial=0) <= plan.n_shared
    np.testing.assert_array_equal(plan.from_shared(task, shared), array)
    np.testing.assert_array_equal(shared == 0, array == 0)


@PROPERTY
@given(stats=tasks(), data=st.data())
def test_undeclared_values_are_refused_by_to_shared(stats, data):
    plan = SharedLabelPlan.build(stats)
    task = data.draw(st.sampled_from(sorted(stats)))
    declared = {s.value for s in stats[task].values()} | {0}
    bad = data.draw(st.integers(-5, 60).filter(lambda v: v not in declared))
    with pytest.raises(LabelSharingError, match=re.escape(f"Task '{task}': ")):
        plan.to_shared(task, np.array([0, bad]))


@PROPERTY
@given(stats=tasks(), data=st.data())
def test_pins_are_honoured_or_refused(stats, data):
    task = data.draw(st.sampled_from(sorted(stats)))
    n_shared = max(len(labels) for labels in stats.values())
    pinned = data.draw(st.lists(st.sampled_from(sorted(stats[task])), unique=True))
    pins = {task: {label: data.draw(st.integers(-1, n_shared + 2)) for label in pinned}}
    targets = list(pins[task].values())
    possible = all(1 <= s <= n_shared for s in targets) and len(set(targets)) == len(targets)
    if not possible:
        with pytest.raises(LabelSharingError, match=r"is impossible: shared labels run from 1|Pins put two labels"):
            SharedLabelPlan.build(stats, pins)
        return
    plan = SharedLabelPlan.build(stats, pins)
    _assert_bijection(plan, stats)
    assert {label: plan.labels(task)[label].shared for label in pinned} == pins[task]
    unpinned = [label for label in rank_labels_by_size(stats[task]) if label not in pins[task]]
    free = [s for s in range(1, n_shared + 1) if s not in targets]
    assert [plan.labels(task)[label].shared for label in unpinned] == free[: len(unpinned)]


@PROPERTY
@given(stats=tasks(), unknown=NAMES)
def test_pins_naming_unknown_tasks_or_labels_are_refused(stats, unknown):
    task = sorted(stats)[0]
    if unknown not in stats:
        with pytest.raises(LabelSharingError, match="unknown task"):
            SharedLabelPlan.build(stats, {unknown: {}})
    if unknown not in stats[task]:
        with pytest.raises(LabelSharingError, match="unknown label"):
            SharedLabelPlan.build(stats, {task: {unknown: 1}})


@PROPERTY
@given(stats=tasks(), data=st.data())
def test_plan_json_round_trips(stats, data, tmp_path_factory):
    task = data.draw(st.sampled_from(sorted(stats)))
    label = data.draw(st.sampled_from(sorted(stats[task])))
    n_shared = max(len(labels) for labels in stats.values())
    plan = SharedLabelPlan.build(stats, {task: {label: data.draw(st.integers(1, n_shared))}})
    assert SharedLabelPlan.from_dict(plan.to_dict()) == plan
    assert SharedLabelPlan.from_dict(json.loads(json.dumps(plan.to_dict()))).to_dict() == plan.to_dict()
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    plan.save_json(path)
    loaded = SharedLabelPlan.load_json(path)
    assert loaded == plan and loaded.task_names == plan.task_names
    for name in plan.task_names:
        assert loaded.labels(name) == plan.labels(name)


@PROPERTY
@given(stats=tasks(), data=st.data())
def test_plan_does_not_depend_on_the_order_of_tasks_and_labels(stats, data):
    task_order = data.draw(st.permutations(sorted(stats)))
    shuffled = {
        task: {name: stats[task][name] for name in data.draw(st.permutations(sorted(stats[task])))}
        for task in task_order
    }
    first, second = SharedLabelPlan.build(stats), SharedLabelPlan.build(shuffled)
    assert first == second
    for task in stats:
        assert first.labels(task) == second.labels(task)


@PROPERTY
@given(stats=tasks(max_tasks=3), new=labels_of_a_task(max_labels=8), new_name=NAMES)
def test_add_task_keeps_old_tasks_and_maps_the_new_one_bijectively(stats, new, new_name):
    plan = SharedLabelPlan.build(stats)
    if new_name in stats:
        with pytest.raises(LabelSharingError, match="already has a task"):
            plan.add_task(new_name, new)
        return
    grown = plan.add_task(new_name, new)
    _assert_bijection(grown, {**stats, new_name: new})
    assert grown.n_shared == max(plan.n_shared, len(new))
    for task in stats:
        assert grown.labels(task) == plan.labels(task)


# Names from a small alphabet, so that look-alike tasks often share a label name.
SHARED_NAMES = st.sampled_from(["liver", "Liver", "heart", "spine", "lung", "kidney"])


@PROPERTY
@given(stats=tasks(), data=st.data())
def test_keeping_look_alikes_apart_mixes_no_structures_and_leaves_other_tasks_alone(stats, data):
    from labelsharing.plan.label_matching import normalise_name

    stats = {**stats, **{f"look{i}": {name: LabelStats(v + 1, data.draw(SIZES), 1.0) for v, name in enumerate(
        data.draw(st.lists(SHARED_NAMES, min_size=1, max_size=4, unique=True)))} for i in range(2)}}
    group = [t for t in stats if t.startswith("look")] + data.draw(st.lists(st.sampled_from(list(stats)), max_size=1))
    group = list(dict.fromkeys(group))
    plan = SharedLabelPlan.build(stats, look_alike=[group], keep_apart=True)
    today = SharedLabelPlan.build(stats, look_alike=[group])
    for task in set(stats) - set(group):
        assert plan.labels(task) == today.labels(task)
    highest = max(a.shared for t in stats for a in plan.labels(t).values())
    assert plan.n_shared == max(max(len(labels) for labels in stats.values()), highest)
    for shared in range(1, plan.n_shared + 1):  # two tasks of the group on one shared label: one structure
        names = {normalise_name(name) for task, name in plan.group(shared).items() if task in group}
        assert len(names) <= 1
    for task in group:
        own = {a.shared for a in plan.labels(task).values()}
        partners = {a.shared for t in group if t != task for a in plan.labels(t).values()}
        assert set(plan.left_out(task)) == partners - own
    assert SharedLabelPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
