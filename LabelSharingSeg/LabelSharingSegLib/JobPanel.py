"""The shared progress bar, status line and log of the panel, and running one engine job at a time.

While a job runs, the button that started it reads "Cancel" and cancels it (killing the whole
process tree); the other action buttons are disabled. Errors appear as a readable message with
the full log behind "Show Details..." (``slicer.util.errorDisplay(text, detailedText=...)``,
``Base/Python/slicer/util.py``: extra keyword arguments are set on the ``ctkMessageBox``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, List, Optional, Sequence

from .EngineJob import EngineJob
from .EngineProcess import EngineResult, ProgressUpdate
from .ModuleError import ModuleError

__all__ = ["JobPanel", "reportErrors", "showError"]


def showError(slicerModule: Any, message: str, details: str = "") -> None:
    """A readable error dialog; technical details (the log) one click away."""
    if details:
        slicerModule.util.errorDisplay(message, detailedText=details)
    else:
        slicerModule.util.errorDisplay(message)


def reportErrors(method: Callable) -> Callable:
    """Decorate a panel's slot: a ``ModuleError`` becomes an error dialog instead of a traceback."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except ModuleError as exc:
            showError(self.slicer, str(exc), exc.details)
            return None

    return wrapper


class JobPanel:
    """Runs engine jobs for the panels and shows their progress and log.

    Args:
        ui: the module's ``ui`` (uses ``progressBar``, ``statusLabel``, ``logTextEdit``).
        engineJob: runs the engine in the background.
        actionButtons: buttons disabled while a job runs (except the one that started it).
        slicerModule: the ``slicer`` module (injected by tests; imported when omitted).
    """

    def __init__(self, ui: Any, engineJob: EngineJob, actionButtons: Sequence[Any], slicerModule: Any = None) -> None:
        if slicerModule is None:
            import slicer as slicerModule
        self.slicer = slicerModule
        self.ui = ui
        self._job = engineJob
        self._buttons: List[Any] = list(actionButtons)
        self._busyButton: Optional[Any] = None
        self._busyText = ""
        #: called after a job ends, so the widget can re-check which buttons may be enabled
        self.onIdle: Optional[Callable[[], None]] = None
        self._setIdle()

    @property
    def isRunning(self) -> bool:
        return self._job.isRunning

    def cancelIfRunning(self, button: Any) -> bool:
        """If ``button`` started the running job, cancel it and return True."""
        if self._job.isRunning and button is self._busyButton:
            self.ui.statusLabel.text = "Cancelling..."
            self._job.cancel()
            return True
        return False

    def cancel(self) -> None:
        """Cancel any running job (module cleanup)."""
        if self._job.isRunning:
            self._job.cancel()

    def run(
        self,
        title: str,
        args: Sequence[str],
        button: Any,
        onSuccess: Callable[[], None],
        onEnd: Optional[Callable[[], None]] = None,
    ) -> None:
        """Start ``labelsharing <args>``; ``onSuccess`` runs if it succeeds, ``onEnd`` always."""

        def finished(result: EngineResult) -> None:
            self._setIdle()
            try:
                if result.succeeded:
                    self.ui.statusLabel.text = f"{title}: done."
                    self._runReporting(onSuccess)
                elif result.cancelled:
                    self.ui.statusLabel.text = f"{title}: cancelled."
                else:
                    self.ui.statusLabel.text = f"{title}: failed."
                    showError(self.slicer, f"{title} failed: {result.errorMessage}", result.log)
            finally:
                if onEnd is not None:
                    onEnd()

        self.ui.logTextEdit.appendPlainText(f"--- {title}: labelsharing {' '.join(args)}")
        self._job.start(args, finished, onProgress=self._onProgress, onLog=self.ui.logTextEdit.appendPlainText)
        self._setBusy(title, button)

    def _runReporting(self, action: Callable[[], None]) -> None:
        try:
            action()
        except ModuleError as exc:
            showError(self.slicer, str(exc), exc.details)

    def _onProgress(self, update: ProgressUpdate) -> None:
        self.ui.progressBar.value = int(round(update.percent))
        if update.text:
            self.ui.statusLabel.text = update.text

    def _setBusy(self, title: str, button: Any) -> None:
        self._busyButton, self._busyText = button, button.text
        button.text = "Cancel"
        button.enabled = True
        for other in self._buttons:
            if other is not button:
                other.enabled = False
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        self.ui.statusLabel.text = f"{title}: starting..."

    def _setIdle(self) -> None:
        if self._busyButton is not None:
            self._busyButton.text = self._busyText
        self._busyButton = None
        for button in self._buttons:
            button.enabled = True
        if self.onIdle is not None:
            self.onIdle()
