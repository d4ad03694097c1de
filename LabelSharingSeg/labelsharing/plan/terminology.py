"""Slicer terminology entries: the string that says, in standard codes, what a label is.

A terminology entry is what Slicer keeps in a segment's ``TerminologyEntry`` tag, what
``dataset.json`` ``terminology`` gives per label, what ``model.json`` keeps per label and what a
predicted ``.seg.nrrd`` writes back into ``SegmentN_Tags``. It has 7 parts separated by ``~``::

    context~category~type~type modifier~region context~region~region modifier

each coded part being ``coding scheme^code value^code meaning``, e.g.
``Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical
Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^``.

The format is Slicer's (``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry`` and
``DeserializeTerminologyEntry``, ``Modules/Loadable/Terminologies/Logic``, the same in 5.8 and
main); ``slicerio.terminology_entry_from_string`` reads the same string.
"""

from __future__ import annotations

__all__ = ["EXAMPLE_ENTRY", "terminology_entry_problem"]

EXAMPLE_ENTRY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"
)
_PARTS = 7


def terminology_entry_problem(entry: str) -> str | None:
    """What is wrong with a terminology entry string, or ``None`` if Slicer can read it.

    The checks are those of Slicer's ``DeserializeTerminologyEntry`` (7 parts, a context name,
    category and type as ``scheme^value^meaning``, a category that is not empty) plus what a
    ``.seg.nrrd`` header needs: no ``|`` (it separates a segment's tags) and no line break.

    Example:
        >>> terminology_entry_problem(EXAMPLE_ENTRY) is None
        True
        >>> terminology_entry_problem("liver")
        "has 1 part separated by '~'; a Slicer terminology entry has 7 parts"
    """
    if "|" in entry:
        return "contains '|', which separates the tags of a segment in a .seg.nrrd file"
    if any(character in entry for character in "\r\n"):
        return "contains a line break"
    parts = entry.split("~")
    if len(parts) != _PARTS:
        return (f"has {len(parts)} part{'s' * (len(parts) != 1)} separated by '~'; "
                f"a Slicer terminology entry has {_PARTS} parts")
    if not parts[0]:
        return "has no terminology context name (its first part)"
    for index, what in ((1, "category"), (2, "type")):
        if len(parts[index].split("^")) != 3:
            return f"has a {what} ('{parts[index]}') that is not 'coding scheme^code value^code meaning'"
    if parts[1] == "^^":
        return "has an empty category"
    return None
