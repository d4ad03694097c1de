"""Model metadata, command-line arguments and dependency installation (FAKE slicer/PyTorchUtils)."""

from __future__ import annotations

import json
import types
from unittest import mock

import pytest

from .fakes import fakeSlicer
from LabelSharingSegLib.Dependencies import Dependencies
from LabelSharingSegLib.EngineCommands import addTaskArgs, isSetPath, predictArgs, trainArgs, writePins
from LabelSharingSegLib.ModelInfo import ModelInfo, defaultColor
from LabelSharingSegLib.ModuleError import ModuleError


def test_model_info_reads_tasks_labels_and_colours(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"labelsharing_version": "0.1.0", "plan": {"n_shared": 2},
        "tasks": {"knee": {"modality": "XR", "labels": {"tibia": {"value": 2, "shared": 1}, "femur": {"value": 1, "shared": 2, "color": [1, 0, 0]}}}}}))
    model = ModelInfo.load(tmp_path)
    labels = model.task("knee").labels
    assert [label.name for label in labels] == ["femur", "tibia"] and model.taskNames == ["knee"]
    assert labels[0].color == (1.0, 0.0, 0.0) and labels[1].color == defaultColor(1)
    with pytest.raises(ModuleError, match="no task 'brain'"):
        model.task("brain")


@pytest.mark.parametrize("content, message", [(None, "no model.json"), ("{", "Cannot read"), ('{"tasks": 3}', "no valid 'tasks'")])
def test_model_info_errors_are_readable(tmp_path, content, message):
    if content is not None:
        (tmp_path / "model.json").write_text(content)
    with pytest.raises(ModuleError, match=message):
        ModelInfo.load(tmp_path)


def test_arguments_follow_the_contract(tmp_path):
    assert predictArgs("/m", "knee", "/in/v.nrrd", "/out", "cuda") == [
        "predict", "/m", "--task", "knee", "/in/v.nrrd", "--out", "/out", "--format", "nrrd", "--device", "cuda"]
    assert trainArgs(["/d1", "/d2"], "/new", 3, "cpu", "/p.json") == [
        "train", "/d1", "/d2", "--out", "/new", "--epochs", "3", "--device", "cpu", "--pins", "/p.json"]
    assert addTaskArgs("/m", "/d", "/m2", 5, 0.25, "auto") == [
        "add-task", "/m", "/d", "--out", "/m2", "--epochs", "5", "--replay", "0.25", "--device", "auto"]
    with pytest.raises(ModuleError, match="new folder"):
        addTaskArgs(tmp_path, "/d", tmp_path, 5, 0.2, "auto")
    with pytest.raises(ModuleError, match="Device"):
        predictArgs("/m", "knee", "/in", "/out", "gpu")
    assert not isSetPath(".") and not isSetPath("") and isSetPath("/x")
    assert writePins(tmp_path / "p.json", "knee", {}) is None
    assert json.loads(writePins(tmp_path / "p.json", "knee", {"tibia": 1}).read_text()) == {"knee": {"tibia": 1}}


def _torch(cuda=False):
    return types.SimpleNamespace(__version__="2.3.1", cuda=types.SimpleNamespace(is_available=lambda: cuda, get_device_name=lambda i: "RTX"),
                                 backends=types.SimpleNamespace(mps=None))


def _dependencies(torchInstalled, missing, confirm=True):
    slicer = fakeSlicer()
    torchLogic = mock.MagicMock()
    torchLogic.torchInstalled.return_value = torchInstalled
    torchLogic.installTorch = mock.MagicMock(return_value=_torch())
    modules = {"PyTorchUtils": types.SimpleNamespace(PyTorchUtilsLogic=lambda: torchLogic), "torch": _torch(cuda=True)}

    def importModule(name):
        if name not in modules:
            raise ModuleNotFoundError(name)
        return modules[name]

    findSpec = lambda name: None if name in missing else object()  # noqa: E731
    asked = []
    dependencies = Dependencies(slicer, importModule, findSpec)
    ask = lambda text, details: asked.append(details) or confirm  # noqa: E731
    return dependencies, slicer, torchLogic, asked, ask


def test_nothing_missing_asks_nothing_and_reports_torch():
    dependencies, slicer, torchLogic, asked, ask = _dependencies(True, set())
    info = dependencies.ensureInstalled(ask)
    assert str(info) == "PyTorch 2.3.1, device: cuda (RTX)" and asked == []
    slicer.util.pip_install.assert_not_called()
    torchLogic.installTorch.assert_not_called()


def test_missing_packages_are_installed_after_asking_with_numpy_pinned():
    dependencies, slicer, torchLogic, asked, ask = _dependencies(False, {"monai", "nrrd"})
    dependencies.ensureInstalled(ask)
    assert "torch" in asked[0] and "monai>=1.3" in asked[0] and "pynrrd>=1.0" in asked[0]
    torchLogic.installTorch.assert_called_once()
    [requirements] = slicer.util.pip_install.call_args[0]
    assert requirements[:2] == ["monai>=1.3", "pynrrd>=1.0"]
    assert any(r.startswith("numpy==") for r in requirements)


def test_ensure_packages_installs_only_the_missing_ones_without_torch():
    dependencies, slicer, torchLogic, asked, ask = _dependencies(False, {"nrrd", "monai"})
    dependencies.ensurePackages(["nrrd"], ask)
    assert asked == ["Packages: pynrrd>=1.0"]
    [requirements] = slicer.util.pip_install.call_args[0]
    assert requirements[0] == "pynrrd>=1.0" and "monai>=1.3" not in requirements
    torchLogic.installTorch.assert_not_called()
    installed, slicer, _, asked, ask = _dependencies(False, {"monai"})
    installed.ensurePackages(["nrrd"], ask)
    assert asked == [] and not slicer.util.pip_install.called


def test_cancelled_installation_and_missing_extension_are_readable_errors():
    dependencies, slicer, _, _, ask = _dependencies(True, {"tqdm"}, confirm=False)
    with pytest.raises(ModuleError, match="cancelled"):
        dependencies.ensureInstalled(ask)
    slicer.util.pip_install.assert_not_called()
    noExtension = Dependencies(slicer, importModule=mock.MagicMock(side_effect=ModuleNotFoundError("PyTorchUtils")))
    with pytest.raises(ModuleError, match="PyTorch extension"):
        noExtension.ensureInstalled(ask)
