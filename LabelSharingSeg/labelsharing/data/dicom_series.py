"""DICOM series in: a folder (or ``.zip``) of one series' files, read as one image with checked geometry.

Headers are read with pydicom (without pixels), grouped by SeriesInstanceUID and ordered by
position along the slice normal; the geometry is checked before any pixel is read: one
orientation, one row/column spacing and size, slices stacked along the normal (no gantry
tilt), uniform spacing and no missing slice. Pixels of single-frame series are then read by
SimpleITK's GDCM series reader, which decodes the usual compressed transfer syntaxes itself
(JPEG, JPEG-LS, JPEG 2000, RLE) and applies each file's Rescale Slope/Intercept. Enhanced
(multi-frame) CT/MR objects take their geometry from the functional groups and their pixels
from pydicom, which needs a decoder package for compressed data (the error names it).

The result has the LPS geometry of the series: origin = the first slice's Image Position, axis
x along the row direction cosines, y along the column direction cosines, z along the normal
(ascending position), so array index (k, j, i) is pixel (row j, column i) of slice k.
"""

from __future__ import annotations

import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from labelsharing.errors import LabelSharingError

__all__ = ["DicomSeries", "SeriesGeometry", "is_dicom_input", "read_dicom_series", "read_dicom_geometry"]

_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation objects in a folder are outputs, not inputs
_DECODERS = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)"
_ORIENTATION_TOLERANCE = 1e-4
_SPACING_TOLERANCE = 0.01  # relative: slice gaps may differ by 1 % (rounded positions)


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series read as an image.

    Attributes:
        image: the volume in LPS ((x, y, z) spacing/origin), intensities after rescale.
        datasets: the source headers (no pixel data): for a single-frame series one per slice in
            the image's z order; for a multi-frame object the one object.
        frame_order: for a multi-frame object, the source frame index (0-based) of each z slice;
            empty for a single-frame series.
        source: the folder or zip it was read from.
    """

    image: sitk.Image
    datasets: tuple
    frame_order: tuple[int, ...]
    source: Path

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)


def is_dicom_input(path: str | Path) -> bool:
    """A folder or a ``.zip`` file: read as a DICOM series rather than as an image file."""
    path = Path(path)
    return path.is_dir() or (path.is_file() and path.suffix.lower() == ".zip")


def read_dicom_series(path: str | Path, series_uid: str | None = None) -> DicomSeries:
    """Read the DICOM series in a folder (searched recursively) or a ``.zip`` file.

    Args:
        path: the folder or zip.
        series_uid: the SeriesInstanceUID to read when the folder holds several series.

    Raises:
        LabelSharingError: no DICOM images; several series and no (or an unknown) ``series_uid``
            (the series are listed); missing position/orientation; mixed orientations or sizes;
            slices not stacked along their normal; missing slices; non-uniform spacing;
            compressed pixels without a decoder; pydicom not installed.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="labelsharing-dicom-") as temporary:
        chosen, geometry = _checked_series(path, series_uid, Path(temporary))
        if geometry.multiframe:
            return _read_multiframe(chosen[0], geometry, path)
        return _read_single_frames(chosen, geometry, path)


def read_dicom_geometry(path: str | Path, series_uid: str | None = None) -> SeriesGeometry:
    """The checked geometry of a DICOM series, from its headers alone (no pixel is read).

    Raises:
        LabelSharingError: as :func:`read_dicom_series`, except for pixel decoding.
    """
    with tempfile.TemporaryDirectory(prefix="labelsharing-dicom-") as temporary:
        return _checked_series(Path(path), series_uid, Path(temporary))[1]


@dataclass(frozen=True)
class SeriesGeometry:
    """The grid of a checked series; answers like a :class:`SimpleITK.Image` (``GetSize`` ...), so it
    stands in for an image header when slices are planned.

    Attributes:
        order: source index (file of ``chosen`` or frame) of each z slice, in ascending position.
        multiframe: one enhanced multi-frame object rather than one file per slice.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    order: tuple[int, ...]
    multiframe: bool

    def GetSize(self) -> tuple[int, int, int]:  # noqa: N802 (SimpleITK's names)
        return self.size

    def GetSpacing(self) -> tuple[float, float, float]:  # noqa: N802
        return self.spacing

    def GetOrigin(self) -> tuple[float, float, float]:  # noqa: N802
        return self.origin

    def GetDirection(self) -> tuple[float, ...]:  # noqa: N802
        return self.direction

    def GetDimension(self) -> int:  # noqa: N802
        return 3


def _checked_series(path: Path, series_uid: str | None, temporary: Path) -> tuple[list, SeriesGeometry]:
    """The chosen series' (file, header) pairs and their checked geometry; a zip is unpacked into ``temporary``."""
    try:
        import pydicom
    except ImportError as exc:
        raise LabelSharingError(f"Reading the DICOM series {path} needs pydicom: pip install 'labelsharing[dicom]'.") \
            from exc
    folder = _unzipped(path, temporary) if path.is_file() else path
    chosen = _choose_series(_image_headers(pydicom, folder, path), series_uid, path)
    frames = [int(getattr(ds, "NumberOfFrames", 1) or 1) for _, ds in chosen]
    if len(chosen) == 1 and frames[0] > 1:
        return chosen, _multiframe_geometry(chosen[0], path)
    if max(frames) > 1:
        raise LabelSharingError(f"{path}: series {chosen[0][1].SeriesInstanceUID} holds several multi-frame "
                                "objects; give a folder holding one of them.")
    datasets = [ds for _, ds in chosen]
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(shapes) > 1:
        raise LabelSharingError(f"{path}: the images have different sizes ({sorted(shapes)}); a volume needs one.")
    order, direction, spacing = _slice_geometry(
        [ds.get("ImagePositionPatient") for ds in datasets], [ds.get("ImageOrientationPatient") for ds in datasets],
        [ds.get("PixelSpacing") for ds in datasets], [file.name for file, _ in chosen], path)
    rows, columns = shapes.pop()
    return chosen, _geometry((columns, rows, len(order)), spacing, datasets[order[0]].ImagePositionPatient,
                             direction, order, False)


def _geometry(size, spacing, origin, direction: np.ndarray, order, multiframe: bool) -> SeriesGeometry:
    return SeriesGeometry(tuple(int(v) for v in size), tuple(float(v) for v in spacing),
                          tuple(float(v) for v in origin), tuple(float(v) for v in direction.ravel()),
                          tuple(int(i) for i in order), multiframe)


def _unzipped(path: Path, into: Path) -> Path:
    try:
        with zipfile.ZipFile(path) as archive:
            archive.extractall(into)  # zipfile drops absolute paths and '..' from member names
    except (zipfile.BadZipFile, OSError) as exc:
        raise LabelSharingError(f"Cannot unpack {path}: {exc}. Give a folder or a complete .zip of the series.") \
            from exc
    return into


def _image_headers(pydicom, folder: Path, source: Path) -> list[tuple[Path, object]]:
    """(file, header) of every DICOM image file under ``folder``; other files are ignored."""
    headers = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError):
            continue  # a README, a DICOMDIR's companions, a damaged non-image file
        if "Rows" in ds and "SeriesInstanceUID" in ds and ds.get("SOPClassUID") != _SEG_STORAGE:
            headers.append((file, ds))
    if not headers:
        raise LabelSharingError(f"{source} holds no DICOM image files. Give the folder (or .zip) of one series.")
    return headers


def _choose_series(headers, series_uid: str | None, source: Path) -> list[tuple[Path, object]]:
    series: dict[str, list] = {}
    for file, ds in headers:
        series.setdefault(str(ds.SeriesInstanceUID), []).append((file, ds))
    if series_uid is None and len(series) == 1:
        return next(iter(series.values()))
    if series_uid in series:
        return series[series_uid]
    listing = "\n".join(
        f"  {uid}  {members[0][1].get('Modality', '?')}  {members[0][1].get('SeriesDescription', '') or '(no description)'}"
        f"  ({len(members)} file{'s' * (len(members) != 1)})"
        for uid, members in series.items()
    )
    what = f"has no series {series_uid}" if series_uid else f"holds {len(series)} series"
    raise LabelSharingError(f"{source} {what}; choose one with --series UID:\n{listing}")


def _slice_geometry(positions: Sequence, orientations: Sequence, spacings: Sequence, names: Sequence[str],
                    source: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Check a stack of slices and return (order, direction 3x3 (columns x, y, z), spacing (x, y, z)).

    Args:
        positions: Image Position (Patient) of each slice (None if absent).
        orientations: Image Orientation (Patient) of each slice (6 numbers, None if absent).
        spacings: Pixel Spacing (row spacing, column spacing) of each slice.
        names: what to call each slice in messages (file name or frame number).
    """
    if any(p is None for p in positions) or any(o is None for o in orientations) or any(s is None for s in spacings):
        raise LabelSharingError(f"{source}: some images lack Image Position/Orientation (Patient) or Pixel Spacing, "
                                "so their geometry is unknown; this is not a volume series (export it as CT/MR).")
    iop = np.asarray(orientations, dtype=float)
    if not np.allclose(iop, iop[0], atol=_ORIENTATION_TOLERANCE):
        odd = int(np.argmax(np.abs(iop - iop[0]).max(axis=1)))
        raise LabelSharingError(
            f"{source}: the images have more than one orientation ({names[0]}: {_fmt(iop[0])}, {names[odd]}: "
            f"{_fmt(iop[odd])}); a volume needs one. The folder may mix a localizer or several stacks: give one "
            "stack's files (or pick its series with --series)."
        )
    pixel = np.asarray(spacings, dtype=float)
    if not np.allclose(pixel, pixel[0], rtol=1e-4):
        raise LabelSharingError(f"{source}: the images have different pixel spacings; a volume needs one.")
    row, column = iop[0, :3], iop[0, 3:]
    normal = np.cross(row, column)
    ipp = np.asarray(positions, dtype=float)
    along = ipp @ normal
    order = np.argsort(along, kind="stable")
    ipp, along = ipp[order], along[order]
    if len(order) == 1:
        return order, np.stack([row, column, normal], axis=1), (pixel[0, 1], pixel[0, 0], 1.0)
    gaps = np.diff(along)
    if np.any(gaps < 1e-3 * max(pixel[0].min(), 1e-3)):
        k = int(np.argmin(gaps))
        raise LabelSharingError(
            f"{source}: {names[order[k]]} and {names[order[k + 1]]} lie at the same position ({along[k]:.2f} mm along "
            "the slice normal). The folder mixes acquisitions or echoes; give one stack (or pick its series with "
            "--series)."
        )
    in_plane = (ipp - ipp[0]) - np.outer(along - along[0], normal)
    if np.abs(in_plane).max() > 1e-2 * max(pixel[0].max(), 1e-3) + 1e-3:
        raise LabelSharingError(
            f"{source}: the slices are not stacked along their normal (the positions shift in-plane, as with a "
            "tilted gantry). Resample the series to an orthogonal volume first (e.g. in 3D Slicer)."
        )
    step = float(np.min(gaps))
    ratios = gaps / step
    if np.any(np.abs(ratios - 1) > _SPACING_TOLERANCE):
        k = int(np.argmax(ratios))
        whole = int(round(ratios[k]))
        if whole >= 2 and abs(ratios[k] - whole) < _SPACING_TOLERANCE * whole:
            raise LabelSharingError(
                f"{source}: {whole - 1} slice{'s are' if whole > 2 else ' is'} missing between {names[order[k]]} and "
                f"{names[order[k + 1]]} (at {along[k]:.2f} and {along[k + 1]:.2f} mm along the normal; the other slices "
                f"are {step:.3g} mm apart). Copy or export the whole series again."
            )
        raise LabelSharingError(
            f"{source}: the slice spacing is not uniform (gaps from {step:.3g} to {gaps.max():.3g} mm). Resample the "
            "series to a regular volume first (e.g. in 3D Slicer)."
        )
    step = float(np.mean(gaps))
    return order, np.stack([row, column, normal], axis=1), (pixel[0, 1], pixel[0, 0], step)


def _read_single_frames(chosen, geometry: SeriesGeometry, source: Path) -> DicomSeries:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(chosen[i][0]) for i in geometry.order])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        syntax = chosen[0][1].file_meta.get("TransferSyntaxUID", "unknown")
        raise LabelSharingError(
            f"{source}: SimpleITK cannot decode the pixels (transfer syntax {getattr(syntax, 'name', syntax)}): "
            f"{_last_line(exc)}. Convert the series to uncompressed DICOM (e.g. gdcmconv --raw) and try again."
        ) from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise LabelSharingError(f"{source}: colour images ({image.GetNumberOfComponentsPerPixel()} components) are not "
                                "supported; give a greyscale CT/MR series.")
    _set_geometry(image, geometry)
    return DicomSeries(image, tuple(chosen[i][1] for i in geometry.order), (), source)


def _frame_groups(header):
    """``group(frame, sequence, attribute)``: a functional group attribute of one frame (per-frame, else shared)."""
    shared = header.get("SharedFunctionalGroupsSequence", [None])[0]
    frames = header.PerFrameFunctionalGroupsSequence

    def group(index: int, name: str, attribute: str):
        for groups in (frames[index], shared):
            if groups is not None and name in groups and attribute in groups[name][0]:
                return groups[name][0][attribute].value
        return None

    return group


def _multiframe_geometry(chosen, source: Path) -> SeriesGeometry:
    file, header = chosen
    if "PerFrameFunctionalGroupsSequence" not in header:
        raise LabelSharingError(f"{source}: {file.name} is a multi-frame object without per-frame functional groups "
                                "(not an enhanced CT/MR image); its slice positions are unknown.")
    group, n = _frame_groups(header), int(header.NumberOfFrames)
    order, direction, spacing = _slice_geometry(
        [group(i, "PlanePositionSequence", "ImagePositionPatient") for i in range(n)],
        [group(i, "PlaneOrientationSequence", "ImageOrientationPatient") for i in range(n)],
        [group(i, "PixelMeasuresSequence", "PixelSpacing") for i in range(n)],
        [f"frame {i + 1}" for i in range(n)], source)
    return _geometry((int(header.Columns), int(header.Rows), n), spacing,
                     group(int(order[0]), "PlanePositionSequence", "ImagePositionPatient"), direction, order, True)


def _read_multiframe(chosen, geometry: SeriesGeometry, source: Path) -> DicomSeries:
    import pydicom

    file = chosen[0]
    dataset = pydicom.dcmread(file)
    columns, rows, n = geometry.size
    try:
        pixels = dataset.pixel_array.reshape(n, rows, columns)
    except (RuntimeError, NotImplementedError, ImportError) as exc:
        raise LabelSharingError(
            f"{source}: cannot decode the compressed pixels of {file.name} (transfer syntax "
            f"{dataset.file_meta.TransferSyntaxUID.name}): {_last_line(exc)}. Install a decoder: {_DECODERS}."
        ) from exc
    group = _frame_groups(dataset)
    volume = np.empty(pixels.shape, dtype=np.float32)
    for k, frame in enumerate(geometry.order):
        slope = group(frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = group(frame, "PixelValueTransformationSequence", "RescaleIntercept")
        volume[k] = pixels[frame] * float(1 if slope is None else slope) + float(0 if intercept is None else intercept)
    image = sitk.GetImageFromArray(volume)
    _set_geometry(image, geometry)
    del dataset.PixelData
    return DicomSeries(image, (dataset,), geometry.order, source)


def _set_geometry(image: sitk.Image, geometry: SeriesGeometry) -> None:
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
