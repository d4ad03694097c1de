"""model.json validation: hand-edited fields are refused, naming the file and the field, before
anything is built; a property test mutates one field at a time."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_model import make_config, make_model

from labelsharing.errors import LabelSharingError
from labelsharing.infer import Predictor
from labelsharing.model import describe_model
from labelsharing.model.schema import validate_model_config
from labelsharing.plan import EXAMPLE_ENTRY


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    return make_model(fake=False).save(tmp_path_factory.mktemp("schema") / "model")


def _edited(saved_model: Path, tmp_path: Path, edit=None, text: str | None = None) -> Path:
    """A copy of ``saved_model`` whose model.json is changed by ``edit(config)`` or replaced by ``text``."""
    folder = tmp_path / "edited"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((saved_model / "model.safetensors").read_bytes())
    if text is None:
        config = json.loads((saved_model / "model.json").read_text())
        config = edit(config) or config
        text = json.dumps(config)
    (folder / "model.json").write_text(text)
    return folder


def _set(path: str, value):
    """An edit setting the field at the dotted ``path`` (list indices as numbers) to ``value``."""
    def edit(config):
        *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


def _familiarity(task: str, features: int = 64 * 4, std: float = 1.0):
    """An edit adding a ``familiarity`` reference for ``task`` (the tiny network's bottleneck has 64 channels)."""
    def edit(config):
        reference = {"feature_mean": [0.0] * features, "feature_std": [std] * features,
                     "intensity_mean": [0.0] * 20, "intensity_std": [1.0] * 20, "feature_limit": 1.0,
                     "intensity_limit": 1.0, "confidence_floor": 0.5, "volumes": 3}
        config["familiarity"] = {"slices": 16, "grid": 2, "quantiles": [0.05, 0.25, 0.5, 0.75, 0.95],
                                 "tasks": {task: reference}}
    return edit


def _both(edit_a, edit_b):
    def edit(config):
        edit_a(config)
        edit_b(config)
    return edit


def _drop(path: str):
    def edit(config):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        del node[last]
    return edit


def _rename_label(config):
    for section in (config["plan"]["tasks"]["TaskB"], config["tasks"]["TaskB"]):
        section["labels"][" "] = section["labels"].pop("tiny")


# (edit, field named in the message, what the message says is allowed)
EDITS = {
    "n_shared huge": (_set("plan.n_shared", 10**12), "plan.n_shared", "1..255"),
    "n_shared not the largest label count": (_both(_set("plan.n_shared", 4), _set("architecture.kwargs.out_channels", 5)),
                                             "plan.n_shared", "largest label count"),
    "input size huge": (_set("input_size", [65536, 65536]), r"input_size\[0\]", "16..1024"),
    "input size not square": (_set("input_size", [32, 48]), "input_size", r"\[S, S\]"),
    "input size not a multiple of 16": (_set("input_size", [40, 40]), "input_size", "multiple of 16"),
    "input size float": (_set("input_size", [32.0, 32.0]), r"input_size\[0\]", "an integer"),
    "label value wraps in uint16": (_set("tasks.TaskA.labels.big.value", 70000), "tasks.TaskA.labels.big.value",
                                    "1..65535"),
    "label value 70000 in plan and task": (_both(_set("plan.tasks.TaskA.labels.big.value", 70000),
                                                 _set("tasks.TaskA.labels.big.value", 70000)),
                                           "plan.tasks.TaskA.labels.big.value", "1..65535"),
    "label value differs from the plan": (_set("tasks.TaskA.labels.big.value", 7), "tasks.TaskA.labels.big.value",
                                          "plan's 1"),
    "shared label above n_shared": (_both(_set("plan.tasks.TaskB.labels.tiny.shared", 4),
                                          _set("tasks.TaskB.labels.tiny.shared", 4)),
                                    "plan.tasks.TaskB.labels.tiny.shared", "1..plan.n_shared"),
    "two labels on one shared label": (_both(_set("plan.tasks.TaskB.labels.tiny.shared", 1),
                                             _set("tasks.TaskB.labels.tiny.shared", 1)),
                                       "shared", "its own shared"),
    "two labels with one value": (_both(_set("plan.tasks.TaskB.labels.tiny.value", 2),
                                        _set("tasks.TaskB.labels.tiny.value", 2)), "value", "its own value"),
    "empty label name": (_rename_label, "plan.tasks.TaskB.labels", "empty name"),
    "unknown top-level key": (_set("colour", 1), "colour", "allowed keys here: format_version, architecture"),
    "unknown task key": (_set("tasks.TaskA.colour", 1), "tasks.TaskA.colour",
                         "allowed keys here: modality, normalization"),
    "unknown network keyword": (_set("architecture.kwargs.adn_ordering", "NDA"), "architecture.kwargs.adn_ordering",
                                "allowed keys here: spatial_dims"),
    "unknown architecture": (_set("architecture.name", "ResNet"), "architecture.name", "'UNet'"),
    "3D network": (_set("architecture.kwargs.spatial_dims", 3), "architecture.kwargs.spatial_dims", "one of 2"),
    "three input channels": (_set("architecture.kwargs.in_channels", 3), "architecture.kwargs.in_channels", "one of 1"),
    "channel too wide": (_set("architecture.kwargs.channels.0", 4096), r"architecture.kwargs.channels\[0\]", "1..1024"),
    "strides do not match channels": (_set("architecture.kwargs.strides", [2, 2]), "architecture.kwargs.strides",
                                      "one fewer than channels"),
    "outputs do not match the plan": (_set("architecture.kwargs.out_channels", 9), "architecture.kwargs.out_channels",
                                      r"n_shared \+ 1 = 4"),
    "too many residual units": (_set("architecture.kwargs.num_res_units", 100), "architecture.kwargs.num_res_units",
                                "0..8"),
    "unknown norm": (_set("architecture.kwargs.norm", "group"), "architecture.kwargs.norm", "'instance', 'batch'"),
    "colour out of range": (_set("tasks.TaskA.labels.big.color", [2, 0, 0]), r"tasks.TaskA.labels.big.color\[0\]",
                            "0..1"),
    "colour as a string": (_set("tasks.TaskA.labels.big.color", "red"), "tasks.TaskA.labels.big.color",
                           "a list of 3 items"),
    "terminology not an entry": (_set("tasks.TaskA.labels.big.terminology", "liver"),
                                 "tasks.TaskA.labels.big.terminology", "a Slicer terminology entry.*7 parts"),
    "terminology with a tag separator": (_set("tasks.TaskA.labels.big.terminology", EXAMPLE_ENTRY + "|x"),
                                         "tasks.TaskA.labels.big.terminology", "'[|]'"),
    "unknown modality": (_set("tasks.TaskA.modality", "PET"), "tasks.TaskA.modality", "'CT', 'MR', 'XR', 'other'"),
    "axis 3": (_set("tasks.TaskA.axis", 3), "tasks.TaskA.axis", "null, 0, 1, 2"),
    "axis true": (_set("tasks.TaskA.axis", True), "tasks.TaskA.axis", "null, 0, 1, 2"),
    "clip reversed": (_set("tasks.TaskA.normalization.clip", [5.0, 1.0]), "tasks.TaskA.normalization.clip",
                      "low < high"),
    "std zero": (_set("tasks.TaskA.normalization.std", 0), "tasks.TaskA.normalization.std", "> 0"),
    "std beyond any float": (_set("tasks.TaskA.normalization.std", 10**400), "tasks.TaskA.normalization.std",
                             "finite"),
    "mean not a number": (_set("tasks.TaskA.normalization.mean", math.nan), "tasks.TaskA.normalization.mean",
                          "finite"),
    "unknown normalisation": (_set("tasks.TaskA.normalization.scheme", "minmax"), "tasks.TaskA.normalization.scheme",
                              "'ct'"),
    "extra normalisation field": (_set("tasks.TaskB.normalization", {"scheme": "percentile", "clip": [0, 1]}),
                                  "tasks.TaskB.normalization.clip", "allowed keys here: scheme"),
    "tasks missing": (_drop("tasks"), "tasks", "is missing"),
    "a task missing": (_drop("tasks.TaskB"), "tasks", "the tasks of plan.tasks"),
    "checksum malformed": (_set("weights_sha256", "xyz"), "weights_sha256", "64 lowercase hexadecimal"),
    "checksum missing": (_drop("weights_sha256"), "weights_sha256", "is missing"),
    "parent a number": (_set("parent", 5), "parent", "null or a non-empty string"),
    "familiarity of an unknown task": (_familiarity("TaskC"), r"familiarity\.tasks\.TaskC", "not a task of the model"),
    "familiarity of another network": (_familiarity("TaskA", features=10), r"familiarity\.tasks\.TaskA\.feature_mean",
                                       "has 10 items; the rule is 256"),
    "familiarity spread zero": (_familiarity("TaskA", std=0.0), r"familiarity\.tasks\.TaskA\.feature_std\[0\]",
                                "is 0.0; allowed"),
    "reference slices of another network": (
        _both(_familiarity("TaskA"), _set("familiarity.tasks.TaskA.feature_slices",
                                          {"shape": [1, 10], "dtype": "float16", "base64": "AAAAAAAAAAAAAA=="})),
        r"familiarity\.tasks\.TaskA\.feature_slices\.shape", "rows of 10 items; the rule is 256"),
    "reference slices cut short": (
        _both(_familiarity("TaskA"), _set("familiarity.tasks.TaskA.feature_slices",
                                          {"shape": [2, 256], "dtype": "float16", "base64": "AAAA"})),
        r"familiarity\.tasks\.TaskA\.feature_slices\.base64", "holds 1 numbers; the rule is shape 2 x 256"),
    "reference slices as numbers": (
        _both(_familiarity("TaskA"), _set("familiarity.tasks.TaskA.feature_slices", [[0.0] * 256])),
        r"familiarity\.tasks\.TaskA\.feature_slices", "an object with keys shape, dtype, base64"),
    "apart group naming an unknown task": (_set("plan.apart", [["TaskA", "TaskC"]]), r"plan\.apart\[0\]",
                                           "distinct tasks of plan.tasks"),
    "apart group of one task": (_set("plan.apart", [["TaskA"]]), r"plan\.apart\[0\]", r"a list of 2\.\."),
    "small islands of an unknown task": (_set("small_islands", {"TaskC": {"big": 10.0}}), r"small_islands\.TaskC",
                                         "not a task of the model"),
    "small islands of an unknown label": (_set("small_islands", {"TaskA": {"tiny": 10.0}}),
                                          r"small_islands\.TaskA\.tiny", "not a label of the task"),
    "small islands of size zero": (_set("small_islands", {"TaskA": {"big": 0.0}}), r"small_islands\.TaskA\.big",
                                   "allowed"),
    "future format": (_set("format_version", 7), "model format 7", "reads formats 1 to 6"),
    "format as text": (_set("format_version", "2"), "model format '2'", "reads formats 1 to 6"),
}


@pytest.mark.parametrize("case", EDITS, ids=list(EDITS))
def test_edited_model_json_is_refused_naming_the_field(case, saved_model, tmp_path):
    edit, field, allowed = EDITS[case]
    folder = _edited(saved_model, tmp_path, edit)
    for use in (Predictor.from_model_dir, describe_model):
        with pytest.raises(LabelSharingError) as refused:
            use(folder)
        message = str(refused.value)
        assert str(folder / "model.json") in message
        assert re.search(field, message) and re.search(allowed, message), message


DAMAGED_TEXT = {
    "not JSON": "{",
    "not an object": "[]",
    "deeply nested": "[" * 100_000 + "]" * 100_000,
    "integer of 5000 digits": '{"format_version": ' + "1" * 5000 + "}",
    "not UTF-8": "\udcff",
}


@pytest.mark.parametrize("case", DAMAGED_TEXT, ids=list(DAMAGED_TEXT))
def test_damaged_model_json_is_a_user_error(case, saved_model, tmp_path):
    folder = tmp_path / "edited"
    folder.mkdir()
    (folder / "model.json").write_bytes(DAMAGED_TEXT[case].encode("utf-8", "surrogateescape"))
    with pytest.raises(LabelSharingError, match="model.json (is damaged|does not hold a JSON object|has model format)"):
        describe_model(folder)


def test_info_on_huge_n_shared_answers_at_once(saved_model, tmp_path):
    folder = _edited(saved_model, tmp_path, _set("plan.n_shared", 10**12))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-m", "labelsharing", "info", str(folder)], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 2 and "plan.n_shared" in result.stderr and "Traceback" not in result.stderr


def test_info_tolerates_free_form_history(saved_model, tmp_path):
    history = [{"kind": "train"}, "a note", {"epochs": "many", "best_epoch": 1, "best_mean_dice": "high"}]
    text = describe_model(_edited(saved_model, tmp_path, _set("history", history)))
    assert "History" in text and "train" in text


def test_info_describes_a_federated_run(saved_model, tmp_path):
    from labelsharing.federated import history_entry, round_record  # what the coordinator writes (no Flower needed)

    dice = {"TaskA": {"mean": 0.5, "labels": {"big": 0.75, "mid": 0.25}}, "TaskB": {"mean": 0.125, "labels": {"large": 0.125}}}
    rounds = [round_record(1, ["site-1", "site-2"], ["site-1", "site-2"], 1.5, dice, 2_000_000, 1_900_000, 3.0),
              round_record(2, ["site-1", "site-2"], ["site-1"], 1.25, {"TaskA": dice["TaskA"]}, 2_000_000, 950_000, 2.0)]
    record = history_entry({"local-epochs": 2, "steps-per-epoch": 50, "min-sites": 1, "proximal-mu": 0.01},
                           {"site-1": ["TaskA"], "site-2": ["TaskB"]}, rounds)
    text = describe_model(_edited(saved_model, tmp_path, _set("history", [record])))
    [row] = [line for line in text.splitlines() if line.startswith("federated")]
    assert "2 rounds" in row and "TaskA, TaskB" in row  # not "0" epochs: the epochs happened at the sites
    assert "2 sites, FedProx (mu 0.01) weighted by training slices, 2 local epoch(s) of 50 steps per round" in text
    assert re.search(r"^site-1 +TaskA$", text, re.M) and re.search(r"^site-2 +TaskB$", text, re.M)
    assert re.search(r"^1 +site-1, site-2 +- +1.500 +0.500 +0.125 +2.00 +1.90 +3.0$", text, re.M)
    assert re.search(r"^2 +site-1 +site-2 +1.250 +0.500 +- +2.00 +0.95 +2.0$", text, re.M)  # who was missing
    assert "Validation Dice after the last round (2)" in text and re.search(r"^TaskA +big +0.750$", text, re.M)


def test_info_describes_a_federated_add_task(saved_model, tmp_path):
    from labelsharing.federated import history_entry, round_record

    dice = {"TaskA": {"mean": 0.5, "labels": {"big": 0.5}}, "TaskB": {"mean": 0.75, "labels": {"large": 0.75}}}
    record = history_entry({"local-epochs": 1, "steps-per-epoch": 20, "min-sites": 2, "site-weighting": "tasks"},
                           {"site-1": ["TaskA"], "site-2": ["TaskB"]},
                           [round_record(1, ["site-1", "site-2"], ["site-1", "site-2"], 1.0, dice, 1, 1, 1.0)])
    record.update(added_task="TaskB", replay=0.5, parent="/models/parent",
                  forgetting={"TaskA": {"before": 0.625, "after": 0.5}, "TaskB": {"before": 0.0, "after": 0.75}})
    text = describe_model(_edited(saved_model, tmp_path, _set("history", [record])))
    assert "2 sites, FedAvg each task an equal share, 1 local epoch(s) of 20 steps per round" in text
    assert "A joining site added 'TaskB' (replay 0.5" in text
    assert re.search(r"^TaskA +0.625 +0.500 +-0.125$", text, re.M)
    assert re.search(r"^TaskB \(new\) +0.000 +0.750 +\+0.750$", text, re.M)


# ----------------------------------------------------------------------------- property tests
def _valid_config() -> dict:
    config = make_config()
    config.update(weights_sha256="0" * 64, parameters=1234, versions={"torch": "2.0", "x": [1, {"y": None}]},
                  history=[{"kind": "train", "anything": {"goes": [1, 2]}}])
    config["tasks"]["TaskA"].update(dataset="/data/TaskA")
    config["tasks"]["TaskA"]["labels"]["big"]["terminology"] = EXAMPLE_ENTRY
    return config


FREE = {("history",), ("versions",)}
OPTIONAL = {"labelsharing_version", "parameters", "history", "parent", "versions", "weights_sha256", "dataset",
            "terminology", "color", "relative_size", "presence", "num_res_units", "norm"}
ADDABLE = OPTIONAL | {"kernel_size", "up_kernel_size", "act", "dropout", "bias"}  # optional keys absent from VALID


def _paths(node, prefix=()) -> list[tuple]:
    """Key paths of every value below ``node``, not entering the free-form fields."""
    paths = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        path = (*prefix, key)
        paths.append(path)
        if path not in FREE:
            paths += _paths(value, path)
    return paths


def _get(config, path):
    for key in path:
        config = config[key]
    return config


def _replaced(config: dict, path: tuple, value) -> dict:
    mutated = copy.deepcopy(config)
    _get(mutated, path[:-1])[path[-1]] = value
    return mutated


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


VALID = _valid_config()
PATHS = _paths(VALID)
VALUES = {
    "NoneType": st.none(), "bool": st.booleans(), "int": st.integers(), "float": st.floats(),
    "str": st.text(max_size=5), "list": st.lists(st.integers(), max_size=3),
    "dict": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
}


def _allowed_kinds(path: tuple, value) -> set[str]:
    """Kinds of value the schema accepts at ``path`` (besides the value's own)."""
    kinds = {type(value).__name__}
    if isinstance(value, float):
        kinds.add("int")
    if path[-1] == "axis":
        kinds |= {"NoneType", "int"}
    if path == ("parent",):
        kinds |= {"NoneType", "str"}
    return kinds


@st.composite
def _wrong_type(draw):
    path = draw(st.sampled_from(PATHS))
    kind = draw(st.sampled_from(sorted(set(VALUES) - _allowed_kinds(path, _get(VALID, path)))))
    return path, draw(VALUES[kind])


def _out_of_range(path: tuple, value):
    """Numbers the schema refuses at ``path`` (None: no numeric rule there)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    name = path[-1] if isinstance(path[-1], str) else path[-2]
    ints = st.integers(min_value=-10**15, max_value=10**15)
    if name in ("n_shared", "out_channels", "spatial_dims", "in_channels", "value", "shared", "input_size",
                "format_version"):
        return ints.filter(lambda v: v != value)  # each is tied to another field, or fixed
    outside = {"channels": (1, 1024), "strides": (1, 2), "num_res_units": (0, 8), "axis": (0, 2),
               "parameters": (0, 10**12)}
    if name in outside:
        lo, hi = outside[name]
        return ints.filter(lambda v: not lo <= v <= hi)
    non_finite = st.sampled_from([math.nan, math.inf, -math.inf, -10**400])
    if name in ("color", "relative_size", "presence"):
        return st.floats().filter(lambda v: not 0 <= v <= 1)
    if name == "std":
        return st.one_of(st.floats(max_value=0), non_finite)
    if name == "clip":
        other = _get(VALID, (*path[:-1], 1 - path[-1]))
        return st.one_of(non_finite, st.floats(min_value=other) if path[-1] == 0 else st.floats(max_value=other))
    return st.one_of(non_finite, st.integers(min_value=10**309))  # mean: any finite number


NUMERIC = [p for p in PATHS if _out_of_range(p, _get(VALID, p)) is not None]
DICTS = [p for p in [(), *PATHS] if isinstance(_get(VALID, p), dict) and p not in FREE]
REMOVABLE = [p for p in PATHS if p[-1] not in OPTIONAL and isinstance(_get(VALID, p[:-1]), dict)]


@st.composite
def _refused_mutation(draw):
    how = draw(st.sampled_from(["type", "range", "unknown key", "removed key"]))
    if how == "type":
        path, value = draw(_wrong_type())
        return _replaced(VALID, path, value)
    if how == "range":
        path = draw(st.sampled_from(NUMERIC))
        return _replaced(VALID, path, draw(_out_of_range(path, _get(VALID, path))))
    if how == "unknown key":
        path = draw(st.sampled_from(DICTS))
        key = draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in _get(VALID, path) and k not in ADDABLE))
        return _replaced(VALID, (*path, key), draw(st.sampled_from([0, "x", None, [], {}])))
    path = draw(st.sampled_from(REMOVABLE))
    mutated = copy.deepcopy(VALID)
    del _get(mutated, path[:-1])[path[-1]]
    return mutated


def test_the_unmutated_config_is_valid():
    assert validate_model_config(copy.deepcopy(VALID)) == VALID


@settings(max_examples=400, deadline=None)
@given(_refused_mutation())
def test_every_mutated_field_is_refused_with_the_project_error(mutated):
    with pytest.raises(LabelSharingError, match="model.json: "):
        validate_model_config(mutated)


@settings(max_examples=50, deadline=None)
@given(st.sets(st.sampled_from([p for p in PATHS if p[-1] in OPTIONAL]), max_size=4))
def test_optional_fields_may_be_left_out(paths):
    mutated = copy.deepcopy(VALID)
    for path in paths:
        del _get(mutated, path[:-1])[path[-1]]
    assert validate_model_config(mutated) is mutated


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_random_documents_raise_only_the_project_error(document):
    with pytest.raises(LabelSharingError):
        validate_model_config(document)
