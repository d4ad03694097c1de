"""The real-data check's equal-compute accounting and its nnU-Net-style Dice (benchmarks/real_data_*.py).

Plain numbers only: no data packages, no network, no training. The step count of an epoch is
also checked against the engine's own training loop (sampler + loader), so the accounting
breaks if the engine's definition of an epoch changes.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from real_data_check import equal_compute_budget, steps_per_epoch  # noqa: E402
from real_data_report import present_dice  # noqa: E402


def test_steps_per_epoch_keeps_the_last_partial_batch():
    assert [steps_per_epoch(n, 16) for n in (1, 16, 17, 56, 196)] == [1, 1, 2, 4, 13]
    with pytest.raises(ValueError):
        steps_per_epoch(0, 16)


def test_steps_per_epoch_matches_the_engines_loader():
    """The engine's epoch: a sampler drawing len(dataset) slices, batches of 16, last one kept."""
    torch = pytest.importorskip("torch")
    for n in (5, 16, 47, 196):
        sampler = torch.utils.data.WeightedRandomSampler(torch.ones(n, dtype=torch.double), num_samples=n)
        loader = torch.utils.data.DataLoader(list(range(n)), batch_size=16, sampler=sampler, drop_last=False)
        assert len(loader) == steps_per_epoch(n, 16)


def test_label_sharing_and_incremental_get_at_most_the_per_task_steps():
    slices = {"ct_abdomen": 56, "ct_chest": 48, "mr_brain_aal": 46, "mr_brain_icbm": 46}
    budget = equal_compute_budget(slices, epochs=60, batch_size=16, added="mr_brain_icbm")
    assert budget.per_task_steps == {"ct_abdomen": 240, "ct_chest": 180, "mr_brain_aal": 180, "mr_brain_icbm": 180}
    assert budget.per_task_total == 780
    assert (budget.shared_epochs, budget.shared_steps) == (60, 780)  # 196 pooled slices: 13 steps an epoch
    assert (budget.base_epochs, budget.base_steps) == (60, 600)  # 150 slices: 10 steps an epoch
    assert (budget.add_epochs, budget.add_steps) == (13, 169)  # the 180 steps left, in whole 13-step epochs
    assert budget.incremental_total == 769 <= budget.per_task_total


def test_uneven_tasks_give_the_shared_model_the_summed_steps():
    slices = {"big": 160, "small": 8}
    budget = equal_compute_budget(slices, epochs=10, batch_size=16, added="small")
    # per task: 10 epochs x 10 steps + 10 epochs x 1 step; pooled epoch: ceil(168 / 16) = 11 steps
    assert budget.per_task_total == 110
    assert (budget.shared_epochs, budget.shared_steps) == (10, 110)
    # the base model gives up one epoch so that add_task gets a whole one within the budget
    assert (budget.base_epochs, budget.base_steps, budget.add_epochs, budget.add_steps) == (9, 90, 1, 11)
    assert budget.incremental_total <= budget.per_task_total


def test_each_model_gets_at_least_one_epoch_even_beyond_a_tiny_budget():
    budget = equal_compute_budget({"a": 10, "b": 10}, epochs=1, batch_size=16, added="b")
    assert budget.per_task_total == 2
    assert (budget.shared_epochs, budget.base_epochs, budget.add_epochs) == (1, 1, 1)
    assert budget.add_steps == math.ceil(20 / 16)
    assert budget.incremental_total == 3  # one base step + one two-step add epoch: over budget, by design


def test_bad_arguments():
    with pytest.raises(ValueError, match="added"):
        equal_compute_budget({"a": 10}, epochs=1, batch_size=16, added="b")
    with pytest.raises(ValueError, match="epochs"):
        equal_compute_budget({"a": 10, "b": 4}, epochs=0, batch_size=16, added="b")


def test_present_dice_leaves_out_cases_absent_from_both_and_counts_false_positives():
    per_case = {"empty": {"a": [0, 0, 0], "b": [0, 0, 0]},
                "hit": {"a": [3, 4, 4], "b": [0, 0, 0]},
                "false_positive": {"a": [0, 5, 0], "b": [0, 2, 0]}}
    assert present_dice(per_case, "a") == (0.375, 1, 1)  # (0.75 + 0) / 2; "empty" is not counted
    assert present_dice(per_case, "b") == (0.0, 0, 1)
    assert present_dice({"empty": {"a": [0, 0, 0]}}, "a") == (None, 0, 0)
