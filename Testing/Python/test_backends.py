"""Inference backends: every available backend gives eager fp32 PyTorch's label maps, and the
graphs they build are cached next to the model, trusted only for the same weights.

A small model is trained on the demo data once per module, so that the label maps are not
trivial (every label of every task is predicted somewhere).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from labelsharing.cli import main
from labelsharing.demo import make_demo_datasets
from labelsharing.errors import LabelSharingError
from labelsharing.infer import Predictor
from labelsharing.infer.backends import create_backend
from labelsharing.infer.graph_cache import network_sha256
from labelsharing.model import check_model_output
from labelsharing.train import TrainingOptions, train

pytestmark = pytest.mark.slow

_HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
_HAVE_ONNXRUNTIME = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
_HAVE_COMPILER = shutil.which("g++") is not None or shutil.which("c++") is not None
needs_openvino = pytest.mark.skipif(not _HAVE_OPENVINO, reason='needs pip install "labelsharing[fast-cpu]"')


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> list[Path]:
    return make_demo_datasets(tmp_path_factory.mktemp("demo"), cases=3, seed=5)


@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("trained") / "model"
    options = TrainingOptions(epochs=3, steps_per_epoch=20, batch_size=8, input_size=32, features=4, device="cpu")
    train(demo, model, options, log=lambda message: None)
    return model


@pytest.fixture
def model_copy(trained, tmp_path) -> Path:
    """A fresh copy of the trained model folder (without a cache)."""
    return Path(shutil.copytree(trained, tmp_path / "model", ignore=shutil.ignore_patterns(".cache")))


@pytest.fixture
def cached_copy(trained, tmp_path) -> Path:
    """A copy of the trained model folder with the graphs earlier tests cached in it (built once per module)."""
    return Path(shutil.copytree(trained, tmp_path / "model"))


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch) -> Path:
    """The user's cache folder, isolated per test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "labelsharing"


def _test_images(demo: list[Path]):
    for folder in demo:
        task = folder.name.split("_", 1)[1]
        for path in sorted((folder / "imagesTs").iterdir()):
            yield task, sitk.ReadImage(str(path))


def _agreement(demo, predictor: Predictor, reference: Predictor) -> float:
    same = total = 0
    for task, image in _test_images(demo):
        expected = reference.predict_image(image, task)
        assert len(np.unique(expected)) > 1, "the reference predicts only background: the comparison would be empty"
        same += int((predictor.predict_image(image, task) == expected).sum())
        total += expected.size
    return same / total


@pytest.mark.parametrize("backend", [
    pytest.param("openvino", marks=needs_openvino),
    pytest.param("onnxruntime", marks=pytest.mark.skipif(not _HAVE_ONNXRUNTIME, reason="needs onnx, onnxruntime")),
    pytest.param("compile", marks=pytest.mark.skipif(not _HAVE_COMPILER, reason="torch.compile needs a C++ compiler")),
])
def test_every_available_backend_agrees_with_eager_fp32(demo, trained, backend):
    eager = Predictor.from_model_dir(trained, device="cpu", backend="torch")
    other = Predictor.from_model_dir(trained, device="cpu", backend=backend)  # builds the graph into trained/.cache
    assert other.backend.name == backend and other.backend.precision == "fp32"
    assert _agreement(demo, other, eager) >= 0.999


@needs_openvino
def test_bf16_only_on_request_and_close(demo, cached_copy):
    eager = Predictor.from_model_dir(cached_copy, device="cpu", backend="torch")
    assert Predictor.from_model_dir(cached_copy, device="cpu").backend.precision == "fp32"
    bf16 = Predictor.from_model_dir(cached_copy, device="cpu", backend="openvino", precision="bf16")
    assert bf16.backend.describe().endswith("(bf16)")
    assert _agreement(demo, bf16, eager) >= 0.99  # the figure itself: benchmarks/backends.py


@needs_openvino
def test_auto_builds_the_graph_once_next_to_the_model(model_copy, user_cache):
    lines: list[str] = []
    first = Predictor.from_model_dir(model_copy, device="cpu", log=lines.append)
    assert first.backend.name == "openvino"
    assert len([line for line in lines if "built the openvino graph" in line]) == 1
    sha = network_sha256(first.network)
    manifests = list((model_copy / ".cache").glob(f"openvino-{sha[:16]}-s32-*.json"))
    assert len(manifests) == 1 and not user_cache.exists()
    Predictor.from_model_dir(model_copy, device="cpu", log=lines.append)
    assert len([line for line in lines if "built" in line]) == 1  # loaded, not rebuilt


@needs_openvino
def test_a_cached_graph_is_not_trusted_when_a_file_or_the_weights_differ(demo, model_copy):
    lines: list[str] = []
    Predictor.from_model_dir(model_copy, device="cpu", backend="openvino", log=lines.append)
    weights = next((model_copy / ".cache").glob("openvino-*.bin"))
    damaged = bytearray(weights.read_bytes())
    damaged[-64:] = bytes(64)  # zero some weights of the cached graph
    weights.write_bytes(bytes(damaged))
    rebuilt = Predictor.from_model_dir(model_copy, device="cpu", backend="openvino", log=lines.append)
    assert len([line for line in lines if "built" in line]) == 2
    eager = Predictor.from_model_dir(model_copy, device="cpu", backend="torch")
    assert _agreement(demo[:1], rebuilt, eager) >= 0.999

    with torch.no_grad():  # other weights in memory: another key, never the stored graph
        next(eager.network.parameters()).mul_(-1.0)
    changed = create_backend(eager.network, torch.device("cpu"), 32, "openvino", model_dir=model_copy,
                             log=lines.append)
    assert len([line for line in lines if "built" in line]) == 3
    batch = torch.randn(3, 1, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(changed(batch), eager.network(batch), atol=1e-3)


@needs_openvino
def test_unwritable_cache_never_fails_the_prediction(demo, model_copy, user_cache):
    """A read-only model folder (simulated: tests may run as root) sends the graph to the user's cache;
    with no writable cache at all the prediction still runs."""
    (model_copy / ".cache").write_text("a file where the cache folder would go")
    lines: list[str] = []
    Predictor.from_model_dir(model_copy, device="cpu", backend="openvino", log=lines.append)
    assert list(user_cache.glob("openvino-*.json"))  # the user's cache took it

    shutil.rmtree(user_cache)
    user_cache.parent.rmdir()
    user_cache.parent.write_text("not a folder either")
    task, image = next(_test_images(demo))
    predictor = Predictor.from_model_dir(model_copy, device="cpu", backend="openvino", log=lines.append)
    assert predictor.predict_image(image, task).shape == sitk.GetArrayViewFromImage(image).shape
    assert any("could not be cached" in line for line in lines)


def test_a_model_folder_with_a_cache_can_still_be_replaced_with_force(model_copy):
    (model_copy / ".cache").mkdir()
    (model_copy / ".cache" / "openvino-0123-s32-1.json").write_text("{}")
    check_model_output(model_copy, force=True)  # raised "holds files besides the model" before


def test_auto_without_openvino_runs_pytorch_and_forced_backends_say_what_to_install(model_copy, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)  # import openvino -> ImportError
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    assert Predictor.from_model_dir(model_copy, device="cpu").backend.name == "torch"
    for backend, advice in (("openvino", "labelsharing[fast-cpu]"), ("onnxruntime", "pip install onnx onnxruntime")):
        with pytest.raises(LabelSharingError, match=advice.replace("[", r"\[").replace("]", r"\]")):
            Predictor.from_model_dir(model_copy, device="cpu", backend=backend)


def test_invalid_backend_choices(model_copy):
    network = Predictor.from_model_dir(model_copy, device="cpu", backend="torch").network
    with pytest.raises(LabelSharingError, match="Unknown --backend 'tensorrt'"):
        create_backend(network, torch.device("cpu"), 32, "tensorrt")
    with pytest.raises(LabelSharingError, match="Unknown --precision 'int4'"):
        create_backend(network, torch.device("cpu"), 32, precision="int4")
    with pytest.raises(LabelSharingError, match="runs on the CPU"):
        create_backend(network, torch.device("cuda"), 32, "openvino")
    assert create_backend(network, torch.device("cuda"), 32).name == "torch"  # GPUs stay on PyTorch


def test_cli_predict_and_evaluate_take_backend(demo, model_copy, tmp_path, capsys):
    image = next((demo[0] / "imagesTs").iterdir())
    assert main(["--progress", "none", "predict", str(model_copy), str(image), "--task", "AbdomenCT", "--out",
                 str(tmp_path / "torch"), "--device", "cpu", "--backend", "torch"]) == 0
    assert "backend: torch (fp32)" in capsys.readouterr().out
    assert main(["--progress", "none", "evaluate", str(model_copy), str(demo[0]), "--device", "cpu",
                 "--backend", "torch", "--precision", "bf16"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(model_copy), str(image), "--task", "AbdomenCT", "--out", str(tmp_path / "x"),
              "--backend", "tensorrt"])
    assert exit_info.value.code == 2
