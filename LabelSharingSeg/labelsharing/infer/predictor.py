"""Prediction: from an image and a task name to a label map in the task's own label values.

The network predicts shared labels (background + Λ_1..Λ_n*) on 2D ``S x S`` slices. A volume
is viewed in LPS and cut parallel to the task's plane (:mod:`labelsharing.data.orientation`; a view,
no copy); each batch of slices is normalised as the task was in training, resampled to the
task's target spacing and fitted into ``S x S`` (one interpolation), run through the network,
its softmax resampled back onto the slice grid, and the shared-label argmax is mapped back
through the task's inverse map (shared labels the task does not use become background, as in
the paper). A sub-task of a task split by overlapping segments leaves its siblings' shared labels
out of the argmax (as in training, :mod:`labelsharing.plan.layer_split`), and the split task is
predicted as all its sub-tasks, written as one layered ``.seg.nrrd`` (:meth:`Predictor.predict_layers`).
Probabilities, not labels, are resampled back, as nnU-Net does: nearest-neighbour
label maps would be blocky and shifted at non-integer scales. On the CPU the labels are taken
without resampling every channel (:mod:`labelsharing.data.label_resampling`: the same labels at a
fraction of the cost). Labels are written through the same LPS view into an array laid out
like the input, so the output has exactly the input's grid. Memory stays bounded: nothing the
size of the volume is made but the output (uint8/uint16); one batch of slices is normalised,
and one batch of probabilities exists, at a time.

:meth:`Predictor.predict_files` reads the next image and writes the previous result in a
background thread while a volume is predicted (SimpleITK releases the GIL while it reads,
decompresses and compresses).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from labelsharing.data import SegmentInfo, Slicing, case_id_from_path, intensity_normalizer, is_dicom_input, \
    read_dicom_series, read_image, resampled_argmax, write_image, write_layered_label
from labelsharing.errors import LabelSharingError
from labelsharing.infer.backends import create_backend, log_line
from labelsharing.infer.small_islands import remove_small_islands
from labelsharing.model import SegmentationModel, label_color
from labelsharing.utils import SILENT, ProgressReporter, check_outputs, select_device, write_atomically, \
    write_json_atomically

__all__ = ["OUTPUT_FORMATS", "Predictor"]

#: Output file formats of :meth:`Predictor.predict_files` (``dcm``: a DICOM SEG, for DICOM series inputs).
OUTPUT_FORMATS = ("nii.gz", "nrrd", "seg.nrrd", "dcm")
#: The logit given to a sub-task's siblings' shared labels: far below any real logit, so never the argmax.
_LEFT_OUT = -1e9


class Predictor:
    """Runs a :class:`SegmentationModel` on images of any of its tasks.

    Args:
        model: the model (network + ``model.json`` config).
        device: a ``torch.device`` or name (see :func:`select_device`); the network is moved there.
        batch_size: slices per forward pass; lower it if the GPU runs out of memory.
        backend: what runs the network (:data:`~labelsharing.infer.backends.BACKENDS`). Default
            ``torch`` here, as an in-memory network may still change; :meth:`from_model_dir`
            defaults to ``auto``, the fastest available for the device (:mod:`labelsharing.infer.backends`).
        precision: ``fp32`` (default) or ``bf16`` (on request: faster on some CPUs, a few voxels differ).
        model_dir: the model's folder, where exported graphs are cached (else the user's cache).
        log: receives a line when a backend builds its graph or is skipped.
        remove_islands: remove the small islands ``model.json`` lists for a task
            (:mod:`labelsharing.infer.small_islands`); off while training validates and fits them.

    Example:
        >>> predictor = Predictor.from_model_dir("my_model", device="cpu")  # doctest: +SKIP
        >>> labels = predictor.predict_image(sitk.ReadImage("ct.nii.gz"), "Dataset001_AbdomenCT")  # doctest: +SKIP
    """

    def __init__(self, model: SegmentationModel, device="cpu", batch_size: int = 16, backend: str = "torch",
                 precision: str = "fp32", model_dir: str | Path | None = None, log: Callable[[str], None] = log_line,
                 remove_islands: bool = True):
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.batch_size = int(batch_size)
        self.plan = model.plan
        self.network = model.network.to(self.device).eval()
        self.log = log
        self.remove_islands = remove_islands
        self.backend = create_backend(self.network, self.device, model.input_size, backend, precision, model_dir, log,
                                      self.batch_size)

    @classmethod
    def from_model_dir(cls, folder: str | Path, device="auto", batch_size: int = 16, backend: str = "auto",
                       precision: str = "fp32", log: Callable[[str], None] = log_line,
                       remove_islands: bool = True) -> Predictor:
        """Load a model folder (``model.json`` + ``model.safetensors``) for prediction on ``device``."""
        device = select_device(device) if isinstance(device, str) else device
        return cls(SegmentationModel.load(folder, device="cpu"), device, batch_size, backend, precision, folder, log,
                   remove_islands)

    # ------------------------------------------------------------------------------ images
    def task_labels(self, task: str) -> list[SegmentInfo]:
        """Name, value, colour and terminology of a task's labels, by ascending value (the probability order)."""
        config = self.model.task(task)
        assignments = self.plan.labels(task)
        entries = [
            SegmentInfo(name, int(entry["value"]), tuple(entry.get("color") or label_color(assignments[name].shared)),
                        entry.get("terminology"))
            for name, entry in config["labels"].items()
        ]
        return sorted(entries, key=lambda entry: entry.value)

    def predict_image(self, image: sitk.Image, task: str) -> np.ndarray:
        """Label map of ``image`` in ``task``'s own label values.

        Returns:
            uint8 (uint16 if a label value exceeds 255) array shaped like
            ``sitk.GetArrayFromImage(image)``: (z, y, x) or (y, x).

        Raises:
            LabelSharingError: unknown task (the closest name is suggested).
        """
        return self._predict(image, task, probabilities=False)[0]

    def predict_layers(self, image: sitk.Image, task: str) -> list[np.ndarray]:
        """One label map per sub-task of ``task`` (a split task, :mod:`labelsharing.plan.layer_split`),
        each as :meth:`predict_image` returns it; ``[predict_image(image, task)]`` for other tasks.
        The maps may overlap: each is one layer of the task's segmentation."""
        return [self.predict_image(image, sub) for sub in self.plan.subtasks(task)]

    def check_layered_output(self, task: str, file_format: str, probabilities: bool = False) -> None:
        """Refuse, before any work, an output that cannot hold a split task's overlapping segments.

        Raises:
            LabelSharingError: ``task`` is split and the format is not ``seg.nrrd``, or probabilities are asked.
        """
        subtasks = self.plan.subtasks(task)
        if len(subtasks) == 1:
            return
        if file_format != "seg.nrrd":
            raise LabelSharingError(
                f"Task '{task}' has overlapping segments (sub-tasks {', '.join(subtasks)}), which a {file_format} "
                f"file cannot hold: it has one label per voxel. Use --format seg.nrrd (a layered Slicer "
                f"segmentation), or predict one sub-task, e.g. --task {subtasks[0]}.")
        if probabilities:
            raise LabelSharingError(f"--probabilities is per sub-task for task '{task}' (overlapping segments): "
                                    f"predict one sub-task, e.g. --task {subtasks[0]}.")

    def predict_probabilities(self, image: sitk.Image, task: str) -> tuple[np.ndarray, np.ndarray]:
        """Labels and per-task-label probabilities of ``image``.

        The labels have their small islands removed (:mod:`labelsharing.infer.small_islands`), the
        probabilities are the network's: a removed speck keeps its probability.

        Returns:
            ``(labels, probabilities)``: ``labels`` as :meth:`predict_image`; ``probabilities`` a
            float16 array (C, *labels.shape), channel 0 = background, channel i = the i-th task
            label by ascending value (:meth:`task_labels`). Background includes the probability
            of the shared labels the task does not use, so the channels sum to 1.
        """
        return self._predict(image, task, probabilities=True)

    def _predict(self, image: sitk.Image, task: str, probabilities: bool):
        import torch

        config = self.model.task(task)  # raises LabelSharingError with a suggestion
        labels = self.task_labels(task)
        shared_of = self.plan.labels(task)
        channels = [shared_of[label.name].shared for label in labels]  # network channel of each task label
        unused = [s for s in range(1, self.plan.n_shared + 1) if s not in channels]
        left_out = torch.tensor(self.plan.left_out(task), dtype=torch.long, device=self.device)

        stored = sitk.GetArrayViewFromImage(image)  # no copy: slices are normalised batch by batch
        normalize = intensity_normalizer(stored, config["normalization"])
        slicing = Slicing.from_config(config)
        slices = slicing.slices(stored, image)  # (n, H, W) view
        n = len(slices)
        fit = slicing.square_fit(image, self.model.input_size)
        max_value = max((label.value for label in labels), default=0)
        dtype = np.uint8 if max_value < 256 else np.uint16
        # shared label -> task value; torch has no uint16 arithmetic, so larger values travel as int32
        lookup = torch.from_numpy(self.plan.from_shared(task, np.arange(self.plan.n_shared + 1)))
        lookup = lookup.to(torch.uint8 if dtype == np.uint8 else torch.int32, copy=True).to(self.device)

        output = np.zeros(stored.shape, dtype=dtype)
        out_slices = slicing.slices(output, image)  # a view: writing into it fills ``output``
        probs = np.zeros((len(labels) + 1,) + stored.shape, dtype=np.float16) if probabilities else None
        prob_slices = [slicing.slices(probs[c], image) for c in range(len(labels) + 1)] if probabilities else []

        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                stop = min(start + self.batch_size, n)
                batch = torch.from_numpy(np.ascontiguousarray(normalize(slices[start:stop])))[:, None].to(self.device)
                logits = self.backend(fit.forward(batch)).float()  # (B, n_shared + 1, S, S)
                if len(left_out):
                    logits = logits.index_fill(1, left_out, _LEFT_OUT)
                if probabilities or self.device.type != "cpu":
                    full = fit.backward(logits.softmax(dim=1))  # (B, n_shared + 1, H, W)
                    out_slices[start:stop] = lookup[full.max(dim=1).indices].cpu().numpy()
                else:  # the same labels, without resampling every channel (labelsharing.data.label_resampling)
                    out_slices[start:stop] = resampled_argmax(fit.crop(logits), (fit.height, fit.width), lookup).numpy()
                if probabilities:
                    background = full[:, [0] + unused].sum(dim=1)
                    prob_slices[0][start:stop] = background.half().cpu().numpy()
                    for c, channel in enumerate(channels, start=1):
                        prob_slices[c][start:stop] = full[:, channel].half().cpu().numpy()
        min_sizes = self.model.config.get("small_islands", {}).get(task) if self.remove_islands else None
        if min_sizes:
            remove_small_islands(output, image.GetSpacing(), {label.value: min_sizes[label.name]
                                                               for label in labels if label.name in min_sizes})
        return output, probs

    def examine(self, image: sitk.Image, task: str) -> dict:
        """Recognise the task of ``image`` (``task`` ``auto``) and check it looks like that task's
        training images (:func:`~labelsharing.infer.familiarity.examine_image`); never blocks a given task.

        Returns:
            ``{"task", "recognition", "familiarity"}`` (the prediction's sidecar record).
        """
        from labelsharing.infer.familiarity import examine_image

        return examine_image(self.model, self.network, image, task, self.device)

    # ------------------------------------------------------------------------------ files
    def predict_files(
        self,
        inputs: Sequence[str | Path],
        task: str,
        out_dir: str | Path,
        file_format: str = "nii.gz",
        probabilities: bool = False,
        progress: ProgressReporter = SILENT,
        force: bool = False,
        series_uid: str | None = None,
        seg_type: str = "binary",
    ) -> list[Path]:
        """Predict image files and write ``out_dir/<case>.<file_format>`` for each.

        ``<case>`` is the input's name without ending and nnU-Net channel suffix
        (``ct_0000.nii.gz`` -> ``ct``). Outputs have exactly the input's grid. ``seg.nrrd`` is a
        Slicer segmentation with the task's label names, colours and terminology. With ``probabilities``,
        ``<case>_probabilities.nii.gz`` is also written: a float32 vector image on the input grid,
        one component per task label, background first (order of :meth:`task_labels`).

        An input may be a DICOM series (a folder or ``.zip``, :mod:`labelsharing.data.dicom_series`;
        ``series_uid`` picks one of several). ``dcm`` writes a DICOM SEG of ``seg_type`` ``binary``
        (default) or ``labelmap`` per input series (:mod:`labelsharing.infer.dicom_seg`); it needs
        DICOM inputs, whose images and frames the SEG references.

        All output names are checked before anything is predicted: an output never replaces an
        input, and replaces an existing file only with ``force`` (CLI ``--force``). Each file is
        written atomically (:mod:`labelsharing.utils.safe_write`): complete or not at all.

        ``task`` ``auto`` recognises each image's task (:meth:`examine`; an image it cannot
        recognise stops the run with the candidates and their scores). Beside each output,
        ``<case>.prediction.json`` records the task, the recognition's scores and the
        unfamiliar-image figures (for models that store task references, or with ``auto``); a
        warning is logged when an image looks unlike the task's training images (the result is
        written all the same).

        Returns:
            the written label files, in input order.

        Raises:
            LabelSharingError: unknown task or format, missing/unreadable input, two inputs
                with the same case name, an output that is an input or exists (without
                ``force``), an output that cannot be written (disk full, no permission).
        """
        file_format = file_format.lower().lstrip(".")
        if file_format not in OUTPUT_FORMATS:
            raise LabelSharingError(f"Unknown output format '{file_format}'; choose one of {', '.join(OUTPUT_FORMATS)}.")
        from labelsharing.infer.familiarity import AUTO_TASK

        if task != AUTO_TASK:
            self.check_layered_output(task, file_format, probabilities)
        paths = [Path(p) for p in inputs]
        if not paths:
            raise LabelSharingError("No input images given.")
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise LabelSharingError(f"Input image(s) not found: {', '.join(missing[:5])}{' ...' * (len(missing) > 5)}")
        cases = [case_id_from_path(p) for p in paths]
        duplicates = sorted({c for c in cases if cases.count(c) > 1})
        if duplicates:
            raise LabelSharingError(
                f"Several inputs would write the same output ({', '.join(duplicates)}); predict them into "
                "separate --out folders."
            )
        out_dir = Path(out_dir)
        dicom = file_format == "dcm"
        if dicom:
            not_dicom = [str(p) for p in paths if not is_dicom_input(p)]
            if not_dicom:
                raise LabelSharingError(f"--format dcm writes a DICOM SEG, which references its source DICOM images; "
                                        f"{', '.join(not_dicom[:3])} {'is' if len(not_dicom) == 1 else 'are'} not a "
                                        "DICOM series (a folder or .zip). Choose another --format for these.")
        label_files = [out_dir / f"{case}.{file_format}" for case in cases]
        probability_files = [out_dir / f"{case}_probabilities.nii.gz" for case in cases]
        # a record when there is something to record: a recognised task or a task reference (new models)
        recorded = task == AUTO_TASK or bool(self.model.config.get("familiarity"))
        record_files = [out_dir / f"{case}.prediction.json" for case in cases]
        check_outputs(label_files + (record_files if recorded else []) + (probability_files if probabilities else []),
                      inputs=paths, force=force)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LabelSharingError(f"Cannot create the output folder {out_dir}: {exc.strerror or exc}. "
                                    "Choose another --out.") from exc
        model_sha256 = self.model.config.get("weights_sha256")

        def read(path: Path):
            """The image to predict and what the output refers to (the DicomSeries for a SEG, else the image)."""
            if dicom:
                series = read_dicom_series(path, series_uid)
                return series.image, series
            image = read_image(path, series_uid)
            return image, image

        def write(layers, probs, image, source, label_file, probability_file, record, record_file) -> None:
            task, segments = record["task"], [self.task_labels(sub) for sub in self.plan.subtasks(record["task"])]
            if dicom:
                from labelsharing.infer.dicom_seg import write_dicom_seg

                write_atomically(label_file, lambda temporary: write_dicom_seg(
                    layers[0], source, temporary, segments[0], task, model_sha256, seg_type))
            else:
                write_layered_label(layers, image, label_file, segments)
            if probs is not None:
                _write_probabilities(probs, image, probability_file)
            if recorded:
                write_json_atomically(record_file, record)

        # One I/O thread, in order: it writes result i - 1 and reads image i + 1 while image i is
        # predicted; at most two images and two results are held. A failure surfaces at its image,
        # after the results before it are written and counted.
        with progress.track("predicting", total=len(paths), unit="image") as advance, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="labelsharing-io") as io:
            upcoming, written = io.submit(read, paths[0]), []

            def finish_writing() -> None:
                while written:
                    future, case = written.pop()
                    future.result()
                    advance(case=case)

            for index, (case, label_file, probability_file, record_file) in enumerate(
                    zip(cases, label_files, probability_files, record_files)):
                try:
                    image, source = upcoming.result()
                except BaseException:
                    finish_writing()
                    raise
                if index + 1 < len(paths):
                    upcoming = io.submit(read, paths[index + 1])
                try:
                    record = self._examine_case(image, task, case)
                except BaseException:
                    finish_writing()
                    raise
                try:
                    self.check_layered_output(record["task"], file_format, probabilities)  # a recognised task
                except BaseException:
                    finish_writing()
                    raise
                if len(self.plan.subtasks(record["task"])) == 1:
                    labels, probs = self._predict(image, record["task"], probabilities)
                    layers = [labels]
                    del labels
                else:
                    layers, probs = self.predict_layers(image, record["task"]), None
                finish_writing()
                written.append((io.submit(write, layers, probs, image, source, label_file, probability_file, record,
                                          record_file), case))
                del image, source, layers, probs
            finish_writing()
        return label_files

    def _examine_case(self, image: sitk.Image, task: str, case: str) -> dict:
        """:meth:`examine` one input, logging the recognised task and any unfamiliar-image warning."""
        record = {"case": case, **self.examine(image, task)}
        if record["recognition"] is not None:
            self.log(f"{case}: task '{record['task']}' recognised (score {record['recognition']['score']:.2f})")
        if record["familiarity"] is not None and record["familiarity"]["warning"]:
            self.log(f"warning: {case}: {record['familiarity']['warning']}")
        return record


def _write_probabilities(probs: np.ndarray, reference: sitk.Image, path: Path) -> Path:
    """(C, *shape) probabilities -> float32 vector image with ``reference``'s geometry, written atomically."""
    vector = sitk.GetImageFromArray(np.moveaxis(probs, 0, -1).astype(np.float32), isVector=True)
    vector.CopyInformation(reference)
    return write_image(vector, path)
