"""How fast and how lean is ``labelsharing train`` compared with a bare training loop?

Two measurements, in one run:

1. **Throughput.** The demo's three training tasks (``labelsharing demo-data``) are prepared as
   ``train`` prepares them, then trained with the engine's loop (:class:`labelsharing.train.Trainer`:
   task-balanced draws, augmentation, loss, AdamW, schedule, progress; validation timed apart) and
   with a bare loop of the same network, loss, optimiser and batch size on tensors already in
   memory (``X[idx]``, forward, backward, step: the floor any pipeline must pay). Each engine
   step is followed by one bare step (called from the engine's progress callback), so both see
   the same load on a shared machine. Printed: images/s of both from their median step times,
   the ratio (goal >= 0.9) also over all paired steps, and the share of the engine's time spent
   in validation.
2. **Memory.** ``labelsharing train`` (one epoch of one step, so preparation dominates) on demo
   data sets of growing size, each in its own process, with the default slice store and with
   every slice in a memory-mapped file (``--slice-memory 0``). Printed: the slices' size, the
   process's peak RSS (``ru_maxrss``: memory-mapped pages count while resident) and its peak
   anonymous RSS (sampled from ``/proc/<pid>/status``; Linux only), the memory the kernel cannot
   reclaim.

Example::

    python benchmarks/training_throughput.py                     # 3 tasks x 20 cases, input 96
    python benchmarks/training_throughput.py --skip-memory --steps 20 --repeats 3
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the command line sets it, before torch loads

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from labelsharing.demo import make_demo_datasets
from labelsharing.infer import Predictor
from labelsharing.model import SegmentationModel, build_model_config, build_network, default_architecture
from labelsharing.plan import plan_task_datasets
from labelsharing.train import Trainer, TrainingOptions, prepare_task
from labelsharing.utils import ProgressReporter, describe_device, select_device


def _prepare(folders, input_size: int, options: TrainingOptions):
    """The tasks as ``train`` prepares them (plan, then slices; in RAM)."""
    plan, summaries, _ = plan_task_datasets(folders, log=lambda m: None)
    tasks = [prepare_task(s.task, plan, input_size, options.val_fraction, options.seed) for s in summaries]
    return plan, tasks


class _TimedPredictor:
    """``Predictor`` whose ``predict_image`` time is added to ``seconds`` (validation's cost)."""

    seconds = 0.0

    def __init__(self, model, device):
        self.model, self._predictor = model, Predictor(model, device)

    def predict_image(self, image, task):
        start = time.perf_counter()
        try:
            return self._predictor.predict_image(image, task)
        finally:
            _TimedPredictor.seconds += time.perf_counter() - start


class _TimedTrainer(Trainer):
    """The engine's trainer, validating with :class:`_TimedPredictor`."""

    def make_predictor(self):
        return _TimedPredictor(self.model, self.device)


class BareLoop:
    """The same network, loss, optimiser and batch size, stepped on tensors already in memory."""

    def __init__(self, n_outputs: int, images: torch.Tensor, labels: torch.Tensor, options: TrainingOptions, device):
        from monai.losses import DiceCELoss

        torch.manual_seed(options.seed)
        self.network = build_network(default_architecture(n_outputs, options.features)).to(device).train()
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=options.learning_rate,
                                           weight_decay=options.weight_decay)
        self.generator = torch.Generator().manual_seed(options.seed)
        self.images, self.labels, self.batch_size, self.device = images.to(device), labels.to(device), \
            options.batch_size, device

    def step(self) -> None:
        """One optimisation step: draw, forward, loss, backward, AdamW."""
        index = torch.randint(len(self.images), (self.batch_size,), generator=self.generator).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.network(self.images[index]), self.labels[index])
        loss.backward()
        self.optimizer.step()
        float(loss.detach())


class _PairedClock(ProgressReporter):
    """A silent progress reporter that times each engine step and runs one bare step after it.

    Engine and bare steps alternate, so both see the same load on a shared machine. The first
    step of every epoch is left out: its interval holds the previous epoch's validation.
    """

    def __init__(self, bare: BareLoop, steps_per_epoch: int):
        super().__init__("none")
        self.bare, self.steps_per_epoch = bare, steps_per_epoch
        self.engine_steps: list[float] = []
        self.bare_steps: list[float] = []

    @contextmanager
    def track(self, description, total, unit="it"):
        last, count = [time.perf_counter()], [0]

        def advance(n=1, total=None, **postfix):
            if not n:
                return
            engine_end = time.perf_counter()
            if count[0] % self.steps_per_epoch:
                self.engine_steps.append(engine_end - last[0])
            count[0] += 1
            self.bare.step()
            last[0] = time.perf_counter()
            self.bare_steps.append(last[0] - engine_end)

        yield advance


def engine_run(plan, tasks, options: TrainingOptions, device, clock: _PairedClock) -> float:
    """Validation seconds of the engine's :class:`~labelsharing.train.Trainer` with ``options`` (steps
    timed by ``clock``)."""
    torch.manual_seed(options.seed)
    architecture = default_architecture(plan.n_shared + 1, options.features)
    config = build_model_config(architecture, tasks[0].images.shape[-1], plan,
                                {t.name: t.model_entry(plan) for t in tasks})
    model = SegmentationModel(config=config, network=build_network(architecture).to(device))
    _TimedPredictor.seconds = 0.0
    _TimedTrainer(model, tasks, options, device, progress=clock, log=lambda m: None).fit()
    return _TimedPredictor.seconds


def throughput(args: argparse.Namespace, work: Path) -> None:
    device = select_device(args.device)
    folders = make_demo_datasets(work / "demo", cases=args.cases, seed=0)[:3]
    options = TrainingOptions(epochs=args.epochs, steps_per_epoch=args.steps, batch_size=args.batch_size,
                              features=args.features, device=args.device, seed=0)
    plan, tasks = _prepare(folders, args.input_size, options)
    images = torch.from_numpy(np.concatenate([t.images for t in tasks]).astype(np.float32))[:, None]
    labels = torch.from_numpy(np.concatenate([t.labels for t in tasks]).astype(np.int64))[:, None]
    bare = BareLoop(plan.n_shared + 1, images, labels, options, device)
    for _ in range(3):  # warm-up: allocator, kernels
        bare.step()
    load = os.getloadavg()[0]
    clock = _PairedClock(bare, args.steps)
    validation = [engine_run(plan, tasks, options, device, clock) for _ in range(args.repeats)]
    engine_step, bare_step = float(np.median(clock.engine_steps)), float(np.median(clock.bare_steps))
    engine_total, bare_total = sum(clock.engine_steps), sum(clock.bare_steps[:len(clock.engine_steps)])
    print(f"device: {describe_device(device)}; torch threads {torch.get_num_threads()}; load average "
          f"{load:.1f} (start)")
    print(f"data: 3 demo tasks x {args.cases} cases, {len(images)} training slices of {args.input_size}^2; "
          f"features {args.features}, batch {args.batch_size}, {args.repeats} runs of {args.epochs} epochs x "
          f"{args.steps} steps, each engine step followed by a bare step")
    print(f"bare loop (tensors in memory)   {args.batch_size / bare_step:7.1f} images/s (median step "
          f"{1000 * bare_step:.0f} ms)")
    print(f"engine training loop            {args.batch_size / engine_step:7.1f} images/s (median step "
          f"{1000 * engine_step:.0f} ms)")
    print(f"ratio engine / bare             {bare_step / engine_step:7.2f} (median steps; "
          f"{bare_total / engine_total:.2f} over all {len(clock.engine_steps)} paired steps)")
    seconds_per_run = float(np.mean(clock.engine_steps)) * args.epochs * args.steps
    held_out = sum(t.validation_slices for t in tasks) * args.epochs  # every epoch is validated here
    per_run = float(np.mean(validation))
    print(f"validation                      {per_run:7.1f} s a run = {100 * per_run / (per_run + seconds_per_run):.0f} % "
          f"of the engine's time; {1000 * per_run / held_out:.1f} ms a held-out slice vs "
          f"{1000 * engine_step / args.batch_size:.1f} ms a trained slice")
    print(f"load average (end)              {os.getloadavg()[0]:7.1f}")


def _peak_anonymous_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """Poll ``/proc/<pid>/status`` for RssAnon (kB) until ``stop``; the maximum goes to ``peak[0]``."""
    status = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            for line in status.read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        except OSError:
            return
        time.sleep(0.02)


def memory_run(folders, out: Path, input_size: int, extra: list[str]) -> tuple[float, float | None, float]:
    """(peak RSS MB, peak anonymous RSS MB or None, seconds) of a one-step ``labelsharing train``."""
    command = [sys.executable, "-m", "labelsharing", "--progress", "none", "train", *map(str, folders),
               "--out", str(out), "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--features", "4",
               "--input-size", str(input_size), "--device", "cpu", "--force", *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_peak_anonymous_rss, args=(process.pid, stop, peak), daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    stop.set()
    sampler.join()
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()}")
    anonymous = peak[0] / 1024 if Path("/proc/self/status").is_file() else None
    return usage.ru_maxrss / 1024, anonymous, seconds


def memory(args: argparse.Namespace, work: Path) -> None:
    print(f"\nmemory of a 1-step 'labelsharing train' on the 3D demo tasks (CT + MR), input {args.memory_input_size}")
    print("cases/task  slices  slices MB  store          peak RSS MB  peak anon. RSS MB  seconds")
    slice_bytes = args.memory_input_size ** 2 * 3  # float16 image + uint8 label
    for cases in args.sizes:
        folders = make_demo_datasets(work / f"mem{cases}", cases=cases, seed=0)[:2]
        n_slices = _count_training_slices(folders)
        for label, extra in args.store_variants:
            rss, anonymous, seconds = memory_run(folders, work / f"model{cases}", args.memory_input_size, extra)
            anonymous_text = f"{anonymous:17.0f}" if anonymous is not None else "              n/a"
            print(f"{cases:10d}  {n_slices:6d}  {n_slices * slice_bytes / 2**20:9.0f}  {label:13s}  {rss:11.0f}  "
                  f"{anonymous_text}  {seconds:7.1f}")


def _count_training_slices(folders) -> int:
    """Slices ``train`` prepares from these folders (default validation split)."""
    from labelsharing.data import plan_slicing, read_image_header, read_task_dataset
    from labelsharing.train import split_cases

    total = 0
    for folder in folders:
        dataset = read_task_dataset(folder)
        headers = {case.case_id: read_image_header(case.image) for case in dataset.training}
        slicing = plan_slicing(list(headers.values()))
        total += sum(slicing.slice_count(headers[case.case_id]) for case in split_cases(dataset.training, 0.2, 0)[0])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20, help="training cases per demo task (20, as make demo)")
    parser.add_argument("--input-size", type=int, default=96, help="network input size (96, the demo's)")
    parser.add_argument("--features", type=int, default=16, help="UNet width (16)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per step (16)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the engine's loop (3)")
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch (30, as make demo)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of the engine's loop (2)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 80, 240],
                        help="cases per task of the memory runs (20 80 240)")
    parser.add_argument("--memory-input-size", type=int, default=256, help="input size of the memory runs (256)")
    parser.add_argument("--skip-memory", action="store_true", help="only measure throughput")
    parser.add_argument("--skip-throughput", action="store_true", help="only measure memory")
    args = parser.parse_args()
    args.store_variants = [("default", []), ("memory-mapped", ["--slice-memory", "0"])]
    with tempfile.TemporaryDirectory(prefix="training_throughput_") as folder:
        if not args.skip_throughput:
            throughput(args, Path(folder))
        if not args.skip_memory:
            memory(args, Path(folder))


if __name__ == "__main__":
    main()
