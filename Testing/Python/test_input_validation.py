"""Bad input is refused when it is read: non-finite images, label values that do not fit,
broken Slicer segmentations, malformed dataset.json, and damaged or mislabelled files.

Every refusal is a ``LabelSharingError`` whose message names the file and the value at fault.
The fuzz tests feed the readers random bytes, truncated files and files with the wrong
ending; they must answer with ``LabelSharingError`` only, never another exception type.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from conftest import boxes, write_image, write_task
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_model import make_model

from labelsharing.cli import main
from labelsharing.data import inspect_task_dataset, read_image, read_label, read_task_dataset, write_label
from labelsharing.errors import LabelSharingError
from labelsharing.infer import Predictor
from labelsharing.plan import EXAMPLE_ENTRY

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------ non-finite images
@pytest.mark.parametrize("ending", [".nrrd", ".mha", ".tif"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_image_is_refused_naming_file_and_count(tmp_path, bad, ending):
    array = np.zeros((3, 4, 5), np.float32)
    array[0, 0, :3] = bad
    path = tmp_path / f"ct_0000{ending}"
    write_image(array, path)
    with pytest.raises(LabelSharingError, match=rf"ct_0000\{ending}: 3 of 60 voxels are NaN or infinite.*[Rr]eplace"):
        read_image(path)


def test_nifti_reader_turns_non_finite_voxels_into_zero(tmp_path):
    """ITK's NIfTI reader (nifti_read_buffer) replaces NaN/Inf by 0, so they cannot reach training."""
    array = np.ones((3, 4, 5), np.float32)
    array[0, 0, :3] = np.nan, np.inf, -np.inf
    write_image(array, tmp_path / "ct_0000.nii.gz")
    read = sitk.GetArrayFromImage(read_image(tmp_path / "ct_0000.nii.gz"))
    np.testing.assert_array_equal(read[0, 0, :4], [0, 0, 0, 1])


def test_plan_refuses_a_task_with_nan_intensities(tmp_path, capsys):
    root = write_task(tmp_path / "T", {"a": 1}, [boxes((6, 6), {1: 4})], file_ending=".nrrd")
    image = root / "imagesTr" / "case000_0000.nrrd"
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(image)))
    array[2, 2] = np.nan
    write_image(array, image)
    assert main(["--progress", "none", "plan", str(root)]) == 2
    err = capsys.readouterr().err
    assert "case000_0000.nrrd: 1 of 36 voxels are NaN or infinite" in err and "Traceback" not in err


def test_prediction_refuses_nan_image_instead_of_predicting_background(tmp_path):
    array = np.full((8, 8), np.nan, np.float32)
    write_image(array, tmp_path / "nan_0000.mha")
    predictor = Predictor(make_model(fake=True), "cpu")
    with pytest.raises(LabelSharingError, match="64 of 64 voxels are NaN or infinite"):
        predictor.predict_files([tmp_path / "nan_0000.mha"], "TaskA", tmp_path / "out")
    assert not (tmp_path / "out" / "nan.nii.gz").exists()


# ------------------------------------------------------------------------------ truncated files
@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
def test_truncated_nifti_is_refused(tmp_path, ending):
    """SimpleITK reads a cut NIfTI without error, filling the missing voxels with garbage."""
    write_image(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), tmp_path / f"whole{ending}")
    data = (tmp_path / f"whole{ending}").read_bytes()
    (tmp_path / f"cut{ending}").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(LabelSharingError, match=rf"cut\{ending} is truncated"):
        read_image(tmp_path / f"cut{ending}")


def test_multi_member_nii_gz_is_read(tmp_path):
    """A .nii.gz made of several gzip members (e.g. by bgzip) is complete although its last trailer
    holds only the last member's length."""
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    write_image(array, tmp_path / "plain.nii")
    raw = (tmp_path / "plain.nii").read_bytes()
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(raw[:200]) + gzip.compress(raw[200:]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(tmp_path / "multi.nii.gz")), array)


# ------------------------------------------------------------------------------ label values
@pytest.mark.parametrize(
    "dtype, value, shown",
    [
        (np.int32, 65537, "65537"),  # used to wrap to 1 when cast to uint16
        (np.uint16, 300, "300"),  # read as 300, refused only later by load_case
        (np.int16, -1, "-1"),  # used to wrap to 255
        (np.float32, 65537.0, "65537"),
        (np.float64, 1e10, "10000000000"),
    ],
)
def test_label_values_that_do_not_fit_are_refused_before_casting(tmp_path, dtype, value, shown):
    array = np.zeros((4, 4), dtype)
    array[1, 1], array[2, 2] = 1, value
    path = tmp_path / "case.nrrd"
    write_image(array, path)
    with pytest.raises(LabelSharingError, match=rf"case\.nrrd holds label value\(s\) \[{shown}\] not declared"):
        read_label(path, {"a": 1})


def test_wrapped_label_value_is_refused_when_inspecting_a_task(tmp_path):
    root = write_task(tmp_path / "T", {"a": 1}, [boxes((6, 6), {1: 4})])
    label = boxes((6, 6), {1: 4}).astype(np.int32)
    label[5, 5] = 65537
    write_image(label, root / "labelsTr" / "case000.nii.gz")
    with pytest.raises(LabelSharingError, match=r"case000\.nii\.gz holds label value\(s\) \[65537\]"):
        inspect_task_dataset(read_task_dataset(root))


def test_dataset_json_refuses_label_values_beyond_uint16(tmp_path):
    root = write_task(tmp_path / "T", {"a": 70000}, [boxes((6, 6), {1: 4})])
    with pytest.raises(LabelSharingError, match="label 'a' has value 70000.*0 to 65535"):
        read_task_dataset(root)


# ------------------------------------------------------------------------------ .seg.nrrd
def _segmentation(masks: dict[str, np.ndarray]) -> dict:
    shape = next(iter(masks.values())).shape
    segmentation = slicerio.create_segmentation(shape, np.eye(4))
    for name, mask in masks.items():
        slicerio.add_segment(segmentation, mask, {"id": f"id_{len(segmentation.get('segments', []))}", "name": name})
    return segmentation


def _halves(shape=(4, 4, 2)) -> tuple[np.ndarray, np.ndarray]:
    left = np.zeros(shape, bool)
    left[:2] = True
    return left, ~left


def test_seg_nrrd_with_duplicate_segment_names_is_refused(tmp_path):
    left, right = _halves()
    segmentation = _segmentation({"liver": left})
    slicerio.add_segment(segmentation, right, {"id": "second", "name": "liver"})
    slicerio.write_segmentation(str(tmp_path / "dup.seg.nrrd"), segmentation)
    with pytest.raises(LabelSharingError, match=r"dup\.seg\.nrrd: segment name 'liver' is used by 2 segments"):
        read_label(tmp_path / "dup.seg.nrrd", {"liver": 1})


def test_seg_nrrd_segment_without_label_value_is_refused(tmp_path):
    left, right = _halves()
    segmentation = _segmentation({"liver": left, "spleen": right})
    del segmentation["segments"][1]["labelValue"]
    slicerio.write_segmentation(str(tmp_path / "novalue.seg.nrrd"), segmentation)
    with pytest.raises(LabelSharingError, match=r"novalue\.seg\.nrrd: segment 'spleen' has no label value"):
        read_label(tmp_path / "novalue.seg.nrrd", {"liver": 1, "spleen": 2})


def test_seg_nrrd_two_segments_with_one_label_value_are_refused(tmp_path):
    left, right = _halves()
    segmentation = _segmentation({"liver": left, "spleen": right})
    segmentation["segments"][1]["labelValue"] = segmentation["segments"][0]["labelValue"]
    slicerio.write_segmentation(str(tmp_path / "shared.seg.nrrd"), segmentation)
    message = r"shared\.seg\.nrrd: segments 'liver' and 'spleen' share label value 1"
    with pytest.raises(LabelSharingError, match=message):
        read_label(tmp_path / "shared.seg.nrrd", {"liver": 1, "spleen": 2})


def test_seg_nrrd_voxels_without_a_segment_are_refused(tmp_path):
    left, right = _halves()
    segmentation = _segmentation({"liver": left, "spleen": right})
    del segmentation["segments"][1]
    slicerio.write_segmentation(str(tmp_path / "orphan.seg.nrrd"), segmentation)
    with pytest.raises(LabelSharingError, match=r"orphan\.seg\.nrrd: voxel value\(s\) \[2\] belong to no segment"):
        read_label(tmp_path / "orphan.seg.nrrd", {"liver": 1, "spleen": 2})


DIRECTIONS = "space directions: (1,0,0) (0,1,0) (0,0,1)"


@pytest.mark.parametrize(
    "line, replacement, message",
    [
        (DIRECTIONS, "space directions: (0,0,0) (0,1,0) (0,0,1)", "not a valid geometry"),
        (DIRECTIONS, "space directions: (nan,0,0) (0,1,0) (0,0,1)", "not a valid geometry"),
        (DIRECTIONS, "space directions: (1,1,0) (1,1,0) (0,0,1)", "not a valid geometry"),
        ("space origin: (0,0,0)", "space origin: (nan,0,0)", "not a valid geometry"),
        ("Segment0_Layer:=0", "Segment0_Layer:=5", "segment 'liver' is in layer 5, but the file has a single layer"),
    ],
)
def test_seg_nrrd_with_a_damaged_header_is_refused(tmp_path, line, replacement, message):
    left, right = _halves()
    segmentation = _segmentation({"liver": left, "spleen": right})
    segmentation["encoding"] = "raw"
    slicerio.write_segmentation(str(tmp_path / "ok.seg.nrrd"), segmentation)
    header, voxels = (tmp_path / "ok.seg.nrrd").read_bytes().split(b"\n\n", 1)
    assert line.encode() in header
    (tmp_path / "bad.seg.nrrd").write_bytes(header.replace(line.encode(), replacement.encode()) + b"\n\n" + voxels)
    with pytest.raises(LabelSharingError, match=rf"bad\.seg\.nrrd: .*{message}"):
        read_label(tmp_path / "bad.seg.nrrd", {"liver": 1, "spleen": 2})


# ------------------------------------------------------------------------------ dataset.json
@pytest.mark.parametrize(
    "colors, message",
    [
        ({"liver": ["255", "0", "0"]}, "colour of label 'liver' is"),
        ({"liver": [255, 0]}, "colour of label 'liver' is"),
        ({"liver": [-1, 0, 0]}, "all in 0..1 or all in 0..255"),
        ({"liver": [256, 0, 0]}, "all in 0..1 or all in 0..255"),
        ({"liver": [float("nan"), 0, 0]}, "all in 0..1 or all in 0..255"),
        ({"liver": [True, False, False]}, "colour of label 'liver' is"),
        ({"liver": "red"}, "colour of label 'liver' is"),
        ({"kidney": [1, 0, 0]}, "'kidney', which is not a declared label"),
        (["liver", [1, 0, 0]], '"colors" must map label names'),
    ],
)
def test_invalid_colors_are_refused(tmp_path, colors, message):
    root = write_task(tmp_path / "T", {"liver": 1}, [boxes((4, 4), {1: 3})], extra={"colors": colors})
    with pytest.raises(LabelSharingError, match=message):
        read_task_dataset(root)


@pytest.mark.parametrize("colors, expected", [([255, 128, 0], (1.0, 128 / 255, 0.0)), ([0.2, 0.4, 1], (0.2, 0.4, 1.0)),
                                              ([0, 0, 0], (0.0, 0.0, 0.0))])
def test_valid_colors_are_scaled_to_0_1(tmp_path, colors, expected):
    root = write_task(tmp_path / "T", {"liver": 1}, [boxes((4, 4), {1: 3})], extra={"colors": {"liver": colors}})
    assert read_task_dataset(root).colors["liver"] == pytest.approx(expected)


@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_empty_label_name_is_refused(tmp_path, name):
    root = write_task(tmp_path / "T", {"liver": 1, name: 2}, [boxes((4, 4), {1: 3})])
    with pytest.raises(LabelSharingError, match="label names must be non-empty"):
        read_task_dataset(root)


@pytest.mark.parametrize("name", ["", " ", 7, ["T"]])
def test_task_name_must_be_text(tmp_path, name):
    root = write_task(tmp_path / "T", {"liver": 1}, [boxes((4, 4), {1: 3})])
    meta = json.loads((root / "dataset.json").read_text())
    meta["name"] = name
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(LabelSharingError, match='"name" must be the task name as non-empty text'):
        read_task_dataset(root)


# ------------------------------------------------------------------------------ fuzz
ENDINGS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".png", ".mha")
LABELS = {"a": 1, "b": 2}


class _Samples(dict):
    """Ending -> file bytes; a short repr keeps hypothesis' failure reports readable."""

    def __repr__(self) -> str:
        return "<samples>"


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, bytes]:
    """Valid files of each ending (an image; the .seg.nrrd a label map), as bytes."""
    folder = tmp_path_factory.mktemp("samples")
    rng = np.random.default_rng(0)
    volume = sitk.GetImageFromArray(rng.normal(size=(3, 8, 9)).astype(np.float32))
    label = np.zeros((3, 8, 9), np.uint8)
    label[1, 2:5, 2:6], label[2, 5:7, 1:4] = 1, 2
    result = _Samples()
    for ending in (".nii.gz", ".nii", ".nrrd", ".mha"):
        sitk.WriteImage(volume, str(folder / f"s{ending}"))
    sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, (16, 12)).astype(np.uint8)), str(folder / "s.png"))
    write_label(label, volume, folder / "s.seg.nrrd", [("a", 1, (1, 0, 0)), ("b", 2, (0, 1, 0))])
    for ending in ENDINGS:
        result[ending] = (folder / f"s{ending}").read_bytes()
    return result


def _read_any(path: Path):
    """Read as image and as label; each must succeed or raise LabelSharingError."""
    outcomes = []
    for read in (read_image, lambda p: read_label(p, LABELS)):
        try:
            outcomes.append(read(path))
        except LabelSharingError as exc:
            assert str(path.name) in str(exc)
            outcomes.append(exc)
    return outcomes


def _reads_refused(path: Path) -> None:
    for outcome in _read_any(path):
        assert isinstance(outcome, LabelSharingError), f"{path.name} was read without error"


@FUZZ
@given(ending=st.sampled_from(ENDINGS), data=st.binary(max_size=600))
def test_random_bytes_are_refused(tmp_path, ending, data):
    path = tmp_path / f"random{ending}"
    path.write_bytes(data)
    _reads_refused(path)


MAGIC = {  # the first bytes of each format, so that the readers get past their format check
    ".nii.gz": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03",
    ".nii": b"\x5c\x01\x00\x00",
    ".nrrd": b"NRRD0004\n",
    ".seg.nrrd": b"NRRD0004\ntype: unsigned char\ndimension: 3\n",
    ".png": b"\x89PNG\r\n\x1a\n",
    ".mha": b"ObjectType = Image\n",
}


@FUZZ
@given(ending=st.sampled_from(ENDINGS), data=st.binary(max_size=600))
def test_right_magic_then_random_bytes_are_refused(tmp_path, ending, data):
    path = tmp_path / f"magic{ending}"
    path.write_bytes(MAGIC[ending] + data)
    _reads_refused(path)


@pytest.fixture(scope="module")
def sample_arrays(samples, tmp_path_factory) -> dict[str, list[np.ndarray]]:
    """Ending -> voxels of the intact sample read as image and (where possible) as label."""
    folder = tmp_path_factory.mktemp("intact")
    arrays = _Samples()
    for ending, data in samples.items():
        (folder / f"s{ending}").write_bytes(data)
        arrays[ending] = [o if isinstance(o, LabelSharingError) else sitk.GetArrayFromImage(o)
                          for o in _read_any(folder / f"s{ending}")]
    return arrays


@FUZZ
@given(ending=st.sampled_from(ENDINGS), fraction=st.floats(0.0, 1.0))
def test_truncated_files_are_refused_or_read_whole(tmp_path, samples, sample_arrays, ending, fraction):
    """A cut file is refused, unless the cut spared every voxel (e.g. only a gzip trailer is gone)."""
    data = samples[ending]
    path = tmp_path / f"cut{ending}"
    path.write_bytes(data[: int(fraction * (len(data) - 1))])
    for outcome, intact in zip(_read_any(path), sample_arrays[ending]):
        if not isinstance(outcome, LabelSharingError):
            assert not isinstance(intact, LabelSharingError), f"{path.name} read, but the intact file is refused"
            np.testing.assert_array_equal(sitk.GetArrayFromImage(outcome), intact)


@FUZZ
@given(ending=st.sampled_from(ENDINGS), position=st.floats(0.0, 1.0), byte=st.integers(0, 255))
def test_a_changed_byte_is_read_or_refused(tmp_path, samples, ending, position, byte):
    data = bytearray(samples[ending])
    data[int(position * (len(data) - 1))] = byte
    path = tmp_path / f"flip{ending}"
    path.write_bytes(bytes(data))
    _read_any(path)


@FUZZ
@given(line=st.integers(0, 40), text=st.text(st.characters(codec="ascii", exclude_characters="\n"), max_size=30))
def test_seg_nrrd_with_a_garbled_header_line_is_read_or_refused(tmp_path, samples, line, text):
    header, data = samples[".seg.nrrd"].split(b"\n\n", 1)
    lines = header.split(b"\n")
    key = lines[line % len(lines)].split(b":", 1)[0]
    lines[line % len(lines)] = key + b":" + text.encode()
    path = tmp_path / "garbled.seg.nrrd"
    path.write_bytes(b"\n".join(lines) + b"\n\n" + data)
    _read_any(path)


@pytest.mark.parametrize("content", ENDINGS)
@pytest.mark.parametrize("ending", ENDINGS)
def test_wrong_ending_is_read_correctly_or_refused(tmp_path, samples, content, ending):
    path = tmp_path / f"wrong{ending}"
    path.write_bytes(samples[content])
    (tmp_path / f"right{content}").write_bytes(samples[content])
    expected = sitk.GetArrayFromImage(read_image(tmp_path / f"right{content}"))
    image = _read_any(path)[0]
    if not isinstance(image, LabelSharingError):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
DATASET_KEYS = ("name", "channel_names", "labels", "numTraining", "file_ending", "modality", "colors", "terminology")


@pytest.fixture(scope="module")
def fuzz_task(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("fuzz") / "T", {"a": 1, "b": 2}, [boxes((6, 6), {1: 4, 2: 3})],
                      extra={"colors": {"a": [1, 0, 0]}, "terminology": {"a": EXAMPLE_ENTRY}, "modality": "CT"})


def _read_task_or_refuse(root: Path) -> None:
    try:
        read_task_dataset(root)
    except LabelSharingError as exc:
        assert "dataset.json" in str(exc) or str(root) in str(exc)


@FUZZ
@given(data=st.binary(max_size=300))
def test_dataset_json_of_random_bytes_is_refused(fuzz_task, data):
    path = fuzz_task / "dataset.json"
    original = path.read_bytes()
    try:
        path.write_bytes(data)
        with pytest.raises(LabelSharingError, match="dataset.json"):
            read_task_dataset(fuzz_task)
    finally:
        path.write_bytes(original)


@FUZZ
@given(key=st.sampled_from(DATASET_KEYS), value=JSON)
def test_dataset_json_with_a_garbage_field_is_read_or_refused(fuzz_task, key, value):
    path = fuzz_task / "dataset.json"
    original = path.read_bytes()
    try:
        path.write_text(json.dumps({**json.loads(original), key: value}))
        _read_task_or_refuse(fuzz_task)
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize("text", ["[" * 100_000, '{"labels": ' * 50_000, "\ufeff{}", "NaN", '"labels"'])
def test_dataset_json_of_odd_json_is_refused(fuzz_task, text):
    path = fuzz_task / "dataset.json"
    original = path.read_bytes()
    try:
        path.write_text(text)
        with pytest.raises(LabelSharingError, match="dataset.json"):
            read_task_dataset(fuzz_task)
    finally:
        path.write_bytes(original)
