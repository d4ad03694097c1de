"""Tests of the Slicer module that run without Slicer (package, so its conftest does not shadow the engine tests' one)."""
