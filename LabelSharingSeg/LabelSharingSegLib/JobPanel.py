"""The shared progress bar, status line and log of the panel; one piece of work at a time.

Two kinds of work make the panel busy: an engine job in the background (the button that started
it reads "Cancel" and cancels it, ending the whole process tree) and main-thread work (installs,
writing a task dataset, exporting), during which every action button is disabled and the
progress bar moves per step. Either way the buttons come back when the work ends, however it ends.

Every user action is wrapped in :func:`userAction`: a ``ModuleError`` (what the user can act on)
becomes a readable dialog with the log one click away (``slicer.util.errorDisplay(text,
detailedText=...)``; extra keyword arguments are set on the ``ctkMessageBox``); anything else is a
bug and goes through ``slicer.util.tryWithErrorDisplay(message)``, which shows it with its
traceback and re-raises it, so it stays in the Python console too (``Base/Python/slicer/util.py``,
5.8: line 3279; main at 583e9b3: line 3692).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, List, Optional, Sequence, Union

from .EngineCommands import PredictCall, ServerJobCall
from .EngineJob import EngineJob
from .EngineProcess import EngineResult, ProgressUpdate
from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["JobPanel", "userAction", "showError"]

_DEVICE_LINE = "device: "
#: the engine's look-alike warnings name this flag, which the Train / add task section sets with a checkbox
_KEEP_APART_FLAG = "--keep-look-alikes-apart"


def showError(slicerModule: Any, message: str, details: str = "") -> None:
    """A readable error dialog; technical details (the log) one click away."""
    if details:
        slicerModule.util.errorDisplay(message, detailedText=details)
    else:
        slicerModule.util.errorDisplay(message)


def runAction(slicerModule: Any, title: str, action: Callable[[], Any]) -> Any:
    """Run ``action``; show a ``ModuleError`` as a dialog, anything else via ``tryWithErrorDisplay``."""
    with slicerModule.util.tryWithErrorDisplay(_("{title} failed.").format(title=title)):
        try:
            return action()
        except ModuleError as exc:
            showError(slicerModule, str(exc), exc.details)
            return None


def userAction(title: str) -> Callable[[Callable], Callable]:
    """Decorate a panel's slot (the panel has ``self.slicer``): every failure shows a dialog."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            return runAction(self.slicer, title, lambda: method(self, *args, **kwargs))

        return wrapper

    return decorate


class JobPanel:
    """Runs the panel's work and shows its progress and log.

    Args:
        ui: the module's ``ui`` (uses ``progressBar``, ``statusLabel``, ``logTextEdit``, ``torchInfoLabel``).
        engineJob: runs the engine in the background (an ``EngineJob``, or the module's ``WarmEngine``
            around one).
        actionButtons: buttons disabled while work runs (except the one that started an engine job).
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
        self._mainThreadWork = False
        #: called after work ends, so the widget can re-check which buttons may be enabled
        self.onIdle: Optional[Callable[[], None]] = None
        self._setIdle()

    def addActionButtons(self, buttons: Sequence[Any]) -> None:
        """More buttons to disable while work runs (sections built in code after this panel)."""
        self._buttons += [button for button in buttons if button not in self._buttons]

    @property
    def isRunning(self) -> bool:
        """An engine job runs in the background."""
        return self._job.isRunning

    @property
    def isBusy(self) -> bool:
        """An engine job runs, or main-thread work is under way."""
        return self._job.isRunning or self._mainThreadWork

    def cancelIfRunning(self, button: Any) -> bool:
        """If ``button`` started the running job, cancel it and return True."""
        if self._job.isRunning and button is self._busyButton:
            self.ui.statusLabel.text = _("Cancelling...")
            self._job.cancel()
            return True
        return False

    def cancel(self) -> None:
        """Cancel the running job (scene close); its end is reported as usual."""
        if self._job.isRunning:
            self.ui.statusLabel.text = _("Cancelling: the scene is closing...")
            self._job.cancel()

    def stop(self) -> None:
        """End the running job for good, reporting nothing (module cleanup: the widgets are going)."""
        self.onIdle = None
        self._job.stop()

    def run(self, title: str, args: Union[Sequence[str], PredictCall, ServerJobCall], button: Any, onSuccess: Callable[[], None],
            onEnd: Optional[Callable[[], None]] = None) -> None:
        """Start ``labelsharing <args>``; ``onSuccess`` runs if it succeeds, ``onEnd`` always.

        ``args`` may be a ``PredictCall``, which a ``WarmEngine`` runs in its warm worker (or its
        server, for a server's model: ``RoutingEngine``), or a ``ServerJobCall``, run on a server.
        """

        def finished(result: EngineResult) -> None:
            self._setIdle()
            try:
                if result.succeeded:
                    self.ui.statusLabel.text = _("{title}: done.").format(title=title)
                    runAction(self.slicer, title, onSuccess)
                elif result.cancelled:
                    self.ui.statusLabel.text = _("{title}: cancelled.").format(title=title)
                else:
                    self.ui.statusLabel.text = _("{title}: failed.").format(title=title)
                    showError(self.slicer, _("{title} failed: {reason}").format(title=title, reason=result.errorMessage),
                              result.log)
            finally:
                if onEnd is not None:
                    onEnd()

        commandLine = args.args if isinstance(args, (PredictCall, ServerJobCall)) else args
        self.ui.logTextEdit.appendPlainText(f"--- {title}: labelsharing {' '.join(commandLine)}")
        self._job.start(args, finished, onProgress=self._onProgress, onLog=self._onLog)
        self._setBusy(title, button)

    @contextlib.contextmanager
    def busy(self, title: str) -> Iterator[Callable[[int, int, str], None]]:
        """Main-thread work: all actions disabled until the block ends; yields ``step(done, total, text)``."""
        self.enterBusy(title)
        try:
            yield self.step
            self.ui.statusLabel.text = _("{title}: done.").format(title=title)
        finally:
            self.leaveBusy()

    def enterBusy(self, title: str) -> None:
        """Start main-thread work spread over timer ticks (disables all actions); end it with :meth:`leaveBusy`.

        Raises:
            ModuleError: other work is under way.
        """
        if self.isBusy:
            raise ModuleError(_("LabelSharingSeg is busy; wait for the running work to end or cancel it first."))
        self._mainThreadWork = True
        self._setBusy(title, None)

    def leaveBusy(self) -> None:
        """End main-thread work: the buttons come back."""
        self._mainThreadWork = False
        self._setIdle()

    def step(self, done: int, total: int, text: str) -> None:
        """Show progress of main-thread work and let Qt repaint (``slicer.app.processEvents()``)."""
        self.ui.progressBar.value = int(round(100.0 * done / max(1, total)))
        self.ui.statusLabel.text = text
        self.slicer.app.processEvents()

    def installMissing(self, dependencies: Any, distributions: Optional[Sequence[str]] = None) -> None:
        """Install what is missing of ``distributions`` (all engine packages by default), after asking."""
        missing = dependencies.missing(distributions)
        if not missing:
            return
        dependencies.confirmInstall(missing)
        with self.busy(_("Installing Python packages")) as step:
            dependencies.install(missing, step)

    def _onProgress(self, update: ProgressUpdate) -> None:
        self.ui.progressBar.value = int(round(update.percent))
        if update.text:
            self.ui.statusLabel.text = update.text

    def _onLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)
        if line.startswith(_DEVICE_LINE):  # the engine names the device it runs on
            self.ui.torchInfoLabel.text = _("Engine device: {device}").format(device=line[len(_DEVICE_LINE):])
        if line.startswith("warning: ") and _KEEP_APART_FLAG in line:
            self.ui.logTextEdit.appendPlainText(
                _("  (in this module: Train / add task section, 'Keep look-alike tasks apart')"))

    def _setBusy(self, title: str, button: Optional[Any]) -> None:
        if button is not None:
            self._busyButton, self._busyText = button, button.text
            button.text = _("Cancel")
            button.enabled = True
        for other in self._buttons:
            if other is not button:
                other.enabled = False
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        self.ui.statusLabel.text = _("{title}: starting...").format(title=title)

    def _setIdle(self) -> None:
        if self._busyButton is not None:
            self._busyButton.text = self._busyText
        self._busyButton = None
        for button in self._buttons:
            button.enabled = True
        if self.onIdle is not None:
            self.onIdle()
