"""Training defaults and limits of the panel, taken from the engine's own parser (no second copy).

The engine prints them with ``labelsharing defaults --json``; the panel calls the function behind
that command, ``labelsharing.cli.training_defaults()``, in Slicer's process: ``labelsharing.cli``
imports only ``argparse`` and the engine's error and progress modules at import time (never
torch, MONAI or the training code; ``test_slicer_engine_defaults.py`` checks it), and the engine
is bundled next to the module, so both always agree.

A spin box takes inclusive bounds, so an exclusive engine limit such as replay's ``[0, 1)``
becomes ``0 .. 0.99`` at two decimals (``QDoubleSpinBox``'s default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["OptionLimits", "trainingDefaults", "SPIN_BOX_MAX_INT"]

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


def trainingDefaults() -> Dict[str, Dict[str, OptionLimits]]:
    """``{"train" | "add-task": {option: OptionLimits}}`` from the engine's parser."""
    from labelsharing.cli import training_defaults

    return {
        command: {
            option: OptionLimits(
                entry["default"], entry.get("minimum"), entry.get("maximum"),
                bool(entry.get("minimum_exclusive")), bool(entry.get("maximum_exclusive")),
            )
            for option, entry in options.items()
        }
        for command, options in training_defaults().items()
    }
