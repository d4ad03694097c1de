"""The schema of ``model.json``: every field's type, range and allowed keys, checked before use.

A model folder travels between sites and may be edited by hand, so nothing in ``model.json``
reaches the network constructor, an array allocation or a cast unchecked. :func:`validate_model_config`
walks the whole document with small typed field checkers (:mod:`labelsharing.model.json_fields`),
then checks the rules that tie fields together (output channels = shared labels + 1, the plan and
the tasks agree, ...).
Every refusal is a :class:`~labelsharing.errors.LabelSharingError` naming the file, the field as a
JSON path (``tasks.Liver.labels.liver.value``), what was found and what is allowed. Only
``history`` entries and ``versions`` values are free-form.

Needs no torch or SimpleITK (``labelsharing info`` uses it).
"""

from __future__ import annotations

import base64
import binascii

import math
from typing import Any, Callable, Mapping

from labelsharing.data import NORMALIZATION_BY_MODALITY, PLANES
from labelsharing.errors import LabelSharingError
from labelsharing.model.json_fields import Array, Choice, Either, Field, Fields, FreeList, Integer, Names, Number, \
    Pattern, Refusal, Switch, TerminologyEntry, Text, join_path

__all__ = [
    "FORMAT_VERSION",
    "MAX_SHARED",
    "MAX_LABEL_VALUE",
    "validate_model_config",
    "validate_architecture",
]

#: Version of the ``model.json`` layout written by this package (2: adds ``weights_sha256``;
#: 3: adds the optional ``familiarity`` references; 4: adds the optional ``plan.splits`` of tasks
#: split by overlapping segments; 5: adds the optional ``plan.apart``, look-alike groups kept apart,
#: whose shared labels may run beyond the largest label count; 6: adds the optional ``small_islands``
#: removed after prediction; formats 2 to 5 read as 6 unchanged).
FORMAT_VERSION = 6
#: Most shared labels (network outputs besides background) a model may have.
MAX_SHARED = 255
#: Largest task label value (label maps are written as uint16 at most).
MAX_LABEL_VALUE = 65535


# --------------------------------------------------------------------------------- the schema
_SHARED = Integer(1, MAX_SHARED)
_VALUE = Integer(1, MAX_LABEL_VALUE)
_FRACTION = Number(0.0, 1.0)

UNET_KWARGS = Fields(
    required={
        "spatial_dims": Choice(2),
        "in_channels": Choice(1),
        "out_channels": Integer(2, MAX_SHARED + 1),
        "channels": Array(Integer(1, 1024), 2, 8),
        "strides": Array(Integer(1, 2), 1, 7),
    },
    optional={
        "kernel_size": Choice(1, 3, 5, 7),
        "up_kernel_size": Choice(1, 3, 5, 7),
        "num_res_units": Integer(0, 8),
        "act": Choice("prelu", "relu", "leakyrelu", "elu"),
        "norm": Choice("instance", "batch"),
        "dropout": Number(0.0, 0.9),
        "bias": Choice(True, False),
    },
)
ARCHITECTURE = Fields({"name": Choice("UNet"), "kwargs": UNET_KWARGS})

PLAN = Fields({
    "n_shared": _SHARED,
    "tasks": Names(Fields({"labels": Names(Fields(
        {"value": _VALUE, "shared": _SHARED},
        {"relative_size": _FRACTION, "presence": _FRACTION, "pin": Text()},
    ), hi=MAX_SHARED, what="label names")}), what="task names"),
}, {"splits": Names(Array(Text(), 2, MAX_SHARED), what="split task names"),
    "apart": Array(Array(Text(), 2, 100_000), 0, 100_000)})

NORMALIZATION = Switch("scheme", {
    "ct": Fields({"scheme": Choice("ct"), "clip": Array(Number(), 2, 2), "mean": Number(), "std": Number(0.0, above=True)}),
    "zscore_foreground": Fields({"scheme": Choice("zscore_foreground")}),
    "percentile": Fields({"scheme": Choice("percentile")}),
})

# Slicing: ``plane`` (+ ``target_spacing``, mm); models written before ``plane`` have ``axis`` instead,
# an image axis of the stored file (see labelsharing.data.orientation.Slicing). A task has one of them.
TASK = Fields(
    required={
        "modality": Choice(*NORMALIZATION_BY_MODALITY),
        "normalization": NORMALIZATION,
        "labels": Names(Fields({"value": _VALUE, "shared": _SHARED},
                               {"color": Array(_FRACTION, 3, 3), "terminology": TerminologyEntry()}),
                        hi=MAX_SHARED, what="label names"),
    },
    optional={"plane": Choice(None, *PLANES), "target_spacing": Array(Number(0.0, 1e4, above=True), 2, 2),
              "axis": Choice(None, 0, 1, 2), "dataset": Text(), "validation_cases": Array(Text(), 0, 1_000_000),
              "training_cases": Array(Text(), 0, 1_000_000)},
)

APPEARANCE = Fields({"tasks": Array(Text(), 1, 100_000),
                     "confusion": Array(Array(Either(_FRACTION, Choice(None)), 1, 100_000), 1, 100_000)})

_POSITIVE = Number(0.0, 1e30, above=True)
# (n, d) rows packed as little-endian floats in base64 (labelsharing.infer.familiarity.pack_rows).
_PACKED_ROWS = Fields({"shape": Array(Integer(1, 1_000_000), 2, 2), "dtype": Choice("float16", "float32"),
                       "base64": Pattern(r"[A-Za-z0-9+/]*={0,2}", "base64 text")})
# Per task: its training images' feature statistics (labelsharing.infer.familiarity.reference_entry).
FAMILIARITY = Fields({
    "slices": Integer(1, 4096),
    "grid": Integer(1, 16),
    "quantiles": Array(_FRACTION, 1, 99),
    "tasks": Names(Fields(required={
        "feature_mean": Array(Number(-1e30, 1e30), 1, 1_000_000), "feature_std": Array(_POSITIVE, 1, 1_000_000),
        "intensity_mean": Array(Number(-1e30, 1e30), 1, 99 * 256), "intensity_std": Array(_POSITIVE, 1, 99 * 256),
        "feature_limit": _POSITIVE, "intensity_limit": _POSITIVE, "confidence_floor": _FRACTION,
        "volumes": Integer(1, 10**9),
    }, optional={  # nearest-slice references (without them, the mean slice) and the raw-intensity cue
        "feature_slices": _PACKED_ROWS, "intensity_slices": _PACKED_ROWS,
        "raw_mean": Array(Number(-1e30, 1e30), 1, 99), "raw_std": Array(_POSITIVE, 1, 99),
        "raw_slices": _PACKED_ROWS, "raw_limit": _POSITIVE,
    }), lo=0, what="task names"),
})

# Per task, per label: the smallest predicted island kept, in mm³ (mm² for 2D images);
# labelsharing.infer.small_islands.
SMALL_ISLANDS = Names(Names(_POSITIVE, what="label names"), lo=0, what="task names")

MODEL_CONFIG = Fields(
    required={
        "format_version": Choice(FORMAT_VERSION),
        "architecture": ARCHITECTURE,
        "input_size": Array(Integer(16, 1024), 2, 2),
        "plan": PLAN,
        "tasks": Names(TASK, what="task names"),
    },
    optional={
        "weights_sha256": Pattern(r"[0-9a-f]{64}", "64 lowercase hexadecimal digits (a SHA-256)"),
        "labelsharing_version": Text(),
        "parameters": Integer(0, 10**12),
        "history": FreeList(),
        "parent": Either(Choice(None), Text()),
        "versions": Names(Field(), lo=0, what="package names"),
        "appearance": APPEARANCE,
        "familiarity": FAMILIARITY,
        "small_islands": SMALL_ISLANDS,
    },
)


# --------------------------------------------------------------------------------- entry points
def validate_architecture(architecture: Any, source: str = "the architecture") -> None:
    """Check an ``architecture`` entry (``{"name": "UNet", "kwargs": {...}}``) before building it.

    Raises:
        LabelSharingError: naming ``source`` and the field, if anything is not allowed.
    """
    _report(source, lambda: _check_architecture(architecture, "architecture"))


def validate_model_config(config: Any, source: str = "model.json", hint: str = "") -> dict:
    """Check a whole ``model.json`` document (format :data:`FORMAT_VERSION`), fields and rules.

    Args:
        config: the parsed JSON document.
        source: the file (or description) named in error messages.
        hint: what to do, appended to error messages.

    Returns:
        ``config`` itself, unchanged.

    Raises:
        LabelSharingError: naming ``source``, the field's JSON path, what was found and what
            is allowed, for the first problem found.
    """
    _report(source, lambda: _check_config(config), hint)
    return config


def _report(source: str, check: Callable[[], None], hint: str = "") -> None:
    try:
        check()
    except Refusal as refusal:
        message = f"{source}: {refusal.path or 'the document'} {refusal.problem}."
        raise LabelSharingError(f"{message} {hint}" if hint else message) from None


def _check_architecture(architecture: Any, path: str) -> None:
    ARCHITECTURE.check(architecture, path)
    _check_levels(architecture["kwargs"], join_path(path, "kwargs"))


def _check_levels(kwargs: Mapping, path: str) -> None:
    if len(kwargs["strides"]) != len(kwargs["channels"]) - 1:
        raise Refusal(join_path(path, "strides"), f"has {len(kwargs['strides'])} items; the rule is one fewer than "
                                               f"channels ({len(kwargs['channels'])})")


def _check_config(config: Any) -> None:
    MODEL_CONFIG.check(config, "")
    kwargs = config["architecture"]["kwargs"]
    _check_levels(kwargs, "architecture.kwargs")
    side, other = config["input_size"]
    step = math.prod(kwargs["strides"])
    if side != other or side % 16 or side % step:
        raise Refusal("input_size", f"is {config['input_size']}; allowed: [S, S] with S a multiple of 16 "
                                     f"and of the product of the strides ({step})")
    for task, body in config["tasks"].items():
        if ("plane" in body) == ("axis" in body):
            raise Refusal(join_path("tasks", task), "has " + ("both" if "plane" in body else "neither")
                           + " of 'plane' and 'axis'; the rule is either 'plane' or 'axis' (models before 'plane')")
        if "target_spacing" in body and "axis" in body:
            raise Refusal(join_path("tasks", task, "target_spacing"), "is given with 'axis'; the rule is "
                                                                   "'target_spacing' only with 'plane'")
        clip = body["normalization"].get("clip")
        if clip is not None and not clip[0] < clip[1]:
            raise Refusal(join_path("tasks", task, "normalization", "clip"), f"is {clip}; allowed: [low, high] with low < high")
    n_shared = config["plan"]["n_shared"]
    if kwargs["out_channels"] != n_shared + 1:
        raise Refusal("architecture.kwargs.out_channels",
                       f"is {kwargs['out_channels']}; the rule is plan.n_shared + 1 = {n_shared + 1}")
    _check_plan_matches_tasks(config["plan"], config["tasks"])
    if "appearance" in config:
        _check_appearance(config["appearance"], config["tasks"])
    if "familiarity" in config:
        _check_familiarity(config["familiarity"], config["tasks"], kwargs["channels"][-1])
    if "small_islands" in config:
        _check_small_islands(config["small_islands"], config["tasks"])


def _check_small_islands(small_islands: Mapping, tasks: Mapping) -> None:
    """Rules name tasks of the model and labels of those tasks."""
    for task, sizes in small_islands.items():
        if task not in tasks:
            raise Refusal(join_path("small_islands", task), f"is not a task of the model ({sorted(tasks)})")
        labels = tasks[task]["labels"]
        for name in sizes:
            if name not in labels:
                raise Refusal(join_path("small_islands", task, name), f"is not a label of the task ({sorted(labels)})")


def _check_familiarity(familiarity: Mapping, tasks: Mapping, bottom_channels: int) -> None:
    """References name tasks of the model; their vectors fit the network's bottleneck and the quantiles."""
    cells = familiarity["grid"] ** 2
    sizes = {"feature": bottom_channels * cells, "intensity": len(familiarity["quantiles"]) * cells,
             "raw": len(familiarity["quantiles"])}
    for task, entry in familiarity["tasks"].items():
        if task not in tasks:
            raise Refusal(join_path("familiarity.tasks", task), f"is not a task of the model ({sorted(tasks)})")
        if "raw_limit" in entry and not all(f"raw_{k}" in entry for k in ("mean", "std")):
            raise Refusal(join_path("familiarity.tasks", task), "has raw_limit without raw_mean and raw_std")
        for kind, size in sizes.items():
            rows = [((f"{kind}_mean",), entry.get(f"{kind}_mean")), ((f"{kind}_std",), entry.get(f"{kind}_std"))]
            if f"{kind}_slices" in entry:
                _check_packed_rows(entry[f"{kind}_slices"], join_path("familiarity.tasks", task, f"{kind}_slices"), size)
            for keys, row in rows:
                if row is not None and len(row) != size:
                    raise Refusal(join_path("familiarity.tasks", task, *keys), f"has {len(row)} items; the rule "
                                                                          f"is {size} (from the network and settings)")


def _check_packed_rows(packed: Mapping, path: str, columns: int) -> None:
    """Rows of ``columns`` numbers, and the base64 text holds exactly ``shape``'s rows of ``dtype``."""
    rows, stored_columns = packed["shape"]
    if stored_columns != columns:
        raise Refusal(join_path(path, "shape"), f"has rows of {stored_columns} items; the rule is {columns} "
                                                "(from the network and settings)")
    try:
        size = len(base64.b64decode(packed["base64"], validate=True)) // (2 if packed["dtype"] == "float16" else 4)
    except binascii.Error:
        raise Refusal(join_path(path, "base64"), "is not valid base64 text") from None
    if size != rows * columns:
        raise Refusal(join_path(path, "base64"), f"holds {size} numbers; the rule is shape {rows} x {columns}")


def _check_appearance(appearance: Mapping, tasks: Mapping) -> None:
    """The look-alike matrix is square over distinct tasks of the model."""
    names = appearance["tasks"]
    unknown = [n for n in names if n not in tasks]
    if unknown or len(set(names)) != len(names):
        raise Refusal("appearance.tasks", f"is {names}; the rule is distinct task names of the model ({sorted(tasks)})")
    for index, row in enumerate(appearance["confusion"]):
        if len(row) != len(names) or len(appearance["confusion"]) != len(names):
            raise Refusal(join_path("appearance.confusion", index), f"has {len(row)} items in a matrix of "
                                                                 f"{len(appearance['confusion'])} rows; the rule is "
                                                                 f"{len(names)} x {len(names)} (one per task)")


def _check_apart_groups(groups: list, planned: Mapping) -> None:
    """Each look-alike group kept apart names distinct tasks of the plan, each task in one group at most."""
    seen: set = set()
    for index, group in enumerate(groups):
        if not set(group) <= set(planned) or len(set(group)) != len(group) or seen & set(group):
            raise Refusal(join_path("plan.apart", index), f"is {group}; the rule is distinct tasks of plan.tasks "
                                                          "(each in one group at most)")
        seen.update(group)


def _check_plan_matches_tasks(plan: Mapping, tasks: Mapping) -> None:
    """The plan and the task entries name the same tasks and labels, each task a bijection."""
    planned, n_shared = plan["tasks"], plan["n_shared"]
    if set(planned) != set(tasks):
        raise Refusal("tasks", f"names tasks {sorted(tasks)}; the rule is the tasks of plan.tasks {sorted(planned)}")
    splits = plan.get("splits", {})
    for parent, subtasks in splits.items():
        unknown = [s for s in subtasks if s not in planned]
        if unknown or len(set(subtasks)) != len(subtasks):
            raise Refusal(join_path("plan.splits", parent), f"is {subtasks}; the rule is distinct tasks of plan.tasks")
        owners: dict[int, str] = {}
        for sub in subtasks:
            for name, entry in planned[sub]["labels"].items():
                if entry["shared"] in owners:
                    raise Refusal(join_path("plan.tasks", sub, "labels", name, "shared"),
                                  f"is {entry['shared']}, as for sibling '{owners[entry['shared']]}'; sub-tasks of "
                                  f"'{parent}' need their own shared labels")
                owners[entry["shared"]] = sub
    _check_apart_groups(plan.get("apart", []), planned)
    most = max([len(body["labels"]) for body in planned.values()]
               + [sum(len(planned[s]["labels"]) for s in subtasks) for subtasks in splits.values()])
    rule = "the largest label count of any task or split task"
    if "apart" in plan:  # groups kept apart take shared labels beyond the largest label count
        most = max([most, *(entry["shared"] for body in planned.values() for entry in body["labels"].values())])
        rule += " or the highest shared label of plan.tasks"
    if n_shared != most:
        raise Refusal("plan.n_shared", f"is {n_shared}; the rule is {rule} ({most})")
    for task, body in planned.items():
        labels = tasks[task]["labels"]
        if set(labels) != set(body["labels"]):
            raise Refusal(join_path("tasks", task, "labels"), f"names labels {sorted(labels)}; the rule is the labels "
                                                           f"of plan.tasks ({sorted(body['labels'])})")
        for name, entry in body["labels"].items():
            for key in ("value", "shared"):
                if labels[name][key] != entry[key]:
                    raise Refusal(join_path("tasks", task, "labels", name, key),
                                   f"is {labels[name][key]}; the rule is the plan's {entry[key]}")
            if entry["shared"] > n_shared:
                raise Refusal(join_path("plan.tasks", task, "labels", name, "shared"),
                               f"is {entry['shared']}; allowed: 1..plan.n_shared ({n_shared})")
        for key in ("value", "shared"):
            seen: dict[int, str] = {}
            for name, entry in body["labels"].items():
                if entry[key] in seen:
                    raise Refusal(join_path("plan.tasks", task, "labels", name, key),
                                   f"is {entry[key]}, as for '{seen[entry[key]]}'; each label of a task needs its own {key}")
                seen[entry[key]] = name
