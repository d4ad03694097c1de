"""Model metadata, command-line arguments and dependency installation (FAKE slicer/PyTorchUtils)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from unittest import mock

import pytest

from .fakes import MODULE_DIR, fakeSlicer
from LabelSharingSegLib.Dependencies import Dependencies
from LabelSharingSegLib.EngineCommands import ServerJobCall, addTaskArgs, isSetPath, predictArgs, trainArgs, \
    writePins
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
        "predict", "/m", "--task", "knee", "/in/v.nrrd", "--out", "/out", "--format", "seg.nrrd", "--device", "cuda"]
    assert trainArgs(["/d1", "/d2"], "/new", 3, "cpu", "/p.json") == [
        "train", "/d1", "/d2", "--out", "/new", "--epochs", "3", "--device", "cpu", "--pins", "/p.json"]
    assert trainArgs(["/d"], "/new", None, "cpu") == ["train", "/d", "--out", "/new", "--device", "cpu"]  # engine's default
    assert addTaskArgs("/m", "/d", "/m2", 5, 0.25, "auto") == [
        "add-task", "/m", "/d", "--out", "/m2", "--epochs", "5", "--replay", "0.25", "--device", "auto"]
    with pytest.raises(ModuleError, match="new folder"):
        addTaskArgs(tmp_path, "/d", tmp_path, 5, 0.2, "auto")
    assert trainArgs(["/d"], "/new", 3, "cpu", "/p.json", keepLookAlikesApart=True)[-3:] == [
        "--pins", "/p.json", "--keep-look-alikes-apart"]
    assert addTaskArgs("/m", "/d", "/m2", 5, 0.25, "auto", keepLookAlikesApart=True)[-1] == "--keep-look-alikes-apart"
    with pytest.raises(ModuleError, match="Device"):
        predictArgs("/m", "knee", "/in", "/out", "gpu")
    assert not isSetPath(".") and not isSetPath("") and isSetPath("/x")
    assert writePins(tmp_path / "p.json", "knee", {}) is None
    assert json.loads(writePins(tmp_path / "p.json", "knee", {"tibia": 1}).read_text()) == {"knee": {"tibia": 1}}



def test_a_server_jobs_log_line_shows_a_true_option_as_the_engines_bare_flag():
    """``ServerJobCall.args`` is what the log shows the server runs: ``--keep-look-alikes-apart``, not ``... True``."""
    call = ServerJobCall("train", ("/d",), "new", "https://gpu", (("epochs", 3), ("keep_look_alikes_apart", True)))
    assert call.args == ["train", "/d", "--out", "new", "--epochs 3", "--keep-look-alikes-apart", "(on https://gpu)"]
    unchecked = ServerJobCall("train", ("/d",), "new", "https://gpu", (("keep_look_alikes_apart", False),))
    assert unchecked.args == ["train", "/d", "--out", "new", "(on https://gpu)"]

def _dependencies(missing, confirm=True, torchInstalls=True):
    """FAKE slicer and PyTorchUtils (fepegar/SlicerPyTorch PyTorchUtils.py: installTorch(askConfirmation,
    forceComputationBackend, torchVersionRequirement, ...) returns the torch module, or None when declined)."""
    slicer = fakeSlicer()
    torchLogic = mock.MagicMock()
    torchLogic.installTorch = mock.MagicMock(return_value=object() if torchInstalls else None)
    modules = {"PyTorchUtils": types.SimpleNamespace(PyTorchUtilsLogic=lambda: torchLogic)}

    def importModule(name):
        if name not in modules:
            raise ModuleNotFoundError(name)
        return modules[name]

    versions = lambda name: None if name in missing else "1.2.3"  # noqa: E731
    asked = []
    dependencies = Dependencies(slicer, importModule, versions)
    ask = lambda text, details: asked.append(details) or confirm  # noqa: E731
    return dependencies, slicer, torchLogic, asked, ask


def test_nothing_missing_asks_nothing_and_describes_the_versions():
    dependencies, slicer, torchLogic, asked, ask = _dependencies(set())
    assert dependencies.ensureInstalled(ask).startswith("PyTorch 1.2.3, MONAI 1.2.3") and asked == []
    slicer.util.pip_install.assert_not_called()
    torchLogic.installTorch.assert_not_called()


def test_missing_packages_are_installed_after_asking_with_numpy_pinned():
    dependencies, slicer, torchLogic, asked, ask = _dependencies({"torch", "monai", "pynrrd"})
    steps = []
    missing = dependencies.missing()
    assert missing == ["torch", "monai", "pynrrd"]
    dependencies.confirmInstall(missing, ask)
    dependencies.install(missing, lambda done, total, text: steps.append((done, total)))
    assert "torch" in asked[0] and "monai>=1.3" in asked[0] and "pynrrd>=1.0" in asked[0]
    torchLogic.installTorch.assert_called_once()
    [requirements] = slicer.util.pip_install.call_args[0]
    assert requirements[:2] == ["monai>=1.3", "pynrrd>=1.0"]
    assert any(r.startswith("numpy==") for r in requirements)
    assert steps == [(0, 2), (1, 2), (2, 2)]


def test_only_the_asked_distributions_are_checked():
    dependencies, slicer, torchLogic, asked, ask = _dependencies({"pynrrd", "monai"})
    assert dependencies.missing(["pynrrd"]) == ["pynrrd"]
    dependencies.install(["pynrrd"])
    [requirements] = slicer.util.pip_install.call_args[0]
    assert requirements[0] == "pynrrd>=1.0" and "monai>=1.3" not in requirements
    torchLogic.installTorch.assert_not_called()
    assert _dependencies({"monai"})[0].missing(["pynrrd"]) == []


def test_cancelled_installation_and_missing_extension_are_readable_errors():
    dependencies, slicer, _, _, ask = _dependencies({"tqdm"}, confirm=False)
    with pytest.raises(ModuleError, match="cancelled"):
        dependencies.ensureInstalled(ask)
    slicer.util.pip_install.assert_not_called()
    noExtension = Dependencies(slicer, mock.MagicMock(side_effect=ModuleNotFoundError("PyTorchUtils")), lambda name: None)
    with pytest.raises(ModuleError, match="PyTorch extension"):
        noExtension.install(["torch"])
    declined, *_ = _dependencies({"torch"}, torchInstalls=False)
    with pytest.raises(ModuleError, match="PyTorch was not installed"):
        declined.install(["torch"])


def test_failed_pip_install_is_a_readable_error_with_the_log():
    """slicer.util.pip_install raises subprocess.CalledProcessError when pip fails (util.py 5.8:
    logProcessOutput, line 3862; main: slicer/packaging.py, line 784)."""
    dependencies, slicer, *_ = _dependencies({"monai"})
    slicer.util.pip_install.side_effect = subprocess.CalledProcessError(1, "pip install", output="No matching distribution")
    with pytest.raises(ModuleError, match="pip exit code 1") as raised:
        dependencies.install(["monai"])
    assert raised.value.details == "No matching distribution"


def test_the_check_reads_package_metadata_and_never_imports_torch():
    """The real check (importlib.metadata) in a fresh interpreter: torch is never imported."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from LabelSharingSegLib.Dependencies import Dependencies; "
            "d = Dependencies(slicerModule=object()); d.missing(); print(d.describe()); "
            "assert 'torch' not in sys.modules and 'monai' not in sys.modules, 'imported'")
    result = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("PyTorch ")
