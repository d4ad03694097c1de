"""IJK->RAS of a volume <-> the LPS geometry of the NRRD file the engine reads (no Slicer).

The last test uses a FAKE of ``slicer.util`` / ``vtk`` (see ``fakes.py``) to run ``SceneIO``.
"""

from __future__ import annotations

import numpy as np
import pytest

from .fakes import FakeVolumeNode, fakeSlicer, fakeVtk
from LabelSharingSegLib.Geometry import ijkToRasFromLpsGeometry, lpsGeometryFromIjkToRas
from LabelSharingSegLib.NrrdIO import readNrrd, writeNrrd
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
    np.testing.assert_allclose(ijkToRasFromLpsGeometry(origin, spacing, direction), ijkToRas, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [True, False])
def test_nrrd_round_trip_keeps_voxels_and_geometry(tmp_path, dtype, compress):
    voxels = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 97).astype(dtype)
    ijkToRas = _obliqueAnisotropicIjkToRas()
    path = writeNrrd(tmp_path / "v.nrrd", voxels, ijkToRas, compress=compress)
    back, backIjkToRas = readNrrd(path)
    assert back.dtype == voxels.dtype
    np.testing.assert_array_equal(back, voxels)
    np.testing.assert_allclose(backIjkToRas, ijkToRas, atol=1e-12)


def test_simpleitk_reads_our_file_at_the_same_physical_points(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    voxels = np.random.default_rng(0).integers(0, 1000, size=(4, 5, 6)).astype(np.int16)
    ijkToRas = _obliqueAnisotropicIjkToRas()
    image = sitk.ReadImage(str(writeNrrd(tmp_path / "v.nrrd", voxels, ijkToRas)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), voxels)  # both (k, j, i)
    for ijk in [(0, 0, 0), (5, 4, 3), (2, 1, 3)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        ras = ijkToRas @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(lps, ras[:3] * [-1, -1, 1], atol=1e-6)


def test_we_read_what_simpleitk_writes(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    labels[1, 2, 3] = 7
    image = sitk.GetImageFromArray(labels)
    origin, spacing, direction = lpsGeometryFromIjkToRas(_obliqueAnisotropicIjkToRas())
    image.SetOrigin(origin.tolist())
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    for compress in (True, False):
        path = tmp_path / f"labels{int(compress)}.nrrd"
        sitk.WriteImage(image, str(path), useCompression=compress)
        voxels, ijkToRas = readNrrd(path)
        np.testing.assert_array_equal(voxels, labels)
        np.testing.assert_allclose(ijkToRas, _obliqueAnisotropicIjkToRas(), atol=1e-6)


def test_scene_io_writes_the_volume_with_its_geometry_using_a_fake_slicer(tmp_path):
    """FAKE slicer/vtk: SceneIO -> file -> labelmap node keeps voxels and IJK->RAS."""
    slicer, vtk = fakeSlicer(str(tmp_path)), fakeVtk()
    volume = FakeVolumeNode(np.arange(60, dtype=np.int16).reshape(3, 4, 5), _obliqueAnisotropicIjkToRas())
    sceneIO = SceneIO(slicer, vtk)
    path = sceneIO.writeVolume(volume, tmp_path / "in" / "volume.nrrd")
    node = sceneIO.addLabelmapFromFile(path, "result", transformNodeId="vtkMRMLLinearTransformNode4")
    np.testing.assert_array_equal(node.voxels, volume.voxels)
    np.testing.assert_allclose(node.ijkToRasArray, volume.ijkToRasArray, atol=1e-12)
    assert node.className == "vtkMRMLLabelMapVolumeNode"
    assert node.transformNodeId == "vtkMRMLLinearTransformNode4"
