"""IJK->RAS of a volume -> the LPS geometry of the NRRD files of a task dataset (no Slicer), read back by
SimpleITK as the engine reads them.

The last test uses a FAKE of ``slicer.util`` / ``vtk`` (see ``fakes.py``) to run ``SceneIO``.
"""

from __future__ import annotations

import numpy as np
import pytest

from .fakes import FakeVolumeNode, fakeSlicer, fakeVtk
from .fakes_files import readAsTheEngineDoes
from LabelSharingSegLib.Geometry import lpsGeometryFromIjkToRas
from LabelSharingSegLib.ModuleError import ModuleError
from LabelSharingSegLib.NrrdIO import writeNrrd
from LabelSharingSegLib.SceneIO import SceneIO


def _obliqueAnisotropicIjkToRas() -> np.ndarray:
    """Rotated about two axes, a flipped axis, spacing (0.7, 1.3, 3.1), non-zero origin."""
    a, b = np.deg2rad(25.0), np.deg2rad(-40.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    axes = rz @ rx @ np.diag([-1.0, 1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = axes * np.array([0.7, 1.3, 3.1])
    matrix[:3, 3] = [-112.5, 37.25, 18.0]
    return matrix


def _voxelCentres(shape_kji):
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape_kji], indexing="ij")
    return np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)  # (N, 3) in (i, j, k)


def test_lps_geometry_maps_voxel_centres_to_the_same_physical_points():
    ijkToRas = _obliqueAnisotropicIjkToRas()
    origin, spacing, direction = lpsGeometryFromIjkToRas(ijkToRas)
    np.testing.assert_allclose(spacing, [0.7, 1.3, 3.1])
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-12)
    ijk = _voxelCentres((4, 5, 6))
    ras = ijk @ ijkToRas[:3, :3].T + ijkToRas[:3, 3]
    lps = ijk @ (direction * spacing).T + origin  # the ITK/SimpleITK definition
    np.testing.assert_allclose(lps, ras * np.array([-1.0, -1.0, 1.0]), atol=1e-9)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [True, False])
def test_nrrd_round_trip_keeps_voxels_and_geometry(tmp_path, dtype, compress):
    voxels = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 97).astype(dtype)
    ijkToRas = _obliqueAnisotropicIjkToRas()
    path = writeNrrd(tmp_path / "v.nrrd", voxels, ijkToRas, compress=compress)
    back, backIjkToRas = readAsTheEngineDoes(path)
    assert back.dtype == voxels.dtype
    np.testing.assert_array_equal(back, voxels)
    np.testing.assert_allclose(backIjkToRas, ijkToRas, atol=1e-12)


def _obliqueSliceIjkToRas() -> np.ndarray:
    """A single-slice volume: oblique in-plane axes, anisotropic in-plane spacing, slice normal = z."""
    a = np.deg2rad(30.0)
    matrix = np.eye(4)
    matrix[:3, :3] = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) * [0.6, 1.7, 2.5]
    matrix[:3, 3] = [12.5, -40.75, 3.0]
    return matrix


def _assertSameLpsGeometry(image, ijkToRas, atol=1e-9):
    origin, spacing, direction = lpsGeometryFromIjkToRas(ijkToRas)
    np.testing.assert_allclose(image.GetSpacing(), spacing, atol=atol)
    np.testing.assert_allclose(image.GetOrigin(), origin, atol=atol)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), direction, atol=atol)


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize(
    "ijkToRasOf, shape",
    [(_obliqueAnisotropicIjkToRas, (4, 5, 6)), (_obliqueSliceIjkToRas, (1, 5, 6))],
    ids=["oblique-3d", "single-slice"],
)
def test_simpleitk_reads_our_file_with_the_same_voxels_and_geometry(tmp_path, compress, ijkToRasOf, shape):
    sitk = pytest.importorskip("SimpleITK")
    voxels = np.random.default_rng(0).integers(-1000, 1000, size=shape).astype(np.int16)
    ijkToRas = ijkToRasOf()
    image = sitk.ReadImage(str(writeNrrd(tmp_path / "v.nrrd", voxels, ijkToRas, compress=compress)))
    assert image.GetSize() == shape[::-1]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), voxels)  # both (k, j, i)
    _assertSameLpsGeometry(image, ijkToRas)
    for ijk in [(0, 0, 0), (5, 4, shape[0] - 1), (2, 1, 0)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        ras = ijkToRas @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(lps, ras[:3] * [-1, -1, 1], atol=1e-6)


def test_only_3d_arrays_are_written(tmp_path):
    with pytest.raises(ValueError, match="3D"):
        writeNrrd(tmp_path / "flat.nrrd", np.ones((4, 5)), np.eye(4))


def test_nrrd_io_imports_pynrrd_only_when_used_and_says_so_if_missing(tmp_path, monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "nrrd", None)  # "import nrrd" now raises ImportError
    module = importlib.reload(sys.modules["LabelSharingSegLib.NrrdIO"])  # importing needs no pynrrd
    with pytest.raises(ModuleError, match="pynrrd"):
        module.writeNrrd(tmp_path / "v.nrrd", np.zeros((1, 2, 3), np.uint8), np.eye(4))


def test_scene_io_writes_the_volume_with_slicers_writer(tmp_path):
    """FAKE slicer/vtk: SceneIO.writeVolume hands the node to slicer.util.exportNode (a new properties dict
    each time: exportNode fills it in) into a folder it creates; a refused or unknown format is a readable error."""
    slicer, vtk = fakeSlicer(str(tmp_path)), fakeVtk()
    volume = FakeVolumeNode(np.arange(60, dtype=np.int16).reshape(3, 4, 5), _obliqueAnisotropicIjkToRas())
    sceneIO = SceneIO(slicer, vtk)
    path = sceneIO.writeVolume(volume, tmp_path / "in" / "volume.nrrd")
    sceneIO.writeVolume(volume, tmp_path / "in" / "again.nrrd")
    (first, second) = slicer.util.exportNode.call_args_list
    assert first.args == (volume, str(path), {}) and first.args[2] is not second.args[2]
    voxels, ijkToRas = readAsTheEngineDoes(path)  # what the fake of Slicer's writer wrote
    np.testing.assert_array_equal(voxels, volume.voxels)
    np.testing.assert_allclose(ijkToRas, volume.ijkToRasArray, atol=1e-9)
    slicer.util.exportNode.side_effect = lambda node, filename, properties: False
    with pytest.raises(ModuleError, match="Could not write .*volume.nrrd"):
        sceneIO.writeVolume(volume, tmp_path / "out" / "volume.nrrd")
    slicer.util.exportNode.side_effect = ValueError("no known file format")
    with pytest.raises(ModuleError, match="no writer for volume.xyz"):
        sceneIO.writeVolume(volume, tmp_path / "out" / "volume.xyz")
    with pytest.raises(ModuleError, match="no image data"):
        sceneIO.writeVolume(None, tmp_path / "out" / "volume.nrrd")
