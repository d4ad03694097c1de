"""The server's safety rules: the access token, where it may listen, and what an upload may be.

* :func:`load_or_create_token`: a random bearer token, made on first start and kept in a file
  only its owner can read (mode 0600); a token file others can read is refused.
* :func:`check_listen_address`: anything but loopback without TLS is refused unless the admin
  passes ``--insecure`` (then a warning names what travels in clear).
* :func:`receive_upload`: a request body streamed into a job folder, stopped at the size limit.
* :func:`unpack_zip`: a zip unpacked into a job folder, refusing absolute paths, ``..``,
  symbolic links and more bytes than the limit (a "zip bomb"), before anything is written.
* :func:`check_model_name`: a model name is one plain folder name under the models folder.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
import stat
import warnings
import zipfile
from pathlib import Path, PurePosixPath
from typing import AsyncIterable

from labelsharing.errors import LabelSharingError

__all__ = [
    "NotFound", "UploadTooLarge", "check_listen_address", "check_model_name", "is_loopback", "load_or_create_token",
    "receive_upload", "token_matches", "unpack_zip",
]

#: A model name: letters, digits, ``.``, ``_``, ``-``; starts with a letter or digit (so never ``..``).
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_CHUNK = 1 << 20


class UploadTooLarge(LabelSharingError):
    """An upload (or a zip's unpacked content) beyond the server's ``--max-upload-mb`` (HTTP 413)."""


class NotFound(LabelSharingError):
    """No model or job of the name a request gives (HTTP 404)."""


# --------------------------------------------------------------------------------- token
def load_or_create_token(path: str | Path, rotate: bool = False) -> tuple[str, bool]:
    """The token stored in ``path``; a new one (written with mode 0600) if there is none or ``rotate``.

    Returns:
        ``(token, created)``: ``created`` is true when the token was just made, the one time it
        is printed.

    Raises:
        LabelSharingError: the file can be read by others (group/world bits set), is empty, or
            cannot be written.
    """
    path = Path(path)
    if path.exists() and not rotate:
        if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
            raise LabelSharingError(f"The token file {path} can be read by other users; anyone who reads it can use "
                                    f"the server. Run 'chmod 600 {path}' (or start with --rotate-token).")
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise LabelSharingError(f"The token file {path} is empty; delete it or start with --rotate-token.")
        return token, False
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(token + "\n")
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return token, True


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header is ``Bearer <token>`` (compared in constant time)."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), token.encode())


# --------------------------------------------------------------------------------- listening
def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen_address(host: str, tls: bool, insecure: bool) -> None:
    """Refuse to serve on a network address without TLS, unless ``insecure``.

    On loopback only programs of this machine can connect (a TLS proxy in front, or Slicer on the
    same workstation). Elsewhere, without TLS, the token and the patients' images would cross the
    network in clear text.

    Raises:
        LabelSharingError: ``host`` is not loopback, there is no TLS and ``insecure`` is false.
    """
    if is_loopback(host) or tls:
        return
    risk = (f"serving on {host} without TLS sends the access token and the patients' images unencrypted over the "
            "network, where anyone on the path can read them and use the token")
    if not insecure:
        raise LabelSharingError(f"Refusing: {risk}. Give --tls-cert and --tls-key, or keep --host 127.0.0.1 behind "
                                "the hospital's TLS proxy (README, 'Server'); --insecure accepts the risk.")
    warnings.warn(f"--insecure: {risk}. Use it only on a network you trust.")


def check_model_name(name: str) -> str:
    """``name`` if it is a plain folder name (no separators, no ``..``, no leading dot).

    Raises:
        LabelSharingError: any other name.

    Example:
        >>> check_model_name("abdomen-v2")
        'abdomen-v2'
    """
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise LabelSharingError(f"{name!r} is not a model name: use 1-100 letters, digits, '.', '_' or '-', starting "
                                "with a letter or digit (no '/', no '..').")
    return name


# --------------------------------------------------------------------------------- uploads
async def receive_upload(chunks: AsyncIterable[bytes], target: Path, max_bytes: int) -> int:
    """Write a streamed request body to ``target`` (a new file in a job folder); its size in bytes.

    Raises:
        UploadTooLarge: past ``max_bytes`` (the partial file is removed).
    """
    size = 0
    try:
        with open(target, "xb") as stream:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(_too_large(max_bytes))
                stream.write(chunk)
    except UploadTooLarge:
        target.unlink()
        raise
    return size


def unpack_zip(archive: Path, destination: Path, max_bytes: int) -> list[Path]:
    """Unpack ``archive`` into the empty folder ``destination``; the files written.

    Every member is checked before anything is written: a name that is absolute (``/x``,
    ``C:\\x``), holds ``..``, or is a symbolic link refuses the whole archive; so does an
    unpacked total beyond ``max_bytes``. Members are written with the sizes their headers claim
    at most (a lying header cannot write more).

    Raises:
        LabelSharingError: not a zip file, or a member breaking a rule (named).
        UploadTooLarge: the unpacked content is too large.
    """
    try:
        archive_file = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise LabelSharingError("The upload is not a zip file; send the folder zipped (e.g. 'zip -r x.zip FOLDER').") \
            from None
    with archive_file:
        members = archive_file.infolist()
        total = 0
        for member in members:
            _check_member(member)
            total += member.file_size
        if total > max_bytes:
            raise UploadTooLarge(f"The zip unpacks to {total / 2**20:.0f} MB; " + _too_large(max_bytes))
        written = []
        for member in members:
            target = destination.joinpath(*PurePosixPath(member.filename).parts)
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive_file.open(member) as source, open(target, "xb") as stream:
                remaining = member.file_size
                while remaining > 0:
                    chunk = source.read(min(_CHUNK, remaining))
                    if not chunk:
                        break
                    stream.write(chunk)
                    remaining -= len(chunk)
            written.append(target)
    return written


def _check_member(member: zipfile.ZipInfo) -> None:
    name = member.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or re.match(r"[A-Za-z]:", name) or ".." in parts:
        raise LabelSharingError(f"The zip holds {member.filename!r}, a path outside its own folder (absolute or with "
                                "'..'); nothing was unpacked.")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise LabelSharingError(f"The zip holds {member.filename!r}, a symbolic link; links are refused (they can "
                                "point outside the upload). Zip the files themselves.")


def _too_large(max_bytes: int) -> str:
    return (f"the server accepts at most {max_bytes / 2**20:g} MB per upload (its --max-upload-mb). Send a smaller "
            "file or ask the admin to raise the limit.")
