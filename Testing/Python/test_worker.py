"""``labelsharing worker`` (issue 11): the protocol, per-request errors, its end, and outputs equal to ``predict``.

Real worker subprocesses on a tiny random UNet (4 features, 32x32 input, backend torch so no
graph is built). Timings are a benchmark's business (benchmarks/slicer_round_trip.py): none here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from tiny_model import make_model

from labelsharing.serve.worker import RequestError, parse_request, serve

ENGINE = str(Path(__file__).resolve().parents[2] / "LabelSharingSeg")
ENV = {**os.environ, "PYTHONPATH": ENGINE}
FLAGS = ["--device", "cpu", "--backend", "torch"]


@pytest.fixture(scope="module")
def model_and_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker")
    model = make_model(fake=False, input_size=32).save(root / "model")
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 1, (5, 20, 24)).astype(np.float32))
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((10.0, -4.0, 3.0))
    sitk.WriteImage(image, str(root / "ct.nrrd"))
    return model, root / "ct.nrrd"


class Worker:
    """A ``labelsharing worker`` subprocess spoken to line by line."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "labelsharing", "worker", *args], env=ENV,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, encoding="utf-8")

    def send(self, request) -> None:
        self.process.stdin.write((request if isinstance(request, str) else json.dumps(request)) + "\n")
        self.process.stdin.flush()

    def reply(self) -> dict:
        line = self.process.stdout.readline()
        assert line, f"the worker ended: {self.process.stderr.read()}"
        return json.loads(line)

    def final(self) -> tuple[dict, list[dict]]:
        """The next ok/error reply, and the progress and log replies before it."""
        before = []
        while True:
            reply = self.reply()
            if reply["status"] not in ("progress", "log"):
                return reply, before
            before.append(reply)

    def end(self, timeout: float = 60) -> tuple[int, str, str]:
        """Close the worker's input (end of input) and wait: (exit code, rest of stdout, stderr)."""
        if not self.process.stdin.closed:
            self.process.stdin.close()
        out, err = self.process.stdout.read(), self.process.stderr.read()
        return self.process.wait(timeout=timeout), out, err


def _request(request_id, image, out, **extra) -> dict:
    return {"id": request_id, "task": "TaskA", "inputs": [str(image)], "out": str(out), "format": "nrrd", **extra}


def test_two_requests_write_what_predict_writes_and_end_of_input_ends_the_worker(model_and_image, tmp_path):
    model, image = model_and_image
    worker = Worker(str(model), *FLAGS)
    loading = worker.reply()  # the line predict prints, as a log reply of no request
    assert loading["status"] == "log" and loading["id"] is None and loading["text"].startswith("device: cpu")
    ready = worker.reply()
    assert ready["status"] == "ready" and ready["id"] is None and ready["model"] == str(model)
    assert ready["device"].startswith("cpu") and ready["backend"].startswith("torch")
    for request_id, out in (("first", tmp_path / "a"), (2, tmp_path / "b")):
        worker.send(_request(request_id, image, out))
        reply, before = worker.final()
        assert reply["status"] == "ok" and reply["id"] == request_id, reply
        assert reply["written"] == [str(out / "ct.nrrd")] and reply["seconds"] >= 0
        assert [(r["status"], r["id"]) for r in before][-2:] == [("progress", request_id), ("log", request_id)]
        assert before[-2]["percent"] == 100.0 and before[-1]["text"] == f"wrote {out / 'ct.nrrd'}"
    code, out, err = worker.end()  # end of input
    assert code == 0 and out == ""

    done = subprocess.run([sys.executable, "-m", "labelsharing", "--progress", "none", "predict", str(model), "--task",
                           "TaskA", str(image), "--out", str(tmp_path / "p"), "--format", "nrrd", *FLAGS],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = sitk.ReadImage(str(tmp_path / "p" / "ct.nrrd"))
    for out in ("a", "b"):
        written = sitk.ReadImage(str(tmp_path / out / "ct.nrrd"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(expected))
        assert written.GetSpacing() == expected.GetSpacing() and written.GetOrigin() == expected.GetOrigin()
        assert written.GetDirection() == expected.GetDirection()
    assert len(np.unique(sitk.GetArrayFromImage(expected))) > 1  # a real prediction, not an empty map


def test_a_failing_request_gets_an_error_reply_and_the_worker_goes_on(model_and_image, tmp_path):
    model, image = model_and_image
    worker = Worker(str(model), *FLAGS)
    while worker.reply()["status"] != "ready":
        pass
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "ct.nrrd").write_bytes(b"the user's file")
    bad = [
        ("not json", None, "not JSON"),
        (_request(1, image, tmp_path / "x", task="Nope"), 1, "Unknown task 'Nope'"),
        (_request(2, tmp_path / "missing.nrrd", tmp_path / "x"), 2, "not found"),
        (_request(3, image, tmp_path / "taken"), 3, "already exists"),  # predict's output rule, without force
        (_request(4, image, tmp_path / "x", forse=True), 4, "Unknown request field(s): forse"),
        ({"id": 5, "command": "train"}, 5, "Unknown command 'train'"),
        (_request(6, image, tmp_path / "x", format="png"), 6, "Unknown output format 'png'"),
    ]
    for request, request_id, message in bad:
        worker.send(request)
        reply, _ = worker.final()
        assert reply["status"] == "error" and reply["id"] == request_id and message in reply["error"], reply
    assert (tmp_path / "taken" / "ct.nrrd").read_bytes() == b"the user's file"
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    worker.send(_request(7, image, tmp_path / "taken", force=True))
    reply, _ = worker.final()
    assert reply["status"] == "ok" and reply["id"] == 7
    assert (tmp_path / "taken" / "ct.nrrd").read_bytes() != b"the user's file"
    worker.send({"id": 8, "command": "quit"})
    assert worker.reply() == {"status": "ok", "id": 8}
    assert worker.process.wait(timeout=60) == 0  # quit ends it, its input still open
    code, out, err = worker.end()
    assert code == 0 and out == ""


def test_a_model_that_cannot_be_loaded_ends_the_worker_with_predicts_error(tmp_path):
    worker = Worker(str(tmp_path / "no_model"), *FLAGS)
    code, out, err = worker.end()
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith("error: ") and "no_model" in err


def test_replies_own_standard_output():
    """Whatever prints to stdout in the worker (Python or C level) lands on stderr, not among the replies."""
    code = ("import os; from labelsharing.serve.worker import standard_streams; requests, replies = standard_streams(); "
            "print('noise'); os.write(1, b'c-noise\\n'); replies.write('{\"status\": \"ok\"}\\n')")
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == '{"status": "ok"}\n'
    assert "noise" in done.stderr and "c-noise" in done.stderr


@pytest.mark.parametrize("line, request_id, message", [
    ("[1, 2]", None, "must be a JSON object"),
    ('{"id": 3, "inputs": ["a"], "out": "o"}', 3, '"task"'),
    ('{"id": 4, "task": "t", "inputs": [], "out": "o"}', 4, '"inputs"'),
    ('{"id": 5, "task": "t", "inputs": "a.nrrd", "out": "o"}', 5, '"inputs"'),
    ('{"id": 6, "task": "t", "inputs": ["a"]}', 6, '"out"'),
    ('{"id": 7, "task": "t", "inputs": ["a"], "out": "o", "force": "yes"}', 7, '"force" must be true or false'),
])
def test_malformed_requests_name_the_field(line, request_id, message):
    with pytest.raises(RequestError, match=message.replace("(", r"\(")) as caught:
        parse_request(line)
    assert caught.value.request_id == request_id


def test_a_model_replaced_on_disk_is_loaded_again_before_the_next_request(tmp_path):
    """A model re-trained into the same folder (``--force``) must not be answered by the old weights."""
    folder = make_model(fake=False, input_size=32, seed=0).save(tmp_path / "model")
    image = tmp_path / "ct.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(1).normal(0, 1, (4, 16, 16)).astype(np.float32)),
                    str(image))
    replies = []

    def requests():
        yield json.dumps(_request(1, image, tmp_path / "old"))
        make_model(fake=False, input_size=32, seed=5).save(folder, overwrite=True)
        yield json.dumps(_request(2, image, tmp_path / "new"))

    class Replies:
        def write(self, text):
            replies.append(json.loads(text))

        def flush(self):
            return None

    assert serve(folder, requests(), Replies(), device="cpu", backend="torch") == 0
    assert [r["status"] for r in replies if r["status"] not in ("progress", "log")] == ["ready", "ok", "ok"]
    reloads = [r for r in replies if r["status"] == "log" and "changed on disk" in r["text"]]
    assert [r["id"] for r in reloads] == [2]
    from labelsharing.infer import Predictor

    fresh = Predictor.from_model_dir(folder, device="cpu", backend="torch")
    expected = fresh.predict_image(sitk.ReadImage(str(image)), "TaskA")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "new" / "ct.nrrd"))), expected)
    old = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "old" / "ct.nrrd")))
    assert not np.array_equal(old, expected)  # the two models disagree, so the check above means something
