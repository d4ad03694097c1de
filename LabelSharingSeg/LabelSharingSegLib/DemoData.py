"""The built-in demo: four cases in Slicer's Sample Data module and a tiny demo model.

**The demo model is trained on first use**, never during the build and never committed: "Train the
demo model" in the Model library section runs the engine in the background, with progress and
Cancel, as ``labelsharing demo-data`` (when the data is not there yet) and ``labelsharing train``
on the four demo tasks with the quick settings of ``labelsharing demo --quick`` (about 1.5 minutes
on two CPU cores, mean validation Dice about 0.8). It is kept in the per-user folder
``<Slicer settings folder>/LabelSharingSeg/demo/model`` and joins the model library; a cancelled
run is continued next time (``--resume``). Training during the build would need torch on every
build machine and put a binary in every package.

**The demo cases** come from the engine's own generator (``labelsharing demo-data``), run through
the engine subprocess (numpy and SimpleITK only: no torch needed, nothing imported in Slicer's
process) the first time a case is loaded, into ``<...>/LabelSharingSeg/demo/data``. Slicer's Sample
Data module downloads URIs, so each case is registered with a ``customDownloader``: its button calls
``source.customDownloader(source)`` instead of downloading (``Modules/Scripted/SampleData/
SampleData.py``, ``setCategoriesFromSampleDataSources``, 5.8.0 and main). It writes the data if
needed, then loads the task's first test case (never trained on): the image as a volume and its
reference labels as a segmentation with the task's label names (and the demo model's colours once
the model exists). The registered ``uris`` are the ``file://`` URIs of the image files: SampleData's
``downloadFile`` fetches with ``urllib.request.urlretrieve``, which copies local ``file:`` URLs too
(SampleData's own tests load local files through ``path2uri``), so ``SampleDataLogic().downloadSample(name)``
from a script loads the image once the data has been written.

Slicer calls: ``SampleDataLogic.registerCustomSampleDataSource(category, sampleName, uris,
fileNames, nodeNames, customDownloader, thumbnailFileName, loadFileTypes)`` (a static method, 5.8.0
and main), ``registerCustomSampleDataCategory(category, title)`` (main only: feature-detected);
``slicer.util.loadVolume(path, properties)``, ``slicer.util.loadLabelVolume(path, properties)``
(``Base/Python/slicer/util.py``; fresh ``properties`` dicts: ``loadLabelVolume`` writes into it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

from .EngineJob import EngineJob
from .JobPanel import runAction
from .ModelInfo import ModelInfo, defaultColor
from .ModelOutput import defaultModelsFolder
from .ModuleError import ModuleError
from .SegmentImport import SegmentImporter, SegmentSpec
from .Translation import tr as _

__all__ = ["DEMO_CATEGORY", "DEMO_CASES", "DEMO_SEED", "DEMO_TRAINING", "DemoTask", "DEMO_TASKS", "DemoFolder",
           "DemoSamples"]

DEMO_CATEGORY = "LabelSharingSeg"
#: training cases per demo task (``labelsharing demo --quick``: ``DemoSettings.quick().cases``)
DEMO_CASES = 8
DEMO_SEED = 0
#: quick training settings, those of ``DemoSettings.quick()`` (``labelsharing/demo/run.py``)
DEMO_TRAINING = (("--epochs", "12"), ("--steps-per-epoch", "15"), ("--input-size", "64"))
PathLike = Union[str, Path]


@dataclass(frozen=True)
class DemoTask:
    """One demo task: its dataset folder, its task name (in ``dataset.json`` and in the model), the
    file of its first test case (``demo_data.make_demo_datasets``: ``<prefix>_<cases:03d>``), the
    Sample Data button text and the name of the loaded volume."""

    folder: str
    task: str
    testCase: str
    ending: str
    title: str

    @property
    def nodeName(self) -> str:
        return f"LabelSharingSegDemo_{self.task}"


DEMO_TASKS: Tuple[DemoTask, ...] = (
    DemoTask("Dataset001_AbdomenCT", "AbdomenCT", f"abdct_{DEMO_CASES:03d}", ".nii.gz", _("Demo abdomen CT")),
    DemoTask("Dataset002_BrainMR", "BrainMR", f"brainmr_{DEMO_CASES:03d}", ".nrrd", _("Demo brain MR")),
    DemoTask("Dataset003_KneeXR", "KneeXR", f"kneexr_{DEMO_CASES:03d}", ".nii.gz", _("Demo knee X-ray")),
    DemoTask("Dataset004_ChestXR", "ChestXR", f"chestxr_{DEMO_CASES:03d}", ".mha", _("Demo chest X-ray")),
)


class DemoFolder:
    """Where the demo data and model live, and the engine commands that write them.

    Args:
        root: ``<root>/data/<task folders>`` and ``<root>/model``.
    """

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)

    @classmethod
    def forUser(cls, userSettingsFilePath: PathLike) -> "DemoFolder":
        """``<folder of Slicer's user settings file>/LabelSharingSeg/demo``, beside the default models folder."""
        return cls(defaultModelsFolder(userSettingsFilePath).parent / "demo")

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def workFolder(self) -> Path:
        """The engine's working folder of a run into :attr:`model` (``labelsharing.train.checkpoint.work_folder_for``)."""
        return self.root / f".{self.model.name}.work"

    def taskFolders(self) -> List[Path]:
        return [self.data / task.folder for task in DEMO_TASKS]

    def hasData(self) -> bool:
        return all((folder / "dataset.json").is_file() for folder in self.taskFolders())

    def hasModel(self) -> bool:
        return (self.model / "model.json").is_file()

    def dataArgs(self) -> List[str]:
        """``demo-data DATA --cases 8 --seed 0``: the four demo tasks (replaces only its own earlier output)."""
        return ["demo-data", str(self.data), "--cases", str(DEMO_CASES), "--seed", str(DEMO_SEED)]

    def trainArgs(self, device: str) -> List[str]:
        """``train TASK... --out MODEL`` with the quick settings; ``--resume`` continues a cancelled run."""
        args = ["train", *[str(folder) for folder in self.taskFolders()], "--out", str(self.model)]
        args += [item for option in DEMO_TRAINING for item in option]
        args += ["--seed", str(DEMO_SEED), "--device", device]
        return args + (["--resume"] if self.workFolder.is_dir() else [])

    def sampleFiles(self, task: DemoTask) -> Tuple[Path, Path]:
        """(image, reference label) of the task's first test case."""
        folder = self.data / task.folder
        return (folder / "imagesTs" / f"{task.testCase}_0000{task.ending}",
                folder / "labelsTs" / f"{task.testCase}{task.ending}")

    def segmentSpecs(self, task: DemoTask) -> List[SegmentSpec]:
        """The task's labels with the demo model's colours (so reference and result look alike), or
        default colours while there is no demo model holding the task."""
        model = self._demoModel()
        if model is not None and task.task in model.tasks:
            return [SegmentSpec(label.name, label.value, label.color, label.terminology)
                    for label in model.task(task.task).labels]
        meta = json.loads((self.data / task.folder / "dataset.json").read_text(encoding="utf-8"))
        values = sorted((int(value), name) for name, value in meta["labels"].items() if int(value) != 0)
        return [SegmentSpec(name, value, defaultColor(index)) for index, (value, name) in enumerate(values)]

    def _demoModel(self) -> Optional[ModelInfo]:
        if not self.hasModel():
            return None
        try:
            return ModelInfo.load(self.model)
        except ModuleError:  # unreadable: the reference still loads, with default colours
            return None

    @staticmethod
    def taskOfVolume(volumeName: str) -> Optional[str]:
        """The demo task of a volume loaded from Sample Data (``LabelSharingSegDemo_<task>``, maybe renamed
        ``..._1`` by the scene), else ``None``."""
        for task in DEMO_TASKS:
            if volumeName == task.nodeName or volumeName.startswith(task.nodeName + "_"):
                return task.task
        return None


class DemoSamples:
    """Registers the demo cases with the Sample Data module and loads them on request.

    Args:
        folder: where the demo data is (written on first load).
        engineJob: runs ``labelsharing demo-data`` (blocking, the application kept responsive).
        slicerModule: the ``slicer`` module (injected by tests; imported when omitted).
        importer: creates the reference segments (default: :class:`SegmentImporter`).
    """

    def __init__(self, folder: DemoFolder, engineJob: EngineJob, slicerModule: Any = None,
                 importer: Optional[SegmentImporter] = None) -> None:
        if slicerModule is None:
            import slicer as slicerModule
        self.folder = folder
        self._engineJob = engineJob
        self._slicer = slicerModule
        self._importer = importer or SegmentImporter(slicerModule)

    def register(self, sampleDataLogic: Any, iconsPath: PathLike, tasks: Sequence[DemoTask] = DEMO_TASKS) -> None:
        """Add one Sample Data button per demo task, in the ``LabelSharingSeg`` category."""
        if hasattr(sampleDataLogic, "registerCustomSampleDataCategory"):  # Slicer main; not in 5.8
            sampleDataLogic.registerCustomSampleDataCategory(DEMO_CATEGORY, title=_("LabelSharingSeg"))
        for task in tasks:
            image, _label = self.folder.sampleFiles(task)
            sampleDataLogic.registerCustomSampleDataSource(
                category=DEMO_CATEGORY,
                sampleName=task.title,
                uris=image.as_uri(),
                fileNames=image.name,
                nodeNames=task.nodeName,
                loadFileTypes="VolumeFile",
                thumbnailFileName=str(Path(iconsPath) / f"Demo{task.task}.png"),
                customDownloader=lambda source, task=task: runAction(
                    self._slicer, _("Loading the demo case"), lambda: self.load(task)),
            )

    def load(self, task: DemoTask) -> Tuple[Any, Any]:
        """Write the demo data if needed, then load the task's test case: (volume, reference segmentation).

        Raises:
            ModuleError: the engine could not write the demo data.
        """
        if not self.folder.hasData():
            result = self._engineJob.runBlocking(self.folder.dataArgs())
            if not result.succeeded:
                raise ModuleError(_("Writing the demo data failed: {reason}").format(reason=result.errorMessage),
                                  result.log)
        image, label = self.folder.sampleFiles(task)
        util, scene = self._slicer.util, self._slicer.mrmlScene
        volume = util.loadVolume(str(image), {"name": task.nodeName})
        labelmap = util.loadLabelVolume(str(label), {"name": f"{task.nodeName} labels", "show": False})
        try:
            segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{task.nodeName} reference")
            segmentation.CreateDefaultDisplayNodes()
            self._importer.importLabelmap(labelmap, segmentation, self.folder.segmentSpecs(task), volume)
        finally:
            scene.RemoveNode(labelmap)
        return volume, segmentation
