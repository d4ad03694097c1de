"""The ``labelsharing`` command line: argparse only; every command calls the typed API.

* :mod:`~labelsharing.cli.parser`: the commands, their flags and the flags' limits;
* :mod:`~labelsharing.cli.commands`: one small function per command, calling the engine's packages;
* :mod:`~labelsharing.cli.main`: the entry point, and how errors reach the user.

Importing it loads argparse and nothing of the engine's stages (no numpy, no torch): ``--help``
answers at once.
"""

from __future__ import annotations

from labelsharing.cli.main import main
from labelsharing.cli.parser import build_parser, training_defaults

__all__ = ["main", "build_parser", "training_defaults"]
