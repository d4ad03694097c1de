"""DICOM series in, DICOM SEG out (issue 12): reading with checked geometry, refusals, SEG content,
the geometry round trip against the NIfTI output, and the dciodvfy validator when installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")
from dicom_data import PATIENT, demo_ct, oblique, write_ct_series  # noqa: E402
from tiny_model import make_model  # noqa: E402

from labelsharing.data import read_dicom_series, read_image, read_image_header, read_task_dataset  # noqa: E402
from labelsharing.errors import LabelSharingError  # noqa: E402
from labelsharing.infer import Predictor  # noqa: E402
from labelsharing.plan import EXAMPLE_ENTRY, GENERIC_ENTRY, label_codes  # noqa: E402


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> sitk.Image:
    return demo_ct(tmp_path_factory.mktemp("demo"))


def _same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


# ------------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize("turn", [False, True], ids=["axial", "oblique"])
def test_series_reads_back_with_its_geometry_and_hounsfield_units(ct, tmp_path, turn):
    source = oblique(ct) if turn else ct
    files = write_ct_series(source, tmp_path / "series")
    for shuffled in files[::2]:  # file names must not matter: slices are ordered by position
        shuffled.rename(shuffled.with_name("z" + shuffled.name))
    image = read_image(tmp_path / "series")
    _same_grid(image, source)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(source))
    header = read_image_header(tmp_path / "series")  # geometry from the headers alone
    assert header.GetSize() == source.GetSize()
    np.testing.assert_allclose(header.GetOrigin(), source.GetOrigin(), atol=1e-5)


def test_zip_of_a_series_reads_like_its_folder(ct, tmp_path):
    files = write_ct_series(ct, tmp_path / "series")
    with zipfile.ZipFile(tmp_path / "case_0000.zip", "w") as archive:
        for file in files:
            archive.write(file, f"DICOM/{file.name}")
    (tmp_path / "README.txt").write_text("not DICOM")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(tmp_path / "case_0000.zip")),
                                  sitk.GetArrayFromImage(ct))


def test_enhanced_multiframe_ct_reads_like_its_single_frames(ct, tmp_path):
    highdicom = pytest.importorskip("highdicom")
    files = write_ct_series(oblique(ct), tmp_path / "series")
    enhanced = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(f) for f in files], series_instance_uid=highdicom.UID(), series_number=2,
        sop_instance_uid=highdicom.UID(), instance_number=1)
    (tmp_path / "enhanced").mkdir()
    enhanced.save_as(tmp_path / "enhanced" / "ct.dcm")
    series = read_dicom_series(tmp_path / "enhanced")
    single = read_dicom_series(tmp_path / "series")
    _same_grid(series.image, single.image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(series.image), sitk.GetArrayFromImage(single.image))
    assert sorted(series.frame_order) == list(range(len(files)))


def test_pydicom_test_files_read_with_rescale_and_compressed_syntaxes(tmp_path):
    from pydicom.data import get_testdata_file

    for name, reference in (("CT_small.dcm", None), ("MR_small_RLE.dcm", "MR_small.dcm")):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(get_testdata_file(name), folder)
        image = read_image(folder)
        ds = pydicom.dcmread(get_testdata_file(reference or name))
        expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[0], expected)
        np.testing.assert_allclose(image.GetOrigin(), [float(v) for v in ds.ImagePositionPatient], atol=1e-4)
        np.testing.assert_allclose(image.GetSpacing()[:2], [float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])])


# ------------------------------------------------------------------------------------------ refusals
def test_missing_slice_is_refused_naming_where(ct, tmp_path):
    write_ct_series(ct, tmp_path / "series", skip=[5])
    with pytest.raises(LabelSharingError, match=r"1 slice is missing between slice004.dcm and slice006.dcm"):
        read_image(tmp_path / "series")


def test_mixed_orientations_are_refused(ct, tmp_path):
    files = write_ct_series(ct, tmp_path / "series")
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    write_ct_series(oblique(ct)[:, :, :1], tmp_path / "series" / "extra", series_uid=series_uid)
    with pytest.raises(LabelSharingError, match="more than one orientation"):
        read_image(tmp_path / "series")


def test_tilted_gantry_stack_is_refused(ct, tmp_path):
    write_ct_series(ct, tmp_path / "series", tilt=0.7)
    with pytest.raises(LabelSharingError, match="not stacked along their normal"):
        read_image(tmp_path / "series")


def test_several_series_are_listed_and_one_is_chosen_with_series_uid(ct, tmp_path):
    write_ct_series(ct, tmp_path / "study" / "a", description="Abdomen venous")
    files = write_ct_series(oblique(ct), tmp_path / "study" / "b", description="Abdomen oblique")
    wanted = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    with pytest.raises(LabelSharingError, match="holds 2 series; choose one with --series") as error:
        read_image(tmp_path / "study")
    assert wanted in str(error.value) and "Abdomen venous" in str(error.value) and "Abdomen oblique" in str(error.value)
    _same_grid(read_image(tmp_path / "study", series_uid=wanted), oblique(ct))
    with pytest.raises(LabelSharingError, match="has no series 1.2.3"):
        read_image(tmp_path / "study", series_uid="1.2.3")


def test_multiframe_without_a_decoder_says_what_to_install(ct, tmp_path, monkeypatch):
    highdicom = pytest.importorskip("highdicom")
    files = write_ct_series(ct, tmp_path / "series")
    enhanced = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(f) for f in files], series_instance_uid=highdicom.UID(), series_number=2,
        sop_instance_uid=highdicom.UID(), instance_number=1)
    (tmp_path / "enhanced").mkdir()
    enhanced.save_as(tmp_path / "enhanced" / "ct.dcm")

    def no_decoder(self):  # what pydicom raises for a compressed syntax none of its installed plugins decode
        raise RuntimeError("Unable to decode the pixel data as the following plugins are missing dependencies")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(no_decoder))
    with pytest.raises(LabelSharingError, match="Install a decoder: pip install pylibjpeg"):
        read_image(tmp_path / "enhanced")


# ------------------------------------------------------------------------------------------ datasets
def test_dataset_folder_accepts_series_folders_and_codes(ct, tmp_path):
    root = tmp_path / "Dataset009_DicomCT"
    write_ct_series(ct, root / "imagesTr" / "abd_0000")
    label = sitk.Cast(ct > 100, sitk.sitkUInt8)
    (root / "labelsTr").mkdir()
    sitk.WriteImage(label, str(root / "labelsTr" / "abd.nii.gz"))
    codes = {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]}
    (root / "dataset.json").write_text(json.dumps({
        "name": "DicomCT", "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
        "numTraining": 1, "file_ending": ".nii.gz", "terminology": {"liver": codes}}))
    task = read_task_dataset(root)
    assert [c.case_id for c in task.training] == ["abd"]
    assert task.terminology == {"liver": EXAMPLE_ENTRY}
    from labelsharing.data import load_case

    image, loaded = load_case(task, task.training[0])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(loaded), sitk.GetArrayFromImage(label))


def test_dataset_codes_missing_a_type_are_refused(tmp_path):
    from labelsharing.data.datasets import _parse_terminology

    with pytest.raises(LabelSharingError, match="has type None; give it as"):
        _parse_terminology(tmp_path, {"liver": {"category": ["SCT", "123037004", "Anatomical Structure"]}},
                           {"liver": 1})


# ------------------------------------------------------------------------------------------ DICOM SEG
@pytest.fixture
def predictor() -> Predictor:
    model = make_model(fake=True, std=300.0)  # intensities / 300: the demo CT's HU fall on all labels
    model.config["tasks"]["TaskA"]["labels"]["big"]["terminology"] = EXAMPLE_ENTRY
    return Predictor(model, "cpu", batch_size=8)


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
@pytest.mark.parametrize("turn", [False, True], ids=["axial", "oblique"])
def test_seg_resampled_to_the_source_grid_equals_the_nifti_output(ct, tmp_path, predictor, seg_type, turn):
    highdicom = pytest.importorskip("highdicom")
    write_ct_series(oblique(ct) if turn else ct, tmp_path / "in" / "abd")
    nifti, = predictor.predict_files([tmp_path / "in" / "abd"], "TaskA", tmp_path / "out")
    seg_file, = predictor.predict_files([tmp_path / "in" / "abd"], "TaskA", tmp_path / "out", file_format="dcm",
                                        seg_type=seg_type)
    expected = sitk.ReadImage(str(nifti))
    assert len(np.unique(sitk.GetArrayFromImage(expected))) == 4  # background and the three labels all occur
    seg = highdicom.seg.segread(seg_file)
    volume = seg.get_volume(combine_segments=True, relabel=True)  # segment numbers 1..3 = big, mid, small
    segments = sitk.GetImageFromArray(volume.array.astype(np.uint8))
    affine = volume.affine  # (slice, row, column) index -> LPS
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    segments.SetOrigin(affine[:3, 3].tolist())
    segments.SetSpacing(spacing[::-1].tolist())
    segments.SetDirection((affine[:3, :3] / spacing)[:, ::-1].ravel().tolist())
    on_source = sitk.Resample(segments, expected, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_source), sitk.GetArrayFromImage(expected))


def test_seg_content_codes_algorithm_and_patient(ct, tmp_path, predictor):
    pytest.importorskip("highdicom")
    files = write_ct_series(ct, tmp_path / "in" / "abd")
    seg_file, = predictor.predict_files([tmp_path / "in" / "abd"], "TaskA", tmp_path / "out", file_format="dcm")
    seg, source = pydicom.dcmread(seg_file), pydicom.dcmread(files[0])
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    for key in (*PATIENT, "StudyInstanceUID", "FrameOfReferenceUID"):
        assert seg.get(key) == source.get(key), key
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {pydicom.dcmread(f).SOPInstanceUID for f in files}
    by_label = {item.SegmentLabel: item for item in seg.SegmentSequence}
    assert list(by_label) == ["big", "mid", "small"]  # ascending label value
    coded = {name: (item.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
                    item.SegmentedPropertyTypeCodeSequence[0].CodeValue) for name, item in by_label.items()}
    assert coded["big"] == (label_codes(EXAMPLE_ENTRY).category.value, label_codes(EXAMPLE_ENTRY).type.value)
    assert coded["mid"] == coded["small"] == ("85756007", "85756007") == tuple(
        code.value for code in label_codes(GENERIC_ENTRY)[:2])
    algorithm = by_label["mid"].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "LabelSharingSeg"
    assert "TaskA" in algorithm.AlgorithmParameters
    assert len(by_label["big"].RecommendedDisplayCIELabValue) == 3


def test_dcm_format_needs_dicom_inputs(ct, tmp_path, predictor):
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    with pytest.raises(LabelSharingError, match="is not a DICOM series"):
        predictor.predict_files([tmp_path / "ct.nii.gz"], "TaskA", tmp_path / "out", file_format="dcm")


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy (Debian/Ubuntu package dicom3tools) is not installed")
@pytest.mark.parametrize("enhanced", [False, True], ids=["single-frame source", "enhanced source"])
def test_binary_seg_passes_dciodvfy(ct, tmp_path, predictor, enhanced):
    highdicom = pytest.importorskip("highdicom")
    files = write_ct_series(oblique(ct), tmp_path / "series")
    source = tmp_path / "series"
    if enhanced:
        (tmp_path / "enhanced").mkdir()
        highdicom.legacy.LegacyConvertedEnhancedCTImage(
            [pydicom.dcmread(f) for f in files], series_instance_uid=highdicom.UID(), series_number=2,
            sop_instance_uid=highdicom.UID(), instance_number=1).save_as(tmp_path / "enhanced" / "ct.dcm")
        source = tmp_path / "enhanced"
    seg_file, = predictor.predict_files([source], "TaskA", tmp_path / "out", file_format="dcm")
    result = subprocess.run(["dciodvfy", str(seg_file)], capture_output=True, text=True, timeout=120)
    report = result.stdout + result.stderr
    assert "Segmentation" in report  # dciodvfy recognised the IOD
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == [], report


def test_cli_predict_picks_a_series_and_writes_a_seg(ct, tmp_path, capsys):
    pytest.importorskip("highdicom")
    from labelsharing.cli import main

    make_model(fake=False, std=300.0).save(tmp_path / "model")
    write_ct_series(ct, tmp_path / "study" / "a", description="venous")
    files = write_ct_series(oblique(ct), tmp_path / "study" / "b", description="oblique")
    wanted = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    command = ["--progress", "none", "predict", str(tmp_path / "model"), "--task", "TaskA", str(tmp_path / "study"),
               "--out", str(tmp_path / "out"), "--format", "dcm", "--backend", "torch"]
    assert main(command) == 2
    assert wanted in capsys.readouterr().err
    assert main([*command, "--series", wanted, "--seg-type", "labelmap"]) == 0
    seg = pydicom.dcmread(tmp_path / "out" / "study.dcm")
    assert seg.SegmentationType == "LABELMAP"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == wanted
