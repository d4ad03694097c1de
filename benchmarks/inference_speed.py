"""How fast and how lean is ``labelsharing predict`` compared with the bare network?

Builds an (untrained) default model and a synthetic CT-like volume, then times:

* the bare network: the volume's slices, already normalised and resized to the input size,
  pushed through ``network(batch)`` in batches (the floor any pipeline must pay);
* the engine: ``Predictor.predict_image`` on the same volume (normalisation, slicing, square
  fitting, network, softmax, scaling back, argmax, mapping to task labels).

It prints both times, their ratio (the pipeline's overhead), and the peak memory the
prediction added, against what holding the whole volume's float32 logits would cost.
Weights do not change the cost, so an untrained network is used.

Example::

    python benchmarks/inference_speed.py                       # 512 x 512 x 64 CT, input 256
    python benchmarks/inference_speed.py --slices 200 --device cuda
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import SimpleITK as sitk
import torch

from labelsharing.inference import Predictor, describe_device, select_device
from labelsharing.model import SegmentationModel, build_network, default_architecture
from labelsharing.model_folder import build_model_config
from labelsharing.plan import LabelStats, SharedLabelPlan
from labelsharing.preprocessing import SquareFit


def _model(input_size: int, features: int) -> SegmentationModel:
    labels = {"liver": 1, "spleen": 2, "kidney": 3, "aorta": 4}
    plan = SharedLabelPlan.build({"CT": {n: LabelStats(v, 0.1 / v, 1.0) for n, v in labels.items()}})
    architecture = default_architecture(plan.n_shared + 1, features)
    config = build_model_config(architecture, input_size, plan, {
        "CT": {"modality": "CT", "axis": 2, "normalization": {"scheme": "ct", "clip": [-200, 300], "mean": 60, "std": 80},
               "labels": {n: {"value": v, "shared": plan.labels("CT")[n].shared, "color": [1, 0, 0]}
                          for n, v in labels.items()}}})
    torch.manual_seed(0)
    return SegmentationModel(config=config, network=build_network(architecture).eval())


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="in-plane size of the volume (512)")
    parser.add_argument("--slices", type=int, default=64, help="number of slices (64)")
    parser.add_argument("--input-size", type=int, default=256, help="network input size (256)")
    parser.add_argument("--features", type=int, default=16, help="UNet width (16)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per batch (16)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    args = parser.parse_args()

    device = select_device(args.device)
    model = _model(args.input_size, args.features)
    rng = np.random.default_rng(0)
    volume = rng.normal(40, 30, (args.slices, args.size, args.size)).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.8, 3.0))
    predictor = Predictor(model, device, batch_size=args.batch_size)
    predictor.predict_image(image[:, :, :2], "CT")  # warm-up: allocator, kernels

    fit = SquareFit(args.size, args.size, args.input_size)
    prepared = fit.forward(torch.from_numpy(((volume - 60) / 80).astype(np.float32))[:, None])
    with torch.inference_mode():
        start = time.perf_counter()
        for first in range(0, args.slices, args.batch_size):
            predictor.network(prepared[first:first + args.batch_size].to(device)).cpu()
        bare = time.perf_counter() - start
    del prepared

    before = _peak_rss_mb()
    start = time.perf_counter()
    labels = predictor.predict_image(image, "CT")
    engine = time.perf_counter() - start
    added = max(0.0, _peak_rss_mb() - before)
    logits_mb = volume.size * (model.plan.n_shared + 1) * 4 / 2**20

    print(f"device: {describe_device(device)}; volume {args.size} x {args.size} x {args.slices} "
          f"({volume.nbytes / 2**20:.0f} MB int16), input {args.input_size}, features {args.features}, "
          f"batch {args.batch_size}")
    print(f"bare network forward          {bare:7.2f} s  ({args.slices / bare:6.1f} slices/s)")
    print(f"Predictor.predict_image       {engine:7.2f} s  ({args.slices / engine:6.1f} slices/s)")
    print(f"ratio engine / bare network   {engine / bare:7.2f}")
    print(f"peak memory added by predict  {added:7.0f} MB  (whole-volume float32 logits would be "
          f"{logits_mb:.0f} MB; output labels {labels.nbytes / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
