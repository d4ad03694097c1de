"""Package public APIs that cost nothing until used (PEP 562 module ``__getattr__``).

Each stage package's ``__init__`` names its public API as ``{submodule: (name, ...)}``. Importing
the package imports none of the submodules: ``labelsharing --help`` and ``info`` must not pay for
SimpleITK or torch, and the Slicer process imports ``labelsharing.plan`` with numpy alone.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Sequence, Tuple

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Dict[str, Sequence[str]]) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: a name is imported from its submodule on first access.

    Example:
        >>> getattr_, dir_ = lazy_exports("labelsharing.utils", {"tables": ("format_table",)})
        >>> getattr_("format_table").__name__
        'format_table'
        >>> getattr_("nothing")
        Traceback (most recent call last):
        AttributeError: module 'labelsharing.utils' has no attribute 'nothing'
    """
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)

    def __dir__() -> List[str]:
        return sorted(module_of)

    return __getattr__, __dir__
