"""Install what the engine needs, on first use and after asking, without importing it in Slicer.

What is installed is read from the package metadata (``importlib.metadata.version``), so Slicer's
own process never imports torch or MONAI: only the engine subprocess does. The engine logs the
device it runs on (``device: ...``), which the panel shows.

- torch comes from the PyTorch extension: ``PyTorchUtils.PyTorchUtilsLogic().installTorch(
  askConfirmation, forceComputationBackend, torchVersionRequirement)`` (``fepegar/SlicerPyTorch``,
  ``PyTorchUtils/PyTorchUtils.py``, commit e1c85cc). Its ``torchInstalled()`` imports torch, so it
  is not used for the check; ``installTorch`` imports torch once, right after installing it.
- The engine's other packages go through ``slicer.util.pip_install(requirements)`` on the main
  thread (``Base/Python/slicer/util.py``; it raises ``subprocess.CalledProcessError`` when pip
  fails, in 5.8 through ``logProcessOutput`` and from 5.10 through ``slicer.packaging``), with
  ``numpy`` and ``torch`` pinned to the installed versions so pip never replaces them.
- Asking uses ``slicer.util.confirmOkCancelDisplay(text, windowTitle, detailedText=...)``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import subprocess
from typing import Any, Callable, List, Optional, Sequence

from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["ENGINE_REQUIREMENTS", "TORCH_REQUIREMENT", "Dependencies"]

#: distribution name -> pip requirement, the engine's dependencies besides numpy, SimpleITK and torch
ENGINE_REQUIREMENTS = {
    "monai": "monai>=1.3",
    "slicerio": "slicerio>=1.0",
    "pynrrd": "pynrrd>=1.0",
    "safetensors": "safetensors>=0.4",
    "tqdm": "tqdm>=4.60",
}
TORCH_REQUIREMENT = ">=2.1"
_TORCH = "torch"
_PINNED = ("numpy", "torch")
_SHOWN = (("torch", "PyTorch"), ("monai", "MONAI"))


def _installedVersion(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


class Dependencies:
    """Checks and installs the engine's dependencies.

    Args:
        slicerModule: the ``slicer`` module (injected by tests; imported when omitted).
        importModule: ``importlib.import_module``, used only for ``PyTorchUtils`` (injected by tests).
        installedVersion: distribution name -> version or ``None`` (injected by tests).
    """

    def __init__(
        self,
        slicerModule: Any = None,
        importModule: Callable[[str], Any] = importlib.import_module,
        installedVersion: Callable[[str], Optional[str]] = _installedVersion,
    ) -> None:
        if slicerModule is None:
            import slicer as slicerModule
        self._slicer = slicerModule
        self._import = importModule
        self._version = installedVersion

    def missing(self, distributions: Optional[Sequence[str]] = None) -> List[str]:
        """The missing distributions among ``distributions`` (default: torch and all engine packages)."""
        wanted = list(distributions) if distributions is not None else [_TORCH, *ENGINE_REQUIREMENTS]
        return [name for name in wanted if self._version(name) is None]

    def confirmInstall(self, missing: Sequence[str], confirm: Optional[Callable[[str, str], bool]] = None) -> None:
        """Ask before installing ``missing``.

        Raises:
            ModuleError: the user cancelled.
        """
        shown = [_("torch (through the PyTorch extension)") if n == _TORCH else ENGINE_REQUIREMENTS[n] for n in missing]
        ask = confirm or self._confirmDialog
        if not ask(
            _("LabelSharingSeg needs Python packages that are not installed yet. Installing them needs a "
              "network connection and may take several minutes. Install now?"),
            _("Packages: {packages}").format(packages=", ".join(shown)),
        ):
            raise ModuleError(_("Installation cancelled: LabelSharingSeg cannot continue without these packages."))

    def install(self, missing: Sequence[str], onStep: Optional[Callable[[int, int, str], None]] = None) -> None:
        """Install ``missing`` (torch first, through the PyTorch extension), reporting each step.

        Raises:
            ModuleError: the PyTorch extension is missing, or an installation failed (its log in
                ``details``).
        """
        report = onStep or (lambda done, total, text: None)
        packages = [ENGINE_REQUIREMENTS[name] for name in missing if name != _TORCH]
        total = int(_TORCH in missing) + int(bool(packages))
        if _TORCH in missing:
            report(0, total, _("Installing PyTorch through the PyTorch extension (several minutes)..."))
            self._installTorch()
        if packages:
            report(total - 1, total, _("Installing {packages}...").format(packages=", ".join(packages)))
            try:
                self._slicer.util.pip_install(packages + self._pins())
            except subprocess.CalledProcessError as exc:
                raise ModuleError(
                    _("Installing {packages} failed (pip exit code {code}). Check the network connection and the "
                      "Python console, then try again.").format(packages=", ".join(packages), code=exc.returncode),
                    _processOutput(exc),
                ) from exc
        report(total, total, _("Python packages installed."))

    def ensureInstalled(self, confirm: Optional[Callable[[str, str], bool]] = None) -> str:
        """Install whatever is missing (after ``confirm``) and describe what is installed (scripts)."""
        missing = self.missing()
        if missing:
            self.confirmInstall(missing, confirm)
            self.install(missing)
        return self.describe()

    def describe(self) -> str:
        """E.g. ``PyTorch 2.3.1, MONAI 1.3.2`` from the metadata (imports neither)."""
        notInstalled = _("not installed")
        parts = [f"{label} {self._version(name) or notInstalled}" for name, label in _SHOWN]
        return _("{versions}; the engine reports its device when it runs.").format(versions=", ".join(parts))

    def _installTorch(self) -> None:
        try:
            torchLogic = self._import("PyTorchUtils").PyTorchUtilsLogic()
        except ModuleNotFoundError as exc:
            raise ModuleError(
                _("LabelSharingSeg needs the PyTorch extension. Install 'PyTorch' from the Extensions Manager, "
                  "restart Slicer and try again.")
            ) from exc
        try:
            # Older PyTorchUtils versions have no torchVersionRequirement argument: feature-detect it.
            if "torchVersionRequirement" in inspect.signature(torchLogic.installTorch).parameters:
                torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
            else:
                torch = torchLogic.installTorch(askConfirmation=False)
        except subprocess.CalledProcessError as exc:
            raise ModuleError(
                _("Installing PyTorch failed (exit code {code}). Install it from the PyTorch Utils module, or check "
                  "the network connection, and try again.").format(code=exc.returncode),
                _processOutput(exc),
            ) from exc
        if torch is None:
            raise ModuleError(_("PyTorch was not installed. Install it from the PyTorch Utils module and try again."))

    @staticmethod
    def _pins() -> List[str]:
        return [f"{name}=={version}" for name in _PINNED for version in [_installedVersion(name)] if version]

    def _confirmDialog(self, text: str, details: str) -> bool:
        return bool(self._slicer.util.confirmOkCancelDisplay(text, _("Install Python packages"), detailedText=details))


def _processOutput(exc: subprocess.CalledProcessError) -> str:
    """The captured output of a failed process, as text ("" when nothing was captured)."""
    parts = [part for part in (exc.output, exc.stderr) if isinstance(part, (str, bytes))]
    return "\n".join(p.decode(errors="replace") if isinstance(p, bytes) else p for p in parts)
