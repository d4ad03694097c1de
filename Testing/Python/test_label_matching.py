"""Look-alike tasks: matching labels pinned to one shared label, user pins win, conflicts said plainly."""

from __future__ import annotations

import pytest

from labelsharing.plan import plan_table
from labelsharing.plan.label_matching import normalise_name, terminology_code
from labelsharing.plan.shared_labels import USER_PIN, LabelStats, SharedLabelPlan


def stats(**sizes: float) -> dict[str, LabelStats]:
    return {name: LabelStats(value=i + 1, relative_size=size, presence=1.0) for i, (name, size) in enumerate(sizes.items())}


def shared(plan: SharedLabelPlan, task: str) -> dict[str, int]:
    return {n: a.shared for n, a in plan.labels(task).items()}


def term(type_code: str, meaning: str, modifier: str = "^^") -> str:
    return (f"Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~"
            f"SCT^{type_code}^{meaning}~{modifier}~Anatomic codes - DICOM master list~^^~^^")


# A: white matter largest; B: white matter second largest -> by size alone they split (1 vs 2).
TASKS = {"A": stats(white_matter=0.3, cortex=0.2), "B": stats(csf=0.4, **{"White Matter": 0.2}, lesion=0.01)}


def test_size_ranking_alone_splits_one_structure():
    plan = SharedLabelPlan.build(TASKS)
    assert shared(plan, "A")["white_matter"] != shared(plan, "B")["White Matter"]


@pytest.mark.parametrize("a, b", [("white_matter", "White Matter"), ("white-matter", "WHITE  MATTER"),
                                  ("white_matter", " white-matter ")])
def test_normalised_names_match(a, b):
    assert normalise_name(a) == normalise_name(b)


def test_look_alike_tasks_get_same_named_labels_pinned_together():
    plan = SharedLabelPlan.build(TASKS, look_alike=[["A", "B"]])
    assert shared(plan, "A")["white_matter"] == shared(plan, "B")["White Matter"] == 1
    assert shared(plan, "B") == {"White Matter": 1, "csf": 2, "lesion": 3}  # the rest ranked by size around it
    assert plan.pin_reasons["B"]["White Matter"] == "same name as A/white_matter"
    assert plan.pin_reasons["A"]["white_matter"] == "same name as B/White Matter"
    assert SharedLabelPlan.from_dict(plan.to_dict()).pin_reasons == plan.pin_reasons
    # tasks that do not look alike are ranked by size alone
    assert SharedLabelPlan.build(TASKS, look_alike=[]) == SharedLabelPlan.build(TASKS)


def test_terminology_codes_match_whatever_the_names_and_meanings():
    tasks = {"A": stats(wm=0.3, gm=0.2), "B": stats(csf=0.4, tissue=0.2)}
    terminology = {"A": {"wm": term("68523003", "White matter")},
                   "B": {"tissue": term("68523003", "white matter structure")}}
    assert terminology_code(terminology["A"]["wm"]) == terminology_code(terminology["B"]["tissue"])
    assert terminology_code(term("64033007", "Kidney", "SCT^7771000^Left")) != terminology_code(
        term("64033007", "Kidney", "SCT^24028007^Right"))
    plan = SharedLabelPlan.build(tasks, look_alike=[["A", "B"]], terminology=terminology)
    assert shared(plan, "A")["wm"] == shared(plan, "B")["tissue"]
    assert plan.pin_reasons["B"]["tissue"] == "same terminology code as A/wm"


def test_user_pins_win_over_automatic_pins():
    plan = SharedLabelPlan.build(TASKS, pins={"B": {"White Matter": 3}}, look_alike=[["A", "B"]])
    assert shared(plan, "B")["White Matter"] == 3 and plan.pin_reasons["B"]["White Matter"] == USER_PIN
    assert shared(plan, "A")["white_matter"] == 3  # follows the user's pin of its match
    # the user pins both sides apart: nothing automatic overrides them
    plan = SharedLabelPlan.build(TASKS, pins={"A": {"white_matter": 2}, "B": {"White Matter": 1}},
                                 look_alike=[["A", "B"]])
    assert shared(plan, "A")["white_matter"] == 2 and shared(plan, "B")["White Matter"] == 1


def test_add_task_pins_the_new_task_to_a_look_alike_old_task():
    old = SharedLabelPlan.build({"A": stats(white_matter=0.3, cortex=0.2), "X": stats(femur=0.5)})
    new = old.add_task("B", stats(csf=0.4, **{"White Matter": 0.2}), look_alike=["A"])
    assert shared(new, "A") == shared(old, "A")  # old tasks never move
    assert shared(new, "B")["White Matter"] == shared(old, "A")["white_matter"] == 1
    assert new.pin_reasons["B"] == {"White Matter": "same name as A/white_matter"}


def test_plan_table_marks_pins_and_gives_the_reason():
    plan = SharedLabelPlan.build(TASKS, pins={"B": {"lesion": 3}}, look_alike=[["A", "B"]])
    table = plan_table(plan)
    assert "white_matter (30.00%) [auto]" in table and "lesion (1.00%) [pin]" in table
    assert "[auto] B/White Matter -> shared 1: same name as A/white_matter" in table


def test_conflict_that_pins_cannot_resolve_is_said_plainly():
    lobes = {"A": stats(frontal=0.08, temporal=0.04, parietal=0.035, occipital=0.033, cerebellum=0.02),
             "B": stats(gray_matter=0.14, white_matter=0.07)}
    plan = SharedLabelPlan.build(lobes, look_alike=[["A", "B"]])
    conflict = [w for w in plan.warnings if "look alike" in w]
    assert len(conflict) == 1
    assert "shared 1 = A/frontal / B/gray_matter" in conflict[0]
    assert "one merged task" in conflict[0] and "separate models" in conflict[0]
    assert not [w for w in SharedLabelPlan.build(lobes).warnings if "look alike" in w]
    # fully matched look-alike tasks have no conflict
    same = SharedLabelPlan.build({"A": stats(liver=0.3, spleen=0.1), "B": stats(Spleen=0.2, Liver=0.1)},
                                 look_alike=[["A", "B"]])
    assert not [w for w in same.warnings if "look alike" in w]
    assert shared(same, "B") == {"Liver": 1, "Spleen": 2}
