"""``labelsharing serve`` (issue 13): a real server on 127.0.0.1 (random port), called with httpx.

The server is the command users run, in a subprocess, serving a folder with a tiny random UNet
(4 features, 32x32 input, backend torch so no graph is built). Checked: predict equals the CLI's
output voxel for voxel; the token (401 without it or with a wrong one); uploads that break the
rules (``..`` and absolute names, symbolic links, oversized bodies and zips, ``../`` model names)
are refused and nothing is written outside the models folder; a training job runs to a model;
cancel ends a job and removes its data. Timings are the load benchmark's business (none here).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import boxes, write_task
from tiny_model import make_model

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from labelsharing.errors import LabelSharingError  # noqa: E402
from labelsharing.serve import Job, ServerSettings, check_listen_address, create_app, load_or_create_token, \
    unpack_zip  # noqa: E402

ENGINE = str(Path(__file__).resolve().parents[2] / "LabelSharingSeg")
ENV = {**os.environ, "PYTHONPATH": ENGINE}
FLAGS = ["--device", "cpu", "--backend", "torch"]
TINY_TRAINING = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "input_size": 32, "features": 4}


class Server:
    """``labelsharing serve`` in a subprocess; ``url`` and ``token`` once it listens."""

    def __init__(self, models: Path, *args: str) -> None:
        self.models = models
        self.process = subprocess.Popen([sys.executable, "-m", "labelsharing", "serve", "--models", str(models),
                                         "--port", "0", *FLAGS, *args], env=ENV, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.banner = []
        for line in self.process.stdout:
            self.banner.append(line)
            match = re.search(r"on (https?://127\.0\.0\.1:\d+)", line)
            if match:
                self.url = match.group(1)
                break
        else:
            raise AssertionError(f"the server did not start: {''.join(self.banner)} {self.process.stderr.read()}")
        self.token = (models / ".labelsharing-serve" / "token").read_text().strip()
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=30)

    def wait_for(self, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in states:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job['log'][-5:]}")


def _files(root: Path) -> set[str]:
    """Every path under ``root``, once earlier predicts' temporary folders are gone (the server
    removes them after it has answered, so a listing taken at once may still hold one)."""
    deadline = time.monotonic() + 30
    while any(root.glob("models/.labelsharing-serve/jobs/predict-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    models = root / "models"
    models.mkdir()
    make_model(fake=False, input_size=32).save(models / "tiny")
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 1, (5, 20, 24)).astype(np.float32))
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((10.0, -4.0, 3.0))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    sitk.WriteImage(image, str(root / "ct_0000.nrrd"))
    server = Server(models, "--max-upload-mb", "1")
    yield server, root
    server.stop()


def _tasks_zip(root: Path, *prefixes: str) -> bytes:
    """A zip of two tiny nnU-Net task folders (2D, 3 and 2 labels), under ``prefixes`` folders."""
    a = write_task(root / "TaskA", {"big": 1, "mid": 2, "small": 3}, [boxes((12, 12), {1: 50, 2: 30, 3: 12})] * 3)
    b = write_task(root / "TaskB", {"tiny": 1, "large": 2}, [boxes((12, 12), {1: 8, 2: 40})] * 3)
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for task in (a, b)[:len(prefixes) or 2]:
            for path in task.rglob("*"):
                archive.write(path, str(Path(*prefixes[:1], path.relative_to(root))))
    return stream.getvalue()


# ------------------------------------------------------------------------------------ the token
def test_health_is_open_and_every_other_endpoint_needs_the_token(served):
    server, root = served
    assert httpx.get(f"{server.url}/v1/health").json()["status"] == "ok"
    calls = [("GET", "/v1/models"), ("POST", "/v1/models/tiny/predict?task=TaskA"), ("GET", "/v1/models/tiny/download"),
             ("POST", "/v1/jobs/train?name=x"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs/abc/cancel")]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": server.token}):
        for method, path in calls:
            answer = httpx.request(method, server.url + path, headers=headers, content=b"x")
            assert answer.status_code == 401, (method, path, headers)
            assert answer.headers["www-authenticate"] == "Bearer"
    assert server.client.get("/v1/models").status_code == 200


def test_the_token_is_printed_once_and_kept_readable_only_by_its_owner(served, tmp_path):
    server, _ = served
    token_file = server.models / ".labelsharing-serve" / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert any(server.token in line for line in server.banner)
    assert load_or_create_token(token_file) == (server.token, False)  # a second start reads it, prints no token
    token_file_copy = tmp_path / "token"
    token_file_copy.write_text("abc\n")
    token_file_copy.chmod(0o644)
    with pytest.raises(LabelSharingError, match="chmod 600"):
        load_or_create_token(token_file_copy)
    rotated, created = load_or_create_token(token_file_copy, rotate=True)
    assert created and rotated != "abc" and stat.S_IMODE(token_file_copy.stat().st_mode) == 0o600


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (subjectAltName IP) and its key, made by the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_serves_https_with_the_given_certificate(tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    (tmp_path / "models").mkdir()
    server = Server(tmp_path / "models", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert server.url.startswith("https://")
        assert httpx.get(f"{server.url}/v1/health", verify=ssl.create_default_context(cafile=str(cert))).status_code == 200
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{server.url}/v1/health")  # not a certificate the system trusts
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(server.url.replace("https", "http") + "/v1/health")  # no clear text on a TLS port
    finally:
        server.client.close()
        server.process.terminate()
        server.process.wait(timeout=30)


def test_a_model_folder_that_is_a_link_out_of_the_models_folder_is_not_served(served, tmp_path):
    server, root = served
    outside = tmp_path / "outside"
    make_model(fake=False, input_size=32).save(outside)
    link = server.models / "linked"
    link.symlink_to(outside, target_is_directory=True)
    try:
        assert [model["name"] for model in server.client.get("/v1/models").json()["models"]] == ["tiny"]
        assert server.client.get("/v1/models/linked/download").status_code == 404
        assert server.client.post("/v1/models/linked/predict", params={"task": "TaskA"}, content=b"x").status_code == 404
    finally:
        link.unlink()


def test_a_network_address_without_tls_is_refused_unless_insecure(tmp_path):
    check_listen_address("127.0.0.1", tls=False, insecure=False)
    check_listen_address("10.0.0.5", tls=True, insecure=False)
    with pytest.raises(LabelSharingError, match="unencrypted"):
        check_listen_address("0.0.0.0", tls=False, insecure=False)
    with pytest.warns(UserWarning, match="unencrypted"):
        check_listen_address("0.0.0.0", tls=False, insecure=True)
    done = subprocess.run([sys.executable, "-m", "labelsharing", "serve", "--models", str(tmp_path), "--host",
                           "0.0.0.0"], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Refusing" in done.stderr and "--insecure" in done.stderr
    assert not (tmp_path / ".labelsharing-serve").exists()  # refused before any file is made


# ------------------------------------------------------------------------------------ models and predict
def test_models_are_listed_with_tasks_labels_and_colours(served):
    server, _ = served
    (model,) = server.client.get("/v1/models").json()["models"]
    assert model["name"] == "tiny" and set(model["tasks"]) == {"TaskA", "TaskB"}
    assert model["n_shared"] == 3
    assert model["tasks"]["TaskA"]["labels"][0] == {"name": "big", "value": 1, "shared": 1, "color": [1.0, 0.0, 0.0],
                                                     "terminology": None}


@pytest.mark.parametrize("file_format", ["nrrd", "seg.nrrd"])
def test_predict_equals_the_cli_voxel_for_voxel_with_the_same_geometry(served, tmp_path, file_format):
    server, root = served
    image = root / "ct_0000.nrrd"
    answer = server.client.post("/v1/models/tiny/predict", params={"task": "TaskA", "format": file_format,
                                                                   "filename": image.name},
                                content=image.read_bytes())
    assert answer.status_code == 200, answer.text
    assert f'filename="ct.{file_format}"' in answer.headers["content-disposition"]
    received = tmp_path / f"server.{file_format}"
    received.write_bytes(answer.content)
    subprocess.run([sys.executable, "-m", "labelsharing", "--progress", "none", "predict", str(server.models / "tiny"),
                    str(image), "--task", "TaskA", "--out", str(tmp_path / "cli"), "--format", file_format, *FLAGS],
                   env=ENV, check=True, capture_output=True, timeout=120)
    ours, theirs = sitk.ReadImage(str(received)), sitk.ReadImage(str(tmp_path / "cli" / f"ct.{file_format}"))
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    assert np.unique(sitk.GetArrayFromImage(ours)).size > 1  # a random UNet still predicts several labels
    for read in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(ours, read)() == getattr(theirs, read)() == getattr(sitk.ReadImage(str(image)), read)()
    assert _files(server.models / ".labelsharing-serve" / "jobs") == set()  # the upload is gone


def test_a_zipped_image_is_predicted_and_user_errors_are_clear(served):
    server, root = served
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.write(root / "ct_0000.nrrd", "ct_0000.nrrd")
    answer = server.client.post("/v1/models/tiny/predict", params={"task": "TaskB", "filename": "ct.zip"},
                                content=stream.getvalue())
    assert answer.status_code == 200 and answer.content[:2] == b"\x1f\x8b"  # nii.gz
    unknown_task = server.client.post("/v1/models/tiny/predict", params={"task": "TaskZ", "filename": "ct.nrrd"},
                                      content=(root / "ct_0000.nrrd").read_bytes())
    assert unknown_task.status_code == 400 and "TaskZ" in unknown_task.json()["detail"]
    assert server.client.post("/v1/models/nope/predict", params={"task": "TaskA"}, content=b"x").status_code == 404


def test_a_zipped_dicom_series_is_predicted_as_the_cli_predicts_its_folder(served, tmp_path):
    pytest.importorskip("pydicom")
    from dicom_data import write_ct_series

    server, root = served
    volume = sitk.GetImageFromArray(np.random.default_rng(1).normal(0, 300, (4, 20, 24)).astype(np.int16))
    volume.SetSpacing((0.8, 0.9, 2.5))
    series = tmp_path / "series"
    write_ct_series(volume, series)
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for path in sorted(series.iterdir()):
            archive.write(path, f"series/{path.name}")
    answer = server.client.post("/v1/models/tiny/predict", params={"task": "TaskA", "format": "nrrd",
                                                                   "filename": "ct.zip"}, content=stream.getvalue())
    assert answer.status_code == 200, answer.text
    (tmp_path / "server.nrrd").write_bytes(answer.content)
    subprocess.run([sys.executable, "-m", "labelsharing", "--progress", "none", "predict", str(server.models / "tiny"),
                    str(series), "--task", "TaskA", "--out", str(tmp_path / "cli"), "--format", "nrrd", *FLAGS],
                   env=ENV, check=True, capture_output=True, timeout=120)
    ours, theirs = sitk.ReadImage(str(tmp_path / "server.nrrd")), sitk.ReadImage(str(tmp_path / "cli" / "series.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    assert ours.GetOrigin() == theirs.GetOrigin() and ours.GetDirection() == theirs.GetDirection()
    try:
        import highdicom  # noqa: F401
    except ImportError:
        return
    seg = server.client.post("/v1/models/tiny/predict", params={"task": "TaskA", "format": "dcm", "filename": "ct.zip"},
                             content=stream.getvalue())
    assert seg.status_code == 200 and seg.content[128:132] == b"DICM"  # a DICOM SEG of the series


# ------------------------------------------------------------------------------------ what is refused
@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "a/../../evil.txt", "link"])
def test_a_zip_reaching_outside_its_folder_is_refused_before_anything_is_written(served, member):
    server, root = served
    before = _files(root)
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("TaskA/dataset.json", "{}")
        info = zipfile.ZipInfo(member)
        if member == "link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
        else:
            archive.writestr(info, "evil")
    answer = server.client.post("/v1/jobs/train", params={"name": "evil"}, content=stream.getvalue())
    assert answer.status_code == 400 and ("outside" in answer.json()["detail"] or "link" in answer.json()["detail"])
    assert _files(root) == before and not Path("/tmp/evil.txt").exists()


def test_oversized_uploads_and_zip_bombs_are_refused(served):
    server, root = served
    before = _files(root)
    big = server.client.post("/v1/models/tiny/predict", params={"task": "TaskA", "filename": "ct.nrrd"},
                             content=b"\0" * (2 * 2**20))
    assert big.status_code == 413 and "--max-upload-mb" in big.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(40):
            yield b"\0" * 2**16

    streamed = server.client.post("/v1/models/tiny/predict", params={"task": "TaskA", "filename": "ct.nrrd"},
                                  content=chunks())
    assert streamed.status_code == 413
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("TaskA/imagesTr/a.nii", b"\0" * (3 * 2**20))  # a few kB zipped, 3 MB unpacked
    bomb = server.client.post("/v1/jobs/train", params={"name": "bomb"}, content=stream.getvalue())
    assert len(stream.getvalue()) < 2**20 and bomb.status_code == 413
    assert _files(root) == before


@pytest.mark.parametrize("name", ["../outside", "..", ".hidden", "a/b", "tiny"])
def test_a_model_name_that_is_no_new_plain_folder_name_is_refused(served, name):
    server, root = served
    before = _files(root.parent)
    answer = server.client.post("/v1/jobs/train", params={"name": name}, content=_tasks_zip(root / "upload"))
    assert answer.status_code == (409 if name == "tiny" else 400)
    assert _files(root.parent) - before <= {str(Path(root.name, "upload", p)) for p in _files(root / "upload")} | \
        {str(Path(root.name, "upload"))}
    assert not (root / "outside").exists() and not (root.parent / "outside").exists()


def test_unpack_zip_writes_only_inside_its_folder(tmp_path):
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as stream:
        stream.writestr("task/dataset.json", "{}")
        stream.writestr("task/imagesTr/a.nii.gz", "x")
    written = unpack_zip(archive, tmp_path / "out", max_bytes=1000)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == \
        ["task/dataset.json", "task/imagesTr/a.nii.gz"]


# ------------------------------------------------------------------------------------ jobs
def test_job_progress_is_read_from_progress_and_epoch_lines(tmp_path):
    job = Job("id", "train", "m", [], tmp_path, tmp_path / "m")
    job.read_line("PROGRESS 0.0 training 0/500\n")
    assert (job.percent, job.step, job.steps, job.epoch) == (0.0, 0, 500, None)
    job.read_line("epoch   1/10 | step 50 | loss 0.912 | val Dice TaskA 0.412  TaskB 0.300 | mean 0.356  *best*")
    assert (job.epoch, job.epochs, job.step, job.dice) == (1, 10, 50, 0.356)
    job.read_line("PROGRESS 12.0 training 60/500 epoch=2/10 loss=0.8")
    assert (job.percent, job.step, job.epoch) == (12.0, 60, 2)
    assert list(job.log) == ["epoch   1/10 | step 50 | loss 0.912 | val Dice TaskA 0.412  TaskB 0.300 | mean 0.356  *best*"]


def test_keep_look_alikes_apart_reaches_the_jobs_command_line_as_a_bare_flag_only_when_true(tmp_path):
    """The app in this process (``TestClient``), so each job's command line (``queue.get(id).argv``) can be
    read; leaving the client closes the queue, which ends the one job that started (workers=1)."""
    from fastapi.testclient import TestClient

    models = tmp_path / "models"
    models.mkdir()
    make_model(fake=False, input_size=32).save(models / "tiny")
    settings = ServerSettings(models, models / ".labelsharing-serve" / "jobs", "secret", 2**20, device="cpu")
    app = create_app(settings, log=lambda line: None)
    one_task = _tasks_zip(tmp_path / "upload-one", "one")
    with TestClient(app, headers={"Authorization": "Bearer secret"}) as client:
        def argv(kind: str, **params) -> list[str]:
            body = one_task if kind == "add-task" else _tasks_zip(tmp_path / "upload")
            answer = client.post(f"/v1/jobs/{kind}", params=params, content=body)
            assert answer.status_code == 202, answer.text
            return app.state.queue.get(answer.json()["id"]).argv

        train = argv("train", name="apart", epochs=3, keep_look_alikes_apart="true")
        assert train.count("--keep-look-alikes-apart") == 1 and train[-1] == "--keep-look-alikes-apart"
        assert train[train.index("--epochs"):] == ["--epochs", "3", "--keep-look-alikes-apart"]  # a bare flag
        # a Python True in a query string (urllib.parse.urlencode, the Slicer module's client) reads "True"
        added = argv("add-task", model="tiny", name="apart_2", replay=0.25, keep_look_alikes_apart="True")
        assert added[added.index("--replay"):] == ["--replay", "0.25", "--keep-look-alikes-apart"]
        assert "--keep-look-alikes-apart" not in argv("train", name="shared", keep_look_alikes_apart="false")
        assert "--keep-look-alikes-apart" not in argv("add-task", model="tiny", name="shared_2")  # the default
        refused = client.post("/v1/jobs/train", params={"name": "x", "keep_look_alikes_apart": "maybe"}, content=b"")
        assert refused.status_code == 422


@pytest.mark.slow
def test_a_training_job_runs_to_a_model_that_is_then_served_and_downloadable(served):
    server, root = served
    answer = server.client.post("/v1/jobs/train", params={"name": "trained", **TINY_TRAINING},
                                content=_tasks_zip(root / "upload-train"))
    assert answer.status_code == 202, answer.text
    job = server.wait_for(answer.json()["id"])
    assert job["status"] == "done", job["log"]
    assert job["progress"]["percent"] == 100.0 and job["progress"]["step"] == job["progress"]["steps"] == 2
    assert job["progress"]["epoch"] == 1 and job["progress"]["dice"] is not None
    names = [model["name"] for model in server.client.get("/v1/models").json()["models"]]
    assert names == ["tiny", "trained"]
    predicted = server.client.post("/v1/models/trained/predict", params={"task": "TaskA", "filename": "ct.nrrd"},
                                   content=(root / "ct_0000.nrrd").read_bytes())
    assert predicted.status_code == 200
    # a trained model stores task references: the engine's <case>.prediction.json comes back as a header
    report = json.loads(predicted.headers["X-Labelsharing-Prediction"])
    assert report["task"] == "TaskA" and report["recognition"] is None
    assert report["familiarity"]["familiar"] is False and "'TaskA'" in report["familiarity"]["warning"]  # 3D vs 2D
    download = server.client.get("/v1/models/trained/download")
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        assert sorted(archive.namelist()) == ["trained/model.json", "trained/model.safetensors"]
    again = server.client.post("/v1/jobs/train", params={"name": "trained", **TINY_TRAINING},
                               content=_tasks_zip(root / "upload-train"))
    assert again.status_code == 409  # never over an existing model
    assert _files(server.models / ".labelsharing-serve" / "jobs") == set()
    assert sorted(p.name for p in server.models.iterdir()) == [".labelsharing-serve", "tiny", "trained"]


def test_cancel_ends_a_running_job_and_removes_its_data(served):
    server, root = served
    answer = server.client.post("/v1/jobs/train", params={"name": "cancelled", **TINY_TRAINING, "epochs": 10000},
                                content=_tasks_zip(root / "upload-cancel"))
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    running = server.wait_for(job_id, states=("running",))
    assert running["progress"]["percent"] < 100
    cancelled = server.client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200
    job = server.wait_for(job_id, timeout=30)
    assert job["status"] == "cancelled"
    assert not (server.models / "cancelled").exists() and not (server.models / ".cancelled.work").exists()
    assert _files(server.models / ".labelsharing-serve" / "jobs") == set()
    listed = server.client.get("/v1/jobs").json()["jobs"]
    assert [entry["status"] for entry in listed if entry["id"] == job_id] == ["cancelled"]


@pytest.mark.slow
def test_the_load_benchmark_runs_a_short_bounded_round(tmp_path):
    done = subprocess.run([sys.executable, str(Path(ENGINE).parent / "benchmarks" / "server_load.py"), "--duration",
                           "1", "--clients", "1,2", "--size", "32", "--slices", "4", "--backend", "torch", "--work",
                           str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if "client(s)" in line]
    assert len(rows) == 4 and all("errors 0" in row and "x alone" in row for row in rows), done.stdout
    assert "training job cancelled" in done.stdout
