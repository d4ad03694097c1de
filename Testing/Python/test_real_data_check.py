"""The real-data check's equal-compute accounting and its nnU-Net-style Dice (benchmarks/real_data_*.py).

No data packages, no network. The step count is also checked against a tiny engine training
run, so the accounting breaks if the engine's definition of an epoch changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from real_data_check import equal_compute_budget  # noqa: E402
from real_data_report import present_dice  # noqa: E402
from real_data_spread import spread_table  # noqa: E402


def test_every_method_makes_the_per_task_models_steps_together():
    tasks = ["ct_abdomen", "ct_chest", "mr_brain_aal", "mr_brain_icbm"]
    budget = equal_compute_budget(tasks, epochs=60, steps=20, batch_size=16, added="mr_brain_icbm")
    assert budget.per_task_steps == dict.fromkeys(tasks, 1200) and budget.per_task_total == 4800
    assert budget.steps_per_epoch == {"per_task": 20, "shared": 80, "base": 60, "add": 20}
    assert budget.shared_steps == budget.incremental_total == budget.per_task_total
    assert (budget.base_steps, budget.add_steps) == (3600, 1200)


def test_the_step_counts_are_the_engines(tmp_path):
    """The engine's epoch is --steps-per-epoch batches whatever the data size: the budget's unit."""
    from labelsharing.demo import make_demo_datasets
    from labelsharing.train import TrainingOptions, train

    knee = make_demo_datasets(tmp_path / "demo", cases=3, seed=0)[2]
    budget = equal_compute_budget(["KneeXR", "Other"], epochs=2, steps=3, batch_size=8, added="Other")
    options = TrainingOptions(epochs=budget.epochs, steps_per_epoch=budget.steps_per_epoch["per_task"], batch_size=8,
                              input_size=32, features=4, device="cpu")
    train([knee], tmp_path / "m", options, log=lambda m: None)
    history = json.loads((tmp_path / "m" / "model.json").read_text())["history"][0]
    assert history["steps"] == budget.per_task_steps["KneeXR"] == 6


def test_bad_arguments():
    with pytest.raises(ValueError, match="added"):
        equal_compute_budget(["a"], epochs=1, steps=1, batch_size=16, added="b")
    with pytest.raises(ValueError, match="epochs and steps"):
        equal_compute_budget(["a", "b"], epochs=0, steps=1, batch_size=16, added="b")


def test_present_dice_leaves_out_cases_absent_from_both_and_counts_false_positives():
    per_case = {"empty": {"a": [0, 0, 0], "b": [0, 0, 0]},
                "hit": {"a": [3, 4, 4], "b": [0, 0, 0]},
                "false_positive": {"a": [0, 5, 0], "b": [0, 2, 0]}}
    assert present_dice(per_case, "a") == (0.375, 1, 1)  # (0.75 + 0) / 2; "empty" is not counted
    assert present_dice(per_case, "b") == (0.0, 0, 1)
    assert present_dice({"empty": {"a": [0, 0, 0]}}, "a") == (None, 0, 0)


def test_the_spread_pairs_each_method_with_the_per_task_models_of_its_own_seed():
    def result(mean, heart):
        return {"mean_dice": mean, "labels": {"heart": {"dice": heart}}}
    by_seed = {0: {"per_task": {"chest": result(0.5, 0.6)}, "label_sharing": {"chest": result(0.4, 0.3)}},
               1: {"per_task": {"chest": result(0.7, 0.8)}, "label_sharing": {"chest": result(0.75, 0.7)}}}
    rows = {tuple(line.split()[:2]): line for line in spread_table(by_seed).splitlines()[2:]}
    assert rows[("chest", "per_task")].split()[2:] == ["0.500", "0.700", "0.600", "[0.500,", "0.700]", "-"]
    # paired by seed: -0.1 with seed 0, +0.05 with seed 1
    assert rows[("chest", "label_sharing")].split()[-3:] == ["-0.025", "[-0.100,", "+0.050]"]
    heart = {tuple(line.split()[:2]): line for line in spread_table(by_seed, "heart").splitlines()[2:]}
    assert heart[("chest", "label_sharing")].split()[-3:] == ["-0.200", "[-0.300,", "-0.100]"]
