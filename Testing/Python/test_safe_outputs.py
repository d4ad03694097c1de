"""Output files are safe: never an input replaced, nothing replaced without --force, no false success.

Issue 8. ``predict`` (label maps, probabilities) and the ``--json`` files of ``plan`` and
``evaluate`` are written through ``labelsharing.utils.safe_write``: a temporary name in the same
folder, a read-back check, then a rename. A full disk is simulated with ``RLIMIT_FSIZE``
(``ulimit -f``) in a child process: Python ignores SIGXFSZ, so writes past the limit fail with
EFBIG, or, inside ITK's NIfTI writer, are silently cut short.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from tiny_model import make_model

from labelsharing.cli import build_parser, main
from labelsharing.errors import LabelSharingError
from labelsharing.infer import Predictor

FORMATS = ("nii.gz", "nrrd", "seg.nrrd")
on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                              reason="RLIMIT_FSIZE, SIGKILL and links are tested on Linux")


def _write_noise(path: Path, shape=(8, 64, 64), seed: int = 0) -> Path:
    """A noise image: its label maps compress badly, so they exceed a small file size limit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(seed).normal(size=shape).astype(np.float32)),
                    str(path))
    return path


def _listing(folder: Path) -> list[str]:
    """Every entry of ``folder``, hidden temporary files included."""
    return sorted(os.listdir(folder)) if folder.exists() else []


@pytest.fixture
def fake() -> Predictor:
    return Predictor(make_model(fake=True), "cpu", batch_size=4)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return make_model(fake=False).save(tmp_path_factory.mktemp("model") / "model")


# ----------------------------------------------------------------------------- safe_write itself
@pytest.mark.parametrize("name, ending", [("ct.nii.gz", ".nii.gz"), ("case.seg.nrrd", ".seg.nrrd"),
                                          ("plan.json", ".json"), ("weights", ""), (".hidden.json", ".json")])
def test_temporary_name_is_hidden_beside_the_file_and_keeps_the_ending(tmp_path: Path, name: str, ending: str):
    from labelsharing.utils.safe_write import temporary_path

    temporary = temporary_path(tmp_path / name)
    assert temporary.parent == tmp_path and temporary.name.startswith(".") and ".tmp-" in temporary.name
    assert temporary.name.endswith(ending) and temporary.name != name
    assert temporary_path(tmp_path / name) != temporary  # two writers never share a temporary file


def test_write_atomically_checks_the_temporary_file_then_renames_it(tmp_path: Path):
    from labelsharing.utils import write_atomically

    seen = []

    def verify(path: Path) -> None:
        seen.append(path)
        assert path.read_bytes() == b"complete" and not (tmp_path / "out.bin").exists()

    target = write_atomically(tmp_path / "sub" / "out.bin", lambda path: path.write_bytes(b"complete"), verify)
    assert target == tmp_path / "sub" / "out.bin" and target.read_bytes() == b"complete"
    assert seen[0].parent == target.parent and seen[0] != target
    assert _listing(target.parent) == ["out.bin"]


@pytest.mark.parametrize("failure, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "disk is full"),
    (OSError(errno.EFBIG, "File too large"), "ulimit -f"),
    (PermissionError(errno.EACCES, "Permission denied"), "not allowed"),
    (RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute:\nITK ERROR: could not write"),
     "ITK ERROR: could not write"),
])
@pytest.mark.parametrize("existing", [False, True])
def test_failure_mid_write_leaves_no_file_and_keeps_the_old_one(tmp_path: Path, failure, reason, existing):
    from labelsharing.utils import write_atomically

    target = tmp_path / "ct.nii.gz"
    if existing:
        target.write_bytes(b"old contents")

    def write_half_then_fail(path: Path) -> None:
        path.write_bytes(b"half of the")
        raise failure

    with pytest.raises(LabelSharingError, match=reason) as caught:
        write_atomically(target, write_half_then_fail)
    assert str(target) in str(caught.value)
    assert _listing(tmp_path) == (["ct.nii.gz"] if existing else [])
    if existing:
        assert target.read_bytes() == b"old contents"


def test_interrupt_during_write_removes_the_temporary_file(tmp_path: Path):
    from labelsharing.utils import write_atomically

    def interrupted(path: Path) -> None:
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "plan.json", interrupted)
    assert _listing(tmp_path) == []


def test_empty_or_unreadable_result_is_refused(tmp_path: Path):
    from labelsharing.utils import write_atomically

    target = tmp_path / "out.json"
    target.write_text("{}")
    with pytest.raises(LabelSharingError, match="empty"):
        write_atomically(target, lambda path: path.write_bytes(b""))

    def bad_check(path: Path) -> None:
        raise ValueError("shape (3, 4) != (3, 5)")

    with pytest.raises(LabelSharingError, match=r"did not read back.*shape \(3, 4\) != \(3, 5\)"):
        write_atomically(target, lambda path: path.write_bytes(b"data"), bad_check)
    assert _listing(tmp_path) == ["out.json"] and target.read_text() == "{}"


def test_write_json_atomically_round_trips(tmp_path: Path):
    from labelsharing.utils import write_json_atomically

    data = {"tasks": {"TaskA": {"dice": [0.5, 1.0]}}, "name": "Größe"}
    path = write_json_atomically(tmp_path / "dice.json", data)
    assert json.loads(path.read_text(encoding="utf-8")) == data and _listing(tmp_path) == ["dice.json"]
    with pytest.raises(TypeError):  # not JSON: a programming error, found before anything is written
        write_json_atomically(tmp_path / "other.json", {"x": object()})
    assert _listing(tmp_path) == ["dice.json"]


@on_linux
def test_json_on_a_full_disk_fails_and_keeps_the_old_file(tmp_path: Path):
    target = tmp_path / "plan.json"
    target.write_text('{"old": true}\n')
    code = ("from labelsharing.utils.safe_write import write_json_atomically\n"
            f"write_json_atomically({str(target)!r}, {{'values': list(range(5000))}})")
    result = _run([sys.executable, "-c", code], limit=4096)
    assert result.returncode != 0 and "LabelSharingError" in result.stderr and "ulimit -f" in result.stderr
    assert _listing(tmp_path) == ["plan.json"] and target.read_text() == '{"old": true}\n'


@on_linux
def test_kill_during_write_keeps_the_old_file_whole(tmp_path: Path):
    target = tmp_path / "ct.nii.gz"
    target.write_bytes(b"old contents")
    code = ("import sys, time\n"
            "from labelsharing.utils.safe_write import write_atomically\n"
            "def write(path):\n"
            "    path.write_bytes(b'half of the new')\n"
            "    print('writing', flush=True)\n"
            "    time.sleep(60)\n"
            f"write_atomically({str(target)!r}, write)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "writing\n"
    finally:
        child.kill()  # SIGKILL: no clean-up code runs
        child.wait()
        child.stdout.close()
    assert target.read_bytes() == b"old contents"
    (leftover,) = [name for name in _listing(tmp_path) if name != "ct.nii.gz"]
    assert leftover.startswith(".ct.tmp-") and leftover.endswith(".nii.gz")  # hidden, never the final name

    from labelsharing.utils import write_atomically

    live = tmp_path / f".ct.tmp-{os.getpid()}-abcdef.nii.gz"  # a running writer's file stays
    live.write_bytes(b"busy")
    write_atomically(target, lambda path: path.write_bytes(b"new contents"))  # the next write cleans up
    assert target.read_bytes() == b"new contents" and _listing(tmp_path) == [live.name, "ct.nii.gz"]


# ----------------------------------------------------------------------------- predict never replaces an input
@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("link", ["same file", pytest.param("symlink", marks=on_linux),
                                  pytest.param("hard link", marks=on_linux)])
def test_predict_never_replaces_its_input(fake: Predictor, tmp_path: Path, force: bool, link: str):
    source = _write_noise(tmp_path / "X" / "ct.nii.gz", shape=(32, 32))
    out = tmp_path / "X"
    if link != "same file":
        out = tmp_path / "out"
        out.mkdir()
        if link == "symlink":
            (out / "ct.nii.gz").symlink_to(source)
        else:
            os.link(source, out / "ct.nii.gz")
    before = source.read_bytes()
    with pytest.raises(LabelSharingError, match="input") as caught:
        fake.predict_files([source], "TaskB", out, force=force)
    assert "ct.nii.gz" in str(caught.value) and "--out" in str(caught.value)
    assert source.read_bytes() == before


def test_predict_refuses_existing_outputs_without_force_and_writes_nothing(fake: Predictor, tmp_path: Path):
    dataset = tmp_path / "Dataset001"
    inputs = [_write_noise(dataset / "imagesTs" / f"{case}_0000.nii.gz", shape=(32, 32), seed=i)
              for i, case in enumerate(("a", "b"))]
    truth = dataset / "labelsTs" / "b.nii.gz"
    truth.parent.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((32, 32), np.uint8)), str(truth))
    (dataset / "labelsTs" / "notes.txt").write_text("keep me")
    before = truth.read_bytes()

    with pytest.raises(LabelSharingError, match="--force") as caught:
        fake.predict_files(inputs, "TaskB", dataset / "labelsTs")
    assert str(truth) in str(caught.value)
    assert _listing(dataset / "labelsTs") == ["b.nii.gz", "notes.txt"]  # a.nii.gz was not written either
    assert truth.read_bytes() == before

    written = fake.predict_files(inputs, "TaskB", dataset / "labelsTs", force=True)
    assert [p.name for p in written] == ["a.nii.gz", "b.nii.gz"] and truth.read_bytes() != before
    assert _listing(dataset / "labelsTs") == ["a.nii.gz", "b.nii.gz", "notes.txt"]
    assert (dataset / "labelsTs" / "notes.txt").read_text() == "keep me"


def test_predict_refuses_an_existing_probabilities_file(fake: Predictor, tmp_path: Path):
    source = _write_noise(tmp_path / "in" / "ct_0000.nii.gz", shape=(32, 32))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ct_probabilities.nii.gz").write_bytes(b"earlier run")
    with pytest.raises(LabelSharingError, match="ct_probabilities.nii.gz"):
        fake.predict_files([source], "TaskB", tmp_path / "out", probabilities=True)
    assert _listing(tmp_path / "out") == ["ct_probabilities.nii.gz"]
    fake.predict_files([source], "TaskB", tmp_path / "out", probabilities=True, force=True)
    assert _listing(tmp_path / "out") == ["ct.nii.gz", "ct_probabilities.nii.gz"]


def test_predict_refuses_a_folder_in_the_way_and_an_output_folder_that_is_a_file(fake: Predictor, tmp_path: Path):
    source = _write_noise(tmp_path / "in" / "ct_0000.nii.gz", shape=(32, 32))
    (tmp_path / "out" / "ct.nii.gz").mkdir(parents=True)
    with pytest.raises(LabelSharingError, match="a folder of that name is in the way"):
        fake.predict_files([source], "TaskB", tmp_path / "out", force=True)
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(LabelSharingError, match="taken"):
        fake.predict_files([source], "TaskB", tmp_path / "taken", force=True)
    assert (tmp_path / "taken").read_text() == "a file"


def test_two_outputs_of_one_run_with_the_same_name_are_refused(fake: Predictor, tmp_path: Path):
    first = _write_noise(tmp_path / "in" / "ct.nii.gz", shape=(32, 32))
    second = _write_noise(tmp_path / "in" / "ct_probabilities.nii.gz", shape=(32, 32))
    with pytest.raises(LabelSharingError, match="ct_probabilities.nii.gz"):
        fake.predict_files([first, second], "TaskB", tmp_path / "out", probabilities=True)
    assert _listing(tmp_path / "out") == []


# ----------------------------------------------------------------------------- no truncated output under the final name
def _truncating(real_write, index: int, fail: bool):
    """A writer that writes the real file, cuts it in half, and then raises (or not, like ITK's
    NIfTI writer on a full disk)."""

    def write(*args, **kwargs):
        real_write(*args, **kwargs)
        path = Path(args[index])
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        if fail:
            raise OSError(errno.ENOSPC, "No space left on device")

    return write


@pytest.mark.parametrize("fail", [True, False], ids=["write raises", "silently truncated"])
@pytest.mark.parametrize("file_format", FORMATS)
def test_predict_leaves_no_truncated_label_file(fake: Predictor, tmp_path: Path, monkeypatch, file_format, fail):
    import slicerio

    source = _write_noise(tmp_path / "in" / "ct_0000.nii.gz", shape=(6, 32, 32))
    if file_format == "seg.nrrd":
        monkeypatch.setattr(slicerio, "write_segmentation", _truncating(slicerio.write_segmentation, 0, fail))
    else:
        monkeypatch.setattr(sitk, "WriteImage", _truncating(sitk.WriteImage, 1, fail))
    with pytest.raises(LabelSharingError, match="ct." + file_format):
        fake.predict_files([source], "TaskA", tmp_path / "out", file_format=file_format)
    assert _listing(tmp_path / "out") == []


def test_predict_leaves_no_truncated_probabilities(fake: Predictor, tmp_path: Path, monkeypatch):
    source = _write_noise(tmp_path / "in" / "ct_0000.nii.gz", shape=(6, 32, 32))
    real_write = sitk.WriteImage

    def truncate_vectors(image, path, *args, **kwargs):
        (_truncating(real_write, 1, False) if image.GetNumberOfComponentsPerPixel() > 1 else real_write)(
            image, path, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", truncate_vectors)
    with pytest.raises(LabelSharingError, match="ct_probabilities.nii.gz"):
        fake.predict_files([source], "TaskA", tmp_path / "out", probabilities=True)
    assert _listing(tmp_path / "out") == ["ct.nii.gz"]  # the label map was complete and stays


# ----------------------------------------------------------------------------- the command line
def _run(command: list[str], limit: int | None = None) -> subprocess.CompletedProcess:
    def set_limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=set_limit if limit else None)


@on_linux
@pytest.mark.parametrize("file_format", FORMATS)
def test_predict_on_a_full_disk_exits_2_and_leaves_nothing(model_folder: Path, tmp_path: Path, file_format: str):
    source = _write_noise(tmp_path / "in" / "ct_0000.nii.gz")
    out = tmp_path / "out"
    result = _run([sys.executable, "-m", "labelsharing", "--progress", "none", "predict", str(model_folder),
                   str(source), "--task", "TaskA", "--out", str(out), "--format", file_format, "--device", "cpu",
                   "--probabilities"], limit=3000)
    assert result.returncode == 2, result.stderr
    assert "wrote" not in result.stdout and "Traceback" not in result.stderr
    assert f"error: Could not write {out / ('ct.' + file_format)}" in result.stderr
    assert _listing(out) == []


def test_predict_help_says_what_force_replaces(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--force" in text and "<case>_probabilities.nii.gz" in text and "never an input" in text


def test_predict_command_refuses_then_replaces_with_force(model_folder: Path, tmp_path: Path, capsys):
    source = _write_noise(tmp_path / "X" / "ct.nii.gz", shape=(32, 32))
    before = source.read_bytes()
    common = ["--progress", "none", "predict", str(model_folder), str(source), "--task", "TaskB", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "X"), "--force"]) == 2
    assert "is an input of this command" in capsys.readouterr().err and source.read_bytes() == before

    out = tmp_path / "out"
    assert main([*common, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main([*common, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out / 'ct.nii.gz'} already exists") and "--force" in err
    assert main([*common, "--out", str(out), "--force"]) == 0
    assert f"wrote {out / 'ct.nii.gz'}" in capsys.readouterr().out
    assert _listing(out) == ["ct.nii.gz"]


def test_json_outputs_never_replace_an_input(two_tasks: list[Path], model_folder: Path, tmp_path: Path, capsys):
    dataset_json = two_tasks[0] / "dataset.json"
    pins = tmp_path / "pins.json"
    pins.write_text('{"TaskA": {"big": 1}}')
    inputs = {dataset_json: dataset_json.read_text(), pins: pins.read_text()}
    for target in (dataset_json, pins):
        assert main(["--progress", "none", "plan", *map(str, two_tasks), "--pins", str(pins),
                     "--json", str(target)]) == 2
        assert "is an input of this command" in capsys.readouterr().err
    model_json = model_folder / "model.json"
    inputs[model_json] = model_json.read_text()
    assert main(["--progress", "none", "evaluate", str(model_folder), *map(str, two_tasks), "--json",
                 str(model_json), "--device", "cpu"]) == 2
    assert f"Refusing to write {model_json}: it is an input of this command" in capsys.readouterr().err
    assert all(path.read_text() == text for path, text in inputs.items())

    # an earlier output (not an input) is replaced as before, atomically
    plan_json = tmp_path / "plan.json"
    plan_json.write_text("{}")
    assert main(["--progress", "none", "plan", *map(str, two_tasks), "--json", str(plan_json)]) == 0
    assert json.loads(plan_json.read_text())["n_shared"] == 3 and _listing(tmp_path) == ["TaskA", "TaskB",
                                                                                          "pins.json", "plan.json"]
