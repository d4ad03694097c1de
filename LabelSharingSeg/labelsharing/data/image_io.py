"""Reading and writing images and label maps, keeping their geometry.

Images go through SimpleITK (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.png``, ...); a folder or
``.zip`` is read as a DICOM series (:mod:`labelsharing.data.dicom_series`). Label
maps may also be Slicer segmentations (``.seg.nrrd``, see :mod:`labelsharing.data.seg_nrrd`), whose
segments are matched to the task's labels by name. Every file read is checked whole (a cut file
is refused, not read with zeros) and every file written is written atomically and read back.

Axis conventions: ``sitk.GetArrayFromImage`` gives (z, y, x) for 3D and (y, x) for 2D;
SimpleITK spacing/origin are (x, y, z) in LPS.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import SimpleITK as sitk

from labelsharing.errors import LabelSharingError
from labelsharing.utils import check_gzip_stream, write_atomically

__all__ = [
    "SEG_NRRD",
    "MAX_LABEL_VALUE",
    "SegmentInfo",
    "read_image",
    "read_image_header",
    "read_label",
    "write_label",
    "write_image",
    "case_id_from_path",
    "geometry_mismatch",
]

SEG_NRRD = ".seg.nrrd"
#: Largest label value a task may declare (label maps are read as uint8 or uint16).
MAX_LABEL_VALUE = 65535
_KNOWN_ENDINGS = (SEG_NRRD, ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff", ".zip")


class SegmentInfo(NamedTuple):
    """One label as a Slicer segment: name, value in the label map, 0..1 RGB colour and the Slicer
    terminology entry string (``None`` when the task gives none; see :mod:`labelsharing.plan.terminology`)."""

    name: str
    value: int
    color: tuple[float, float, float]
    terminology: str | None = None


def _ending(path: Path) -> str:
    if path.is_dir():  # a DICOM series folder: its whole name is the case
        return ""
    name = path.name.lower()
    for ending in _KNOWN_ENDINGS:
        if name.endswith(ending):
            return ending
    return path.suffix.lower()


def case_id_from_path(path: str | Path, is_label: bool = False) -> str:
    """Case identifier of an image or label file: its name without ending and channel suffix.

    nnU-Net names image files ``<case>_0000<ending>`` and label files ``<case><ending>``. An
    image loses a trailing ``_0000`` (the single input channel supported); other four-digit
    endings are part of the case id, so ``a_0001.nii.gz`` and ``a_0002.nii.gz`` stay apart. A
    label file keeps its whole stem: AMOS-style ids such as ``amos_0001`` end in digits. A DICOM
    series folder is named like an image without ending; a series ``.zip`` loses ``.zip``.

    Args:
        path: an image or label file.
        is_label: ``path`` is a label file (``labelsTr``/``labelsTs``).

    Example:
        >>> case_id_from_path("imagesTr/amos_0001_0000.nii.gz")
        'amos_0001'
        >>> case_id_from_path("labelsTr/amos_0001.nii.gz", is_label=True)
        'amos_0001'
        >>> case_id_from_path("in/ct_0001.nrrd")
        'ct_0001'
    """
    path = Path(path)
    stem = path.name[: len(path.name) - len(_ending(path))]
    if not is_label and len(stem) > 5 and stem.endswith("_0000"):
        stem = stem[:-5]
    return stem


def read_image(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read an image with its geometry, refusing damaged files and non-finite intensities.

    Args:
        path: an image file, or a folder or ``.zip`` holding a DICOM series
            (:func:`~labelsharing.data.dicom_series.read_dicom_series`: geometry checked).
        series_uid: the DICOM series to read when the folder holds several.

    Raises:
        LabelSharingError: naming the file, if it is missing, unreadable, truncated (``.gz``),
            has several components per pixel (except RGB PNGs, reduced to their first channel)
            or holds NaN or infinite voxels; for DICOM, the errors of ``read_dicom_series``.
    """
    from labelsharing.data.dicom_series import is_dicom_input, read_dicom_series

    if is_dicom_input(path):
        return read_dicom_series(path, series_uid).image
    path = _existing_file(path, "Image")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        _check_complete(path, reader)
        image = reader.Execute()
    except RuntimeError as exc:
        raise LabelSharingError(f"Cannot read image {path}: {_first_line(exc)}") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        if _ending(path) == ".png":
            # RGB(A) PNGs of grey X-rays are common: keep the luminance only.
            image = sitk.VectorIndexSelectionCast(image, 0)
        else:
            raise LabelSharingError(
                f"{path} has {image.GetNumberOfComponentsPerPixel()} components per pixel; "
                "only single-channel images are supported."
            )
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.inexact):
        non_finite = array.size - int(np.count_nonzero(np.isfinite(array)))
        if non_finite:
            raise LabelSharingError(
                f"{path}: {non_finite} of {array.size} voxels are NaN or infinite. Replace them with finite "
                "values (e.g. the image's minimum) before training or prediction."
            )
    return image


def read_image_header(path: str | Path):
    """The geometry of an image file, without reading its pixels.

    Returns:
        a reader after ``ReadImageInformation``: like a :class:`SimpleITK.Image` it answers
        ``GetSize``, ``GetSpacing``, ``GetOrigin``, ``GetDirection`` and ``GetDimension``, so slices can
        be planned and counted (:class:`~labelsharing.data.orientation.Slicing`) before any volume is loaded.
        For a DICOM series folder or ``.zip``, its checked geometry from the headers
        (:class:`~labelsharing.data.dicom_series.SeriesGeometry`, answering the same calls).

    Raises:
        LabelSharingError: naming the file, if it is missing or not an image.
    """
    from labelsharing.data.dicom_series import is_dicom_input, read_dicom_geometry

    if is_dicom_input(path):
        return read_dicom_geometry(path)
    path = _existing_file(path, "Image")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise LabelSharingError(f"Cannot read image {path}: {_first_line(exc)}") from exc
    return reader


def read_label(path: str | Path, labels: Mapping[str, int], reference: sitk.Image | None = None,
               skip: Mapping[str, int] | None = None) -> sitk.Image:
    """Read a label map in the task's own label values.

    Every voxel value is checked against the declared labels *before* the map is cast to its
    output type, so a value that does not fit (negative, too large, fractional) is refused
    instead of wrapping around.

    Args:
        path: an integer label image (any SimpleITK format) or a Slicer ``.seg.nrrd``.
        labels: label name -> value of the task (background may be included or not); values
            in 0..``MAX_LABEL_VALUE``.
        reference: the image the labels belong to. A ``.seg.nrrd`` whose grid is a crop or
            shift of the reference grid (same spacing and direction) is resampled onto it.
        skip: labels (name -> value) of a task's other layers (a sub-task's siblings, see
            :mod:`labelsharing.plan.layer_split`): their segments or voxels are read as background.

    Returns:
        label image with the label's geometry (or ``reference``'s for ``.seg.nrrd``): uint8 if
        every declared value is below 256, else uint16.

    Raises:
        LabelSharingError: unreadable file, non-integer values, values that are not declared
            labels, or a ``.seg.nrrd`` with a segment that is not a label of the task, duplicate
            segment names, a segment without label value or overlapping segments.
    """
    path = _existing_file(path, "Label")
    pixel_type = _label_pixel_type(labels)
    if path.name.lower().endswith(SEG_NRRD):
        from labelsharing.data.seg_nrrd import read_seg_nrrd

        return read_seg_nrrd(path, labels, reference, pixel_type, skip or {})
    image = read_image(path)
    values = np.unique(sitk.GetArrayViewFromImage(image))
    if not np.issubdtype(values.dtype, np.integer) and not np.all(np.equal(np.mod(values, 1), 0)):
        raise LabelSharingError(
            f"{path} holds non-integer values; a label map must hold integer label values "
            "(was it saved with linear interpolation?)."
        )
    undeclared = sorted(set(values.tolist()) - {0, *labels.values(), *(skip or {}).values()})
    if undeclared:
        raise LabelSharingError(
            f"{path} holds label value(s) {_values_text(undeclared)} not declared in the task's labels "
            f"({_labels_text(labels)}). Declare them in dataset.json \"labels\" or fix the label file."
        )
    if skip and set(values.tolist()) & set(skip.values()):
        array = sitk.GetArrayFromImage(image)
        array[np.isin(array, list(skip.values()))] = 0
        kept = sitk.GetImageFromArray(array)
        kept.CopyInformation(image)
        image = kept
    return sitk.Cast(image, pixel_type)


def _label_pixel_type(labels: Mapping[str, int]) -> int:
    largest = max(labels.values(), default=0)
    if largest > MAX_LABEL_VALUE:
        raise ValueError(f"label values must not exceed {MAX_LABEL_VALUE}, got {largest}")
    return sitk.sitkUInt8 if largest < 256 else sitk.sitkUInt16


def geometry_mismatch(label: sitk.Image, image: sitk.Image, tolerance: float = 1e-3) -> str | None:
    """Describe how a label's grid differs from its image's, or ``None`` if they match.

    Spacing and direction are compared relatively, the origin in units of the image spacing.
    """
    if label.GetSize() != image.GetSize():
        return f"size {label.GetSize()} != image size {image.GetSize()}"
    spacing = np.asarray(image.GetSpacing())
    if not np.allclose(label.GetSpacing(), spacing, rtol=tolerance, atol=0):
        return f"spacing {_fmt(label.GetSpacing())} != image spacing {_fmt(image.GetSpacing())}"
    if not np.allclose(label.GetDirection(), image.GetDirection(), atol=tolerance):
        return f"direction {_fmt(label.GetDirection())} != image direction {_fmt(image.GetDirection())}"
    offset = np.abs(np.asarray(label.GetOrigin()) - np.asarray(image.GetOrigin())) / spacing
    if np.any(offset > tolerance * 10):
        return f"origin {_fmt(label.GetOrigin())} != image origin {_fmt(image.GetOrigin())}"
    return None


def write_label(
    labels: np.ndarray,
    reference: sitk.Image,
    path: str | Path,
    segments: Sequence[SegmentInfo] = (),
) -> Path:
    """Write a label map on the grid of ``reference``, atomically (see :mod:`labelsharing.utils.safe_write`).

    Args:
        labels: integer array shaped like ``sitk.GetArrayFromImage(reference)``: (z, y, x) or (y, x).
        reference: image whose size, spacing, origin and direction the output takes exactly.
        path: output file. ``.seg.nrrd`` writes a Slicer segmentation with one segment per entry
            of ``segments``; other endings write a plain label image with SimpleITK.
        segments: name, value, colour and terminology of each label (:class:`SegmentInfo`, or a
            plain ``(name, value, colour)`` tuple); needed for ``.seg.nrrd``.

    Returns:
        the written path.

    Raises:
        LabelSharingError: the file could not be written completely (disk full, no permission,
            ...); ``path`` is then left as it was.
    """
    path = Path(path)
    reference_shape = sitk.GetArrayViewFromImage(reference).shape
    if labels.shape != reference_shape:
        raise ValueError(f"labels shape {labels.shape} != reference array shape {reference_shape}")
    labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16, copy=False)
    if not path.name.lower().endswith(SEG_NRRD):
        image = sitk.GetImageFromArray(labels)
        image.CopyInformation(reference)
        return write_image(image, path)
    from labelsharing.data.seg_nrrd import write_seg_nrrd

    size = reference.GetSize() + ((1,) if reference.GetDimension() == 2 else ())  # a .seg.nrrd is always 3D
    return write_atomically(path, lambda temporary: write_seg_nrrd(labels, reference, temporary, segments),
                            lambda temporary: _check_written_image(temporary, size, 1))


def write_image(image: sitk.Image, path: str | Path) -> Path:
    """Write ``image`` compressed with SimpleITK, atomically; the format follows the ending of ``path``.

    The file is read back before it takes its final name: its size and components must match.

    Raises:
        LabelSharingError: the file could not be written completely; ``path`` is left as it was.
    """
    return write_atomically(path, lambda temporary: sitk.WriteImage(image, str(temporary), useCompression=True),
                            lambda temporary: _check_written_image(temporary, image.GetSize(),
                                                                   image.GetNumberOfComponentsPerPixel()))


def _check_written_image(path: Path, size: Sequence[int], components: int) -> None:
    """Raise unless ``path`` reads back whole with this size (ValueError, or the reader's error).

    A ``.gz`` file is checked through its header and its gzip stream (ITK reads a cut ``.nii.gz``
    without error, filling zeros), without holding the pixels twice: a ``.nii.gz`` whose gzip
    trailer records the length its header describes is complete (as :func:`read_image` checks
    it); any other is decompressed to its end. Other files are read whole.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if path.name.lower().endswith(".gz"):
        reader.ReadImageInformation()
        written_size, written_components = reader.GetSize(), reader.GetNumberOfComponents()
        if not (_ending(path) == ".nii.gz" and _gzip_trailer_matches(path, _nifti_bytes(reader))):
            length = check_gzip_stream(path)
            one_voxel = sitk.Image([1] * len(size), reader.GetPixelID(), written_components)
            payload = int(np.prod(size)) * sitk.GetArrayViewFromImage(one_voxel).nbytes
            if length < payload:
                raise ValueError(f"{length} bytes of data, expected at least {payload}")
    else:
        written = reader.Execute()
        written_size, written_components = written.GetSize(), written.GetNumberOfComponentsPerPixel()
    if tuple(written_size) != tuple(size) or written_components != components:
        raise ValueError(f"read back size {tuple(written_size)} x {written_components} components, "
                         f"expected {tuple(size)} x {components}")


def _existing_file(path: str | Path, kind: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise LabelSharingError(f"{kind} file not found: {path}")
    if path.stat().st_size == 0:
        raise LabelSharingError(f"{kind} file {path} is empty (0 bytes). Copy or export it again.")
    return path


def _check_complete(path: Path, reader: sitk.ImageFileReader) -> None:
    """Refuse a truncated NIfTI or gzip file: SimpleITK reads a cut ``.nii``/``.nii.gz`` without error.

    A ``.nii`` must be as long as its header says. A ``.nii.gz`` whose gzip trailer records that
    length is complete (the usual case, checked without decompressing); any other ``.gz`` file
    is decompressed once to check that its stream ends properly.
    """
    ending = _ending(path)
    if ending in (".nii", ".nii.gz"):
        expected = _nifti_bytes(reader)
        if ending == ".nii":
            if path.stat().st_size < expected:
                raise LabelSharingError(
                    f"{path} is truncated: {path.stat().st_size} bytes, but its header describes {expected}. "
                    "Copy or export the file again."
                )
            return
        if _gzip_trailer_matches(path, expected):
            return
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as stream:
                while stream.read(1 << 24):
                    pass
        except (OSError, EOFError, zlib.error) as exc:
            raise LabelSharingError(f"{path} is truncated or damaged ({exc}). Copy or export the file again.") from exc


def _nifti_bytes(reader: sitk.ImageFileReader) -> int:
    """The length of a NIfTI file (header, extensions and voxels) that its header describes."""
    dims = [int(reader.GetMetaData(f"dim[{axis}]")) for axis in range(1, int(reader.GetMetaData("dim[0]")) + 1)]
    voxel_bytes = int(np.prod(dims)) * int(reader.GetMetaData("bitpix")) // 8
    return int(float(reader.GetMetaData("vox_offset"))) + voxel_bytes


def _gzip_trailer_matches(path: Path, length: int) -> bool:
    """The gzip trailer of ``path`` records ``length`` uncompressed bytes (mod 2**32): the stream is whole.

    A cut stream ends in compressed data instead, which matches by chance once in 2**32.
    """
    with path.open("rb") as stream:
        stream.seek(-4, 2)
        return int.from_bytes(stream.read(4), "little") == length % 2**32


def _values_text(values: Sequence[float]) -> str:
    shown = [int(v) if float(v).is_integer() else v for v in values[:10]]
    return str(shown)[:-1] + (", ...]" if len(values) > 10 else "]")


def _labels_text(labels: Mapping[str, int]) -> str:
    return ", ".join(f"{name}={value}" for name, value in labels.items())


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
