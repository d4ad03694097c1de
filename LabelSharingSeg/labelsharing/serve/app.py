"""The HTTP API (``/v1``): models, predict, training jobs, model download; FastAPI.

Every endpoint but ``GET /v1/health`` needs ``Authorization: Bearer <token>``. Files travel as
raw request bodies (``Content-Type: application/octet-stream``), options as query parameters:
the body is streamed into a job folder and stopped at the size limit, nothing is spooled
elsewhere first (as multipart parsing would), and a client needs only ``urllib``.

============================================  ==================================================
``GET  /v1/health``                           ``{"status": "ok", "version"}`` (no token)
``GET  /v1/models``                           every model: tasks, labels (value, colour, terminology)
``POST /v1/models/{name}/predict``            body: a NIfTI/NRRD/MHA image or a zip (of one image,
                                              or of a DICOM series); ``task``, ``format`` (nii.gz,
                                              nrrd, seg.nrrd; dcm, a DICOM SEG, for a series), ``filename``;
                                              answers the label file, on the input's exact grid;
                                              ``task=auto`` recognises the task; the header
                                              ``X-Labelsharing-Prediction`` holds the engine's
                                              ``<case>.prediction.json`` (task, recognition, warning)
``GET  /v1/models/{name}/download``           the model folder, zipped
``POST /v1/jobs/train``                       body: a zip of nnU-Net task folders (and ``pins.json`` at its
                                              root, as ``--pins``); ``name`` + options;
                                              ``keep_look_alikes_apart=true``: ``--keep-look-alikes-apart``
``POST /v1/jobs/add-task``                    body: a zip of one task folder (and ``pins.json``); ``model``,
                                              ``name`` + options (``replay``, ``keep_look_alikes_apart`` too)
``GET  /v1/jobs``, ``GET /v1/jobs/{id}``      status, progress (epoch, step, Dice), log tail
``POST /v1/jobs/{id}/cancel``                 ends the job (its process group)
============================================  ==================================================

The OpenAPI description is at ``/v1/openapi.json`` and ``/v1/docs`` (no token: it holds no data).
Errors answer ``{"detail": message}``: 400 a user error, 401 no or a wrong token, 404 an unknown
model or job, 409 a model name in use, 413 an upload beyond the limit, 422 a malformed option.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from starlette.background import BackgroundTask

from labelsharing import __version__
from labelsharing.errors import LabelSharingError
from labelsharing.model import CONFIG_FILE, WEIGHTS_FILE
from labelsharing.serve.jobs import JobQueue
from labelsharing.serve.models import ModelLibrary
from labelsharing.serve.security import NotFound, UploadTooLarge, check_model_name, receive_upload, token_matches, \
    unpack_zip

__all__ = ["PREDICTION_HEADER", "ServerSettings", "create_app"]

#: Image endings a predict accepts (a ``.zip`` holds one of these or a DICOM series).
#: the predict answer's header carrying the engine's ``<case>.prediction.json`` (compact JSON)
PREDICTION_HEADER = "X-Labelsharing-Prediction"
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".zip")


@dataclass
class ServerSettings:
    """What ``labelsharing serve`` was started with.

    ``work_root`` holds the job folders (``<models>/.labelsharing-serve/jobs``); ``predictor``
    are ``Predictor.from_model_dir``'s options (device, backend, precision, batch size).
    """

    models: Path
    work_root: Path
    token: str
    max_upload_bytes: int
    device: str = "auto"
    predictor: dict | None = None
    workers: int = 1
    max_loaded: int = 4


def create_app(settings: ServerSettings, log=print) -> FastAPI:
    """The FastAPI application serving ``settings.models``; its job queue is closed at shutdown."""
    library = ModelLibrary(settings.models, settings.predictor or {"device": settings.device}, settings.max_loaded,
                           log)
    queue = JobQueue(settings.work_root, settings.workers, log)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.close()

    app = FastAPI(title="labelsharing server", version=__version__, openapi_url="/v1/openapi.json",
                  docs_url="/v1/docs", redoc_url=None, lifespan=lifespan)
    app.state.library, app.state.queue = library, queue

    def authorised(request: Request) -> None:
        if not token_matches(request.headers.get("authorization"), settings.token):
            raise HTTPException(401, "A valid token is needed: send 'Authorization: Bearer <token>' (the token is "
                                     "in the server's token file).", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(LabelSharingError)
    async def user_error(request: Request, exc: LabelSharingError) -> JSONResponse:
        status = 413 if isinstance(exc, UploadTooLarge) else 404 if isinstance(exc, NotFound) else 400
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.get("/v1/health")
    def health() -> dict:
        return {"status": "ok", "version": __version__}

    api = APIRouter(prefix="/v1", dependencies=[Depends(authorised)])

    @api.get("/models")
    def list_models() -> dict:
        return {"models": list(library.describe())}

    @api.post("/models/{name}/predict")
    async def predict(name: str, request: Request, task: str = Query(...),
                      format: str = Query("nii.gz", pattern="^(nii\\.gz|nrrd|seg\\.nrrd|dcm)$"),
                      filename: str = Query("image.nii.gz")) -> FileResponse:
        library.folder(name)
        ending = next((e for e in IMAGE_ENDINGS if filename.lower().endswith(e)), None)
        if ending is None:
            raise LabelSharingError(f"filename {filename!r}: send one of {', '.join(IMAGE_ENDINGS)} (a .zip holds "
                                    "one image or a DICOM series).")
        folder = Path(tempfile.mkdtemp(prefix="predict-", dir=settings.work_root))
        try:
            upload = folder / f"upload{ending}"
            await _receive(request, upload, settings.max_upload_bytes)
            image = upload if ending != ".zip" else \
                await run_in_threadpool(_image_in_zip, upload, folder / "image", settings.max_upload_bytes)
            start = time.perf_counter()
            written = await run_in_threadpool(_predict, library, name, image, task, format, folder / "out")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        case = _case_name(filename, ending)
        headers = {"X-Labelsharing-Seconds": f"{time.perf_counter() - start:.4f}", **_prediction_header(written)}
        return FileResponse(written, filename=f"{case}.{format}", media_type="application/octet-stream",
                            headers=headers, background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    @api.get("/models/{name}/download")
    def download(name: str) -> FileResponse:
        source = library.folder(name)
        if any((source / member).is_symlink() for member in (CONFIG_FILE, WEIGHTS_FILE)):
            raise LabelSharingError(f"Model {name!r} holds symbolic links; the server sends only plain model files.")
        folder = Path(tempfile.mkdtemp(prefix="download-", dir=settings.work_root))
        archive = folder / f"{name}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as stream:
            for member in (CONFIG_FILE, WEIGHTS_FILE):
                stream.write(source / member, f"{name}/{member}")
        return FileResponse(archive, filename=archive.name, media_type="application/zip",
                            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    @api.post("/jobs/train", status_code=202)
    async def train(request: Request, name: str = Query(...), epochs: Optional[int] = Query(None, ge=1),
                    steps_per_epoch: Optional[int] = Query(None, ge=1), batch_size: Optional[int] = Query(None, ge=1),
                    lr: Optional[float] = Query(None, gt=0, le=1), time_budget: Optional[float] = Query(None, gt=0),
                    seed: Optional[int] = Query(None, ge=0), val_fraction: Optional[float] = Query(None, ge=0, lt=1),
                    input_size: Optional[int] = Query(None, ge=16), features: Optional[int] = Query(None, ge=1),
                    keep_look_alikes_apart: bool = Query(False)) -> dict:
        flags = _flags(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, lr=lr,
                       time_budget=time_budget, seed=seed, val_fraction=val_fraction, input_size=input_size,
                       features=features, keep_look_alikes_apart=keep_look_alikes_apart)
        return await _submit(request, "train", name, None, flags)

    @api.post("/jobs/add-task", status_code=202)
    async def add_task(request: Request, model: str = Query(...), name: str = Query(...),
                       epochs: Optional[int] = Query(None, ge=1), steps_per_epoch: Optional[int] = Query(None, ge=1),
                       batch_size: Optional[int] = Query(None, ge=1), lr: Optional[float] = Query(None, gt=0, le=1),
                       time_budget: Optional[float] = Query(None, gt=0), seed: Optional[int] = Query(None, ge=0),
                       val_fraction: Optional[float] = Query(None, ge=0, lt=1),
                       replay: Optional[float] = Query(None, ge=0, lt=1),
                       keep_look_alikes_apart: bool = Query(False)) -> dict:
        flags = _flags(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, lr=lr,
                       time_budget=time_budget, seed=seed, val_fraction=val_fraction, replay=replay,
                       keep_look_alikes_apart=keep_look_alikes_apart)
        return await _submit(request, "add-task", name, library.folder(model), flags)

    async def _submit(request: Request, kind: str, name: str, parent: Optional[Path], flags: list) -> dict:
        out = settings.models / check_model_name(name)
        _check_free(out, queue)
        job_id, folder = queue.new_folder()
        try:
            upload = folder / "upload.zip"
            await _receive(request, upload, settings.max_upload_bytes)
            await run_in_threadpool(unpack_zip, upload, folder / "data", settings.max_upload_bytes)  # off the loop
            upload.unlink()
            datasets = sorted(str(path.parent) for path in (folder / "data").rglob("dataset.json"))
            if not datasets or (parent is not None and len(datasets) != 1):
                raise LabelSharingError(f"The zip holds {len(datasets)} task folder(s) (folders with a dataset.json); "
                                        + ("add-task needs exactly one." if parent else "train needs at least one."))
            _check_free(out, queue)  # again: another request may have taken the name during the upload
            inputs = datasets if parent is None else [str(parent), datasets[0]]
            pins = folder / "data" / "pins.json"
            arguments = [kind, *inputs, "--out", str(out), "--device", settings.device, *flags,
                         *(["--pins", str(pins)] if pins.is_file() else [])]
            job = queue.submit(job_id, folder, kind, out, arguments)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return job.to_dict()

    @api.get("/jobs")
    def list_jobs() -> dict:
        return {"jobs": [job.to_dict(log_lines=0) for job in queue.jobs()]}

    @api.get("/jobs/{job_id}")
    def job_status(job_id: str, log: int = Query(50, ge=0, le=200)) -> dict:
        return queue.get(job_id).to_dict(log_lines=log)

    @api.post("/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict:
        return queue.cancel(job_id).to_dict()

    app.include_router(api)
    return app


async def _receive(request: Request, target: Path, max_bytes: int) -> None:
    """The request body into ``target``; refused at once if its declared length is beyond the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise UploadTooLarge(f"The upload is {int(declared) / 2**20:.0f} MB; the server accepts at most "
                             f"{max_bytes / 2**20:g} MB (its --max-upload-mb).")
    await receive_upload(request.stream(), target, max_bytes)


def _image_in_zip(archive: Path, destination: Path, max_bytes: int) -> Path:
    """The one image file of a zipped upload, or the unpacked folder (a DICOM series)."""
    files = unpack_zip(archive, destination, max_bytes)
    archive.unlink()
    images = [path for path in files if path.name.lower().endswith(IMAGE_ENDINGS[:-1])]
    if len(images) == 1 and len(files) == 1:
        return images[0]
    if images:
        raise LabelSharingError(f"The zip holds {len(files)} files; send one image (or one DICOM series) per predict.")
    return destination


def _predict(library: ModelLibrary, name: str, image: Path, task: str, file_format: str, out: Path) -> Path:
    predictor, lock = library.predictor(name)
    with lock:
        return predictor.predict_files([image], task, out, file_format=file_format)[0]


def _prediction_header(written: Path) -> dict[str, str]:
    """The engine's ``<case>.prediction.json`` beside ``written`` (the task used, its recognition and the
    unfamiliar-image warning; absent for models without task references) as one ASCII header line, so the
    client gets the report with the result in one answer."""
    reports = list(written.parent.glob("*.prediction.json"))
    if len(reports) != 1:
        return {}
    report = json.loads(reports[0].read_text(encoding="utf-8"))
    return {PREDICTION_HEADER: json.dumps(report, ensure_ascii=True, separators=(",", ":"))}


def _check_free(out: Path, queue: JobQueue) -> None:
    if out.exists() or queue.claims(out.name):
        raise HTTPException(409, f"A model named {out.name!r} exists or is being trained; models are never replaced. "
                                 "Choose another name.")


def _flags(**options) -> list[str]:
    """``--steps-per-epoch 5 ...`` for the options given; a boolean option is a bare flag, present when true
    (``keep_look_alikes_apart=True``: ``--keep-look-alikes-apart``, the engine's ``store_true`` flag)."""
    flags = []
    for key, value in options.items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            flags += [flag] if value else []
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def _case_name(filename: str, ending: str) -> str:
    """The case name of an uploaded file's name (letters, digits, ``._-`` only), as ``predict`` names outputs."""
    stem = Path(filename.replace("\\", "/")).name[: -len(ending)]
    if stem.endswith("_0000"):
        stem = stem[:-5]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem).lstrip(".")
    return cleaned or "image"
