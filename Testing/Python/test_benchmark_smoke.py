"""Smoke tests of the paper-comparison baselines (benchmarks/comparison_models.py).

Tiny tensors only: output shapes, label encodings, and that the masked loss of the merged and
DoDNet-style models ignores the channels of other tasks. No timing asserts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from comparison_models import MASK_VALUE, DynamicHeadNetwork, MergedNetwork, allowed_channels, dodnet_plan, \
    mask_logits, merged_plan  # noqa: E402

from labelsharing.model import default_architecture
from labelsharing.plan import LabelStats, SharedLabelPlan

pytestmark = pytest.mark.slow


def _plan() -> SharedLabelPlan:
    """TaskA: 3 labels (values 1, 2, 3); TaskB: 2 labels (values 1, 2), sizes reversed to values."""
    return SharedLabelPlan.build({
        "TaskA": {"a1": LabelStats(1, 0.1, 1.0), "a2": LabelStats(2, 0.3, 1.0), "a3": LabelStats(3, 0.2, 1.0)},
        "TaskB": {"b1": LabelStats(1, 0.05, 1.0), "b2": LabelStats(2, 0.4, 1.0)},
    })


def _loss():
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, batch=True)


def test_label_encodings():
    merged, dodnet = merged_plan(_plan()), dodnet_plan(_plan())
    assert merged.n_shared == 5 and dodnet.n_shared == 3
    assert {n: a.shared for n, a in merged.labels("TaskB").items()} == {"b1": 4, "b2": 5}
    assert {n: a.shared for n, a in dodnet.labels("TaskB").items()} == {"b1": 1, "b2": 2}
    assert allowed_channels(merged).tolist() == [[True, True, True, True, False, False],
                                                [True, False, False, False, True, True]]
    assert allowed_channels(dodnet).tolist() == [[True, True, True, True], [True, True, True, False]]


def test_mask_logits_blocks_other_channels_and_their_gradient():
    allowed = allowed_channels(merged_plan(_plan()))
    logits = torch.randn(2, 6, 4, 4, requires_grad=True)
    masked = mask_logits(logits, torch.tensor([0, 1]), allowed)
    assert (masked[0, 4:] == MASK_VALUE).all() and (masked[1, 1:4] == MASK_VALUE).all()
    masked.sum().backward()
    assert (logits.grad[0, 4:] == 0).all() and (logits.grad[0, :4] == 1).all()


@pytest.mark.parametrize("kind", ["merged", "dodnet"])
def test_forward_shapes_and_task_attribute(kind):
    plan = merged_plan(_plan()) if kind == "merged" else dodnet_plan(_plan())
    torch.manual_seed(0)
    if kind == "merged":
        network = MergedNetwork(default_architecture(plan.n_shared + 1, 4), allowed_channels(plan))
    else:
        network = DynamicHeadNetwork(default_architecture(4, 4), allowed_channels(plan))
    images = torch.randn(3, 1, 32, 32)
    out = network(images, torch.tensor([0, 1, 1]))
    assert out.shape == (3, plan.n_shared + 1, 32, 32)
    with pytest.raises(ValueError, match="task"):
        network(images)
    network.task = 1
    network.eval()
    with torch.no_grad():
        by_attribute = network(images[1:])
        by_argument = network(images[1:], torch.tensor([1, 1]))
    assert torch.allclose(by_attribute, by_argument)


def test_merged_loss_ignores_other_tasks_channels():
    allowed = allowed_channels(merged_plan(_plan()))
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 8, 8)
    task = torch.tensor([0, 0, 1, 1])
    labels = torch.zeros(4, 1, 8, 8, dtype=torch.long)
    labels[:2, :, :4] = torch.randint(0, 4, (2, 1, 4, 8))  # TaskA: channels 1..3
    labels[2:, :, :4] = torch.tensor([0, 4, 5])[torch.randint(0, 3, (2, 1, 4, 8))]  # TaskB: channels 4, 5
    loss = _loss()(mask_logits(logits, task, allowed), labels)
    changed = logits.clone()
    changed[:2, 4:] += 50.0 * torch.randn(2, 2, 8, 8)  # TaskB's channels on TaskA's images
    changed[2:, 1:4] -= 50.0 * torch.randn(2, 3, 8, 8)  # TaskA's channels on TaskB's images
    assert torch.isfinite(loss)
    assert torch.allclose(_loss()(mask_logits(changed, task, allowed), labels), loss, atol=1e-6)
    changed[0, 1] += 5.0  # a channel of the image's own task does count
    assert not torch.allclose(_loss()(mask_logits(changed, task, allowed), labels), loss)


def test_dodnet_loss_ignores_unused_channels_and_trains():
    plan = dodnet_plan(_plan())
    torch.manual_seed(0)
    network = DynamicHeadNetwork(default_architecture(4, 4), allowed_channels(plan))
    images = torch.randn(2, 1, 32, 32)
    task = torch.tensor([0, 1])
    labels = torch.zeros(2, 1, 32, 32, dtype=torch.long)
    labels[0, :, 8:16] = 3
    labels[1, :, 8:16] = 2
    out = network(images, task)
    assert (out[1, 3] == MASK_VALUE).all()  # TaskB has 2 labels: channel 3 is masked
    loss = _loss()(out, labels)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # each task's head comes from its own controller column
    column_grad = network.controller.weight.grad
    assert column_grad[:, 0].abs().sum() > 0 and column_grad[:, 1].abs().sum() > 0


def test_correction_loop_benchmark_runs_tiny(tmp_path, capsys):
    """benchmarks/correction_loop.py end to end at toy size: the update and its control are written,
    the added cases are recorded and the report names the figures."""
    from correction_loop import main

    out = tmp_path / "correction"
    assert main(["--out", str(out), "--task", "ChestXR", "--start", "2", "--held-out", "1", "--added", "2",
                 "--epochs", "1", "--update-epochs", "1", "--steps", "2", "--batch-size", "4", "--input-size", "32",
                 "--features", "4", "--quiet"]) == 0
    result = json.loads((out / "correction_loop.json").read_text())
    assert len(result["runs"]["update"]["added_cases"]) == 2 and result["runs"]["control"]["added_cases"] == []
    assert set(result["runs"]["update"]["forgetting"]) == {"AbdomenCT", "BrainMR", "KneeXR", "ChestXR"}
    printed = capsys.readouterr().out
    assert "x the training time" in printed and "against the control" in printed


def test_small_islands_benchmark_runs_tiny(tmp_path, capsys):
    """benchmarks/small_islands.py on a tiny spread-run layout (work/models_0/label_sharing): it fits
    the removal, scores without and with it, and reports both tables and the rules kept."""
    from small_islands import main

    from labelsharing.demo import make_demo_datasets
    from labelsharing.train import TrainingOptions, train

    tasks = [t for t in make_demo_datasets(tmp_path / "demo", cases=4, seed=1) if t.name.endswith(("KneeXR", "ChestXR"))]
    train(tasks, tmp_path / "work" / "models_0" / "label_sharing",
          TrainingOptions(epochs=1, steps_per_epoch=2, batch_size=4, input_size=32, features=4, device="cpu"),
          log=lambda line: None)
    assert main(["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--seeds", "0",
                 "--methods", "label_sharing"]) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(result["raw"]["0"]["label_sharing"]) == set(result["removed"]["0"]["label_sharing"]) == {
        "KneeXR", "ChestXR"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "islands kept" in report and "small islands removed" in report and "Rules kept" in report
    assert "small islands removed after prediction:" in capsys.readouterr().out  # the fit's log line
