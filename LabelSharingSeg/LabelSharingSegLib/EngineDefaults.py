"""Training defaults and limits of the panel, asked from the engine (no second copy), once per session.

The engine prints them with ``labelsharing defaults --json``, read from its own parser. The panel
runs that command as it runs every other: ``PythonSlicer -m labelsharing`` in a child process
(``EngineJob.command`` and ``EngineProcess``), because Slicer's process imports nothing of the
engine but its numpy-only ``labelsharing.plan`` package (``test_slicer_engine_boundary.py``).
The command is run on first use (the Train section being shown), never when Slicer starts, and
its answer (or its failure) is kept for the session: it costs about 0.1 s (plain Python; the
``PythonSlicer`` launcher adds its own start-up).

A spin box takes inclusive bounds, so an exclusive engine limit such as replay's ``[0, 1)``
becomes ``0 .. 0.99`` at two decimals (``QDoubleSpinBox``'s default).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .EngineProcess import EngineProcess
from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["OptionLimits", "TrainingDefaults", "parseTrainingDefaults", "askEngine", "sessionTrainingDefaults",
           "SPIN_BOX_MAX_INT", "DEFAULTS_ARGS"]

#: the largest value a QSpinBox holds (parameterNodeWrapper uses it for unbounded ints, guiConnectors.py)
SPIN_BOX_MAX_INT = 2**31 - 1


@dataclass(frozen=True)
class OptionLimits:
    """One engine option: its default and its bounds (``None``: unbounded)."""

    default: float
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    minimumExclusive: bool = False
    maximumExclusive: bool = False

    def spinBoxRange(self, decimals: int = 0) -> Tuple[float, float]:
        """Inclusive (minimum, maximum) for a spin box showing ``decimals`` decimals.

        Example:
            >>> OptionLimits(0.5, 0.0, 1.0, maximumExclusive=True).spinBoxRange(2)
            (0.0, 0.99)
        """
        step = 10.0 ** -decimals
        low = self.minimum if self.minimum is not None else -SPIN_BOX_MAX_INT
        high = self.maximum if self.maximum is not None else SPIN_BOX_MAX_INT
        low, high = low + (step if self.minimumExclusive else 0), high - (step if self.maximumExclusive else 0)
        if decimals == 0:
            return int(low), int(high)
        return round(low, decimals), round(high, decimals)


#: ``{"train" | "add-task" | "update": {option dest: OptionLimits}}``
TrainingDefaults = Dict[str, Dict[str, OptionLimits]]
#: engine arguments -> (command line, environment), as ``EngineJob.command`` gives them
CommandBuilder = Callable[[Sequence[str]], Tuple[List[str], Optional[Mapping[str, str]]]]
DEFAULTS_ARGS = ("defaults", "--json")
_TIMEOUT_S = 60.0  # the command imports argparse only; a cold PythonSlicer start on a busy machine is slower
_SESSION: Dict[str, Union[TrainingDefaults, ModuleError]] = {}


def parseTrainingDefaults(text: str) -> TrainingDefaults:
    """The JSON of ``labelsharing defaults --json`` as :class:`OptionLimits`.

    Raises:
        ValueError: ``text`` is not that JSON (``json.JSONDecodeError`` is a ``ValueError``).
    """
    try:
        return {
            command: {
                option: OptionLimits(
                    entry["default"], entry.get("minimum"), entry.get("maximum"),
                    bool(entry.get("minimum_exclusive")), bool(entry.get("maximum_exclusive")),
                )
                for option, entry in options.items()
            }
            for command, options in json.loads(text).items()
        }
    except (AttributeError, KeyError, TypeError) as exc:
        raise ValueError(f"not the output of 'labelsharing defaults --json': {exc!r}") from exc


def askEngine(command: CommandBuilder, timeout: float = _TIMEOUT_S) -> TrainingDefaults:
    """Run ``labelsharing defaults --json`` in a child process and parse its answer (blocking).

    Raises:
        ModuleError: the engine could not be started, failed, took longer than ``timeout`` seconds
            or printed something else than the defaults (its output in ``details``).
    """
    lines: List[str] = []
    process = EngineProcess(onStdout=lines.append)  # stdout is the JSON; stderr goes to the result's log
    try:
        commandLine, env = command(DEFAULTS_ARGS)
        process.start(commandLine, env=env)
        result = process.wait(timeout, interval=0.01)  # the answer comes in ~0.1 s: poll finely
    except (OSError, TimeoutError) as exc:
        raise ModuleError(_("The engine did not report its training defaults ({reason}). The training fields have "
                            "no limits; the engine checks the values when it runs.").format(reason=exc)) from exc
    if not result.succeeded:
        raise ModuleError(_("The engine did not report its training defaults: {message} The training fields have no "
                            "limits; the engine checks the values when it runs.").format(message=result.errorMessage),
                          result.log)
    try:
        return parseTrainingDefaults("\n".join(lines))
    except ValueError as exc:
        raise ModuleError(_("The engine's training defaults could not be read ({reason}). The training fields have "
                            "no limits; the engine checks the values when it runs.").format(reason=exc),
                          "\n".join(lines)) from exc


def sessionTrainingDefaults(engineFolder: str, command: CommandBuilder) -> TrainingDefaults:
    """The defaults of the engine in ``engineFolder``, asked on the first call of the session only.

    Later calls return the first answer, or raise the first failure again: the engine is not
    restarted each time the panel is shown.

    Raises:
        ModuleError: as :func:`askEngine`, now or on the first call.
    """
    if engineFolder not in _SESSION:
        try:
            _SESSION[engineFolder] = askEngine(command)
        except ModuleError as exc:
            _SESSION[engineFolder] = exc
    answer = _SESSION[engineFolder]
    if isinstance(answer, ModuleError):
        raise ModuleError(str(answer), answer.details)
    return answer
