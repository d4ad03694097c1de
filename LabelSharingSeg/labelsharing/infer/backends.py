"""Inference backends: what runs the network on a batch of slices.

Every backend is a callable ``(B, 1, S, S) float32 tensor on the device -> (B, C, S, S) logits``
(float32 or lower precision; the caller takes ``.float()``). :func:`create_backend` picks one:

* ``torch``: PyTorch eager; on CUDA under AMP (float16 autocast), as before backends existed.
* ``openvino``: the network converted by OpenVINO's PyTorch front end (no ONNX, and no
  ``openvino.convert_model``, which reports usage to Intel unless the user opted out) and run by
  its CPU runtime. Needs the optional extra ``pip install "labelsharing[fast-cpu]"``.
* ``onnxruntime``: the network exported to ONNX (needs ``onnx`` and ``onnxruntime``).
* ``compile``: ``torch.compile`` (Inductor; needs a C++ compiler on the CPU).
* ``auto`` (default): PyTorch on CUDA/MPS. On the CPU, OpenVINO when it is installed, else
  ``torch.compile`` if a previous ``--backend compile`` run on this machine measured it faster
  than eager (a first compile costs minutes, more than it saves on one volume), else eager.

Exported graphs are built once and cached next to the model (:mod:`labelsharing.infer.graph_cache`),
keyed by the hash of the weights and the backend's version. A freshly built graph is checked
against eager PyTorch on a probe batch before it is used or stored. Precision is fp32 unless
``bf16`` is asked for (OpenVINO: bf16 inference hint; torch/compile: bfloat16 autocast).
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

from labelsharing.errors import LabelSharingError
from labelsharing.infer.graph_cache import GraphCache, log_line, network_sha256

__all__ = ["BACKENDS", "PRECISIONS", "Backend", "create_backend", "log_line"]

BACKENDS = ("auto", "torch", "openvino", "onnxruntime", "compile")
PRECISIONS = ("fp32", "bf16")
#: torch.compile is chosen by ``auto`` only if it measured at least this much faster than eager.
COMPILE_MIN_SPEEDUP = 1.1
_FAST_CPU = 'pip install "labelsharing[fast-cpu]"'


class Backend:
    """Runs the network on batches; ``name``/``precision`` say how (see module docstring)."""

    name = "torch"

    def __init__(self, network, device, precision: str = "fp32"):
        self.network = network
        self.device = device
        self.precision = precision

    def __call__(self, batch):
        """(B, 1, S, S) float32 on ``device`` -> (B, C, S, S) logits on ``device``."""
        with self._autocast():
            return self.network(batch)

    def describe(self) -> str:
        """E.g. ``openvino 2026.4.1 (fp32)``."""
        return f"{self.name} ({self.precision})"

    def _autocast(self):
        import torch

        if self.device.type == "cuda":  # AMP: float16 unless bfloat16 is asked for
            return torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def create_backend(network, device, input_size: int, backend: str = "auto", precision: str = "fp32",
                   model_dir: str | Path | None = None, log: Callable[[str], None] = log_line,
                   batch_size: int = 16) -> Backend:
    """The backend that runs ``network`` (in eval mode, already on ``device``) for prediction.

    Args:
        network: the torch module, (B, 1, S, S) -> (B, C, S, S).
        device: the ``torch.device`` it runs on; backends other than torch need the CPU.
        input_size: S, the side of the square network input.
        backend: one of :data:`BACKENDS` (``auto`` by default; see the module docstring).
        precision: ``fp32`` (default) or ``bf16`` (faster on CPUs with bfloat16 units; label maps
            then differ from fp32 on a small fraction of voxels: see benchmarks/backends.py).
        model_dir: the model folder, whose ``.cache`` keeps built graphs (else the user's cache).
        log: receives one line when a graph is built or a backend is skipped.
        batch_size: the most slices per call (``compile`` compiles this one batch shape).

    Raises:
        LabelSharingError: an unknown backend or precision, a backend that is not installed or
            does not run on ``device``, or a forced backend whose graph cannot be built or
            disagrees with PyTorch.
    """
    backend, precision = _choice(backend, BACKENDS, "backend"), _choice(precision, PRECISIONS, "precision")
    if device.type != "cpu":
        if backend not in ("auto", "torch"):
            raise LabelSharingError(f"--backend {backend} runs on the CPU, not on {device.type}; use --device cpu, "
                                    "or --backend torch (or auto) on the GPU.")
        return Backend(network, device, precision)
    if backend == "torch":
        return Backend(network, device, precision)
    sha = network_sha256(network)

    def cache(kind: str, version: str) -> GraphCache:
        folder = Path(model_dir) if model_dir is not None else None
        return GraphCache(f"{kind}-{sha[:16]}-s{input_size}-{_clean(version)}", sha, folder, log)

    compile_cache = cache("compile", f"b{batch_size}_{_torch_version()}")
    if backend == "compile":
        return CompiledBackend(network, device, precision, compile_cache, batch_size)
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(network, input_size, precision, cache)
    try:
        return OpenVINOBackend(network, input_size, precision, cache)
    except LabelSharingError as exc:
        if backend == "openvino":
            raise
        if not isinstance(exc, _NotAvailable):
            log(f"note: {exc} Running PyTorch instead.")
    compiled = compile_cache.load()
    if compiled is not None and compiled[1].get("speedup", 0.0) >= COMPILE_MIN_SPEEDUP:
        return CompiledBackend(network, device, precision, compile_cache, batch_size)
    return Backend(network, device, precision)


class _NotAvailable(LabelSharingError):
    """An optional backend's package is not installed (``auto`` then tries the next backend)."""


class CompiledBackend(Backend):
    """``torch.compile`` (Inductor) of one batch shape: smaller batches are padded to
    ``batch_size``, as every other shape would compile again (about a minute each on a small
    CPU). The compiled kernels are cached with the model, so only the first run compiles."""

    name = "compile"

    def __init__(self, network, device, precision: str, cache: GraphCache, batch_size: int):
        import torch

        super().__init__(network, device, precision)
        self.cache = cache
        self.batch_size = int(batch_size)
        stored = cache.load()
        self.speedup = stored[1].get("speedup") if stored else None
        if stored is not None:
            torch.compiler.load_cache_artifacts(stored[0][".bin"])
        self.compiled = torch.compile(network, dynamic=False)
        self.stored = stored is not None

    def __call__(self, batch):
        import torch

        if batch.shape[0] > self.batch_size:
            return torch.cat([self(part) for part in batch.split(self.batch_size)])
        padded = torch.cat([batch, batch.new_zeros((self.batch_size - batch.shape[0], *batch.shape[1:]))])
        with self._autocast():
            try:
                logits = self.compiled(padded)[: batch.shape[0]]
            except RuntimeError as exc:  # torch._dynamo / Inductor failures are RuntimeErrors
                raise LabelSharingError(f"torch.compile could not compile the network ({str(exc).splitlines()[0]}). "
                                        "Use --backend torch (or auto).") from exc
            if not self.stored:
                self.stored = True
                self._store(padded)
        return logits

    def describe(self) -> str:
        measured = f", {self.speedup:.2f}x eager when built" if self.speedup else ""
        return f"compile torch {_torch_version()} ({self.precision}{measured})"

    def _store(self, batch) -> None:
        import torch

        if self.speedup is None:  # measured once, so that ``auto`` knows whether compiling helps here
            self.speedup = _seconds(self.network, batch) / _seconds(self.compiled, batch)
        artifacts = torch.compiler.save_cache_artifacts()
        if artifacts is not None:
            self.cache.store({".bin": artifacts[0]}, {"speedup": round(self.speedup, 3)})


class OpenVINOBackend(Backend):
    """The network as an OpenVINO model, compiled for the CPU (fp32, or bf16 on request)."""

    name = "openvino"

    def __init__(self, network, input_size: int, precision: str, cache_for):
        try:
            import openvino as ov
        except ImportError as exc:
            raise _NotAvailable(f"--backend openvino needs OpenVINO, which is not installed: {_FAST_CPU}.") from exc
        import torch

        super().__init__(network, torch.device("cpu"), precision)
        self.version = ov.get_version().split("-")[0]
        core = ov.Core()
        cache = cache_for("openvino", self.version)
        stored = cache.load()
        if stored is not None:
            import numpy as np

            model = core.read_model(stored[0][".xml"], ov.Tensor(np.frombuffer(stored[0][".bin"], np.uint8)))
        else:
            start = time.perf_counter()
            model = _convert_openvino(network, input_size)
            _check_agreement(core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), network,
                             input_size, "openvino")
            try:  # the cache saves time next run; failing to write it must not fail this one
                files = _openvino_files(model)
            except (RuntimeError, OSError) as exc:  # OpenVINO reports a full disk as a RuntimeError
                cache.log(f"note: the OpenVINO graph could not be cached ({str(exc).splitlines()[0]}); "
                          "it is built again next time")
            else:
                _stored(cache, files, start)
        hint = {"fp32": "f32", "bf16": "bf16"}[precision]
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                          "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()

    def __call__(self, batch):
        import torch

        result = self.request.infer({0: batch.contiguous().numpy()}, share_inputs=True)
        return torch.from_numpy(result[0])

    def describe(self) -> str:
        return f"openvino {self.version} ({self.precision})"


class OnnxRuntimeBackend(Backend):
    """The network exported to ONNX and run by ONNX Runtime's CPU provider (fp32 only)."""

    name = "onnxruntime"

    def __init__(self, network, input_size: int, precision: str, cache_for):
        try:
            import onnx  # noqa: F401  (torch's ONNX exporter needs it)
            import onnxruntime as ort
        except ImportError as exc:
            raise _NotAvailable("--backend onnxruntime needs the packages onnx and onnxruntime: "
                                f"pip install onnx onnxruntime (or use {_FAST_CPU} and --backend openvino).") from exc
        import torch

        if precision != "fp32":
            raise LabelSharingError("--backend onnxruntime runs in fp32 only; use --precision bf16 with "
                                    "--backend openvino or torch.")
        super().__init__(network, torch.device("cpu"), precision)
        self.version = ort.__version__
        cache = cache_for("onnxruntime", self.version)
        stored = cache.load()
        start = time.perf_counter()
        graph = stored[0][".onnx"] if stored is not None else _export_onnx(network, input_size)
        self.session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        if stored is None:
            _check_agreement(lambda x: self.session.run(None, {"image": x}), network, input_size, "onnxruntime")
            _stored(cache, {".onnx": graph}, start)

    def __call__(self, batch):
        import torch

        return torch.from_numpy(self.session.run(None, {"image": batch.contiguous().numpy()})[0])

    def describe(self) -> str:
        return f"onnxruntime {self.version} ({self.precision})"


# ------------------------------------------------------------------------------ helpers
def _convert_openvino(network, input_size: int):
    """Trace ``network`` with OpenVINO's PyTorch front end; input (?, 1, S, S) float32."""
    import openvino as ov
    import torch
    from openvino.frontend import FrontEndManager, GeneralFailure, OpConversionFailure
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    example = torch.zeros(2, 1, input_size, input_size)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # MONAI's shape checks become constants of the trace: right, since S is fixed; torch's
            # deprecation of jit.trace, which this front end uses, is not the user's business
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            decoder = TorchScriptPythonDecoder(network, example_input=(example,))
            frontend = FrontEndManager().load_by_framework("pytorch")
            model = frontend.convert(frontend.load(decoder))
        model.reshape({0: ov.PartialShape([-1, 1, input_size, input_size])})
    except (RuntimeError, GeneralFailure, OpConversionFailure) as exc:
        raise LabelSharingError(f"OpenVINO could not convert the network ({str(exc).splitlines()[0]}). "
                                "Use --backend torch.") from exc
    return model


def _openvino_files(model) -> dict[str, bytes]:
    """The model's IR (``.xml`` + ``.bin``, fp32 weights) as bytes."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.xml"
        ov.save_model(model, path, compress_to_fp16=False)
        return {".xml": path.read_bytes(), ".bin": path.with_suffix(".bin").read_bytes()}


def _export_onnx(network, input_size: int) -> bytes:
    """``network`` as ONNX bytes; input ``image`` (batch, 1, S, S), output ``logits``."""
    import torch

    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and exporter deprecation notes
            torch.onnx.export(network, (torch.zeros(2, 1, input_size, input_size),), buffer, dynamo=False,
                              input_names=["image"], output_names=["logits"], opset_version=17,
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    except RuntimeError as exc:
        raise LabelSharingError(f"The network could not be exported to ONNX ({str(exc).splitlines()[0]}). "
                                "Use --backend torch.") from exc
    return buffer.getvalue()


def _stored(cache: GraphCache, files: dict[str, bytes], start: float) -> None:
    """Cache a freshly built graph and say so."""
    folder = cache.store(files)
    where = f"; cached in {folder}" if folder is not None else ""
    cache.log(f"built the {cache.key.split('-')[0]} graph in {time.perf_counter() - start:.1f} s (once{where})")


def _check_agreement(run, network, input_size: int, name: str, tolerance: float = 1e-3) -> None:
    """Refuse a built graph whose logits on a fixed probe batch differ from eager PyTorch.

    Raises:
        LabelSharingError: the largest difference exceeds ``tolerance`` x the logits' range.
    """
    import numpy as np
    import torch

    probe = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (2, 1, input_size, input_size)).astype(np.float32))
    with torch.inference_mode():
        expected = network(probe).numpy()
    got = np.asarray(run(probe.numpy())[0])
    scale = float(np.abs(expected).max()) + 1.0
    difference = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if not difference <= tolerance * scale:
        raise LabelSharingError(f"The {name} graph does not reproduce the network (largest logit difference "
                                f"{difference:.3g} on a probe batch); it is not used. Use --backend torch.")


def _seconds(function, batch) -> float:
    """Best of two timed calls."""
    import torch

    best = float("inf")
    with torch.inference_mode():
        for _ in range(2):
            start = time.perf_counter()
            function(batch)
            best = min(best, time.perf_counter() - start)
    return best


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    name = str(value).strip().lower()
    if name not in choices:
        raise LabelSharingError(f"Unknown --{option} '{value}'; choose one of {', '.join(choices)}.")
    return name


def _torch_version() -> str:
    import torch

    return torch.__version__


def _clean(version: str) -> str:
    """A version as a file-name part: ``2.13.0+cpu`` -> ``2.13.0_cpu``."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", version)
