"""``predict --task auto`` and the unfamiliar-image warning (issue 15): the choice rule on its own,
then a tiny model trained on demo tasks: references stored in model.json, each test image's
task recognised, own images not warned, other tasks' images, flipped, zoomed and noise images
warned, the sidecar JSON, and ``add-task`` refitting the references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from tiny_model import make_model

from labelsharing.cli import main
from labelsharing.demo import make_demo_datasets
from labelsharing.errors import LabelSharingError
from labelsharing.infer import AUTO_TASK, Predictor, VolumeSignature, recognise_task, reference_entry, \
    relative_distance, unpack_rows
from labelsharing.model import read_model_config

TINY = ["--progress", "none", "--epochs", "3", "--batch-size", "8", "--device", "cpu"]


# ----------------------------------------------------------------------------- the choice rule
def test_clear_best_task_is_chosen_with_its_score():
    choice = recognise_task({"CT": 0.4, "MR": 5.0, "XR": 9.0}, ["CT", "MR", "XR"])
    assert choice.task == "CT" and choice.score > 0.99 and set(choice.scores) == {"CT", "MR", "XR"}


@pytest.mark.parametrize("relative, why", [
    ({"A": 0.50, "B": 0.55}, "no task scores 0.80"),  # look-alikes: both familiar, close
    ({"A": 3.0, "B": 9.0}, "unlike the training images of every task"),  # clear best, but unfamiliar
])
def test_unsure_or_unfamiliar_is_refused_listing_every_task(relative, why):
    with pytest.raises(LabelSharingError, match=why) as refused:
        recognise_task(relative, ["A", "B", "C"])
    message = str(refused.value)
    assert "A: score" in message and "B: score" in message and "another dimension): C" in message
    assert "--task" in message


def test_model_without_references_refuses_auto_naming_its_tasks(tmp_path):
    predictor = Predictor(make_model(), device="cpu")
    image = sitk.GetImageFromArray(np.zeros((32, 32), np.float32))
    with pytest.raises(LabelSharingError, match="stores no task references.*TaskA, TaskB"):
        predictor.examine(image, AUTO_TASK)
    assert predictor.examine(image, "TaskA") == {"task": "TaskA", "recognition": None, "familiarity": None}


def _volume(centre: float, rng: np.random.Generator, slices: int = 16, size: int = 8) -> VolumeSignature:
    """A synthetic signature whose slices all lie near ``centre`` in every feature and intensity."""
    return VolumeSignature(rng.normal(centre, 0.1, (slices, size)), rng.normal(centre, 0.1, (slices, size)), 0.9)


def test_a_task_of_two_kinds_of_volume_does_not_claim_what_lies_between():
    """Real slabs of one subject: some mostly empty, some full of brain. A mean-and-spread
    reference of such a task puts an unrelated image (noise, another modality) near its mean,
    closer than its own volumes; the nearest-slice distance must call it unfamiliar."""
    rng = np.random.default_rng(0)
    reference = reference_entry([_volume(-3, rng), _volume(3, rng), _volume(-3, rng), _volume(3, rng)], [])
    assert relative_distance(_volume(-3, rng), reference)[0] <= 1  # its own kinds of volume stay familiar
    assert relative_distance(_volume(3, rng), reference)[0] <= 1
    assert relative_distance(_volume(0, rng), reference)[0] > 1  # what lies between them is not


def test_other_tasks_volumes_lower_a_wide_limit_but_look_alikes_do_not():
    """The limit is calibrated with the other tasks' volumes as negatives: a task farther than the
    own volumes' distances, but within MARGIN of them, is shut out; one inside them is left alone."""
    rng = np.random.default_rng(1)
    own = [_volume(0, rng) for _ in range(4)]
    near = [VolumeSignature(v.features + 0.06, v.intensities + 0.06, 0.9) for v in [_volume(0, rng) for _ in range(2)]]
    loose = reference_entry(own, [])
    assert relative_distance(near[0], loose)[0] <= 1  # within MARGIN of the own volumes' distances
    tight = reference_entry(own, [], foreign={"Other": near})
    assert relative_distance(near[0], tight)[0] > 1 and relative_distance(_volume(0, rng), tight)[0] <= 1
    lookalike = reference_entry(own, [], foreign={"Twin": [_volume(0, rng)]})
    assert lookalike["feature_limit"] == pytest.approx(loose["feature_limit"])


def test_a_2d_task_with_two_training_images_keeps_a_limit_that_warns():
    """A 2D task's volume is one slice: with two training images, each left-out image's reference is
    the other one slice, whose own spread is nil. Measured in that spread's floor, the left-out
    distances were ~1000x the test images', so the limit let in images 3 spreads away (the demo's
    chest X-ray then looked as familiar to the knee task as to its own, 3 training cases)."""
    rng = np.random.default_rng(2)

    def image(shift: float = 0.0) -> VolumeSignature:
        return VolumeSignature(rng.normal(shift, 1.0, (1, 64)), rng.normal(shift, 1.0, (1, 64)), 0.9)

    reference = reference_entry([image(), image()], [image()])
    assert all(relative_distance(image(), reference)[0] <= 1 for _ in range(10))  # its own kind of image
    assert relative_distance(image(3.0), reference)[0] > 1  # 3 spreads away is unfamiliar


# ----------------------------------------------------------------------------- a trained model
@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> list[Path]:
    return make_demo_datasets(tmp_path_factory.mktemp("demo"), cases=12, seed=3)


@pytest.fixture(scope="module")
def model(demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "model"
    assert main(["--progress", "none", "train", *map(str, demo[:3]), "--out", str(out), *TINY[2:],
                 "--input-size", "48", "--features", "4"]) == 0
    return out


def _test_images(task: Path) -> list[Path]:
    return sorted((task / "imagesTs").iterdir())


def _altered(image: sitk.Image, change: str) -> sitk.Image:
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if change == "flipped":
        array = np.flip(array, tuple(range(array.ndim))).copy()
    elif change == "zoomed":  # the centre half stretched over the whole grid
        centre = tuple(slice(s // 4, s // 4 + s // 2) if s > 4 else slice(None) for s in array.shape)
        array = np.kron(array[centre], np.ones([2 if s > 4 else 1 for s in array.shape], np.float32))
        array = np.pad(array, [(0, s - a) for s, a in zip(image.GetSize()[::-1], array.shape)], mode="edge")
    else:
        array = np.random.default_rng(0).uniform(array.min(), array.max(), array.shape).astype(np.float32)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


#: Altered images a tiny model must warn about. Not asked: a flipped synthetic brain (point-symmetric:
#: flipped, it is the same image) or knee (nearly so); see benchmarks/README.md for the rates.
ALTERED_WARNED = {"AbdomenCT": ("flipped", "zoomed", "noise"), "BrainMR": ("zoomed", "noise"),
                  "KneeXR": ("zoomed", "noise")}


def test_training_stores_a_reference_per_task(model):
    familiarity = read_model_config(model)["familiarity"]
    assert set(familiarity["tasks"]) == {"AbdomenCT", "BrainMR", "KneeXR"}
    for reference in familiarity["tasks"].values():
        cells = familiarity["grid"] ** 2
        assert len(reference["feature_mean"]) == 64 * cells  # the bottleneck has 4 x 16 channels
        assert len(reference["intensity_mean"]) == len(familiarity["quantiles"]) * cells
        slices = unpack_rows(reference["feature_slices"])  # nearest-slice references, packed (not JSON numbers)
        assert slices.ndim == 2 and slices.shape[1] == 64 * cells and reference["feature_slices"]["dtype"] == "float16"
        assert reference["feature_limit"] > 0 and 0 <= reference["confidence_floor"] <= 1
    assert "raw_limit" in familiarity["tasks"]["AbdomenCT"] and "raw_limit" not in familiarity["tasks"]["BrainMR"]


def test_auto_recognises_every_test_image_and_records_it(model, demo, tmp_path, capsys):
    images = [image for task in demo[:3] for image in _test_images(task)]
    out = tmp_path / "pred"
    assert main(["--progress", "none", "predict", str(model), *map(str, images), "--task", "auto",
                 "--out", str(out), "--device", "cpu"]) == 0
    log = capsys.readouterr().out
    for image in images:
        case = image.name.split("_0000")[0]
        record = json.loads((out / f"{case}.prediction.json").read_text())
        expected = next(task.name.split("_", 1)[1] for task in demo if image.parent.parent == task)
        assert record["task"] == expected, record
        assert record["recognition"]["score"] >= 0.8 and f"{case}: task '{expected}' recognised" in log
        assert record["familiarity"]["familiar"] and record["familiarity"]["warning"] is None
        assert sitk.ReadImage(str(out / f"{case}.nii.gz")).GetSize() == sitk.ReadImage(str(image)).GetSize()


def test_own_images_pass_and_unfamiliar_images_are_warned(model, demo):
    predictor = Predictor.from_model_dir(model, device="cpu")
    tasks = ["AbdomenCT", "BrainMR", "KneeXR"]
    for folder, task in zip(demo, tasks):
        for path in _test_images(folder):
            image = sitk.ReadImage(str(path))
            assert predictor.examine(image, task)["familiarity"]["warning"] is None
            for other in tasks:
                if other != task:
                    report = predictor.examine(image, other)["familiarity"]
                    assert not report["familiar"] and f"task '{other}'" in report["warning"]
            for change in ALTERED_WARNED[task]:
                report = predictor.examine(_altered(image, change), task)["familiarity"]
                assert not report["familiar"], (path.name, change, report)


def test_unfamiliar_image_is_predicted_with_a_warning_in_log_and_sidecar(model, demo, tmp_path, capsys):
    knee = _test_images(demo[2])[0]
    out = tmp_path / "pred"
    assert main(["--progress", "none", "predict", str(model), str(knee), "--task", "AbdomenCT",
                 "--out", str(out), "--device", "cpu"]) == 0  # never blocks
    case = knee.name.split("_0000")[0]
    assert (out / f"{case}.nii.gz").is_file()
    record = json.loads((out / f"{case}.prediction.json").read_text())
    assert record["task"] == "AbdomenCT" and record["recognition"] is None
    assert record["familiarity"]["relative_distance"] > 1
    assert f"warning: {case}: this CT image looks unlike the training images of task 'AbdomenCT'" in \
        capsys.readouterr().out


def test_noise_is_refused_by_auto(model, demo):
    predictor = Predictor.from_model_dir(model, device="cpu")
    noise = _altered(sitk.ReadImage(str(_test_images(demo[0])[0])), "noise")
    with pytest.raises(LabelSharingError, match="Cannot recognise the task.*AbdomenCT: score.*--task"):
        predictor.examine(noise, AUTO_TASK)


def test_add_task_refits_the_references_and_recognises_the_new_task(model, demo, tmp_path):
    out = tmp_path / "four"
    assert main(["--progress", "none", "add-task", str(model), str(demo[3]), "--out", str(out), *TINY[2:],
                 "--replay", "0.5"]) == 0
    familiarity = read_model_config(out)["familiarity"]
    assert set(familiarity["tasks"]) == {"AbdomenCT", "BrainMR", "KneeXR", "ChestXR"}
    assert familiarity["tasks"]["AbdomenCT"] != read_model_config(model)["familiarity"]["tasks"]["AbdomenCT"]
    predictor = Predictor.from_model_dir(out, device="cpu")
    for folder in demo:
        for path in _test_images(folder):
            assert predictor.examine(sitk.ReadImage(str(path)), AUTO_TASK)["task"] == folder.name.split("_", 1)[1]
