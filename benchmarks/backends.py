"""Inference backends side by side, in one process: speed, the machine's limit, agreement.

For every backend available here (``torch`` eager, ``openvino``, ``onnxruntime``, ``compile``;
fp32, and bf16 where offered) it prints:

* ms per slice of the network alone (the slices already prepared, best of ``--repeats`` runs);
* the ratio to eager PyTorch fp32 measured in the same run;
* the fraction of the machine's fp32 matrix-multiply limit that this is: the network's FLOPs per
  slice (counted by ``torch.utils.flop_counter``) / time, over the GFLOP/s of a large fp32
  ``torch.matmul`` measured in the same run;
* voxel agreement of the label map (``Predictor.predict_image``) with eager fp32 PyTorch.

By default the (untrained) default model runs on a synthetic CT-like volume: weights do not
change the cost, and a random network's near-tied logits make agreement a hard test. With
``--model`` and ``--datasets`` a trained model is also evaluated on the datasets' test split
with each backend: the mean Dice difference to eager fp32 (goal < 0.002) and voxel agreement on
the test images (goal >= 99.9 %).

Example::

    python benchmarks/backends.py                                   # 256 input, 48 slices
    python benchmarks/backends.py --model demo_output/model_4tasks --datasets demo_output/data/*
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import time

# as the command line does (labelsharing.cli.main), before torch starts its threads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import SimpleITK as sitk
import torch
from inference_speed import _model

from labelsharing.data import SquareFit
from labelsharing.infer import Predictor
from labelsharing.utils import describe_device


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 ``torch.matmul`` rate of this machine (GFLOP/s) with torch's threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def network_gflop(network, input_size: int) -> float:
    """FLOPs of one slice through ``network`` (GFLOP)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        network(torch.zeros(1, 1, input_size, input_size))
    return counter.get_total_flops() / 1e9


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def available(compile_too: bool) -> list[tuple[str, str]]:
    """(backend, precision) pairs this machine can run."""
    pairs = [("torch", "fp32"), ("torch", "bf16")]
    if importlib.util.find_spec("openvino"):
        pairs += [("openvino", "fp32"), ("openvino", "bf16")]
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        pairs.append(("onnxruntime", "fp32"))
    if compile_too and shutil.which("c++"):
        pairs.append(("compile", "fp32"))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-size", type=int, default=256, help="network input size (256)")
    parser.add_argument("--features", type=int, default=16, help="UNet width (16: the default model)")
    parser.add_argument("--slices", type=int, default=48, help="slices of the synthetic 512 x 512 volume (48)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per batch (16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per backend; the best is kept (3)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (minutes to compile)")
    parser.add_argument("--model", help="a trained model folder, for Dice on --datasets' test split")
    parser.add_argument("--datasets", nargs="*", default=[], help="task dataset folders of --model")
    args = parser.parse_args()

    model = _model(args.input_size, args.features)
    rng = np.random.default_rng(0)
    volume = rng.normal(40, 30, (args.slices, 512, 512)).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.8, 3.0))
    fit = SquareFit(512, 512, args.input_size)
    prepared = fit.forward(torch.from_numpy(((volume - 60) / 80).astype(np.float32))[:, None])
    batches = list(prepared.split(args.batch_size))

    limit = matmul_gflops()
    gflop = network_gflop(model.network, args.input_size)
    print(f"device: {describe_device('cpu')}; fp32 matmul limit {limit:.0f} GFLOP/s (measured now); network "
          f"{gflop:.2f} GFLOP a slice at {args.input_size}^2 -> floor {gflop / limit * 1e3:.1f} ms a slice")
    print(f"volume 512 x 512 x {args.slices}, batch {args.batch_size}, best of {args.repeats} runs\n")
    print(f"{'backend':<26} {'ms/slice':>9} {'x eager':>8} {'of limit':>9} {'agreement':>10}  setup")

    reference = None
    eager_ms = None
    with tempfile.TemporaryDirectory() as cache:
        for backend, precision in available(not args.no_compile):
            start = time.perf_counter()
            predictor = Predictor(model, "cpu", args.batch_size, backend, precision, model_dir=cache,
                                  log=lambda message: None)
            with torch.inference_mode():
                predictor.backend(batches[0])  # warm-up (compile: compiles)
                setup = time.perf_counter() - start
                best = min(_timed(lambda: [predictor.backend(b) for b in batches]) for _ in range(args.repeats))
            labels = predictor.predict_image(image, "CT")
            ms = best / args.slices * 1e3
            if reference is None:
                reference, eager_ms = labels, ms
            agreement = float((labels == reference).mean())
            print(f"{predictor.backend.describe():<26} {ms:9.1f} {eager_ms / ms:7.2f}x "
                  f"{gflop / (ms / 1e3) / limit:8.0%} {agreement:10.5%}  {setup:5.1f} s")
    if args.model:
        _dice_differences(args.model, args.datasets, available(not args.no_compile))


def _dice_differences(model_dir: str, datasets: list[str], pairs: list[tuple[str, str]]) -> None:
    """Mean Dice on the test split per backend, its difference to eager fp32 (goal < 0.002), and the
    voxel agreement of the label maps with eager fp32 over the same images (goal >= 99.9 %)."""
    from labelsharing.data import read_image, read_task_dataset
    from labelsharing.infer import evaluate_model

    tasks = [read_task_dataset(folder) for folder in datasets]
    images = [(task.name, read_image(case.image)) for task in tasks for case in task.test]
    print(f"\nmean Dice on the test split of {', '.join(t.name for t in tasks)} ({model_dir}; "
          f"{len(images)} images, {sum(i.GetNumberOfPixels() for _, i in images):,} voxels)")
    baseline, reference = None, None
    for backend, precision in pairs:
        predictor = Predictor.from_model_dir(model_dir, "cpu", backend=backend, precision=precision,
                                             log=lambda message: None)
        result = evaluate_model(predictor, tasks)
        dice = np.mean([entry["mean_dice"] for entry in result["tasks"].values()])
        labels = [predictor.predict_image(image, task) for task, image in images]
        baseline = dice if baseline is None else baseline
        reference = labels if reference is None else reference
        same = sum(int((a == b).sum()) for a, b in zip(labels, reference))
        total = sum(a.size for a in reference)
        print(f"{predictor.backend.describe():<26} mean Dice {dice:.4f}  difference {dice - baseline:+.4f}  "
              f"voxel agreement {same / total:.5%} ({total - same} voxels differ)")


if __name__ == "__main__":
    main()
