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

from typing import Mapping, NamedTuple

__all__ = ["EXAMPLE_ENTRY", "GENERIC_ENTRY", "Code", "LabelCodes", "label_codes", "entry_from_codes",
           "terminology_entry_problem"]

EXAMPLE_ENTRY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"
)
#: What a label without codes is called in standard terms: the generic category and type that
#: Slicer's default terminology gives a new, unspecified segment (SNOMED CT 85756007 "Tissue" for
#: both; ``vtkSlicerTerminologiesModuleLogic`` default entry, the "Tissue" type of the "Tissue"
#: category in Slicer's General Anatomy list). The label keeps its own name as the segment label.
GENERIC_ENTRY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue~SCT^85756007^Tissue"
    "~^^~Anatomic codes - DICOM master list~^^~^^"
)
_PARTS = 7
_CATEGORY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_REGION_CONTEXT = "Anatomic codes - DICOM master list"


class Code(NamedTuple):
    """One coded concept: coding scheme designator, code value, code meaning (e.g. ``SCT``, ``10200004``, ``Liver``)."""

    scheme: str
    value: str
    meaning: str


class LabelCodes(NamedTuple):
    """What a label is in standard codes (DICOM SEG's Segmented Property Category/Type, Anatomic Region)."""

    category: Code
    type: Code
    type_modifier: Code | None = None
    region: Code | None = None
    region_modifier: Code | None = None


def label_codes(entry: str | None) -> LabelCodes:
    """The codes of a Slicer terminology entry; the generic Tissue/Tissue (:data:`GENERIC_ENTRY`) for ``None``.

    Example:
        >>> label_codes(EXAMPLE_ENTRY).type
        Code(scheme='SCT', value='10200004', meaning='Liver')
        >>> label_codes(None).category.meaning
        'Tissue'
    """
    parts = (entry or GENERIC_ENTRY).split("~")

    def code(part: str) -> Code | None:
        fields = part.split("^")
        return Code(*fields) if len(fields) == 3 and fields[0] and fields[1] else None

    return LabelCodes(code(parts[1]), code(parts[2]), code(parts[3]), code(parts[5]), code(parts[6]))


def entry_from_codes(codes: Mapping[str, object]) -> str:
    """A Slicer terminology entry from ``dataset.json``'s code form of a label.

    Args:
        codes: ``{"category": [scheme, value, meaning], "type": [...]}`` and optionally
            ``"type_modifier"``, ``"region"``, ``"region_modifier"`` in the same form.

    Raises:
        ValueError: a missing category or type, an unknown key, or a code that is not three
            non-empty strings (the message says which).

    Example:
        >>> entry_from_codes({"category": ["SCT", "123037004", "Anatomical Structure"],
        ...                   "type": ["SCT", "10200004", "Liver"]}) == EXAMPLE_ENTRY
        True
    """
    unknown = sorted(set(codes) - set(LabelCodes._fields))
    if unknown:
        raise ValueError(f"has unknown key(s) {', '.join(unknown)}; use {', '.join(LabelCodes._fields)}")
    parts = {}
    for key in LabelCodes._fields:
        value = codes.get(key)
        if value is None and key not in ("category", "type"):
            parts[key] = "^^"
            continue
        if not (isinstance(value, (list, tuple)) and len(value) == 3
                and all(isinstance(v, str) and v.strip() and not set(v) & set("~^|\r\n") for v in value)):
            raise ValueError(f'has {key} {value!r}; give it as [coding scheme, code value, code meaning], e.g. '
                             '["SCT", "10200004", "Liver"]')
        parts[key] = "^".join(value)
    return "~".join((_CATEGORY_CONTEXT, parts["category"], parts["type"], parts["type_modifier"], _REGION_CONTEXT,
                     parts["region"], parts["region_modifier"]))


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
