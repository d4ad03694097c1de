"""The model library: remembered models with their tasks and labels, kept in the application settings,
wired into the Segment section's model choice (FAKE slicer/qt surface: fakes.py, fakes_qt.py; the
settings are a FakeSettings imitating QSettings, the tree a FakeTreeWidget imitating QTreeWidget)."""

from __future__ import annotations

import json
import shutil
from unittest import mock

import pytest

from LabelSharingSegLib.ModelLibrary import MAX_ENTRIES, SETTINGS_KEY, ModelLibrary
from LabelSharingSegLib.ModuleError import ModuleError

from .fakes_qt import fakeSettingsClass
from .widget_harness import buildWidget, loadModuleFile, writeModel


@pytest.fixture
def library():
    return ModelLibrary(fakeSettingsClass()())


def test_models_are_listed_newest_first_with_their_tasks_and_labels(library, tmp_path):
    first, second = writeModel(tmp_path / "first", ("abdomen",)), writeModel(tmp_path / "second", ("knee", "chest"))
    library.add(first, "trained")
    library.add(second, "opened")
    entries = library.entries()
    assert [e.name for e in entries] == ["second", "first"]
    assert entries[0].taskLines() == ["knee (CT): organ", "chest (CT): organ"]
    library.add(str(first) + "/", "opened")  # the same folder written differently: moved first, still "trained"
    assert [(e.name, e.source) for e in library.entries()] == [("first", "trained"), ("second", "opened")]
    with pytest.raises(ValueError, match="source"):
        library.add(first, "downloaded")


def test_the_library_survives_a_new_settings_object(tmp_path):
    """QSettings() made anew (a new session) reads the same application settings."""
    settingsClass = fakeSettingsClass()
    ModelLibrary(settingsClass()).add(writeModel(tmp_path / "m"), "trained")
    assert [e.folder for e in ModelLibrary(settingsClass()).entries()] == [tmp_path / "m"]
    assert json.loads(settingsClass().value(SETTINGS_KEY)) == [{"folder": str(tmp_path / "m"), "source": "trained"}]


def test_models_gone_from_disk_are_flagged_not_fatal(library, tmp_path):
    gone, broken, fine = (writeModel(tmp_path / name) for name in ("gone", "broken", "fine"))
    for folder in (gone, broken, fine):
        library.add(folder, "opened")
    shutil.rmtree(gone)
    (broken / "model.json").write_text("{")
    entries = {e.name: e for e in library.entries()}
    assert entries["fine"].available and entries["fine"].problem == ""
    assert not entries["gone"].available and "no longer exists" in entries["gone"].problem
    assert not entries["broken"].available and "Cannot read" in entries["broken"].problem
    assert entries["gone"].taskLines() == []
    library.forget(gone)
    assert sorted(e.name for e in library.entries()) == ["broken", "fine"]
    assert broken.is_dir()  # forgetting never touches files


@pytest.mark.parametrize("stored", ["{", "3", '{"folder": "x"}', '[{"source": "trained"}, 7]', None])
def test_unreadable_settings_read_as_an_empty_library(stored, tmp_path):
    settings = fakeSettingsClass()()
    if stored is not None:
        settings.setValue(SETTINGS_KEY, stored)
    library = ModelLibrary(settings)
    assert library.entries() == []
    library.add(writeModel(tmp_path / "m"), "trained")
    assert [e.name for e in library.entries()] == ["m"]


def test_opening_a_folder_reads_it_first_and_the_list_is_capped(library, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModuleError, match="no model.json"):
        library.open(tmp_path / "empty")
    assert library.records() == []
    assert library.open(writeModel(tmp_path / "m")).taskNames == ["first", "second"]
    for index in range(MAX_ENTRIES + 5):
        library.add(tmp_path / f"other{index}", "trained")
    records = library.records()
    assert len(records) == MAX_ENTRIES and records[0]["folder"].endswith(f"other{MAX_ENTRIES + 4}")


# ----------------------------------------------------------------------------- the panel
@pytest.fixture
def env(fakeSlicerModules, tmp_path):
    slicer = fakeSlicerModules["slicer"]
    slicer.app.temporaryPath = str(tmp_path / "tmp")
    slicer.app.slicerUserSettingsFilePath = str(tmp_path / "settings" / "slicer.org" / "Slicer.ini")
    (tmp_path / "tmp").mkdir()
    module = loadModuleFile()
    widget = buildWidget(module, slicer)
    widget.logic.dependencies._version = lambda name: "1.0"
    return module, widget, slicer


def _treeRows(widget):
    tree = widget.libraryPanel.tree
    return [(tree.topLevelItem(i).text(0), [tree.topLevelItem(i).child(j).text(0) for j in
                                             range(tree.topLevelItem(i).childCount())])
            for i in range(tree.topLevelItemCount())]


def test_the_section_sits_after_the_segment_section(env):
    """QBoxLayout.insertWidget(index, widget) right after the Segment section in the module's layout (and the
    Engine section right before it)."""
    module, widget, slicer = env
    layout = widget.ui.segmentCollapsibleButton.parentWidget().layout()
    index = layout.indexOf(widget.ui.segmentCollapsibleButton)
    assert layout.insertWidget.call_args_list == [mock.call(index, widget.enginePanel.section),
                                                  mock.call(index + 1, widget.libraryPanel.section)]


def test_trained_and_extended_models_join_the_library(env, tmp_path):
    module, widget, slicer = env
    node = widget._parameterNode
    node.modelsFolder, node.modelName = tmp_path, "abdomen_v1"
    widget.trainPanel.addDatasetFolder(str(tmp_path / "task"))
    widget.ui.trainButton.click()
    writeModel(tmp_path / "abdomen_v1", ("abdomen",))  # what the engine writes
    widget.fakeJob.finish(0)
    node.modelName = "abdomen_v2"
    widget.ui.addTaskButton.click()  # extends the model just trained (now the chosen one)
    writeModel(tmp_path / "abdomen_v2", ("abdomen", "knee"))
    widget.fakeJob.finish(0)
    assert [(e.name, e.source) for e in widget.library.entries()] == [("abdomen_v2", "added task"),
                                                                       ("abdomen_v1", "trained")]
    assert _treeRows(widget) == [("abdomen_v2", ["abdomen (CT)", "knee (CT)"]), ("abdomen_v1", ["abdomen (CT)"])]
    assert widget.libraryPanel.tree.currentItem().text(0) == "abdomen_v2"  # the chosen model is selected


def test_a_model_chosen_in_the_segment_section_is_remembered_and_clicking_one_chooses_it(env, tmp_path):
    module, widget, slicer = env
    first, second = writeModel(tmp_path / "first", ("abdomen",)), writeModel(tmp_path / "second", ("knee", "chest"))
    widget.ui.modelPathLineEdit.currentPath = str(tmp_path / "not_a_model")
    assert widget.library.entries() == []
    widget.ui.modelPathLineEdit.currentPath = str(first)
    widget.ui.modelPathLineEdit.currentPath = str(second)
    assert [(e.name, e.source) for e in widget.library.entries()] == [("second", "opened"), ("first", "opened")]
    tree = widget.libraryPanel.tree
    tree.click(tree.topLevelItem(1))  # "first"
    assert widget.ui.modelPathLineEdit.currentPath == str(first) and widget.ui.taskComboBox.currentText == "abdomen"
    secondItem = next(tree.topLevelItem(i) for i in range(2) if tree.topLevelItem(i).text(0) == "second")
    tree.click(secondItem.child(1))  # task "chest" of "second"
    assert widget.ui.modelPathLineEdit.currentPath == str(second)
    assert widget.ui.taskComboBox.currentText == "chest" and widget._parameterNode.task == "chest"


def test_a_vanished_model_is_shown_unavailable_and_clicking_it_changes_nothing(env, tmp_path):
    module, widget, slicer = env
    kept, gone = writeModel(tmp_path / "kept"), writeModel(tmp_path / "gone")
    widget.ui.modelPathLineEdit.currentPath = str(gone)
    widget.ui.modelPathLineEdit.currentPath = str(kept)
    shutil.rmtree(gone)
    widget.libraryPanel.refresh()
    tree = widget.libraryPanel.tree
    goneItem = next(tree.topLevelItem(i) for i in range(2) if "gone" in tree.topLevelItem(i).text(0))
    assert goneItem.text(0) == "gone (unavailable)" and "no longer exists" in goneItem.text(1)
    tree.click(goneItem)
    assert widget.ui.modelPathLineEdit.currentPath == str(kept)
    assert "no longer exists" in widget.ui.statusLabel.text
    slicer.util.errorDisplay.assert_not_called()
    widget.libraryPanel.forgetButton.click()
    assert [e.name for e in widget.library.entries()] == ["kept"] and _treeRows(widget) == [("kept", ["first (CT)",
                                                                                                       "second (CT)"])]


def test_open_model_folder_reads_a_folder_from_disk(env, tmp_path):
    """qt.QFileDialog.getExistingDirectory(parent, caption) returns "" when cancelled."""
    module, widget, slicer = env
    import qt  # the fake installed by the fixture

    (tmp_path / "empty").mkdir()
    qt.QFileDialog.getExistingDirectory.return_value = str(tmp_path / "empty")
    widget.libraryPanel.openButton.click()
    assert "no model.json" in slicer.util.errorDisplay.call_args[0][0] and widget.library.entries() == []
    qt.QFileDialog.getExistingDirectory.return_value = str(writeModel(tmp_path / "downloaded_before"))
    widget.libraryPanel.openButton.click()
    assert [(e.name, e.source) for e in widget.library.entries()] == [("downloaded_before", "opened")]
    assert widget.ui.modelPathLineEdit.currentPath == str(tmp_path / "downloaded_before")
    assert widget.segmentPanel.model is not None and widget.segmentPanel.model.folder == tmp_path / "downloaded_before"
    qt.QFileDialog.getExistingDirectory.return_value = ""
    widget.libraryPanel.openButton.click()
    assert len(widget.library.entries()) == 1


def test_the_library_is_kept_for_the_next_session(env, tmp_path):
    module, widget, slicer = env
    widget.ui.modelPathLineEdit.currentPath = str(writeModel(tmp_path / "m", ("abdomen",)))
    again = buildWidget(module, slicer)  # a new widget reads the same application settings
    assert _treeRows(again) == [("m", ["abdomen (CT)"])]
