"""Install what the engine needs, on first use and after asking; report torch and its device.

- torch comes from the PyTorch extension (``PyTorchUtils.PyTorchUtilsLogic``: ``torchInstalled()``,
  ``installTorch(askConfirmation, ..., torchVersionRequirement)`` in ``fepegar/SlicerPyTorch``,
  ``PyTorchUtils/PyTorchUtils.py``); the extension is declared in ``EXTENSION_DEPENDS``.
- The engine's other packages go through ``slicer.util.pip_install(requirements)`` on the main
  thread (``Base/Python/slicer/util.py``), with ``numpy`` and ``torch`` pinned to the installed
  versions so pip never replaces them. SimpleITK is Slicer's own and none of these packages
  depends on it.
- Asking uses ``slicer.util.confirmOkCancelDisplay(text, windowTitle, detailedText=...)``.

Nothing here runs when the module is imported or its widget is built.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

from .ModuleError import ModuleError

__all__ = ["ENGINE_REQUIREMENTS", "TORCH_REQUIREMENT", "TorchInfo", "Dependencies"]

#: import name -> pip requirement, the engine's dependencies besides numpy, SimpleITK and torch
ENGINE_REQUIREMENTS = {
    "monai": "monai>=1.3",
    "slicerio": "slicerio>=1.0",
    "nrrd": "pynrrd>=1.0",
    "safetensors": "safetensors>=0.4",
    "tqdm": "tqdm>=4.60",
}
TORCH_REQUIREMENT = ">=2.1"
_PINNED = ("numpy", "torch")


@dataclass(frozen=True)
class TorchInfo:
    """The torch found in Slicer's Python and the best device it sees."""

    version: str
    device: str

    def __str__(self) -> str:
        return f"PyTorch {self.version}, device: {self.device}"


class Dependencies:
    """Checks and installs the engine's dependencies.

    Args:
        slicerModule: the ``slicer`` module (injected by tests; imported when omitted).
        importModule: ``importlib.import_module`` (injected by tests).
        findSpec: ``importlib.util.find_spec`` (injected by tests).
    """

    def __init__(
        self,
        slicerModule: Any = None,
        importModule: Callable[[str], Any] = importlib.import_module,
        findSpec: Callable[[str], Any] = importlib.util.find_spec,
    ) -> None:
        if slicerModule is None:
            import slicer as slicerModule
        self._slicer = slicerModule
        self._import = importModule
        self._findSpec = findSpec

    def missingEnginePackages(self) -> List[str]:
        """pip requirements of the engine packages that cannot be imported."""
        return [requirement for name, requirement in ENGINE_REQUIREMENTS.items() if self._findSpec(name) is None]

    def ensureInstalled(self, confirm: Optional[Callable[[str, str], bool]] = None) -> TorchInfo:
        """Install torch and the engine packages if missing (after ``confirm``), then report torch.

        Args:
            confirm: ``(text, details) -> bool``; defaults to an OK/Cancel dialog.

        Raises:
            ModuleError: PyTorch extension missing, the user cancelled, or installation failed.
        """
        torchLogic = self._torchLogic()
        needTorch = not torchLogic.torchInstalled()
        missing = self.missingEnginePackages()
        if needTorch or missing:
            self._ask(confirm, (["torch (through the PyTorch extension)"] if needTorch else []) + missing)
            if needTorch and self._installTorch(torchLogic) is None:
                raise ModuleError("PyTorch was not installed. Install it from the PyTorch Utils module and try again.")
            if missing:
                self._slicer.util.pip_install(missing + self._pins())
        return self.torchInfo()

    def ensurePackages(self, importNames: Sequence[str], confirm: Optional[Callable[[str, str], bool]] = None) -> None:
        """Install just these engine packages if missing (after ``confirm``), without torch.

        For steps that need one engine package but not the engine itself, e.g. ``["nrrd"]`` before
        ``NrrdIO`` writes a task dataset.

        Raises:
            ModuleError: the user cancelled.
        """
        missing = [ENGINE_REQUIREMENTS[name] for name in importNames if self._findSpec(name) is None]
        if missing:
            self._ask(confirm, missing)
            self._slicer.util.pip_install(missing + self._pins())

    def _ask(self, confirm: Optional[Callable[[str, str], bool]], packages: List[str]) -> None:
        ask = confirm or self._confirmDialog
        if not ask(
            "LabelSharingSeg needs Python packages that are not installed yet. Installing them needs a "
            "network connection and may take several minutes. Install now?",
            "Packages: " + ", ".join(packages),
        ):
            raise ModuleError("Installation cancelled: LabelSharingSeg cannot continue without these packages.")

    def torchInfo(self) -> TorchInfo:
        """Version of the installed torch and its best device (imports torch)."""
        torch = self._import("torch")
        if torch.cuda.is_available():
            device = f"cuda ({torch.cuda.get_device_name(0)})"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps (Apple GPU)"
        else:
            device = "cpu (no GPU found)"
        return TorchInfo(str(torch.__version__), device)

    def _torchLogic(self) -> Any:
        try:
            module = self._import("PyTorchUtils")
        except ModuleNotFoundError as exc:
            raise ModuleError(
                "LabelSharingSeg needs the PyTorch extension. Install 'PyTorch' from the Extensions Manager, "
                "restart Slicer and try again."
            ) from exc
        return module.PyTorchUtilsLogic()

    @staticmethod
    def _installTorch(torchLogic: Any) -> Any:
        # Older PyTorchUtils versions have no torchVersionRequirement argument: feature-detect it.
        if "torchVersionRequirement" in inspect.signature(torchLogic.installTorch).parameters:
            return torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
        return torchLogic.installTorch(askConfirmation=False)

    @staticmethod
    def _pins() -> List[str]:
        pins = []
        for distribution in _PINNED:
            try:
                pins.append(f"{distribution}=={importlib.metadata.version(distribution)}")
            except importlib.metadata.PackageNotFoundError:
                continue
        return pins

    def _confirmDialog(self, text: str, details: str) -> bool:
        return bool(self._slicer.util.confirmOkCancelDisplay(text, "Install Python packages", detailedText=details))
