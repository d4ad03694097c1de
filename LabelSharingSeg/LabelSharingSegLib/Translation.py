"""Slicer's translation functions for the helper files, or plain text where Slicer is absent.

Inside Slicer, ``tr`` and ``translate`` here *are* ``slicer.i18n.tr`` and ``slicer.i18n.translate``
(``Base/Python/slicer/i18n.py``, 5.8 and later), so a helper file that writes::

    from .Translation import tr as _

calls Slicer's ``tr`` directly, and ``tr`` names the translation context after the file that calls
it (``LabelSharingSegLib.<File>``, as its ``getContext`` does for a folder holding ``__init__.py``):
the context Slicer's ``Utilities/Scripts/update_translations.py`` gives the ``_("...")`` texts it
extracts from that file. Texts with placeholders are written ``_("... {name} ...").format(name=...)``
(an f-string cannot be looked up in a translation file).

Outside Slicer (the pure helpers used from scripts and tests) the texts stay as written, as
Slicer's own ``translate`` does when there is no application.
"""

from __future__ import annotations

__all__ = ["tr", "translate"]

try:
    from slicer.i18n import tr, translate
except ImportError:  # not inside Slicer: no translations to apply

    def tr(text: str) -> str:
        """The text unchanged (no Slicer, no translations)."""
        return text

    def translate(context: str, text: str) -> str:
        """The text unchanged (no Slicer, no translations)."""
        return text
