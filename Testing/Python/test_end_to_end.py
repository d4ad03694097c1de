"""The command line end to end on tiny demo data: train -> info -> predict -> evaluate -> add-task,
and the demo with its report. Settings are tiny: this checks wiring and files, not accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk
import slicerio

from labelsharing.cli import main
from labelsharing.demo import DemoSettings, run_demo
from labelsharing.demo_data import make_demo_datasets

TINY_FLAGS = ["--epochs", "1", "--batch-size", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> list[Path]:
    return make_demo_datasets(tmp_path_factory.mktemp("demo"), cases=3, seed=5)


def test_train_info_predict_evaluate_add_task(demo, tmp_path, capsys):
    model = tmp_path / "model"
    args = ["--progress", "none", "train", *map(str, demo[:3]), "--out", str(model), *TINY_FLAGS,
            "--input-size", "32", "--features", "4"]
    assert main(args) == 0
    assert main(args) == 2 and "already exists" in capsys.readouterr().err

    assert main(["info", str(model)]) == 0
    info = capsys.readouterr().out
    assert "AbdomenCT" in info and "shared 4" in info and "History" in info

    image = next((demo[0] / "imagesTs").iterdir())
    out = tmp_path / "pred"
    assert main(["--progress", "none", "predict", str(model), str(image), "--task", "AbdomenCT", "--out", str(out),
                 "--format", "seg.nrrd", "--device", "cpu"]) == 0
    written = out / image.name.replace("_0000.nii.gz", ".seg.nrrd")
    segmentation = slicerio.read_segmentation(str(written))
    assert {s["name"] for s in segmentation["segments"]} == {"liver", "spleen", "left_kidney", "aorta"}
    assert segmentation["voxels"].shape == sitk.ReadImage(str(image)).GetSize()

    assert main(["predict", str(model), str(image), "--task", "Abdomen", "--out", str(out)]) == 2
    assert "Did you mean 'AbdomenCT'" in capsys.readouterr().err

    dice = tmp_path / "dice.json"
    assert main(["--progress", "none", "evaluate", str(model), *map(str, demo[:3]), "--json", str(dice),
                 "--device", "cpu"]) == 0
    result = json.loads(dice.read_text())
    assert set(result["tasks"]) == {"AbdomenCT", "BrainMR", "KneeXR"}
    entry = result["tasks"]["KneeXR"]
    assert entry["split"] == "test" and entry["cases"] == 2 and set(entry["labels"]) == {"femur", "tibia", "patella",
                                                                                          "fibula"}
    assert 0.0 <= entry["mean_dice"] <= 1.0

    assert main(["--progress", "none", "add-task", str(model), str(demo[3]), "--out", str(tmp_path / "four"),
                 *TINY_FLAGS, "--replay", "0.5"]) == 0
    assert "ChestXR" in json.loads((tmp_path / "four" / "model.json").read_text())["tasks"]


def test_demo_writes_report_with_pictures(tmp_path):
    messages: list[str] = []
    report = run_demo(tmp_path, DemoSettings(cases=3, epochs=1, add_task_epochs=1, input_size=32), device="cpu",
                      log=messages.append)
    text = report.read_text()
    assert "## Shared-label plan" in text and "| ChestXR |" in text
    for picture in ["training_curves.png", "dice_per_task.png", "overlay_AbdomenCT.png", "overlay_ChestXR.png"]:
        assert f"]({picture})" in text and (tmp_path / picture).stat().st_size > 1000
    assert any(m.startswith("Forgetting") for m in messages)
    assert json.loads((tmp_path / "dice_4tasks.json").read_text())["tasks"]["ChestXR"]["split"] == "test"
