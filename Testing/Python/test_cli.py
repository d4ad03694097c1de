"""The command line: plan output, JSON shape, exit codes and error messages."""

from __future__ import annotations

import json
import subprocess
import sys

from labelsharing.cli import main


def test_plan_prints_table_and_writes_json(two_tasks, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["--progress", "none", "plan", *map(str, two_tasks), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "shared 1" in printed and "big (40.00%)" in printed and "large (30.00%)" in printed
    plan = json.loads(out.read_text())
    assert plan["n_shared"] == 3
    assert plan["tasks"]["TaskB"]["labels"]["large"] == {"value": 2, "relative_size": 0.3, "presence": 1.0, "shared": 1}


def test_plan_with_bad_pins_exits_2_with_message(two_tasks, tmp_path, capsys):
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps({"TaskA": {"big": 9}}))
    assert main(["--progress", "none", "plan", *map(str, two_tasks), "--pins", str(pins)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Pin TaskA/big -> shared label 9 is impossible")
    assert "Traceback" not in err


def test_missing_dataset_is_a_user_error(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "nope")]) == 2
    assert "Dataset folder not found" in capsys.readouterr().err


def test_progress_lines_mode(two_tasks, capsys):
    assert main(["--progress", "lines", "plan", str(two_tasks[0])]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("PROGRESS ")]
    assert lines and lines[-1].startswith("PROGRESS 100.0 checking TaskA 2/2")


def test_module_entry_point_and_help_does_not_import_torch():
    code = "import sys; from labelsharing.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    result = subprocess.run([sys.executable, "-m", "labelsharing", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("labelsharing ")
    result = subprocess.run([sys.executable, "-m", "labelsharing", "plan", "x", "--bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr


def test_help_and_info_start_without_torch(tmp_path):
    """``--help``, a command's ``--help`` and ``info MODEL`` are what a user (and the Slicer module)
    runs to look: they must not pay for torch, MONAI or OpenVINO (issue 11: < 0.5 s; timed in
    benchmarks/startup.py), nor for numpy where nothing is computed."""
    from tiny_model import make_model

    folder = make_model(fake=False).save(tmp_path / "model")
    code = ("import sys\nfrom labelsharing.cli import main\n"
            "for argv in (['--help'], ['predict', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('help imported:', sorted(m for m in ('torch', 'monai', 'openvino', 'numpy') if m in sys.modules))\n"
            "main(['info', sys.argv[1]])\n"
            "print('info imported:',\n"
            "      sorted(m for m in ('torch', 'monai', 'openvino', 'SimpleITK') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True)
    assert "help imported: []" in result.stdout and "info imported: []" in result.stdout
    assert "TaskA" in result.stdout  # info did describe the model


def test_command_line_defaults_are_the_engine_defaults():
    """The parser repeats a few engine defaults as literals (so ``--help`` imports neither torch nor
    numpy); they must stay those of ``TrainingOptions`` and the slice store."""
    from labelsharing.cli import build_parser
    from labelsharing.train import TrainingOptions
    from labelsharing.train.slice_store import DEFAULT_SLICE_MEMORY_MB

    args = build_parser().parse_args(["train", "data", "--out", "model"])
    engine = TrainingOptions()
    assert args.slice_memory == DEFAULT_SLICE_MEMORY_MB == engine.slice_memory_mb
    assert (args.epochs, args.steps_per_epoch, args.batch_size, args.lr) == (
        engine.epochs, engine.steps_per_epoch, engine.batch_size, engine.learning_rate)

