"""Texts the user sees go through Slicer's translation functions, in a form Slicer can extract.

Slicer extracts ``_("...")`` texts with ``Utilities/Scripts/update_translations.py`` (which rewrites
``_(`` to ``translate("<context>", `` and runs Qt's lupdate) and looks them up at run time with
``slicer.i18n.tr``, whose context is named after the calling file. So a text is translatable only
if it is a literal inside ``_()``; placeholders are filled afterwards with ``.format(name=...)``
(``tr`` refuses translations whose placeholders differ). The static checks read the files (``ast``);
the behaviour check runs the module on the FAKE slicer surface (fakes.py, whose ``slicer.i18n``
imitates ``Base/Python/slicer/i18n.py``) with a recording translator.
"""

from __future__ import annotations

import ast
import string
import sys
from pathlib import Path
from typing import Iterator, List, Tuple
from unittest import mock

import pytest

from .widget_harness import buildWidget, loadModuleFile

MODULE_DIR = Path(__file__).resolve().parents[3] / "LabelSharingSeg"
LIB = MODULE_DIR / "LabelSharingSegLib"
#: files whose user-visible texts are wrapped for translation
TRANSLATED = [MODULE_DIR / "LabelSharingSeg.py"] + [LIB / f"{name}.py" for name in (
    "CorrectionPanel", "DemoData", "PredictionReport", "Dependencies", "DicomSegExport", "EngineCommands", "EngineDefaults", "EngineJob", "EnginePanel",
    "EngineProcess", "Export", "ExportPanel", "JobPanel", "ModelInfo", "ModelLibrary", "ModelLibraryPanel", "ModelOutput",
    "NrrdIO", "RemoteEngine", "SceneIO", "SegmentImport", "SegmentPanel", "Segmenter", "ServerClient", "SourceVolumes",
    "TaskCases", "TaskDefinition", "TaskPanel", "TrainPanel", "WarmEngine",
)]
#: files with no text a user reads: the package marker, geometry maths (its ValueErrors are
#: programming errors), the error type, the embedded Segment Editor (its texts are Slicer's) and the translation
#: functions themselves -- every module file is in one list
NO_USER_TEXT = {f"{name}.py" for name in (
    "__init__", "Geometry", "ModuleError", "ResultPanel", "Translation",
)}
#: calls whose (first) arguments the user reads, and widget properties set to text
TEXT_CALLS = {"ModuleError", "errorDisplay", "confirmOkCancelDisplay", "infoDisplay", "userAction", "busy",
              "enterBusy", "setText", "setToolTip", "setHeaderLabels", "setHorizontalHeaderLabels", "QPushButton",
              "QLabel", "ctkCollapsibleButton", "getExistingDirectory"}
TEXT_PROPERTIES = {"text", "toolTip", "title", "placeholderText", "helpText", "acknowledgementText"}
TRANSLATION_CALLS = {"_", "translate"}


def _isTranslationCall(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in TRANSLATION_CALLS


def _callName(node: ast.Call) -> str:
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")


def _untranslatedTexts(node: ast.AST) -> Iterator[ast.AST]:
    """String literals with letters in ``node`` that are not inside ``_()`` / ``translate()``."""
    if _isTranslationCall(node):
        return
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and any(c.isalpha() for c in node.value):
        yield node
        return
    if isinstance(node, ast.JoinedStr) and any(
            isinstance(v, ast.Constant) and any(c.isalpha() for c in str(v.value)) for v in node.values):
        yield node
        return
    for child in ast.iter_child_nodes(node):
        yield from _untranslatedTexts(child)


def textSinkProblems(source: str) -> List[Tuple[int, str]]:
    """(line, text) of untranslated texts given to the user (``TEXT_CALLS`` arguments, ``TEXT_PROPERTIES``)."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        values: List[ast.AST] = []
        if isinstance(node, ast.Call) and _callName(node) in TEXT_CALLS:
            values = list(node.args)
            if _callName(node) == "getExistingDirectory":
                values = values[1:2]  # (parent, caption, ...)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr in TEXT_PROPERTIES
                                                  for t in node.targets):
            values = [node.value]
        for value in values:
            problems += [(text.lineno, ast.unparse(text)) for text in _untranslatedTexts(value)]
    return problems


def translationCallProblems(source: str) -> List[Tuple[int, str]]:
    """``_()`` calls Slicer cannot extract or fill: not one literal, inside an f-string, placeholders not
    filled by name with ``.format``."""
    tree = ast.parse(source)
    problems = []
    inFString = {id(n) for f in ast.walk(tree) if isinstance(f, ast.JoinedStr) for n in ast.walk(f)}
    formatted = {id(n.func.value): {k.arg for k in n.keywords} for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "format"}
    for node in ast.walk(tree):
        if not (_isTranslationCall(node) and node.func.id == "_"):
            continue
        if id(node) in inFString:
            problems.append((node.lineno, "_() inside an f-string is not extracted"))
            continue
        if len(node.args) != 1 or node.keywords or not (
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            problems.append((node.lineno, f"_() of {ast.unparse(node)}: one string literal expected"))
            continue
        fields = {field for _, field, _, _ in string.Formatter().parse(node.args[0].value) if field is not None}
        if "" in fields or any(field.isdigit() for field in fields):
            problems.append((node.lineno, "placeholders need names: {name}, not {} or {0}"))
        elif fields and formatted.get(id(node)) != fields:
            problems.append((node.lineno, f"placeholders {sorted(fields)} must be filled with .format(name=...)"))
    return problems


def test_every_module_file_is_translated_or_listed_as_holding_no_user_text():
    files = {p.name for p in [MODULE_DIR / "LabelSharingSeg.py", *LIB.glob("*.py")]}
    assert files == {p.name for p in TRANSLATED} | NO_USER_TEXT
    assert not {p.name for p in TRANSLATED} & NO_USER_TEXT


@pytest.mark.parametrize("path", TRANSLATED, ids=lambda p: p.name)
def test_texts_shown_to_the_user_are_wrapped_and_extractable(path):
    source = path.read_text(encoding="utf-8")
    assert any(_isTranslationCall(node) for node in ast.walk(ast.parse(source))), "no text is translated"
    assert textSinkProblems(source) == [], "untranslated texts shown to the user"
    assert translationCallProblems(source) == []


@pytest.mark.parametrize("source, problem", [
    ('raise ModuleError("Choose a folder.")', "untranslated"),
    ('self.ui.statusLabel.text = f"{title}: done."', "untranslated"),
    ('raise ModuleError(_(f"{name} is missing"))', "one string literal"),
    ('raise ModuleError(_("{name} is missing"))', "must be filled"),
    ('raise ModuleError(_("{} is missing").format(name))', "need names"),
    ('label.text = f"{_(\'x\')}"', "inside an f-string"),
])
def test_the_checks_catch_untranslatable_texts(source, problem):
    found = [text for _, text in textSinkProblems(source)] and ["untranslated"]
    found += [message for _, message in translationCallProblems(source)]
    assert any(problem in message for message in found), found


def test_texts_are_translated_in_the_context_of_their_file(fakeSlicerModules):
    """tr() in LabelSharingSeg.py uses context "LabelSharingSeg", in the helpers "LabelSharingSegLib.<File>"
    (i18n.py getContext), the names update_translations.py gives the extracted texts."""
    slicer = fakeSlicerModules["slicer"]
    seen = []
    slicer.app.translate = lambda context, text: seen.append((context, text)) or f"<{text}>"
    for name in [n for n in sys.modules if n.split(".")[0] == "LabelSharingSegLib"]:
        del sys.modules[name]  # bind _ to the fake slicer.i18n (restored by the fixture)
    module = loadModuleFile()
    parent = mock.MagicMock()
    module.LabelSharingSeg(parent)
    assert parent.title == "<LabelSharingSeg>" and ("LabelSharingSeg", "LabelSharingSeg") in seen
    assert parent.categories == ["<Segmentation>"] and ("qSlicerAbstractCoreModule", "Segmentation") in seen
    widget = buildWidget(module, slicer)
    widget.trainPanel.addDatasetFolder("/data/task")
    widget.ui.addTaskButton.click()  # no model chosen
    message = slicer.util.errorDisplay.call_args[0][0]
    assert message == "<Choose the model to extend in the Segment section (model folder).>"
    assert ("LabelSharingSegLib.TrainPanel", "Choose the model to extend in the Segment section (model folder).") in seen


def test_messages_of_the_pure_helpers_are_translated_inside_slicer(fakeSlicerModules, tmp_path):
    """A helper usable without Slicer (ModelInfo) translates its messages in its own context once Slicer's
    i18n is there, with the placeholders filled after the lookup."""
    slicer = fakeSlicerModules["slicer"]
    seen = []
    slicer.app.translate = lambda context, text: seen.append((context, text)) or f"<{text}>"
    for name in [n for n in sys.modules if n.split(".")[0] == "LabelSharingSegLib"]:
        del sys.modules[name]  # bind _ to the fake slicer.i18n (restored by the fixture)
    from LabelSharingSegLib.ModelInfo import ModelInfo
    from LabelSharingSegLib.ModuleError import ModuleError

    (tmp_path / "model.json").write_text('{"tasks": {}}', encoding="utf-8")
    with pytest.raises(ModuleError) as raised:
        ModelInfo.load(tmp_path)
    assert str(raised.value) == f"<{tmp_path / 'model.json'} lists no tasks.>"
    assert seen == [("LabelSharingSegLib.ModelInfo", "{path} lists no tasks.")]
