"""Build and catalog files: CMake lists every shipped file, .s4ext / .json agree with CMake, and the catalog
entry passes the checks of the Extensions Index (no Slicer)."""

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
    assert meta["status"] == cmakeVariable(top, "EXTENSION_STATUS")
    assert meta["keywords"] == cmakeVariable(top, "EXTENSION_KEYWORDS")
    catalog = json.loads((REPO / "LabelSharingSeg.json").read_text())
    assert catalog["category"] == meta["category"]
    assert catalog["build_dependencies"] == meta["depends"].split()
    assert catalog["scm_url"] + ".git" == meta["scmurl"] and catalog["scm_revision"] == meta["scmrevision"]
    assert int(catalog["tier"]) == int(meta["tier"])


def test_extension_assets_exist():
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
    for path in ("Resources/LabelSharingSeg.png", "Resources/Screenshots/panel.png",
                 "LabelSharingSeg/Resources/Icons/LabelSharingSeg.png"):
        assert (REPO / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    top = (REPO / "CMakeLists.txt").read_text()
    for url in [cmakeVariable(top, "EXTENSION_ICONURL"), *cmakeVariable(top, "EXTENSION_SCREENSHOTURLS").split()]:
        assert (REPO / url.split("/main/", 1)[1]).is_file(), url


def test_catalog_entry_follows_the_schema_the_index_uses():
    """Validated against slicer-extension-catalog-entry-schema-v1.0.1.json (copied from Slicer/Slicer
    ``Schemas/`` at 583e9b37; the index's entries name v1.0.1): required keys, no other keys, types, limits."""
    schema = json.loads((Path(__file__).parent / "slicer-extension-catalog-entry-schema-v1.0.1.json").read_text())
    entry = json.loads((REPO / "LabelSharingSeg.json").read_text())
    assert entry["$schema"] == schema["$id"]
    assert set(schema["required"]) <= set(entry) <= set(schema["properties"])
    types = {"string": str, "array": list, "integer": int, "boolean": bool}
    for key, value in entry.items():
        rule = schema["properties"][key]
        assert isinstance(value, types[rule["type"]]), key
        assert value in rule.get("enum", [value]) and rule.get("minimum", value) <= value <= rule.get("maximum", value)
        if rule["type"] == "array":
            assert all(isinstance(item, str) for item in value), key


def test_catalog_entry_passes_the_index_checks():
    """The checks of Slicer/ExtensionsIndex ``scripts/check_description_files.py``: the repository name
    contains "slicer", scm_url is https or git, the top-level project() is named like the JSON file, icon
    and screenshot URLs are http(s) (here: raw files of the same repository, present in this tree)."""
    entry = json.loads((REPO / "LabelSharingSeg.json").read_text())
    scheme, _, path = entry["scm_url"].partition("://")
    repository = path.rstrip("/").split("/")[-1]
    assert scheme in ("https", "git") and "slicer" in repository.lower() and repository == "SlicerLabelSharingSeg"
    top = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"project\s*\(\s*([^\s\)]+)", top).group(1) == Path("LabelSharingSeg.json").stem
    owner = path.split("/")[1]
    raw = f"https://raw.githubusercontent.com/{owner}/{repository}/{entry['scm_revision']}/"
    for url in [cmakeVariable(top, "EXTENSION_ICONURL"), *cmakeVariable(top, "EXTENSION_SCREENSHOTURLS").split()]:
        assert url.startswith(raw), url
    assert cmakeVariable(top, "EXTENSION_HOMEPAGE").startswith(entry["scm_url"])
