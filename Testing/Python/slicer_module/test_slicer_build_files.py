"""Build and catalog files: CMake lists every shipped file, .s4ext / .json agree with CMake (no Slicer)."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
MODULE_DIR = REPO / "LabelSharingSeg"


def cmakeList(text: str, variable: str) -> list:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set"
    return [item.replace("${MODULE_NAME}", "LabelSharingSeg") for item in match.group(1).split()]


def cmakeVariable(text: str, variable: str) -> str:
    match = re.search(rf'set\({variable} "(.*?)"\)', text, re.S)
    assert match, f"{variable} not set"
    return match.group(1)


def s4ext() -> dict:
    fields = {}
    for line in (REPO / "LabelSharingSeg.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    return fields


def shipped(pattern: str) -> set:
    return {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob(pattern)
            if "__pycache__" not in p.parts and ".egg-info" not in p.as_posix()}


def test_every_python_file_is_listed_and_every_listed_file_exists():
    listed = set(cmakeList((MODULE_DIR / "CMakeLists.txt").read_text(), "MODULE_PYTHON_SCRIPTS"))
    assert listed == shipped("*.py"), (
        f"missing from CMakeLists.txt: {sorted(shipped('*.py') - listed)}; listed but absent: {sorted(listed - shipped('*.py'))}"
    )


def test_every_resource_is_listed_and_exists():
    listed = set(cmakeList((MODULE_DIR / "CMakeLists.txt").read_text(), "MODULE_PYTHON_RESOURCES"))
    resources = {p for p in shipped("*") if p.startswith("Resources/") and (MODULE_DIR / p).is_file()}
    assert listed == resources


def test_module_cmake_builds_a_scripted_module_with_tests():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"if\(BUILD_TESTING\)\s+.*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text, re.S)


def test_extension_cmake_s4ext_and_catalog_entry_agree():
    top = (REPO / "CMakeLists.txt").read_text()
    assert "project(LabelSharingSeg)" in top and "add_subdirectory(LabelSharingSeg)" in top
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in top
    meta = s4ext()
    assert meta["homepage"] == cmakeVariable(top, "EXTENSION_HOMEPAGE")
    assert meta["category"] == cmakeVariable(top, "EXTENSION_CATEGORY") == "Segmentation"
    assert meta["contributors"] == cmakeVariable(top, "EXTENSION_CONTRIBUTORS")
    assert meta["description"] == cmakeVariable(top, "EXTENSION_DESCRIPTION")
    assert meta["iconurl"] == cmakeVariable(top, "EXTENSION_ICONURL")
    assert meta["screenshoturls"] == cmakeVariable(top, "EXTENSION_SCREENSHOTURLS")
    assert meta["depends"].split() == cmakeVariable(top, "EXTENSION_DEPENDS").split() == ["PyTorch"]
    catalog = json.loads((REPO / "LabelSharingSeg.json").read_text())
    assert catalog["category"] == meta["category"]
    assert catalog["build_dependencies"] == meta["depends"].split()
    assert catalog["scm_url"] + ".git" == meta["scmurl"] and catalog["scm_revision"] == meta["scmrevision"]
    assert int(catalog["tier"]) == int(meta["tier"])


def test_extension_assets_exist():
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
    for path in ("Resources/LabelSharingSeg.png", "Resources/Screenshots/panel-mockup.png",
                 "LabelSharingSeg/Resources/Icons/LabelSharingSeg.png"):
        assert (REPO / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    for url in (cmakeVariable((REPO / "CMakeLists.txt").read_text(), "EXTENSION_ICONURL"),
                cmakeVariable((REPO / "CMakeLists.txt").read_text(), "EXTENSION_SCREENSHOTURLS")):
        assert (REPO / url.split("/main/", 1)[1]).is_file(), url
