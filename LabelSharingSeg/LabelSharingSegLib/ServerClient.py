"""The module's client of ``labelsharing serve`` (README, "Server"): models and predict over HTTP(S).

Python's own ``urllib`` only (Slicer's Python has it; nothing to install), so the remote mode works
without torch or the engine's packages on the workstation. The API is the server's ``/v1``
(``labelsharing/serve/app.py``): files travel as raw request bodies, options as query parameters,
the token as ``Authorization: Bearer``. HTTPS certificates are verified against the system's
certificate authorities (a hospital proxy's certificate must be trusted there).

Every failure is one ``ModuleError`` written for the user: the server cannot be reached (with
the reason: refused, unknown host, untrusted certificate, timeout), the token is refused (401),
or the server's own message (``detail``) for anything else.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .ModelInfo import ModelInfo
from .ModuleError import ModuleError
from .Translation import tr as _

#: the predict answer's header with the engine's report (``labelsharing.serve.app.PREDICTION_HEADER``)
PREDICTION_HEADER = "X-Labelsharing-Prediction"

__all__ = ["ServerClient", "EngineSettings", "LOCAL", "SERVER", "zipDatasets"]

LOCAL, SERVER = "local", "server"
_KEYS = {"engine": "LabelSharingSeg/Engine", "url": "LabelSharingSeg/ServerURL", "token": "LabelSharingSeg/ServerToken"}


def zipDatasets(datasets: Sequence[Union[str, Path]], pins: Optional[Union[str, Path]], archive: Path) -> Path:
    """Zip task folders (each as ``<folder name>/...``) and a pins file (as ``pins.json``) for a training job.

    Raises:
        ModuleError: two task folders with the same name (they would overwrite each other in the zip).
    """
    names = [Path(folder).name for folder in datasets]
    if len(set(names)) != len(names):
        raise ModuleError(_("Two task folders have the same name ({names}); rename one to send both to the "
                            "server.").format(names=", ".join(sorted({n for n in names if names.count(n) > 1}))))
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as stream:
        for folder in map(Path, datasets):
            for path in sorted(folder.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    stream.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
        if pins:
            stream.write(pins, "pins.json")
    return archive


class EngineSettings:
    """The "Engine" setting, kept in Slicer's application settings (``qt.QSettings()``).

    ``engine`` is :data:`LOCAL` (the engine runs here, as a subprocess) or :data:`SERVER`
    (``url`` and ``token`` of a ``labelsharing serve``).
    """

    def __init__(self, settings: Any) -> None:
        self._settings = settings

    def _value(self, name: str, default: str = "") -> str:
        value = self._settings.value(_KEYS[name], default)
        return str(value) if value is not None else default

    @property
    def engine(self) -> str:
        return SERVER if self._value("engine", LOCAL) == SERVER else LOCAL

    @property
    def url(self) -> str:
        return self._value("url")

    @property
    def token(self) -> str:
        return self._value("token")

    def save(self, engine: str, url: str, token: str) -> None:
        self._settings.setValue(_KEYS["engine"], SERVER if engine == SERVER else LOCAL)
        self._settings.setValue(_KEYS["url"], url.strip())
        self._settings.setValue(_KEYS["token"], token.strip())

    def client(self) -> "ServerClient":
        """A client of the configured server. Raises ``ModuleError`` without a URL or token."""
        return ServerClient(self.url, self.token)

    def serverUrl(self) -> str:
        """The server's URL as a client names it (no trailing ``/``) when the engine is a server, else ``""``."""
        return self.url.strip().rstrip("/") if self.engine == SERVER else ""


class ServerClient:
    """Talks to one ``labelsharing serve``.

    Args:
        url: the server's base URL, ``https://gpu.hospital.org`` (``http://`` only for ``127.0.0.1``).
        token: the server's access token (its token file).
        timeout: seconds to wait for an answer before giving up (a predict on a large volume can take long).
        opener: ``urllib.request.urlopen`` (injected by tests).

    Raises:
        ModuleError: no URL, a URL that is not http(s), or no token.
    """

    def __init__(self, url: str, token: str, timeout: float = 600.0, opener: Optional[Callable] = None) -> None:
        url = (url or "").strip().rstrip("/")
        if urllib.parse.urlparse(url).scheme not in ("http", "https"):
            raise ModuleError(_("Set the server's URL in the Engine section, e.g. https://gpu.hospital.org "
                                "(what 'labelsharing serve' printed, or your TLS proxy's address)."))
        if not (token or "").strip():
            raise ModuleError(_("Set the server's access token in the Engine section (printed when the server first "
                                "started; kept in its token file)."))
        self.url, self._token, self.timeout = url, token.strip(), timeout
        self._open = opener or urllib.request.urlopen

    def models(self) -> List[ModelInfo]:
        """The server's models (those it cannot read are left out)."""
        answer = json.loads(self._request("GET", "/v1/models").decode("utf-8"))
        return [ModelInfo.fromServer(entry, self.url) for entry in answer["models"] if "error" not in entry]

    def predict(self, model: str, task: str, inputFile: Path, outFile: Path, fileFormat: str = "seg.nrrd") -> Path:
        """Segment ``inputFile`` with ``model``'s ``task`` (or ``"auto"``) on the server; the result is written to
        ``outFile`` (``<case>.<fileFormat>``) and the engine's report, when the server sends one (header
        ``X-Labelsharing-Prediction``, ``labelsharing/serve/app.py``), to ``<case>.prediction.json`` beside it,
        where a local ``predict`` writes it."""
        inputFile, outFile = Path(inputFile), Path(outFile)
        body = inputFile.read_bytes()
        result, headers = self._send("POST", f"/v1/models/{urllib.parse.quote(model, safe='')}/predict",
                                     {"task": task, "format": fileFormat, "filename": inputFile.name}, body)
        outFile.parent.mkdir(parents=True, exist_ok=True)
        outFile.write_bytes(result)
        reportFile = outFile.with_name(outFile.name[:-len(fileFormat)] + "prediction.json")
        report = headers.get(PREDICTION_HEADER)
        if report:
            reportFile.write_text(report, encoding="utf-8")
        elif reportFile.exists():
            reportFile.unlink()
        return outFile

    def submitJob(self, call: Any, archive: Path) -> dict:
        """Start ``call`` (a ``ServerJobCall``) with ``archive`` (its datasets zipped, :func:`zipDatasets`); the job."""
        params = {"name": call.name, **dict(call.options)}
        if call.model:
            params["model"] = call.model
        body = Path(archive).read_bytes()
        return json.loads(self._request("POST", f"/v1/jobs/{call.kind}", params, body).decode("utf-8"))

    def job(self, jobId: str, logLines: int = 200) -> dict:
        """A job's status, progress and last ``logLines`` log lines (``log_total``: lines logged so far)."""
        return json.loads(self._request("GET", f"/v1/jobs/{urllib.parse.quote(jobId, safe='')}",
                                        {"log": logLines}).decode("utf-8"))

    def cancelJob(self, jobId: str) -> dict:
        return json.loads(self._request("POST", f"/v1/jobs/{urllib.parse.quote(jobId, safe='')}/cancel",
                                        body=b"").decode("utf-8"))

    def _request(self, method: str, path: str, params: Optional[Dict[str, Any]] = None,
                 body: Optional[bytes] = None) -> bytes:
        return self._send(method, path, params, body)[0]

    def _send(self, method: str, path: str, params: Optional[Dict[str, Any]] = None,
              body: Optional[bytes] = None) -> Tuple[bytes, Any]:
        """The answer's body and headers (``headers.get(name)``); every failure one ``ModuleError``."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(self.url + path + query, data=body, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        if body is not None:
            request.add_header("Content-Type", "application/octet-stream")
        try:
            with self._open(request, timeout=self.timeout) as response:
                return response.read(), response.headers
        except urllib.error.HTTPError as exc:
            raise self._httpError(exc) from None
        except urllib.error.URLError as exc:
            raise ModuleError(self._unreachable(exc.reason)) from None
        except (socket.timeout, TimeoutError, ConnectionError, ssl.SSLError) as exc:
            raise ModuleError(self._unreachable(exc)) from None

    def _httpError(self, exc: "urllib.error.HTTPError") -> ModuleError:
        if exc.code == 401:
            return ModuleError(_("The server at {url} refused the access token. Copy the token from the server's token "
                                 "file into the Engine section (it changes when the admin rotates it).").format(url=self.url))
        try:
            detail = json.loads(exc.read().decode("utf-8")).get("detail", "")
        except (ValueError, AttributeError, OSError):
            detail = ""
        if not isinstance(detail, str):  # FastAPI's validation errors are a list
            detail = json.dumps(detail)
        return ModuleError(_("The server at {url} answered {code}: {detail}").format(
            url=self.url, code=exc.code, detail=detail or exc.reason))

    def _unreachable(self, reason: Any) -> str:
        if isinstance(reason, ssl.SSLCertVerificationError):
            reason = _("its certificate is not trusted by this computer ({reason})").format(reason=reason)
        return _("Cannot reach the LabelSharingSeg server at {url}: {reason}. Check the URL in the Engine section, "
                 "the network, and that 'labelsharing serve' runs there.").format(url=self.url, reason=reason)
