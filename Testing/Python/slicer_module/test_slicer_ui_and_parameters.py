"""The .ui file against the code: every ``ui.<name>`` exists with a fitting class, and every
``SlicerParameterName`` is a parameter-node field of a type its widget can show (no Slicer)."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[3] / "LabelSharingSeg"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LabelSharingSeg.ui"
CODE_FILES = [MODULE_DIR / "LabelSharingSeg.py", *sorted((MODULE_DIR / "LabelSharingSegLib").glob("*.py"))]

#: widget-name ending -> classes that fit it
FITTING = [
    ("CollapsibleButton", {"ctkCollapsibleButton"}),
    ("Show3DButton", {"qMRMLSegmentationShow3DButton"}),
    ("Button", {"QPushButton"}),
    ("EditorWidget", {"qMRMLSegmentEditorWidget"}),
    ("Selector", {"qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox"}),
    ("PathLineEdit", {"ctkPathLineEdit"}),
    ("LineEdit", {"QLineEdit"}),
    ("ComboBox", {"QComboBox", "ctkComboBox"}),
    ("TableWidget", {"QTableWidget"}),
    ("ListWidget", {"QListWidget"}),
    ("SpinBox", {"QSpinBox", "QDoubleSpinBox"}),
    ("CheckBox", {"QCheckBox"}),
    ("TextEdit", {"QPlainTextEdit"}),
    ("ProgressBar", {"QProgressBar"}),
    ("Bar", {"QProgressBar"}),
    ("Label", {"QLabel"}),
]

#: parameter type (as written in the annotation) -> widget classes parameterNodeWrapper can bind it to
#: (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py)
BINDABLE = {
    "vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"},
    "vtkMRMLSegmentationNode": {"qMRMLNodeComboBox"},
    "pathlib.Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "str": {"QLineEdit"},
    "Choice": {"QComboBox", "ctkComboBox"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "bool": {"QCheckBox", "ctkCheckBox"},
}


def uiWidgets():
    root = ElementTree.parse(UI_FILE).getroot()
    widgets, parameters = {}, {}
    for widget in root.iter("widget"):
        widgets[widget.get("name")] = widget.get("class")
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                parameters[prop.find("string").text] = widget.get("name")
    return widgets, parameters


def parameterFields():
    tree = ast.parse((MODULE_DIR / "LabelSharingSeg.py").read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LabelSharingSegParameterNode"]
    fields = {}
    for statement in cls.body:
        if isinstance(statement, ast.AnnAssign):
            text = ast.unparse(statement.annotation)
            kind = "Choice" if "Choice(" in text else re.sub(r"^Annotated\[(\w+(?:\.\w+)?),.*\]$", r"\1", text)
            fields[statement.target.id] = kind
    return fields


def usedUiNames():
    names = set()
    for path in CODE_FILES:
        names |= set(re.findall(r"\bui\.([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))
    return names


def test_every_ui_name_the_code_uses_exists_with_a_fitting_class():
    widgets, _ = uiWidgets()
    used = usedUiNames()
    assert len(used) > 15
    for name in sorted(used):
        assert name in widgets, f"code uses ui.{name}, which is not in {UI_FILE.name}"
        fitting = next((classes for suffix, classes in FITTING if name.endswith(suffix)), None)
        assert fitting is not None, f"no naming rule for ui.{name}"
        assert widgets[name] in fitting, f"ui.{name} is a {widgets[name]}, expected one of {sorted(fitting)}"


def test_every_slicer_parameter_name_is_a_field_of_a_bindable_type():
    widgets, parameters = uiWidgets()
    fields = parameterFields()
    assert parameters, "no widget is bound to the parameter node"
    for parameter, widgetName in parameters.items():
        assert parameter in fields, f"{widgetName} binds '{parameter}', which is not a parameter-node field"
        assert widgets[widgetName] in BINDABLE[fields[parameter]], (
            f"{widgetName} ({widgets[widgetName]}) cannot show a {fields[parameter]} parameter"
        )


def test_the_train_section_has_the_keep_look_alikes_apart_checkbox_bound_to_a_false_by_default_field():
    """A QCheckBox bound to a bool field (``QCheckBoxToBoolConnector``, guiConnectors.py, 5.8.0 and main)."""
    root = ElementTree.parse(UI_FILE).getroot()
    [train] = [w for w in root.iter("widget") if w.get("name") == "trainCollapsibleButton"]
    inTrain = {w.get("name"): w for w in train.iter("widget")}
    box, label = inTrain["keepLookAlikesApartCheckBox"], inTrain["keepLookAlikesApartLabel"]
    assert box.get("class") == "QCheckBox" and label.find("property[@name='text']/string").text == (
        "Keep look-alike tasks apart:")
    properties = {prop.get("name"): prop[0].text for prop in box.findall("property")}
    assert properties["SlicerParameterName"] == "keepLookAlikesApart"
    assert "shared labels" in properties["toolTip"] and "output channels" in properties["toolTip"]
    tree = ast.parse((MODULE_DIR / "LabelSharingSeg.py").read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LabelSharingSegParameterNode"]
    [field] = [n for n in cls.body if isinstance(n, ast.AnnAssign) and n.target.id == "keepLookAlikesApart"]
    assert ast.unparse(field.annotation) == "bool" and ast.literal_eval(field.value) is False


def test_choice_parameters_match_the_code_constants():
    text = (MODULE_DIR / "LabelSharingSeg.py").read_text()
    for field, constant in [("device", "DEVICES"), ("modality", "MODALITIES"), ("exportFormat", "EXPORT_FORMATS")]:
        assert re.search(rf"{field}: Annotated\[str, Choice\(list\({constant}\)\)\]", text)


@pytest.mark.parametrize("section", ["Segment", "Correct the result", "Define a task", "Train / add task", "Export",
                                     "Log"])
def test_sections_exist(section):
    root = ElementTree.parse(UI_FILE).getroot()
    titles = [w.find("property[@name='text']/string").text for w in root.iter("widget") if w.get("class") == "ctkCollapsibleButton"]
    assert section in titles


#: qMRML classes without a scene: the module's own top widget, and the Show 3D button, a ctkMenuButton
#: that only takes a segmentation node (Modules/Loadable/Segmentations/Widgets/qMRMLSegmentationShow3DButton.h)
NO_SCENE = {"qMRMLWidget", "qMRMLSegmentationShow3DButton"}


def test_mrml_widgets_receive_the_scene():
    root = ElementTree.parse(UI_FILE).getroot()
    receivers = {c.find("receiver").text for c in root.iter("connection") if c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    widgets, _ = uiWidgets()
    mrmlWidgets = {name for name, cls in widgets.items() if cls.startswith("qMRML") and cls not in NO_SCENE}
    assert mrmlWidgets == receivers


def test_the_embedded_editor_follows_the_segment_section():
    """Its own node selectors are hidden and it keeps 10 undo states, as Slicer's Segment Editor
    module does; the properties are Q_PROPERTYs of qMRMLSegmentEditorWidget.h (5.8.0 and main)."""
    root = ElementTree.parse(UI_FILE).getroot()
    [editor] = [w for w in root.iter("widget") if w.get("class") == "qMRMLSegmentEditorWidget"]
    properties = {prop.get("name"): prop[0].text for prop in editor.findall("property")}
    assert properties == {"segmentationNodeSelectorVisible": "false", "sourceVolumeNodeSelectorVisible": "false",
                          "maximumNumberOfUndoStates": "10"}
    declared = {w.find("class").text: w.find("header").text for w in root.iter("customwidget")}
    assert declared["qMRMLSegmentEditorWidget"] == "qMRMLSegmentEditorWidget.h"
    assert declared["qMRMLSegmentationShow3DButton"] == "qMRMLSegmentationShow3DButton.h"
