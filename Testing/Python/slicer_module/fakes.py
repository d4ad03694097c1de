"""FAKES of the small part of the Slicer/Qt/VTK/CTK API the module uses; not the real Slicer.

Each fake implements only the calls our code makes, with the signatures read from Slicer's
sources (cited in the module's files and, for the fakes added with issue 10, here; Slicer main
at 583e9b37, 5.8.0 at d20ee94c). Tests that use them say so in their docstring. Fakes of Qt/CTK
widgets are in ``fakes_qt.py``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import traceback
import types
from pathlib import Path
from typing import Any, Dict, List, Optional
from unittest import mock

import numpy as np

from .fakes_files import readSegNrrdLikeSlicer, writeVolumeLikeSlicer
from .fakes_qt import FakeButton, FakeComboBox, FakeLineEdit, FakeNodeComboBox, FakeTreeWidget, FakeTreeWidgetItem, \
    fakeSettingsClass

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


class FakeVtkReference:
    """vtk.reference (VTK ``Wrapping/PythonCore/PyVTKReference.cxx``): holds a value a wrapped method
    returns through a non-const reference argument; ``get()`` / ``set(value)``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def get(self) -> Any:
        return self.value

    def set(self, value: Any) -> None:
        self.value = value


def fakeVtk() -> types.ModuleType:
    vtk = types.ModuleType("vtk")
    vtk.vtkMatrix4x4 = FakeVtkMatrix4x4
    vtk.vtkStringArray = FakeVtkStringArray
    vtk.reference = FakeVtkReference
    vtk.vtkCommand = types.SimpleNamespace(ModifiedEvent=33)
    return vtk


# ----------------------------------------------------------------------------- MRML nodes
class FakeImageData:
    """vtkImageData.GetDimensions() -> (i, j, k) (VTK ``Common/DataModel/vtkImageData.h``)."""

    def __init__(self, dimensions) -> None:
        self.dimensions = tuple(int(d) for d in dimensions)

    def GetDimensions(self):
        return self.dimensions


class FakeVolumeNode:
    """vtkMRMLScalarVolumeNode: voxels (k, j, i), IJK->RAS, name, transform ID."""

    def __init__(self, voxels: np.ndarray, ijkToRas: np.ndarray, name: str = "volume",
                 className: str = "vtkMRMLScalarVolumeNode") -> None:
        self.voxels = voxels
        self.ijkToRasArray = np.asarray(ijkToRas, dtype=float)
        self.name = name
        self.className = className
        self.transformNodeId: Optional[str] = None
        self.attributes: Dict[str, str] = {}

    def SetAttribute(self, name: str, value: str) -> None:
        """vtkMRMLNode::SetAttribute (``Libs/MRML/Core/vtkMRMLNode.h``)."""
        self.attributes[name] = value

    def GetAttribute(self, name: str) -> Optional[str]:
        """vtkMRMLNode::GetAttribute: the value, or None (a null ``const char*``) when not set."""
        return self.attributes.get(name)

    def GetIJKToRASMatrix(self, matrix: FakeVtkMatrix4x4) -> None:
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, self.ijkToRasArray[r, c])

    def GetImageData(self) -> FakeImageData:
        return FakeImageData(np.shape(self.voxels)[::-1])

    def IsA(self, className: str) -> bool:
        """vtkObject::IsA; a label map volume is also a scalar volume (vtkMRMLLabelMapVolumeNode.h)."""
        return className in (self.className, "vtkMRMLScalarVolumeNode", "vtkMRMLVolumeNode", "vtkMRMLNode")

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
    """vtkSegment (``Libs/vtkSegmentationCore/vtkSegment.{h,cxx}``): name, colour, tags; the
    terminology tag is named ``"TerminologyEntry"`` (``vtkSegment::GetTerminologyEntryTagName``)."""

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

    def GetTag(self, tag: str, value: FakeVtkReference) -> bool:
        """``bool GetTag(std::string tag, std::string& value)`` (vtkSegment.h, 5.8.0 and main): the
        value comes back through a ``vtk.reference``; a plain str is refused, as VTK's wrapping
        refuses an immutable object for a non-const reference argument."""
        if not isinstance(value, FakeVtkReference):
            raise TypeError(f"GetTag argument 2: a vtk.reference is required, not {type(value).__name__}")
        if tag not in self.tags:
            return False
        value.set(self.tags[tag])
        return True


class FakeSegmentation:
    """vtkSegmentation: ordered segments by ID; conversion parameters by name (vtkSegmentation.h:
    ``std::string GetConversionParameter(const std::string& name)``, "" when unset). The binary
    labelmap of each segment is ``masks[segmentId]`` (k, j, i), on the grid ``labelmapIjkToRas``
    (``None``: the grid of the arrays the test put there)."""

    def __init__(self) -> None:
        self.segments: Dict[str, FakeSegment] = {}
        self.conversionParameters: Dict[str, str] = {}
        self.masks: Dict[str, np.ndarray] = {}
        self.labelmapIjkToRas: Optional[np.ndarray] = None

    def GetConversionParameter(self, name: str) -> str:
        return self.conversionParameters.get(name, "")

    def RemoveAllSegments(self) -> None:
        self.segments.clear()
        self.masks.clear()

    def DeepCopy(self, other: "FakeSegmentation") -> None:
        """vtkSegmentation::DeepCopy (vtkSegmentation.cxx, 5.8.0 and main): remove all segments, copy
        the conversion parameters, then every segment (same ID, order, name, colour, tags, labelmap)."""
        self.RemoveAllSegments()
        self.conversionParameters = dict(other.conversionParameters)
        for segmentId, segment in other.segments.items():
            copy = FakeSegment(segment.name, segment.color)
            copy.tags = dict(segment.tags)
            self.segments[segmentId] = copy
        self.masks = {segmentId: mask.copy() for segmentId, mask in other.masks.items()}
        self.labelmapIjkToRas = other.labelmapIjkToRas

    def GetSegmentIdBySegmentName(self, name: str) -> str:
        """vtkSegmentation::GetSegmentIdBySegmentName: the first segment of that name, "" if none."""
        return next((segmentId for segmentId, segment in self.segments.items() if segment.GetName() == name), "")

    def SetSegmentIndex(self, segmentId: str, newIndex: int) -> bool:
        """vtkSegmentation::SetSegmentIndex: move the segment to position ``newIndex``."""
        if segmentId not in self.segments or newIndex >= len(self.segments):
            return False
        order = [i for i in self.segments if i != segmentId]
        order.insert(newIndex, segmentId)
        self.segments = {i: self.segments[i] for i in order}
        return True

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
        self.transformNodeId: Optional[str] = None
        self.displayNodesCreated = False
        self.displayNode: Any = None
        self.storageNode: Any = None

    @property
    def masks(self) -> Dict[str, np.ndarray]:
        """The segments' labelmaps (held by the segmentation, as in vtkSegmentation)."""
        return self.segmentation.masks

    def GetDisplayNode(self) -> Any:
        return self.displayNode

    def GetStorageNode(self) -> Any:
        return self.storageNode

    def GetName(self) -> str:
        return self.name

    def SetName(self, name: str) -> None:
        """vtkMRMLNode::SetName (``Libs/MRML/Core/vtkMRMLNode.h``: the node's display name)."""
        self.name = name

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
        """vtkMRMLSegmentationNode.cxx (main, line 746): sets the serialized geometry of the volume
        as the "Reference image geometry" conversion parameter and the referenceImageGeometryRef
        node reference; does nothing for a volume without image data."""
        if volume is None or volume.GetImageData() is None:
            return
        self.referenceVolume = volume
        self.segmentation.conversionParameters[REFERENCE_GEOMETRY] = serializeImageGeometry(
            volume.ijkToRasArray, volume.GetImageData().GetDimensions()
        )

    def SetAndObserveTransformNodeID(self, nodeId: Optional[str]) -> bool:
        self.transformNodeId = nodeId
        return True

    def CreateDefaultDisplayNodes(self) -> None:
        self.displayNodesCreated = True

    @staticmethod
    def IsA(className: str) -> bool:
        return className in ("vtkMRMLSegmentationNode", "vtkMRMLNode")

    def addSegment(self, name: str, mask: np.ndarray, color=(0.5, 0.5, 0.5)) -> str:
        segmentId = self.segmentation.AddEmptySegment(name, name, color)
        self.masks[segmentId] = mask
        return segmentId


REFERENCE_GEOMETRY = "Reference image geometry"  # vtkSegmentationConverter::GetReferenceImageGeometryParameterName()


def serializeImageGeometry(ijkToRas, dimensions) -> str:
    """vtkSegmentationConverter::SerializeImageGeometry(vtkMatrix4x4*, int extent[6])
    (vtkSegmentationConverter.cxx, main line 131): 16 row-major matrix elements, then the extent,
    each followed by ';'."""
    extent = [v for d in dimensions for v in (0, int(d) - 1)]
    return "".join(f"{float(v):g};" for v in np.asarray(ijkToRas, dtype=float).ravel()) + "".join(f"{v};" for v in extent)


def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
    """slicer.util.tryWithErrorDisplay (Base/Python/slicer/util.py, main line 3692, 5.8.0 line 3279):
    on an exception, errorDisplay("<message>\n\n<exception>", detailedText=<traceback>), then re-raise."""

    @contextlib.contextmanager
    def manager():
        slicer = sys.modules.get("slicer")
        try:
            yield
        except Exception as exc:
            if show and not slicer.app.testingEnabled():
                text = f"{message}\n\n{exc}" if message is not None else str(exc)
                slicer.util.errorDisplay(text, detailedText=traceback.format_exc())
            raise

    return manager()


class FakeSegmentationsLogic:
    """vtkSlicerSegmentationsModuleLogic (its scene is the application's):
    ImportLabelmapToSegmentationNode(labelmap, seg, vtkStringArray) and LoadSegmentationFromFile."""

    def __init__(self, scene: "FakeScene") -> None:
        self.imports: List[tuple] = []
        self.succeed = True
        self.scene = scene

    def ImportLabelmapToSegmentationNode(self, labelmapNode, segmentationNode, updatedSegmentIds) -> bool:
        self.imports.append((labelmapNode, segmentationNode, list(updatedSegmentIds.values)))
        return self.succeed

    def LoadSegmentationFromFile(self, filename, autoOpacities=True, nodeName=None, colorTableNode=None,
                                 userMessages=None):
        """vtkSlicerSegmentationsModuleLogic::LoadSegmentationFromFile (5.8.0 and main): a new segmentation
        node in the scene with a storage node (added first) and a display node (created by the reader), or
        None with the reason in ``userMessages``. The header is read as
        vtkMRMLSegmentationStorageNode::ReadBinaryLabelmapRepresentation does (``readSegNrrdLikeSlicer``)."""
        try:
            segments, ijkToRas = readSegNrrdLikeSlicer(filename)
        except OSError as exc:  # missing or not NRRD: Slicer's reader fails
            userMessages.messages.append(f"Error reading {filename}: {exc}")
            return None
        node = FakeSegmentationNode(nodeName or Path(filename).name)
        for segmentId, name, color, tags, mask in segments:
            segment = FakeSegment(name, color)
            segment.tags = dict(tags)
            node.segmentation.segments[segmentId] = segment
            node.segmentation.masks[segmentId] = mask
        node.segmentation.labelmapIjkToRas = ijkToRas
        node.storageNode, node.displayNode = mock.MagicMock(name="storage"), mock.MagicMock(name="display")
        self.scene.nodes += [node.storageNode, node, node.displayNode]
        return node


class FakeMessageCollection:
    """vtkMRMLMessageCollection (Libs/MRML/Core/vtkMRMLMessageCollection.h): messages added by Slicer's
    readers; GetAllMessagesAsString() joins them, one a line."""

    def __init__(self) -> None:
        self.messages: List[str] = []

    def GetAllMessagesAsString(self) -> str:
        return "\n".join(self.messages)


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


class FakeSegmentEditorNode:
    """vtkMRMLSegmentEditorNode (``Modules/Loadable/Segmentations/MRML/vtkMRMLSegmentEditorNode.h``): the
    editor's parameter node, holding its segmentation and source volume; a singleton tag
    (``vtkMRMLNode::SetSingletonTag``) and ``UnRegister`` (reference count of a C++-created node)."""

    def __init__(self) -> None:
        self.singletonTag: Optional[str] = None
        self.segmentationNode: Any = None
        self.sourceVolumeNode: Any = None
        self.unregistered = False

    def SetSingletonTag(self, tag: str) -> None:
        self.singletonTag = tag

    def GetSingletonTag(self) -> Optional[str]:
        return self.singletonTag

    def UnRegister(self, owner: Any) -> None:
        self.unregistered = True

    def GetClassName(self) -> str:
        return "vtkMRMLSegmentEditorNode"


class FakeScene:
    """vtkMRMLScene: AddNewNodeByClass / RemoveNode / GetFirstNodeByClass, and the singleton calls
    ``GetSingletonNode(tag, className)``, ``CreateNodeByClass(className)`` and ``AddNode(node)``, which
    returns the existing singleton of the same class and tag instead of adding a second
    (``Libs/MRML/Core/vtkMRMLScene.h``, 5.8.0 and main)."""

    def __init__(self) -> None:
        self.nodes: List[Any] = []
        self.StartCloseEvent, self.EndCloseEvent = 1, 2

    def CreateNodeByClass(self, className: str) -> Any:
        if className != "vtkMRMLSegmentEditorNode":
            raise NotImplementedError(className)
        return FakeSegmentEditorNode()

    def GetSingletonNode(self, singletonTag: str, className: str) -> Any:
        return next((n for n in self.nodes if isinstance(n, FakeSegmentEditorNode) and n.GetClassName() == className
                     and n.GetSingletonTag() == singletonTag), None)

    def AddNode(self, node: Any) -> Any:
        existing = node.GetSingletonTag() and self.GetSingletonNode(node.GetSingletonTag(), node.GetClassName())
        if existing:
            return existing
        self.nodes.append(node)
        return node

    def AddNewNodeByClass(self, className: str, name: str = "") -> Any:
        node = FakeSegmentationNode(name) if className == "vtkMRMLSegmentationNode" else mock.MagicMock()
        self.nodes.append(node)
        return node

    def RemoveNode(self, node: Any) -> None:
        self.nodes.remove(node)

    def GetFirstNodeByClass(self, className: str) -> Any:
        return None

    def GetNodesByClass(self, className: str) -> List[Any]:
        """vtkMRMLScene::GetNodesByClass: nodes of the class and its subclasses."""
        return [n for n in self.nodes if isinstance(n, (FakeVolumeNode, FakeSegmentationNode)) and n.IsA(className)]


def fakeSlicer(tmpPath: str = "/tmp") -> types.ModuleType:
    """A ``slicer`` module with util, mrmlScene, modules.segmentations and subject hierarchy."""
    slicer = types.ModuleType("slicer")
    slicer.mrmlScene = FakeScene()
    # qSlicerCoreApplication (Base/QTCore/qSlicerCoreApplication.h): temporaryPath and
    # slicerUserSettingsFilePath properties, testingEnabled(); processEvents and translate(context,
    # text) from QCoreApplication (no translation installed: the text itself); connect(signal, slot) as
    # PythonQt does (recorded in ``connections``, e.g. qSlicerApplication's startupCompleted())
    connections: List[tuple] = []
    slicer.app = types.SimpleNamespace(
        connections=connections, connect=lambda signal, slot: connections.append((signal, slot)),
        temporaryPath=tmpPath, processEvents=lambda: None, testingEnabled=lambda: False,
        slicerUserSettingsFilePath=str(Path(tmpPath) / "settings" / "slicer.org" / "Slicer.ini"),
        translate=lambda context, text: text,
    )
    slicer.vtkSegmentationConverter = types.SimpleNamespace(GetReferenceImageGeometryParameterName=lambda: REFERENCE_GEOMETRY)
    segmentationsLogic = FakeSegmentationsLogic(slicer.mrmlScene)
    slicer.modules = types.SimpleNamespace(segmentations=types.SimpleNamespace(logic=lambda: segmentationsLogic))
    hierarchy = FakeSubjectHierarchy()
    slicer.vtkMRMLSubjectHierarchyNode = types.SimpleNamespace(GetSubjectHierarchyNode=lambda scene: hierarchy)
    slicer.vtkMRMLScalarVolumeNode = FakeVolumeNode
    slicer.vtkMRMLMessageCollection = FakeMessageCollection
    slicer.qMRMLNodeComboBox = FakeNodeComboBox
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

    def loadVolume(filename, properties={}, returnNode=False):
        """util.py loadVolume/loadLabelVolume -> loadNodeFromFile(filename, "VolumeFile", properties): the
        loaded node, named ``properties["name"]`` (read here with SimpleITK; identity IJK->RAS)."""
        import SimpleITK as sitk

        voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(filename)))
        className = "vtkMRMLLabelMapVolumeNode" if properties.get("labelmap") else "vtkMRMLScalarVolumeNode"
        return addVolumeFromArray(voxels, np.eye(4), properties.get("name", Path(filename).name), className)

    def exportNode(node, filename, properties={}, world=False):
        """util.py exportNode -> qSlicerCoreIOManager::exportNodes: a volume node is written by Slicer's
        volume writer (ITK, LPS NRRD); other nodes are recorded only. Returns True (written)."""
        if isinstance(node, FakeVolumeNode):
            writeVolumeLikeSlicer(node.voxels, node.ijkToRasArray, filename)
        return True

    util.addVolumeFromArray = addVolumeFromArray
    util.loadVolume = loadVolume
    util.loadLabelVolume = lambda filename, properties={}, returnNode=False: loadVolume(
        filename, {**properties, "labelmap": True})
    util.arrayFromSegmentBinaryLabelmap = arrayFromSegmentBinaryLabelmap
    util.exportNode = mock.MagicMock(side_effect=exportNode)
    util.errorDisplay = mock.MagicMock()
    util.confirmOkCancelDisplay = mock.MagicMock(return_value=True)
    util.pip_install = mock.MagicMock()
    util.tryWithErrorDisplay = tryWithErrorDisplay
    util.WaitCursor = lambda show=True: contextlib.nullcontext()  # util.py main line 3596: a context manager
    util.getNodesByClass = lambda className: slicer.mrmlScene.GetNodesByClass(className)
    slicer.util = util
    slicer.segmentationsLogic = segmentationsLogic  # for assertions
    slicer.hierarchy = hierarchy  # for assertions
    return slicer


class FakeDicomDatabase:
    """ctkDICOMDatabase as ``slicer.dicomDatabase`` (CTK ``Libs/DICOM/Core/ctkDICOMDatabase.h``):
    ``QString fileForInstance(const QString& sopInstanceUID)``, the file of an instance or ``""``."""

    def __init__(self, files: Optional[Dict[str, str]] = None) -> None:
        self.files = dict(files or {})

    def fileForInstance(self, sopInstanceUID: str) -> str:
        return self.files.get(sopInstanceUID, "")


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


def fakeI18n() -> types.ModuleType:
    """slicer.i18n (Base/Python/slicer/i18n.py, 5.8.0 and main): ``translate(context, text)`` returns
    ``slicer.app.translate(context, text)``; ``tr(text)`` translates in the context named after the file
    that calls it (``getContext``: "<folder>.<file>" when the folder holds ``__init__.py``, else "<file>")."""
    i18n = types.ModuleType("slicer.i18n")

    def translate(context: str, text: str) -> str:
        return sys.modules["slicer"].app.translate(context, text)

    def getContext(sourceFile: str) -> str:
        folder, name = os.path.dirname(sourceFile), os.path.basename(sourceFile).replace(".py", "")
        return f"{os.path.basename(folder)}.{name}" if os.path.isfile(os.path.join(folder, "__init__.py")) else name

    def tr(text: str) -> str:
        return translate(getContext(inspect.currentframe().f_back.f_code.co_filename), text)

    i18n.translate, i18n.getContext, i18n.tr = translate, getContext, tr
    return i18n


def installFakeSlicerModules() -> Dict[str, types.ModuleType]:
    """Put fakes of slicer, slicer.util, slicer.i18n, slicer.parameterNodeWrapper,
    slicer.ScriptedLoadableModule, qt, ctk and vtk into ``sys.modules`` (the caller restores ``sys.modules``)."""
    slicer = fakeSlicer()
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = _fakeParameterNodeWrapper
    wrapper.Choice = lambda choices: ("Choice", tuple(choices))
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):
        setattr(slm, name, type(name, (_FakeBase,), {}))
    slicer.util.VTKObservationMixin = _FakeObservationMixin
    slicer.util.loadUI = mock.MagicMock(name="loadUI")
    slicer.parameterNodeWrapper = wrapper
    slicer.ScriptedLoadableModule = slm
    slicer.i18n = fakeI18n()
    qt = types.ModuleType("qt")
    qt.QTimer = mock.MagicMock(name="QTimer")
    qt.QTableWidgetItem = mock.MagicMock(name="QTableWidgetItem")
    qt.Qt = mock.MagicMock(name="Qt")
    qt.QSettings = fakeSettingsClass()
    qt.QTreeWidget, qt.QTreeWidgetItem, qt.QPushButton = FakeTreeWidget, FakeTreeWidgetItem, FakeButton
    qt.QVBoxLayout, qt.QHBoxLayout = mock.MagicMock(name="QVBoxLayout"), mock.MagicMock(name="QHBoxLayout")
    qt.QFormLayout, qt.QComboBox, qt.QLineEdit = mock.MagicMock(name="QFormLayout"), FakeComboBox, FakeLineEdit
    qt.QFileDialog = mock.MagicMock(name="QFileDialog")
    ctk = types.ModuleType("ctk")
    ctk.ctkCollapsibleButton = mock.MagicMock(name="ctkCollapsibleButton")
    modules = {
        "slicer": slicer, "slicer.util": slicer.util, "slicer.i18n": slicer.i18n, "slicer.parameterNodeWrapper": wrapper,
        "slicer.ScriptedLoadableModule": slm, "qt": qt, "ctk": ctk, "vtk": fakeVtk(),
    }
    sys.modules.update(modules)
    return modules

