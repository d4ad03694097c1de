"""The model folder on disk: verified weights, what --force may replace, one writer at a time,
leftovers of interrupted writes, and writes that fail cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tiny_model import make_model

from labelsharing.errors import LabelSharingError
from labelsharing.infer import Predictor
from labelsharing.model import SegmentationModel, build_model_config, check_model_output, default_architecture, \
    lock_model_output
from labelsharing.model.schema import FORMAT_VERSION
from labelsharing.plan import LabelStats, SharedLabelPlan

MISMATCH = "the weights do not match model.json: the file is damaged or from another model"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return make_model(fake=False).save(tmp_path / "model")


def _state(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- verified weights
def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _damage_header(data: bytes) -> bytes:
    return data[:8] + data[8:40].replace(b'"', b"'") + data[40:]


def _flip_bit(data: bytes) -> bytes:
    return data[:-5] + bytes([data[-5] ^ 0x01]) + data[-4:]


@pytest.mark.parametrize("damage", [_truncate, _damage_header, _flip_bit], ids=["truncated", "header", "bit flip"])
def test_damaged_weights_are_refused(model_dir, damage):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(LabelSharingError, match=MISMATCH) as refused:
        Predictor.from_model_dir(model_dir, device="cpu")
    assert str(weights) in str(refused.value)


def test_weights_of_another_model_are_refused(model_dir, tmp_path):
    other = make_model(fake=False, seed=1).save(tmp_path / "other")
    (model_dir / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(LabelSharingError, match=MISMATCH):
        SegmentationModel.load(model_dir)


def test_weights_that_do_not_fit_the_architecture_are_refused(model_dir):
    config = json.loads((model_dir / "model.json").read_text())
    config["architecture"]["kwargs"]["channels"] = [8, 16, 32, 64, 128]  # an edit that keeps the checksum valid
    (model_dir / "model.json").write_text(json.dumps(config))
    with pytest.raises(LabelSharingError, match="do not fit the architecture in model.json"):
        SegmentationModel.load(model_dir)


def test_format_1_model_loads_with_a_warning_and_is_upgraded_when_saved(model_dir, tmp_path):
    config = json.loads((model_dir / "model.json").read_text())
    del config["weights_sha256"]
    config["format_version"] = 1
    (model_dir / "model.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="format 1.*cannot be detected"):
        model = SegmentationModel.load(model_dir)
    saved = json.loads((model.save(tmp_path / "resaved") / "model.json").read_text())
    assert saved["format_version"] == FORMAT_VERSION and len(saved["weights_sha256"]) == 64
    (model_dir / "model.safetensors").write_bytes(_truncate((model_dir / "model.safetensors").read_bytes()))
    with pytest.warns(UserWarning), pytest.raises(LabelSharingError, match="not a readable weights file"):
        SegmentationModel.load(model_dir)


# before the optional "familiarity" references, "plan.splits", "plan.apart", "small_islands"
@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_format_2_to_5_models_load_without_warning_and_still_need_their_checksum(model_dir, recwarn, version):
    config = json.loads((model_dir / "model.json").read_text())
    config["format_version"] = version
    (model_dir / "model.json").write_text(json.dumps(config))
    assert SegmentationModel.load(model_dir).config["format_version"] == FORMAT_VERSION and not recwarn.list
    del config["weights_sha256"]
    (model_dir / "model.json").write_text(json.dumps(config))
    with pytest.raises(LabelSharingError, match="weights_sha256 is missing"):
        SegmentationModel.load(model_dir)


def test_saved_checksum_matches_and_round_trips(model_dir):
    import hashlib

    config = json.loads((model_dir / "model.json").read_text())
    assert config["weights_sha256"] == hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert SegmentationModel.load(model_dir).config == config


def test_non_finite_weights_are_never_written(tmp_path):
    model = make_model(fake=False)
    with torch.no_grad():
        next(model.network.parameters())[0] = float("nan")
    with pytest.raises(LabelSharingError, match="NaN or infinite"):
        model.save(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_builder_refuses_label_values_beyond_uint16():
    plan = SharedLabelPlan.build({"T": {"organ": LabelStats(70000, 0.1, 1.0)}})
    task = {"modality": "CT", "axis": None, "normalization": {"scheme": "percentile"},
            "labels": {"organ": {"value": 70000, "shared": 1}}}
    with pytest.raises(LabelSharingError, match=r"plan.tasks.T.labels.organ.value is 70000; allowed: an integer in "
                                                r"1..65535"):
        build_model_config(default_architecture(2, 4), 32, plan, {"T": task})


# ----------------------------------------------------------------------------- what --force may replace
def test_force_never_replaces_a_dataset(two_tasks):
    dataset = two_tasks[0]
    before = sorted(p.relative_to(dataset) for p in dataset.rglob("*"))
    with pytest.raises(LabelSharingError, match="only a labelsharing model folder.*left untouched"):
        make_model(fake=False).save(dataset, overwrite=True)
    assert sorted(p.relative_to(dataset) for p in dataset.rglob("*")) == before


def test_force_never_replaces_the_folder_holding_the_input_model(tmp_path):
    parent = make_model(fake=False).save(tmp_path / "models" / "M")
    (tmp_path / "models" / "notes.txt").write_text("mine")
    with pytest.raises(LabelSharingError, match="only a labelsharing model folder"):
        make_model(fake=False).save(tmp_path / "models", overwrite=True)
    with pytest.raises(LabelSharingError, match="contains .*M, an input of this command"):
        check_model_output(tmp_path / "models", inputs=[parent], force=True)
    assert (parent / "model.json").is_file() and (tmp_path / "models" / "notes.txt").read_text() == "mine"


def test_force_never_replaces_an_input(model_dir):
    with pytest.raises(LabelSharingError, match="is an input of this command"):
        check_model_output(model_dir, inputs=[model_dir], force=True)
    with pytest.raises(LabelSharingError, match="is an input of this command"):
        make_model(fake=False).save(model_dir, overwrite=True, inputs=[model_dir / ".." / "model"])


def test_force_keeps_other_files_in_a_model_folder(model_dir):
    (model_dir / "predictions").mkdir()
    with pytest.raises(LabelSharingError, match=r"holds files besides the model \(predictions\)"):
        check_model_output(model_dir, force=True)


def test_force_replaces_a_model_folder_and_nothing_is_left_beside_it(model_dir):
    before = _state(model_dir)
    with pytest.raises(LabelSharingError, match="already exists; choose another --out or pass --force"):
        make_model(fake=False, seed=3).save(model_dir)
    assert _state(model_dir) == before
    make_model(fake=False, seed=3).save(model_dir, overwrite=True)
    assert _state(model_dir) != before and sorted(_state(model_dir)) == ["model.json", "model.safetensors"]
    assert [p.name for p in model_dir.parent.iterdir()] == ["model"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a read-only /proc")
def test_unwritable_output_is_refused_before_any_work(tmp_path):
    with pytest.raises(LabelSharingError, match="Choose"):
        check_model_output("/proc/labelsharing-test/model")
    (tmp_path / "file").write_text("")
    with pytest.raises(LabelSharingError, match="Cannot create the folder"):
        check_model_output(tmp_path / "file" / "model")


def test_a_full_disk_fails_cleanly_and_keeps_the_old_model(model_dir):
    """``ulimit -f`` in a child: writing the new weights fails; the old model stays whole."""
    before = _state(model_dir)
    code = textwrap.dedent(f"""
        import resource, signal, sys
        from tiny_model import make_model
        from labelsharing.errors import LabelSharingError
        model = make_model(fake=False, seed=5)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            model.save({str(model_dir)!r}, overwrite=True)
        except LabelSharingError as exc:
            sys.exit(f"error: {{exc}}")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 1 and "Could not write the model folder" in result.stderr, result.stderr
    assert _state(model_dir) == before
    assert [p.name for p in model_dir.parent.iterdir()] == ["model"]


# ----------------------------------------------------------------------------- one writer at a time
HOLD_LOCK = """
import sys
from labelsharing.model.folder import lock_model_output
with lock_model_output(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def _locking_process(out: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=ENV)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_writer_is_refused_at_once(model_dir):
    before = _state(model_dir)
    writer = _locking_process(model_dir)
    try:
        with pytest.raises(LabelSharingError, match=f"being written by another labelsharing process \\(pid {writer.pid}\\)"):
            check_model_output(model_dir, force=True)
        with pytest.raises(LabelSharingError, match=f"pid {writer.pid}"):
            make_model(fake=False, seed=3).save(model_dir, overwrite=True)
        assert _state(model_dir) == before
    finally:
        writer.communicate("")
    assert writer.returncode == 0
    make_model(fake=False, seed=3).save(model_dir, overwrite=True)  # free again
    assert _state(model_dir) != before


def test_a_killed_writer_does_not_block_the_next_one(tmp_path):
    writer = _locking_process(tmp_path / "model")
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert (tmp_path / ".model.lock").exists()  # left behind by the kill, but no longer held
    assert make_model(fake=False).save(tmp_path / "model").is_dir()


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    with lock_model_output(tmp_path / "model") as lock:
        assert lock == tmp_path / ".model.lock" and lock.is_file()
        check_model_output(tmp_path / "model")
        make_model(fake=False).save(tmp_path / "model")
    assert not lock.exists()


# ----------------------------------------------------------------------------- leftovers of interrupted writes
def _leftover(folder: Path, *files: str) -> Path:
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(b"partial")
    return folder


def test_leftovers_of_interrupted_writes_are_removed_and_reported(model_dir, tmp_path):
    partial = _leftover(tmp_path / ".model.partial-abc123", "model.safetensors")
    old = _leftover(tmp_path / ".model.old-4242", "model.json", "model.safetensors")
    foreign = _leftover(tmp_path / ".model.partial-mine", "notes.txt")
    other_output = _leftover(tmp_path / ".other.partial-1", "model.json")
    with pytest.warns(UserWarning, match="removed .*left by an interrupted write"):
        make_model(fake=False, seed=3).save(model_dir, overwrite=True)
    assert not partial.exists() and not old.exists()
    assert foreign.exists() and other_output.exists()  # not a model's leftover / another output's


def test_an_interrupted_replacement_is_restored(model_dir, tmp_path):
    before = _state(model_dir)
    model_dir.rename(tmp_path / ".model.old-4242")  # killed between moving the old model aside and renaming the new
    with pytest.warns(UserWarning, match="restored"):
        notes = check_model_output(model_dir, force=True)
    assert notes == [f"restored {model_dir} from .model.old-4242, left by an interrupted replacement"]
    assert _state(model_dir) == before


def test_a_live_writers_files_are_left_alone(model_dir, tmp_path):
    writer = _locking_process(model_dir)
    partial = _leftover(tmp_path / ".model.partial-live", "model.safetensors")
    try:
        with pytest.raises(LabelSharingError, match="being written"):
            check_model_output(model_dir, force=True)
        assert partial.exists()
    finally:
        writer.communicate("")
