"""Tests that fail when the method breaks without any error (issue 9, "Tests that fail when the method breaks").

Each test guards against one silent change to the engine, named in its docstring, that the rest of
the suite let through. Where a pixel-wise fake network would hide the change (it does not care
which way a volume is sliced, nor which slices it is shown), the test records what the real
training loop draws, or uses a fake whose output depends on the pixel's position in the slice.
Guards found elsewhere: training on validation cases and validating on training cases
(``test_training.py::test_training_slices_come_only_from_training_cases_and_validation_only_from_held_out_ones``),
re-deriving an old task's split
(``test_incremental.py::test_old_tasks_keep_their_own_validation_split_across_add_tasks``), blending label
values (``test_square_fit_alignment.py::test_fitted_labels_keep_their_values``), training labels that sit
off their images (the Dice floor of ``test_end_to_end.py::test_training_learns_easy_shapes_above_a_dice_floor``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import boxes, write_task
from tiny_model import make_model

from labelsharing.errors import LabelSharingError
from labelsharing.infer import Predictor
from labelsharing.model import SegmentationModel
from labelsharing.model.folder import weights_sha256

TINY = dict(batch_size=2, input_size=32, features=4, device="cpu", seed=0, val_fraction=0.34)


def _volumes(slices: int) -> list[np.ndarray]:
    """Three (slices, 16, 16) label volumes: a square of label 1 and a bar of label 2 on every slice."""
    label = np.zeros((slices, 16, 16), np.uint8)
    label[:, 3:9, 3:9] = 1
    label[:, 11:14, 2:14] = 2
    return [label] * 3


@pytest.fixture
def big_and_small(tmp_path: Path) -> tuple[Path, Path]:
    """Two CT tasks of three cases each, cut axially (thick slices): 24 vs 4 slices per case."""
    spacing = [1.0, 1.0, 3.0]
    big = write_task(tmp_path / "Big", {"a": 1, "b": 2}, _volumes(24), spacing=spacing)
    small = write_task(tmp_path / "Small", {"a": 1, "b": 2}, _volumes(4), spacing=spacing)
    return big, small


def _recording_draws(monkeypatch) -> list[int]:
    """Make the training loop record the task index of every slice it draws."""
    from labelsharing.train import Trainer

    drawn: list[int] = []

    def forward(self, network, images, task_indices):
        drawn.extend(task_indices.tolist())
        return network(images)

    monkeypatch.setattr(Trainer, "forward", forward)
    return drawn


def test_training_draws_every_task_equally_often_whatever_its_size(big_and_small, tmp_path, monkeypatch):
    """Guards against a uniform sampler (drawing slices regardless of their task): the small task
    (8 training slices against 48) would get 1/7 of the draws instead of half."""
    from labelsharing.train import TrainingOptions, train

    drawn = _recording_draws(monkeypatch)
    train(list(big_and_small), tmp_path / "model", TrainingOptions(epochs=3, **TINY), log=lambda m: None)
    small = float(np.mean(np.asarray(drawn) == 1))  # tasks are indexed in the order given
    assert len(drawn) >= 150 and 0.35 < small < 0.65, f"share of draws from the small task: {small:.2f}"


def test_add_task_draws_old_tasks_in_the_replay_share(big_and_small, tmp_path, monkeypatch):
    """Guards against ignoring the replay shares (the new and old tasks drawn equally, or by size):
    with --replay 0.25 a quarter of the draws must come from the old task."""
    import labelsharing.train.incremental as incremental
    from labelsharing.train import TrainingOptions, train

    big, small = big_and_small
    train([big], tmp_path / "parent", TrainingOptions(epochs=1, **TINY), log=lambda m: None)
    drawn = _recording_draws(monkeypatch)
    incremental.add_task(tmp_path / "parent", small, tmp_path / "child", TrainingOptions(epochs=3, **TINY),
                         replay=0.25, log=lambda m: None)
    old = float(np.mean(np.asarray(drawn) != 0))  # the new task is index 0, old tasks follow
    assert len(drawn) >= 150 and 0.12 < old < 0.38, f"share of draws from the old task: {old:.2f}"


class _BandNetwork(torch.nn.Module):
    """(B, 1, S, S) -> logits that say shared label 1 on the middle half of the rows, background elsewhere.

    Unlike a pixel-wise fake, its answer depends on how a volume is cut into slices.
    """

    def __init__(self, n_outputs: int):
        super().__init__()
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2]
        logits = torch.full((x.shape[0], self.n_outputs) + tuple(x.shape[-2:]), -10.0)
        logits[:, 0] = 0.0
        logits[:, 1, size // 4 : 3 * size // 4] = 10.0
        return logits


def test_prediction_cuts_volumes_along_the_axis_the_task_was_trained_on():
    """Guards against slicing on the wrong axis at inference (the geometry's own choice instead of the
    task's stored axis, or numpy and image axes mixed up). TaskA is stored as cut along image axis i
    (sagittal); the isotropic volume would be cut along k by the geometric rule."""
    model = make_model(fake=True, input_size=16, axis_a=0)
    model.network = _BandNetwork(model.config["plan"]["n_shared"] + 1)
    labels = Predictor(model, "cpu").predict_image(sitk.GetImageFromArray(np.zeros((16, 16, 16), np.float32)),
                                                   "TaskA")
    # A sagittal slice is (z, y): its rows run along z, so the band is the middle half of z.
    expected = np.zeros((16, 16, 16), np.uint8)
    expected[4:12] = 1  # shared label 1 is TaskA's "big" = 1
    np.testing.assert_array_equal(labels, expected)


def test_ct_intensities_beyond_the_window_are_clipped_in_training_and_at_inference(tmp_path):
    """Guards against dropping the CT intensity clip: metal (far above the window) must reach the
    network as the window's top, in the slices it trains on and in the images it predicts."""
    from labelsharing.data import read_task_dataset
    from labelsharing.plan import LabelStats, SharedLabelPlan
    from labelsharing.train import prepare_task

    window = {"scheme": "ct", "clip": [0.0, 3.0], "mean": 0.0, "std": 1.0}
    label = boxes((2, 8, 8), {1: 40})
    root = write_task(tmp_path / "T", {"a": 1}, [label, label])
    metal = sitk.GetImageFromArray(np.full((2, 8, 8), 1e4, np.float32))
    sitk.WriteImage(metal, str(root / "imagesTr" / "case000_0000.nii.gz"))
    plan = SharedLabelPlan.build({"T": {"a": LabelStats(1, 0.3, 1.0)}})
    task = prepare_task(read_task_dataset(root), plan, 16, val_fraction=0.0, normalization=window)
    assert float(task.images.max()) == 3.0 and float(task.images.min()) >= 0.0

    model = make_model(fake=True, input_size=16)  # intensity ~k -> shared label k; TaskA small = shared 3
    model.config["tasks"]["TaskA"]["normalization"] = window
    predicted = Predictor(model, "cpu").predict_image(metal, "TaskA")
    assert np.all(predicted == 3), np.unique(predicted)


def _rewrite_weights(folder: Path, edit) -> None:
    """Replace the model's weights by ``edit(state)`` and record their checksum, as a tool would that
    wrote an incomplete or foreign weights file with a fresh model.json."""
    from safetensors.torch import load_file, save

    state = edit(load_file(str(folder / "model.safetensors")))
    data = save(state, metadata={"format": "pt"})
    (folder / "model.safetensors").write_bytes(data)
    config = json.loads((folder / "model.json").read_text())
    config["weights_sha256"] = weights_sha256(data)
    (folder / "model.json").write_text(json.dumps(config))


def _drop_last(state: dict) -> dict:
    return dict(list(state.items())[:-1])


def _add_unknown(state: dict) -> dict:
    return {**state, "head.weight": torch.zeros(3)}


@pytest.mark.parametrize("edit", [_drop_last, _add_unknown], ids=["missing tensor", "unknown tensor"])
def test_weights_missing_or_adding_a_tensor_are_refused(tmp_path, edit):
    """Guards against loading weights with ``strict=False``: a tensor missing from the file would
    silently keep its random start, an unknown one would be ignored."""
    folder = make_model(fake=False).save(tmp_path / "model")
    _rewrite_weights(folder, edit)
    with pytest.raises(LabelSharingError, match="do not fit the architecture"):
        SegmentationModel.load(folder)


class _EpochTwoIsBest:
    """Stands in for :class:`Predictor` in validation: perfect in the 2nd validation, empty otherwise.

    The images of ``write_task`` are ``100 * label + noise``, so a perfect answer is read off the image.
    Records the weights it validated, one entry per epoch.
    """

    validated: list[dict] = []

    def __init__(self, model, device):
        self.model = model
        self.validated.append(copy.deepcopy(model.network.state_dict()))
        self.perfect = len(self.validated) == 2

    def predict_image(self, image: sitk.Image, task: str) -> np.ndarray:
        array = sitk.GetArrayFromImage(image)
        return np.rint(array / 100).astype(np.uint8) if self.perfect else np.zeros(array.shape, np.uint8)


def test_the_written_model_is_the_best_validated_epoch(big_and_small, tmp_path, monkeypatch):
    """Guards against disabling best-epoch selection (keeping every epoch as 'best', or writing the last
    epoch's weights): validation Dice 0, 1, 0 must write the second epoch's weights."""
    from safetensors.torch import load_file

    from labelsharing.train import Trainer, TrainingOptions, train

    monkeypatch.setattr(_EpochTwoIsBest, "validated", [])
    monkeypatch.setattr(Trainer, "make_predictor", lambda self: _EpochTwoIsBest(self.model, self.device))
    train([big_and_small[1]], tmp_path / "model", TrainingOptions(epochs=3, **TINY), log=lambda m: None)

    assert len(_EpochTwoIsBest.validated) == 3
    record = json.loads((tmp_path / "model" / "model.json").read_text())["history"][-1]
    assert record["best_epoch"] == 2 and record["best_mean_dice"] == 1.0
    written = load_file(str(tmp_path / "model" / "model.safetensors"))
    second, last = _EpochTwoIsBest.validated[1], _EpochTwoIsBest.validated[2]
    assert all(torch.equal(written[k], second[k]) for k in written)
    assert any(not torch.equal(written[k], last[k]) for k in written)


def test_one_lucky_validation_epoch_does_not_pick_the_model(big_and_small, tmp_path, monkeypatch):
    """Guards against selecting on the raw per-epoch validation Dice (issue 9: on a one-case validation
    split the Dice swings by 0.2-0.5 between epochs, and one lucky early epoch was written). The
    epoch is chosen on the smoothed curve, as nnU-Net chooses its best checkpoint on an exponential
    moving average: scores 0.3, 0.9 (a spike), 0.3, then 0.7 steadily must write the last epoch."""
    from safetensors.torch import load_file

    import labelsharing.train.trainer as trainer
    from labelsharing.train import TrainingOptions, train

    scores = iter([0.3, 0.9, 0.3, 0.7, 0.7, 0.7, 0.7, 0.7])
    validated: list[dict] = []

    def scripted_dice(predictor, tasks):
        validated.append(copy.deepcopy(predictor.model.network.state_dict()))
        return {task.name: {"mean": next(scores)} for task in tasks if task.validation}

    monkeypatch.setattr(trainer, "validation_dice", scripted_dice)
    train([big_and_small[1]], tmp_path / "model", TrainingOptions(epochs=8, **TINY), log=lambda m: None)

    record = json.loads((tmp_path / "model" / "model.json").read_text())["history"][-1]
    assert record["best_epoch"] == 8 and record["best_mean_dice"] == pytest.approx(0.7)
    written = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert all(torch.equal(written[k], validated[-1][k]) for k in written)
    assert any(not torch.equal(written[k], validated[1][k]) for k in written)
