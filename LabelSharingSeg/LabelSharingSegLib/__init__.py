"""Slicer-side helpers of the LabelSharingSeg module, one concern per file.

Nothing here imports ``slicer``, ``qt``, ``vtk`` or ``ctk`` at import time: the classes that need
them receive the modules in their constructor (or import them when first used), so the pure
parts (geometry, NRRD files, the process runner, task definition) are tested without Slicer.
The one exception is ``Translation.py``, which takes Slicer's translation functions from
``slicer.i18n`` when that is there (and leaves texts as written when it is not).
"""
