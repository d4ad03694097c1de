"""Training: task-balanced sampling, validation split, the model folder, and a real short run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labelsharing.demo import make_demo_datasets
from labelsharing.errors import LabelSharingError
from labelsharing.model.network import FORMAT_VERSION
from labelsharing.train import TrainingOptions, train
from labelsharing.train.task_data import PreparedTask, sampling_weights, split_cases

TINY = dict(epochs=1, batch_size=8, input_size=32, features=4, device="cpu", seed=3)


@pytest.fixture(scope="module")
def demo_tasks(tmp_path_factory) -> list[Path]:
    return make_demo_datasets(tmp_path_factory.mktemp("demo"), cases=4, seed=1)


def _prepared(name: str, foreground: list[bool]) -> PreparedTask:
    n = len(foreground)
    return PreparedTask(name=name, dataset=None, modality="CT", normalization={},
                        images=np.zeros((n, 2, 2)), labels=np.zeros((n, 2, 2)), foreground=np.array(foreground))


def test_sampling_weights_balance_tasks_and_favour_foreground():
    big, small = _prepared("big", [True] * 90 + [False] * 10), _prepared("small", [True, False])
    weights = sampling_weights([big, small])
    assert weights.sum() == pytest.approx(1.0)
    assert weights[:100].sum() == pytest.approx(0.5) and weights[100:].sum() == pytest.approx(0.5)
    assert weights[100] == pytest.approx(2 * weights[101])  # foreground slice drawn twice as often
    replay = sampling_weights([big, small], shares={"big": 0.25, "small": 0.75})
    assert replay[:100].sum() == pytest.approx(0.25)


@pytest.mark.parametrize("n, fraction, expected_val", [(1, 0.2, 0), (2, 0.2, 1), (10, 0.2, 2), (10, 0.0, 0), (3, 0.9, 2)])
def test_split_cases_keeps_training_data(n, fraction, expected_val):
    cases = [f"c{i}" for i in range(n)]
    train_cases, val = split_cases(cases, fraction, seed=0)
    assert len(val) == expected_val and len(train_cases) == n - expected_val
    assert sorted(train_cases + val) == sorted(cases)


def test_invalid_options_are_user_errors():
    with pytest.raises(LabelSharingError, match="multiple of 16"):
        TrainingOptions(input_size=40)
    with pytest.raises(LabelSharingError, match="val-fraction"):
        TrainingOptions(val_fraction=1.5)


def test_existing_model_folder_is_refused_before_any_work(tmp_path, demo_tasks):
    out = tmp_path / "model"
    out.mkdir()
    with pytest.raises(LabelSharingError, match="already exists.*--force"):
        train(demo_tasks[:1], out, TrainingOptions(**TINY), log=lambda m: None)


def test_interrupted_training_leaves_no_model_and_reports_its_working_folder(tmp_path, demo_tasks, monkeypatch):
    from labelsharing.train import Trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(demo_tasks[:2], tmp_path / "model", TrainingOptions(**TINY), log=lambda m: None,
              command=["train", "A", "--out", "model"])
    assert [p.name for p in tmp_path.iterdir()] == [".model.work"]  # no model folder, only the run's work
    monkeypatch.undo()
    with pytest.raises(LabelSharingError, match=r"interrupted run.*labelsharing train A --out model --resume"):
        train(demo_tasks[:2], tmp_path / "model", TrainingOptions(**TINY), log=lambda m: None)


def test_model_folder_contents_and_repeatability(tmp_path, demo_tasks):
    messages: list[str] = []
    train(demo_tasks[2:4], tmp_path / "a", TrainingOptions(**TINY), log=messages.append)
    train(demo_tasks[2:4], tmp_path / "b", TrainingOptions(**TINY), log=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["model.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # working folders removed on success
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    config = json.loads((tmp_path / "a" / "model.json").read_text())
    assert config["format_version"] == FORMAT_VERSION and config["input_size"] == [32, 32]
    assert config["architecture"]["kwargs"]["out_channels"] == config["plan"]["n_shared"] + 1 == 5
    knee = config["tasks"]["KneeXR"]
    assert knee["plane"] is None and knee["normalization"] == {"scheme": "percentile"}
    assert set(knee["labels"]) == {"femur", "tibia", "patella", "fibula"}
    assert all(len(entry["color"]) == 3 for entry in knee["labels"].values())
    history = config["history"][0]
    assert history["kind"] == "train" and len(history["epochs"]) == 1 and "KneeXR" in history["epochs"][0]["val_dice"]
    assert set(config["versions"]) >= {"torch", "monai", "labelsharing"}
    assert any(m.startswith("device: cpu") for m in messages)


@pytest.mark.slow
def test_short_training_run_learns_three_tasks(tmp_path):
    """A few CPU epochs on small demo data must clearly beat chance on every task."""
    demo_tasks = make_demo_datasets(tmp_path / "demo", cases=10, seed=0)
    from labelsharing.data import read_task_dataset
    from labelsharing.infer import Predictor, evaluate_model

    options = TrainingOptions(epochs=10, batch_size=8, input_size=48, features=8, device="cpu", seed=0)
    train(demo_tasks[:3], tmp_path / "model", options, log=lambda m: None)
    result = evaluate_model(Predictor.from_model_dir(tmp_path / "model", device="cpu"),
                            [read_task_dataset(t) for t in demo_tasks[:3]])
    means = {task: r["mean_dice"] for task, r in result["tasks"].items()}
    assert all(r["split"] == "test" for r in result["tasks"].values())
    assert all(m > 0.3 for m in means.values()), means  # chance is about 0.05; measured 0.45-0.54
    assert np.mean(list(means.values())) > 0.4, means


def test_model_entry_carries_colors_and_terminology(tmp_path):
    from conftest import boxes, write_task

    from labelsharing.data import read_task_dataset
    from labelsharing.plan import LabelStats, SharedLabelPlan

    root = write_task(tmp_path / "T", {"a": 1, "b": 2}, [boxes((4, 4), {1: 6, 2: 2})],
                      extra={"colors": {"a": [0, 0, 255]}, "terminology": {"b": "ctx~SCT^1^x~SCT^2^y~^^~a~^^~^^"}})
    dataset = read_task_dataset(root)
    plan = SharedLabelPlan.build({"T": {"a": LabelStats(1, 0.4, 1.0), "b": LabelStats(2, 0.1, 1.0)}})
    prepared = PreparedTask(name="T", dataset=dataset, modality="CT", normalization={"scheme": "ct"},
                            images=np.zeros((1, 2, 2)), labels=np.zeros((1, 2, 2)), foreground=np.array([True]))
    labels = prepared.model_entry(plan)["labels"]
    assert labels["a"] == {"value": 1, "shared": 1, "color": [0.0, 0.0, 1.0]}
    assert labels["b"]["terminology"] == "ctx~SCT^1^x~SCT^2^y~^^~a~^^~^^" and len(labels["b"]["color"]) == 3


def test_training_slices_come_only_from_training_cases_and_validation_only_from_held_out_ones(tmp_path):
    """Each case has its own constant intensity, so every prepared slice tells which case it came from."""
    import SimpleITK as sitk
    from conftest import boxes, write_image

    from labelsharing.data import read_task_dataset
    from labelsharing.plan import LabelStats, SharedLabelPlan
    from labelsharing.train import prepare_task

    root = tmp_path / "T"
    for index in range(5):
        write_image(np.full((3, 8, 8), 100.0 * (index + 1), dtype=np.float32),
                    root / "imagesTr" / f"c{index}_0000.nii.gz")
        write_image(boxes((3, 8, 8), {1: 40}), root / "labelsTr" / f"c{index}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"name": "T", "channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "a": 1}, "numTraining": 5}))
    plan = SharedLabelPlan.build({"T": {"a": LabelStats(1, 0.2, 1.0)}})
    identity = {"scheme": "ct", "clip": [-1e6, 1e6], "mean": 0.0, "std": 1.0}
    task = prepare_task(read_task_dataset(root), plan, 16, val_fraction=0.4, seed=1, normalization=identity)

    marker = {f"c{i}": 100.0 * (i + 1) for i in range(5)}
    assert len(task.validation_ids) == 2
    held_out = {marker[c] for c in task.validation_ids}
    trained_on = {float(v) for v in np.unique(task.images)}
    assert trained_on == set(marker.values()) - held_out
    assert {float(sitk.GetArrayViewFromImage(image).flat[0]) for image, _ in task.load_validation()} == held_out


def test_an_epoch_is_a_fixed_number_of_steps_whatever_the_data_size(tmp_path, demo_tasks):
    options = TrainingOptions(**{**TINY, "epochs": 2, "steps_per_epoch": 3})
    train(demo_tasks[2:3], tmp_path / "small", options, log=lambda m: None)
    train(demo_tasks[2:4], tmp_path / "large", options, log=lambda m: None)
    for name in ("small", "large"):
        history = json.loads((tmp_path / name / "model.json").read_text())["history"][0]
        assert [e["steps"] for e in history["epochs"]] == [3, 6]
        assert [e["images"] for e in history["epochs"]] == [3 * 8, 6 * 8]
        assert history["steps"] == 6 and history["images"] == 48


def test_a_time_budget_fits_the_number_of_epochs():
    from labelsharing.train.trainer import epochs_for_budget

    options, lines = TrainingOptions(steps_per_epoch=50), []
    assert epochs_for_budget(600, 70, options, lines.append) == 8
    assert lines == ["time budget 10 min: 8 epochs of 50 steps (the first took 70.0 s)"]
    assert epochs_for_budget(10, 70, options, lines.append) == 1  # at least the epoch already made


def test_a_time_budget_run_records_the_epochs_it_chose_and_its_schedule_ends_with_them(tmp_path, demo_tasks,
                                                                                         monkeypatch):
    """The learning rate decays to 0 at the last step of the epochs the budget chose (not of --epochs).

    The first epoch's measured time is fixed at 0.6 s (the budget then fits 5 epochs), so the choice
    does not depend on how loaded the machine is: under load the real first epoch can take the whole
    budget, and a 1-epoch choice leaves no step after the refit to check.
    """
    from labelsharing.train import Trainer
    from labelsharing.train import trainer as trainer_module

    real_budget = trainer_module.epochs_for_budget
    monkeypatch.setattr(trainer_module, "epochs_for_budget",
                        lambda seconds, first_epoch_seconds, options, log: real_budget(seconds, 0.6, options, log))
    real_fit, final = Trainer.fit, {}

    def fit_and_look(self):
        result = real_fit(self)
        final.update(lr=self._optimizer.param_groups[0]["lr"], steps=self._scheduler.last_epoch)
        return result

    monkeypatch.setattr(Trainer, "fit", fit_and_look)
    messages: list[str] = []
    options = TrainingOptions(**{**TINY, "epochs": 1000, "steps_per_epoch": 2, "time_budget": 0.05})
    train(demo_tasks[2:3], tmp_path / "m", options, log=messages.append)
    chosen = [m for m in messages if m.startswith("time budget 0.05 min:")]
    assert len(chosen) == 1
    epochs = int(chosen[0].split(": ")[1].split(" epochs")[0])
    history = json.loads((tmp_path / "m" / "model.json").read_text())["history"][0]
    assert epochs == 5 and len(history["epochs"]) == epochs and history["steps"] == 2 * epochs
    assert final["steps"] == 2 * epochs and final["lr"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("curve, rising", [
    ([0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.96], True),
    ([0.1, 0.5, 0.8, 0.9, 0.9, 0.9, 0.91, 0.9, 0.9, 0.905], False),
    ([0.1, 0.5, 0.9], None),  # too short to tell
])
def test_a_run_that_ends_while_validation_still_climbs_says_so(curve, rising):
    from labelsharing.train import FitResult

    result = FitResult(best_state={}, epochs=[{"val_dice": {"T": {"mean": d}, "Other": {"mean": 0.0}}} for d in curve])
    gain = result.measure_recent_gain(["T"])
    assert (None if gain is None else result.still_improving) == rising


def test_pooled_slices_index_each_tasks_slices_in_place():
    from labelsharing.train.task_data import PooledSlices

    a = PreparedTask(name="a", dataset=None, modality="CT", normalization={},
                     images=np.arange(3 * 4, dtype=np.float16).reshape(3, 2, 2),
                     labels=np.zeros((3, 2, 2), np.uint8), foreground=np.zeros(3, bool))
    b = PreparedTask(name="b", dataset=None, modality="CT", normalization={},
                     images=-np.ones((2, 2, 2), np.float16), labels=np.ones((2, 2, 2), np.uint8),
                     foreground=np.ones(2, bool))
    pooled = PooledSlices([a, b])
    assert len(pooled) == 5 and pooled.tasks[0].images is a.images  # no pooled second copy
    batch = pooled.batch(np.array([3, 2, 0, 4]))  # in the order asked for
    assert batch["task"].tolist() == [1, 0, 0, 1]
    assert batch["image"].shape == (4, 1, 2, 2) and batch["image"].dtype == torch.float32
    assert batch["image"][1, 0].tolist() == [[8.0, 9.0], [10.0, 11.0]] and batch["image"][0].min() == -1
    assert batch["label"].dtype == torch.int64 and batch["label"][:, 0, 0, 0].tolist() == [1, 0, 0, 1]
    assert len(sampling_weights([a, b])) == len(pooled)


def test_memory_mapped_slices_train_the_same_weights_as_slices_in_ram(tmp_path, demo_tasks, monkeypatch):
    """--slice-memory 0 puts every slice in a memory-mapped file in the run's working folder (never
    in the model folder); same seed, bit-identical weights."""
    from labelsharing.cli import main
    from labelsharing.train import Trainer, work_folder_for

    train(demo_tasks[:2], tmp_path / "ram", TrainingOptions(**{**TINY, "epochs": 2}), log=lambda m: None)
    real_fit, seen = Trainer.fit, {}

    def fit_that_looks(self):
        seen["memory_mapped"] = all(isinstance(t.images, np.memmap) and isinstance(t.labels, np.memmap)
                                    for t in self.tasks)
        maps = Path("/proc/self/maps")
        seen["maps"] = maps.read_text() if maps.is_file() else None
        return real_fit(self)

    monkeypatch.setattr(Trainer, "fit", fit_that_looks)
    flags = ["--epochs", "2", "--batch-size", "8", "--input-size", "32", "--features", "4", "--device", "cpu",
             "--seed", "3"]
    assert main(["--progress", "none", "train", *map(str, demo_tasks[:2]), "--out", str(tmp_path / "mapped"), *flags,
                 "--slice-memory", "0"]) == 0
    assert seen["memory_mapped"]
    if seen["maps"] is not None:
        assert str(work_folder_for(tmp_path / "mapped")) in seen["maps"]
    assert str(tmp_path / "mapped" / "") not in (seen["maps"] or "")
    assert (tmp_path / "mapped" / "model.safetensors").read_bytes() == (tmp_path / "ram" / "model.safetensors").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mapped", "ram"]  # working folders gone


def test_validation_every_n_epochs_keeps_the_first_and_the_last(tmp_path, demo_tasks):
    options = TrainingOptions(**{**TINY, "epochs": 5, "steps_per_epoch": 2, "val_every": 2})
    train(demo_tasks[2:3], tmp_path / "m", options, log=lambda m: None)
    history = json.loads((tmp_path / "m" / "model.json").read_text())["history"][0]
    assert [e["epoch"] for e in history["epochs"] if e["val_dice"]] == [1, 2, 4, 5]
    assert history["best_epoch"] in (1, 2, 4, 5)


def test_the_validation_interval_follows_the_held_out_slices():
    from types import SimpleNamespace

    from labelsharing.train.validation import VALIDATION_SLICES_PER_TRAINED, validation_interval

    options = TrainingOptions(steps_per_epoch=30, batch_size=16)  # 480 slices trained on an epoch
    per_epoch = VALIDATION_SLICES_PER_TRAINED * 480
    assert validation_interval([SimpleNamespace(validation_slices=100)], options) == 1  # the demo: every epoch
    assert validation_interval([SimpleNamespace(validation_slices=int(per_epoch) + 1)] * 2, options) == 3
    assert validation_interval([SimpleNamespace(validation_slices=10**6)], TrainingOptions(val_every=4)) == 4


def test_a_run_that_fails_while_preparing_leaves_no_working_folder(tmp_path):
    from conftest import boxes, write_task

    broken = write_task(tmp_path / "Broken", {"a": 1}, [boxes((4, 6, 6), {1: 20})] * 3)
    (broken / "labelsTr" / "case001.nii.gz").write_bytes(b"not an image")
    with pytest.raises(LabelSharingError):
        train([broken], tmp_path / "model", TrainingOptions(**TINY), log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Broken"]


def test_train_without_datasets_says_what_to_give(tmp_path):
    with pytest.raises(LabelSharingError, match="No task datasets given"):  # was numpy's ValueError
        train([], tmp_path / "model", TrainingOptions(**TINY), log=lambda m: None)
    assert not (tmp_path / "model").exists()
