"""Smoke tests of benchmarks/federated_vs_pooled.py (both trainings, tiny, and the table's shape) and
benchmarks/federated_joining.py (a fourth site joining, tiny).
No figure is asserted (benchmarks print them; tests check the wiring)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("psutil")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from federated_joining import main as joining_main  # noqa: E402
from federated_vs_pooled import main  # noqa: E402

pytestmark = pytest.mark.slow


def test_federated_vs_pooled_runs_tiny(tmp_path, capsys):
    results = main(["--cases", "2", "--rounds", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--features", "4",
                    "--work", str(tmp_path), "--json", str(tmp_path / "results.json")])
    tasks = {"AbdomenCT", "BrainMR", "KneeXR", "ChestXR"}
    assert set(results["pooled"]["dice"]) == tasks and set(results["federated"]["dice"]) == tasks
    assert results["pooled"]["steps"] == results["federated"]["steps"] == 4  # same training: 4 sites x 1 step
    assert results["federated"]["rounds"] == 1 and results["federated"]["mb_from_sites"] > 0
    lines = capsys.readouterr().out.splitlines()  # Flower's log, then the table
    header = next(i for i, line in enumerate(lines) if line.startswith("method  "))
    assert [line.split("  ")[0] for line in lines[header + 2:header + 5]] == ["pooled train", "federated (1 site/task)",
                                                                              "federated / pooled"]
    assert (tmp_path / "results.json").stat().st_size > 0


def test_federated_joining_runs_tiny(tmp_path, capsys):
    results = joining_main(["--cases", "2", "--rounds", "1", "--join-rounds", "1", "--steps-per-epoch", "1",
                            "--batch-size", "2", "--features", "4", "--work", str(tmp_path)])
    tasks = {"AbdomenCT", "BrainMR", "KneeXR", "ChestXR"}
    for method in ("pooled", "federated"):
        assert set(results[method]["forgetting"]) == set(results[method]["test"]) == tasks
    # the federated default --replay tasks: the joining site and each old site an equal share
    assert sorted(results["federated"]["weights"].values()) == pytest.approx([0.25] * 4, abs=1e-3)
    assert "ChestXR (joins)" in capsys.readouterr().out
