"""``labelsharing serve``: check the address, make or read the token, and run the API under uvicorn.

The token is printed once, when it is made, with the file that keeps it; later starts print only
the file. The socket is bound here (``--port 0`` picks a free port), so the address printed is
the one served. Job folders live in ``<models>/.labelsharing-serve/jobs``: the server reads and
writes nothing outside the models folder but the token file the admin names.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

from labelsharing.errors import LabelSharingError
from labelsharing.serve.security import check_listen_address, load_or_create_token

__all__ = ["SERVER_FOLDER", "run_server"]

#: The server's own folder inside the models folder (token, job folders); hidden, so never a model.
SERVER_FOLDER = ".labelsharing-serve"


def run_server(models: str | Path, host: str = "127.0.0.1", port: int = 8000, token_file: str | Path | None = None,
               tls_cert: str | Path | None = None, tls_key: str | Path | None = None, insecure: bool = False,
               rotate_token: bool = False, max_upload_mb: float = 2048, workers: int = 1, max_loaded: int = 4,
               predictor: dict | None = None, device: str = "auto") -> int:
    """Serve every model folder under ``models`` until interrupted; returns the exit code (0).

    Args:
        models: the models folder (``--models DIR``); training jobs write new models into it.
        host, port: where to listen; ``port`` 0 picks a free port (printed).
        token_file: where the token is kept (default ``<models>/.labelsharing-serve/token``).
        tls_cert, tls_key: PEM certificate and key: serve HTTPS.
        insecure: allow a network address without TLS (a warning names the risk).
        rotate_token: replace the token (the old one stops working) and print the new one.
        max_upload_mb: largest upload (and unpacked zip) accepted.
        workers: training jobs run at once (1: one GPU job at a time).
        max_loaded: models kept loaded (least recently used dropped).
        predictor: ``Predictor.from_model_dir`` options (device, backend, precision, batch_size).
        device: the device training jobs use.

    Raises:
        LabelSharingError: the extra is not installed, the models folder is missing, the address
            is refused (:func:`check_listen_address`), TLS half given, or the token file unsafe.
    """
    try:
        import uvicorn
    except ImportError:
        raise LabelSharingError("The server needs FastAPI and uvicorn: pip install \"labelsharing[serve]\".") from None
    from labelsharing.serve.app import ServerSettings, create_app

    models = Path(models).resolve()
    if not models.is_dir():
        raise LabelSharingError(f"--models {models} is not a folder; create it (it may start empty: training jobs "
                                "write their models into it).")
    if (tls_cert is None) != (tls_key is None):
        raise LabelSharingError("TLS needs both --tls-cert and --tls-key.")
    check_listen_address(host, tls_cert is not None, insecure)
    own = models / SERVER_FOLDER
    own.mkdir(mode=0o700, exist_ok=True)
    token_path = Path(token_file) if token_file else own / "token"
    token, created = load_or_create_token(token_path, rotate=rotate_token)
    if created:
        print(f"New access token (shown once; kept in {token_path.resolve()}, readable only by you):\n  {token}",
              flush=True)
    else:
        print(f"Access token: in {token_path.resolve()}", flush=True)
    work_root = own / "jobs"
    shutil.rmtree(work_root, ignore_errors=True)  # job folders of a server that stopped abruptly: patient data
    settings = ServerSettings(models=models, work_root=work_root, token=token,
                              max_upload_bytes=int(max_upload_mb * 2**20), device=device, predictor=predictor,
                              workers=workers, max_loaded=max_loaded)
    app = create_app(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise LabelSharingError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Choose another --port "
                                "(or stop the program using it).") from None
    scheme = "https" if tls_cert else "http"
    shown = f"[{host}]" if ":" in host else host
    print(f"Serving {len(list(app.state.library.names()))} model(s) from {models} on "
          f"{scheme}://{shown}:{sock.getsockname()[1]} (API docs at /v1/docs; Ctrl+C stops)", flush=True)
    config = uvicorn.Config(app, ssl_certfile=str(tls_cert) if tls_cert else None,
                            ssl_keyfile=str(tls_key) if tls_key else None, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
    return 0
