"""pytest collects the engine's modules for their docstring examples (``--doctest-modules``).

Modules built on an optional extra import it at the top; where the extra is not installed (e.g.
Flower below Python 3.11) they are left out of collection, as their tests skip themselves.
"""

from __future__ import annotations

import importlib.util

#: module file (relative to this folder) -> the package its extra installs
_NEEDS = {
    "LabelSharingSeg/labelsharing/federated/flower_apps.py": "flwr",
    "LabelSharingSeg/labelsharing/serve/app.py": "fastapi",
}

collect_ignore = [path for path, package in _NEEDS.items() if importlib.util.find_spec(package) is None]
