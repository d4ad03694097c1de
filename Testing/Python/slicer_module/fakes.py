"""FAKES of the small part of the Slicer/Qt/VTK/CTK API the module uses; not the real Slicer.

Each fake implements only the calls our code makes, with the signatures read from Slicer's
sources (cited in the module's files). Tests that use them say so in their docstring.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Optional
from unittest import mock

import numpy as np

MODULE_DIR = Path(__file__).resolve().parents[3] / "LabelSharingSeg"

# ----------------------------------------------------------------------------- vtk
class FakeVtkMatrix4x4:
    """vtkMatrix4x4: a 4x4 identity with GetElement/SetElement."""

    def __init__(self) -> None:
        self.values = np.eye(4)

    def SetElement(self, row: int, column: int, value: float) -> None:
        self.values[row, column] = value

    def GetElement(self, row: int, column: int) -> float:
        return float(self.values[row, column])


class FakeVtkStringArray:
    """vtkStringArray: InsertNextValue/GetValue/GetNumberOfValues."""

    def __init__(self) -> None:
        self.values: List[str] = []

    def InsertNextValue(self, value: str) -> int:
        self.values.append(value)
        return len(self.values) - 1

    def GetValue(self, index: int) -> str:
        return self.values[index]

    def GetNumberOfValues(self) -> int:
        return len(self.values)


def fakeVtk() -> types.ModuleType:
    vtk = types.ModuleType("vtk")
    vtk.vtkMatrix4x4 = FakeVtkMatrix4x4
    vtk.vtkStringArray = FakeVtkStringArray
    vtk.vtkCommand = types.SimpleNamespace(ModifiedEvent=33)
    return vtk


# ----------------------------------------------------------------------------- MRML nodes
class FakeVolumeNode:
    """vtkMRMLScalarVolumeNode: voxels (k, j, i), IJK->RAS, name, transform ID."""

    def __init__(self, voxels: np.ndarray, ijkToRas: np.ndarray, name: str = "volume",
                 className: str = "vtkMRMLScalarVolumeNode") -> None:
        self.voxels = voxels
        self.ijkToRasArray = np.asarray(ijkToRas, dtype=float)
        self.name = name
        self.className = className
        self.transformNodeId: Optional[str] = None

    def GetIJKToRASMatrix(self, matrix: FakeVtkMatrix4x4) -> None:
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, self.ijkToRasArray[r, c])

    def GetImageData(self) -> object:
        return object()

    def GetName(self) -> str:
        return self.name

    def GetID(self) -> str:
        return f"vtkMRMLScalarVolumeNode_{self.name}"

    def GetTransformNodeID(self) -> Optional[str]:
        return self.transformNodeId

    def SetAndObserveTransformNodeID(self, nodeId: Optional[str]) -> bool:
        self.transformNodeId = nodeId
        return True


class FakeSegment:
    """vtkSegment: name, colour, tags."""

    def __init__(self, name: str, color=(0.5, 0.5, 0.5)) -> None:
        self.name = name
        self.color = tuple(color)
        self.tags: Dict[str, str] = {}

    def GetName(self) -> str:
        return self.name

    def SetName(self, name: str) -> None:
        self.name = name

    def GetColor(self):
        return self.color

    def SetColor(self, r: float, g: float, b: float) -> None:
        self.color = (r, g, b)

    @staticmethod
    def GetTerminologyEntryTagName() -> str:
        return "TerminologyEntry"

    def SetTag(self, tag: str, value: str) -> None:
        self.tags[tag] = value


class FakeSegmentation:
    """vtkSegmentation: ordered segments by ID."""

    def __init__(self) -> None:
        self.segments: Dict[str, FakeSegment] = {}

    def RemoveAllSegments(self) -> None:
        self.segments.clear()

    def AddEmptySegment(self, segmentId: str = "", segmentName: str = "", color=None) -> str:
        segmentId = segmentId or f"Segment_{len(self.segments) + 1}"
        while segmentId in self.segments:
            segmentId += "_1"
        self.segments[segmentId] = FakeSegment(segmentName or segmentId, color if color is not None else (0.5, 0.5, 0.5))
        return segmentId

    def GetSegment(self, segmentId: str) -> Optional[FakeSegment]:
        return self.segments.get(segmentId)

    def GetNumberOfSegments(self) -> int:
        return len(self.segments)

    def GetNthSegmentID(self, index: int) -> str:
        return list(self.segments)[index]


class FakeSegmentationNode:
    """vtkMRMLSegmentationNode: segmentation, reference volume, masks per segment ID (for export)."""

    def __init__(self, name: str = "segmentation", referenceVolume: Optional[FakeVolumeNode] = None) -> None:
        self.name = name
        self.segmentation = FakeSegmentation()
        self.referenceVolume = referenceVolume
        self.masks: Dict[str, np.ndarray] = {}
        self.transformNodeId: Optional[str] = None
        self.displayNodesCreated = False

    def GetName(self) -> str:
        return self.name

    def GetID(self) -> str:
        return f"vtkMRMLSegmentationNode_{self.name}"

    def GetSegmentation(self) -> FakeSegmentation:
        return self.segmentation

    @staticmethod
    def GetReferenceImageGeometryReferenceRole() -> str:
        return "referenceImageGeometryRef"

    def GetNodeReference(self, role: str):
        return self.referenceVolume if role == "referenceImageGeometryRef" else None

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volume: FakeVolumeNode) -> None:
        self.referenceVolume = volume

    def SetAndObserveTransformNodeID(self, nodeId: Optional[str]) -> bool:
        self.transformNodeId = nodeId
        return True

    def CreateDefaultDisplayNodes(self) -> None:
        self.displayNodesCreated = True

    def addSegment(self, name: str, mask: np.ndarray, color=(0.5, 0.5, 0.5)) -> str:
        segmentId = self.segmentation.AddEmptySegment(name, name, color)
        self.masks[segmentId] = mask
        return segmentId


class FakeSegmentationsLogic:
    """vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg, vtkStringArray)."""

    def __init__(self) -> None:
        self.imports: List[tuple] = []
        self.succeed = True

    def ImportLabelmapToSegmentationNode(self, labelmapNode, segmentationNode, updatedSegmentIds) -> bool:
        self.imports.append((labelmapNode, segmentationNode, list(updatedSegmentIds.values)))
        return self.succeed


class FakeSubjectHierarchy:
    """vtkMRMLSubjectHierarchyNode: items are the nodes themselves; parents recorded."""

    def __init__(self) -> None:
        self.parents: Dict[Any, Any] = {}

    def GetItemByDataNode(self, node: Any) -> Any:
        return node

    def GetItemParent(self, item: Any) -> Any:
        return self.parents.get(item, "scene")

    def SetItemParent(self, item: Any, parent: Any) -> None:
        self.parents[item] = parent


class FakeScene:
    """vtkMRMLScene: AddNewNodeByClass / RemoveNode / GetFirstNodeByClass."""

    def __init__(self) -> None:
        self.nodes: List[Any] = []
        self.StartCloseEvent, self.EndCloseEvent = 1, 2

    def AddNewNodeByClass(self, className: str, name: str = "") -> Any:
        node = FakeSegmentationNode(name) if className == "vtkMRMLSegmentationNode" else mock.MagicMock()
        self.nodes.append(node)
        return node

    def RemoveNode(self, node: Any) -> None:
        self.nodes.remove(node)

    def GetFirstNodeByClass(self, className: str) -> Any:
        return None


def fakeSlicer(tmpPath: str = "/tmp") -> types.ModuleType:
    """A ``slicer`` module with util, mrmlScene, modules.segmentations and subject hierarchy."""
    slicer = types.ModuleType("slicer")
    slicer.mrmlScene = FakeScene()
    slicer.app = types.SimpleNamespace(temporaryPath=tmpPath, processEvents=lambda: None)
    segmentationsLogic = FakeSegmentationsLogic()
    slicer.modules = types.SimpleNamespace(segmentations=types.SimpleNamespace(logic=lambda: segmentationsLogic))
    hierarchy = FakeSubjectHierarchy()
    slicer.vtkMRMLSubjectHierarchyNode = types.SimpleNamespace(GetSubjectHierarchyNode=lambda scene: hierarchy)
    slicer.vtkMRMLScalarVolumeNode = FakeVolumeNode
    slicer.vtkMRMLSegmentationNode = FakeSegmentationNode
    util = types.ModuleType("slicer.util")
    util.arrayFromVTKMatrix = lambda matrix: matrix.values.copy()
    util.arrayFromVolume = lambda node: node.voxels

    def addVolumeFromArray(narray, ijkToRAS=None, name=None, nodeClassName=None):
        node = FakeVolumeNode(np.array(narray), ijkToRAS if ijkToRAS is not None else np.eye(4), name or "", nodeClassName)
        slicer.mrmlScene.nodes.append(node)
        return node

    def arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode=None):
        return segmentationNode.masks[segmentId].astype(np.uint8)

    util.addVolumeFromArray = addVolumeFromArray
    util.arrayFromSegmentBinaryLabelmap = arrayFromSegmentBinaryLabelmap
    util.exportNode = mock.MagicMock(return_value=True)
    util.errorDisplay = mock.MagicMock()
    util.confirmOkCancelDisplay = mock.MagicMock(return_value=True)
    util.pip_install = mock.MagicMock()
    util.getNodesByClass = lambda className: [n for n in slicer.mrmlScene.nodes if isinstance(n, FakeSegmentationNode)]
    slicer.util = util
    slicer.segmentationsLogic = segmentationsLogic  # for assertions
    slicer.hierarchy = hierarchy  # for assertions
    return slicer


# ----------------------------------------------------------------------------- module import surface
class _FakeBase:
    def __init__(self, parent=None, *args, **kwargs) -> None:
        self.parent = parent if parent is not None else mock.MagicMock()
        self.layout = mock.MagicMock()

    def setup(self) -> None:
        return None

    def resourcePath(self, relativePath: str) -> str:
        return str(MODULE_DIR / "Resources" / relativePath)

    def getParameterNode(self):
        return mock.MagicMock(name="vtkMRMLScriptedModuleNode")


class _FakeObservationMixin:
    def __init__(self) -> None:
        self.observations: List[tuple] = []

    def addObserver(self, obj, event, method, *args) -> None:
        self.observations.append((obj, event, method))

    def removeObserver(self, obj, event, method) -> None:
        self.observations = [o for o in self.observations if o != (obj, event, method)]

    def removeObservers(self, *args) -> None:
        self.observations = []


def _fakeParameterNodeWrapper(cls):
    """Minimal parameterNodeWrapper: typed defaults from the class, connectGui/disconnectGui."""
    import typing

    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {name: getattr(cls, name, None) for name in hints}

    def __init__(self, parameterNode=None):
        self.parameterNode = parameterNode
        for name, value in defaults.items():
            setattr(self, name, value)

    cls.__init__ = __init__
    cls.allParameters = dict(hints)
    cls.connectGui = lambda self, gui: "guiTag"
    cls.disconnectGui = lambda self, tag: None
    return cls


def installFakeSlicerModules() -> Dict[str, types.ModuleType]:
    """Put fakes of slicer, slicer.util, slicer.parameterNodeWrapper, slicer.ScriptedLoadableModule,
    qt, ctk and vtk into ``sys.modules`` (the caller restores ``sys.modules``)."""
    slicer = fakeSlicer()
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = _fakeParameterNodeWrapper
    wrapper.Choice = lambda choices: ("Choice", tuple(choices))
    wrapper.WithinRange = lambda low, high: ("WithinRange", low, high)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):
        setattr(slm, name, type(name, (_FakeBase,), {}))
    slicer.util.VTKObservationMixin = _FakeObservationMixin
    slicer.util.loadUI = mock.MagicMock(name="loadUI")
    slicer.parameterNodeWrapper = wrapper
    slicer.ScriptedLoadableModule = slm
    qt = types.ModuleType("qt")
    qt.QTimer = mock.MagicMock(name="QTimer")
    ctk = types.ModuleType("ctk")
    modules = {
        "slicer": slicer, "slicer.util": slicer.util, "slicer.parameterNodeWrapper": wrapper,
        "slicer.ScriptedLoadableModule": slm, "qt": qt, "ctk": ctk, "vtk": fakeVtk(),
    }
    sys.modules.update(modules)
    return modules
