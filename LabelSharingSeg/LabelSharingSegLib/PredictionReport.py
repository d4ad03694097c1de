"""What the engine says about one prediction beside its result: ``<case>.prediction.json``.

Written by ``labelsharing predict`` and the warm worker (``labelsharing/infer/predictor.py``,
``Predictor.predict``) for ``--task auto`` and for models that store task references:
``{"task": name, "recognition": null | {"score", "scores", "relative_distance"},
"familiarity": null | {..., "confidence", "familiar", "warning"}}``
(``labelsharing/infer/familiarity.py``, ``examine``/``check_familiar``). The module shows it in the
status line; it never blocks the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .Translation import tr as _

__all__ = ["AUTO_TASK", "PredictionReport"]

#: the task value that asks the engine to recognise the task (``labelsharing.infer.familiarity.AUTO_TASK``)
AUTO_TASK = "auto"


@dataclass(frozen=True)
class PredictionReport:
    """The task predicted, the recognition's score (``None``: the task was chosen), the mean softmax
    confidence (``None``: not measured) and the unfamiliar-image warning (``""``: none)."""

    task: str
    score: Optional[float] = None
    confidence: Optional[float] = None
    warning: str = ""

    @classmethod
    def read(cls, path: Union[str, Path]) -> Optional["PredictionReport"]:
        """The report in ``path``; ``None`` when there is none or it cannot be read (the result stands)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            recognition, familiarity = data.get("recognition") or {}, data.get("familiarity") or {}
            return cls(str(data["task"]), _number(recognition.get("score")), _number(familiarity.get("confidence")),
                       str(familiarity.get("warning") or ""))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def describe(self) -> str:
        """One line for the status: ``Task: AbdomenCT (recognised, score 0.97; confidence 0.88).`` and the warning."""
        details = []
        if self.score is not None:
            details.append(_("recognised, score {score:.2f}").format(score=self.score))
        if self.confidence is not None:
            details.append(_("confidence {confidence:.2f}").format(confidence=self.confidence))
        text = _("Task: {task}").format(task=self.task) + (f" ({'; '.join(details)})" if details else "") + "."
        if self.warning:
            text += " " + _("Warning: {warning}").format(warning=self.warning)
        return text


def _number(value) -> Optional[float]:
    return None if value is None else float(value)
