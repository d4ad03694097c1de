"""Where a new model goes and the source volume of a segmentation (FAKE slicer for the source volumes: fakes.py)."""

from __future__ import annotations

import numpy as np
import pytest

from LabelSharingSegLib.ModelOutput import defaultModelsFolder, freeModelName, modelOutputFolder
from LabelSharingSegLib.ModuleError import ModuleError
from LabelSharingSegLib.SceneIO import SceneIO
from LabelSharingSegLib.SourceVolumes import defaultSourceVolume, parseImageGeometry

from .fakes import REFERENCE_GEOMETRY, FakeSegmentationNode, FakeVolumeNode, fakeSlicer, fakeVtk, serializeImageGeometry


def test_model_output_is_a_new_folder_in_the_parent(tmp_path):
    assert defaultModelsFolder("/home/u/.config/slicer.org/Slicer.ini").as_posix() == \
        "/home/u/.config/slicer.org/LabelSharingSeg/models"
    assert modelOutputFolder(tmp_path, " liver v1 ") == tmp_path / "liver v1"
    (tmp_path / "model").mkdir()
    assert freeModelName(tmp_path) == "model_2"
    for parent, name, message in [(tmp_path, "model", "already exists"), (tmp_path, "", "Give the new model a name"),
                                  (tmp_path, "../x", "not a plain folder name"), ("", "m", "models folder")]:
        with pytest.raises(ModuleError, match=message):
            modelOutputFolder(parent, name)


def test_reference_geometry_of_a_file_picks_the_volume_on_the_same_grid():
    """Serialized geometry as vtkSegmentationConverter::SerializeImageGeometry writes it (fakes.py)."""
    slicer, vtk = fakeSlicer(), fakeVtk()
    ijkToRas = np.array([[-0.7, 0, 0, 10], [0, -0.7, 0, 20], [0, 0, 2.5, -30], [0, 0, 0, 1]])
    matrix, extent = parseImageGeometry(serializeImageGeometry(ijkToRas, (5, 6, 4)))
    np.testing.assert_allclose(matrix, ijkToRas)
    assert extent == (0, 4, 0, 5, 0, 3) and parseImageGeometry("") is None and parseImageGeometry("1;2;x") is None
    shifted = ijkToRas.copy()
    shifted[0, 3] += 1.0
    volumes = [FakeVolumeNode(np.zeros((4, 6, 5)), shifted, "shifted"),  # same size, other origin
               FakeVolumeNode(np.zeros((4, 6, 6)), ijkToRas, "wider"),  # same matrix, other size
               FakeVolumeNode(np.zeros((4, 6, 5)), ijkToRas, "source")]
    segmentation = FakeSegmentationNode("from file")
    segmentation.segmentation.conversionParameters[REFERENCE_GEOMETRY] = serializeImageGeometry(ijkToRas, (5, 6, 4))
    sceneIO = SceneIO(slicer, vtk)
    converter = slicer.vtkSegmentationConverter
    assert defaultSourceVolume(segmentation, volumes, sceneIO, converter) is volumes[2]
    assert defaultSourceVolume(segmentation, volumes[:2], sceneIO, converter) is None
    referenced = FakeSegmentationNode("drawn", volumes[0])
    assert defaultSourceVolume(referenced, volumes, sceneIO, converter) is volumes[0]
