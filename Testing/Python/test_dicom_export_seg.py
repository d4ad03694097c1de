"""``labelsharing export-seg``: an existing segmentation (Slicer's label-map export or a .seg.nrrd) as a DICOM SEG.

Real DICOM series written by ``dicom_data.write_ct_series``; the SEGs are read back with highdicom and pydicom.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")
highdicom = pytest.importorskip("highdicom")
from dicom_data import PATIENT, demo_ct, oblique, write_ct_series  # noqa: E402

from labelsharing.cli import main  # noqa: E402
from labelsharing.data import SegmentInfo, write_label  # noqa: E402
from labelsharing.errors import LabelSharingError  # noqa: E402
from labelsharing.infer import export_dicom_seg, read_segments  # noqa: E402
from labelsharing.plan import EXAMPLE_ENTRY, label_codes  # noqa: E402


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> sitk.Image:
    return demo_ct(tmp_path_factory.mktemp("demo"))


def _labels_on(image: sitk.Image) -> sitk.Image:
    """Two blobs (values 3 and 7, as a segmentation's own values) and one declared but empty label (5)."""
    array = np.zeros(sitk.GetArrayFromImage(image).shape, dtype=np.uint8)
    array[2:6, 20:40, 30:50] = 3
    array[5:9, 50:70, 40:60] = 7
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    return labels


def _write_label_export(labels: sitk.Image, folder, name="Segmentation.1") -> object:
    """What the Slicer module's label-map export writes: ``<name>.nrrd`` + ``<name>.labels.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.nrrd"
    sitk.WriteImage(labels, str(path))
    (folder / f"{name}.labels.json").write_text(json.dumps({
        "labels": {"background": 0, "liver": 3, "empty": 5, "lesion": 7},
        "colors": {"liver": [0.8, 0.3, 0.2], "lesion": [0.1, 0.9, 0.1]},
        "terminology": {"liver": EXAMPLE_ENTRY},
    }), encoding="utf-8")
    return path


def _seg_on_source_grid(seg_file, reference: sitk.Image) -> np.ndarray:
    """The SEG's segments (numbers 1..N) resampled onto the source image's grid, as (z, y, x)."""
    volume = highdicom.seg.segread(seg_file).get_volume(combine_segments=True, relabel=True)
    segments = sitk.GetImageFromArray(volume.array.astype(np.uint8))
    affine = volume.affine
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    segments.SetOrigin(affine[:3, 3].tolist())
    segments.SetSpacing(spacing[::-1].tolist())
    segments.SetDirection((affine[:3, :3] / spacing)[:, ::-1].ravel().tolist())
    return sitk.GetArrayFromImage(sitk.Resample(segments, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


@pytest.mark.parametrize("turn", [False, True], ids=["axial", "oblique"])
def test_label_map_export_becomes_a_seg_on_the_source_frames(ct, tmp_path, turn):
    image = oblique(ct) if turn else ct
    files = write_ct_series(image, tmp_path / "series")
    labels = _labels_on(image)
    label_file = _write_label_export(labels, tmp_path / "export")
    seg_file = export_dicom_seg(label_file, tmp_path / "series", tmp_path / "out.dcm")

    seg, source = pydicom.dcmread(seg_file), pydicom.dcmread(files[0])
    items = {item.SegmentLabel: item for item in seg.SegmentSequence}
    assert list(items) == ["liver", "lesion"]  # by value; the empty label is left out (no frames to hold it)
    assert (items["liver"].SegmentedPropertyTypeCodeSequence[0].CodeValue
            == label_codes(EXAMPLE_ENTRY).type.value)
    assert items["lesion"].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"  # generic Tissue
    assert all(item.SegmentAlgorithmType == "MANUAL" for item in items.values())
    assert "SegmentationAlgorithmIdentificationSequence" not in items["liver"]
    for key in (*PATIENT, "StudyInstanceUID", "FrameOfReferenceUID"):
        assert seg.get(key) == source.get(key), key
    assert seg.SeriesDescription == "Segmentation.1"
    expected = sitk.GetArrayFromImage(labels)
    np.testing.assert_array_equal(_seg_on_source_grid(seg_file, image), np.select(
        [expected == 3, expected == 7], [1, 2], 0))


def test_seg_nrrd_keeps_names_colours_and_terminology(ct, tmp_path):
    write_ct_series(ct, tmp_path / "series")
    labels = _labels_on(ct)
    path = tmp_path / "case.seg.nrrd"
    write_label(sitk.GetArrayFromImage(labels), ct, path, segments=[
        SegmentInfo("liver", 3, (0.8, 0.3, 0.2), EXAMPLE_ENTRY), SegmentInfo("lesion", 7, (0.1, 0.9, 0.1))])
    assert [s.name for s in read_segments(path)] == ["liver", "lesion"]
    assert read_segments(path)[0].terminology == EXAMPLE_ENTRY
    seg_file = export_dicom_seg(path, tmp_path / "series", tmp_path / "out.dcm", seg_type="labelmap")
    seg = pydicom.dcmread(seg_file)
    assert seg.SegmentationType == "LABELMAP"
    items = {item.SegmentLabel: item for item in seg.SegmentSequence}  # a label-map SEG also lists Background
    assert items["liver"].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    rgb = highdicom.color.CIELabColor.from_dicom_value(items["liver"].RecommendedDisplayCIELabValue).to_rgb()
    np.testing.assert_allclose(rgb, [204, 76, 51], atol=2)  # the segment's (0.8, 0.3, 0.2) kept
    expected = sitk.GetArrayFromImage(labels)
    np.testing.assert_array_equal(_seg_on_source_grid(seg_file, ct), np.select([expected == 3, expected == 7], [1, 2], 0))


def test_label_map_off_the_series_grid_is_refused(ct, tmp_path):
    write_ct_series(ct, tmp_path / "series")
    shifted = _labels_on(ct)
    shifted.SetOrigin([o + 5.0 for o in ct.GetOrigin()])
    label_file = _write_label_export(shifted, tmp_path / "export")
    with pytest.raises(LabelSharingError, match="is not on the grid of the DICOM series"):
        export_dicom_seg(label_file, tmp_path / "series", tmp_path / "out.dcm")


def test_label_map_without_sidecar_or_with_a_bad_terminology_is_refused(ct, tmp_path):
    sitk.WriteImage(_labels_on(ct), str(tmp_path / "bare.nii.gz"))
    with pytest.raises(LabelSharingError, match="bare.labels.json"):
        read_segments(tmp_path / "bare.nii.gz")
    (tmp_path / "bare.labels.json").write_text(json.dumps({"labels": {"liver": 3}, "terminology": {"liver": "liver"}}))
    with pytest.raises(LabelSharingError, match="terminology of segment 'liver'"):
        read_segments(tmp_path / "bare.nii.gz")


def test_cli_export_seg_writes_once_and_refuses_to_replace(ct, tmp_path, capsys):
    write_ct_series(ct, tmp_path / "series")
    label_file = _write_label_export(_labels_on(ct), tmp_path / "export")
    command = ["--progress", "none", "export-seg", str(label_file), str(tmp_path / "series"),
               "--out", str(tmp_path / "out" / "seg.dcm")]
    assert main(command) == 0
    assert pydicom.dcmread(tmp_path / "out" / "seg.dcm").Modality == "SEG"
    assert main(command) != 0
    assert "--force" in capsys.readouterr().err
    assert main([*command, "--force"]) == 0


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy (Debian/Ubuntu package dicom3tools) is not installed")
def test_exported_binary_seg_passes_dciodvfy(ct, tmp_path):
    write_ct_series(oblique(ct), tmp_path / "series")
    label_file = _write_label_export(_labels_on(oblique(ct)), tmp_path / "export")
    seg_file = export_dicom_seg(label_file, tmp_path / "series", tmp_path / "out.dcm")
    result = subprocess.run(["dciodvfy", str(seg_file)], capture_output=True, text=True, timeout=120)
    report = result.stdout + result.stderr
    assert "Segmentation" in report  # dciodvfy recognised the IOD
    assert [line for line in report.splitlines() if line.startswith("Error")] == [], report
