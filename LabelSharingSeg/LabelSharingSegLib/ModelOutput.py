"""Where Train and Add task write a model: ``<models folder>/<model name>``.

A directory ``ctkPathLineEdit`` only ever holds an existing folder (CTK ``Libs/Widgets/
ctkPathLineEdit.cpp``, ``ctkPathLineEdit::browse()`` uses ``QFileDialog::getExistingDirectory``),
and the engine refuses to write a model over an existing folder, so the panel asks for the parent
folder (an existing one) plus a new name.

The default parent is a per-user folder next to Slicer's user settings file,
``<folder of slicer.app.slicerUserSettingsFilePath>/LabelSharingSeg/models`` (the property is
declared in Slicer's ``Base/QTCore/qSlicerCoreApplication.h``, 5.8 and later), e.g.
``~/.config/slicer.org/LabelSharingSeg/models`` on Linux; never the home folder itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Union

from .EngineCommands import isSetPath
from .ModuleError import ModuleError
from .Translation import tr as _

__all__ = ["defaultModelsFolder", "modelOutputFolder", "freeModelName", "nextModelName"]

PathLike = Union[str, Path]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")


def defaultModelsFolder(userSettingsFilePath: PathLike) -> Path:
    """The per-user models folder next to Slicer's user settings file (not created here)."""
    return Path(userSettingsFilePath).parent / "LabelSharingSeg" / "models"


def modelOutputFolder(parent: PathLike, name: str) -> Path:
    """The new model's folder ``<parent>/<name>``, checked before the engine starts.

    Raises:
        ModuleError: no parent, a name that is empty or not a plain folder name, or a folder
            that already exists (the engine would refuse it).
    """
    if not isSetPath(parent):
        raise ModuleError(_("Choose the models folder the new model is written into."))
    name = (name or "").strip()
    if not name:
        raise ModuleError(_("Give the new model a name (it becomes its folder's name)."))
    if not _NAME.match(name) or name in (".", ".."):
        raise ModuleError(
            _("The model name '{name}' is not a plain folder name: use letters, digits, spaces, '.', '_' "
              "or '-', starting with a letter or digit.").format(name=name)
        )
    folder = Path(parent) / name
    if folder.exists():
        raise ModuleError(_("{folder} already exists. Choose another model name; existing models are never "
                            "replaced.").format(folder=folder))
    return folder


def freeModelName(parent: PathLike, base: str = "model") -> str:
    """``base``, or ``base_2``, ``base_3``... : the first name not taken in ``parent``."""
    name, number = base, 2
    while isSetPath(parent) and (Path(parent) / name).exists():
        name, number = f"{base}_{number}", number + 1
    return name


def nextModelName(name: str) -> str:
    """The name after ``name``: ``abdomen`` -> ``abdomen_2``, ``abdomen_2`` -> ``abdomen_3``.

    Example:
        >>> nextModelName("abdomen"), nextModelName("abdomen_2")
        ('abdomen_2', 'abdomen_3')
    """
    match = re.fullmatch(r"(.*)_(\d+)", name)
    return f"{match.group(1)}_{int(match.group(2)) + 1}" if match else f"{name}_2"
