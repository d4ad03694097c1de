"""Output files that are either complete or absent, and never an input.

Every output goes through :func:`write_atomically`: it is written under a hidden temporary name
in its own folder (``.ct.tmp-<pid>-<random>.nii.gz``: the real ending is kept, so writers that
choose the format from the name still do), checked (not empty, and it reads back), flushed to
disk, and only then renamed onto its final name with :func:`os.replace`. A full disk, a file
size limit, a crash or a kill therefore never leaves a truncated file under the final name, and
an existing file is replaced only by a complete one. The hidden file a killed writer leaves is
removed by the next write of the same name. :func:`check_outputs` is run before a
command starts working: it refuses to replace an input of the command, or any existing file
unless the user passed ``--force``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

from labelsharing.errors import LabelSharingError

__all__ = ["IO_ERRORS", "temporary_path", "remove_stale_temporaries", "write_atomically", "write_json_atomically",
           "check_gzip_stream", "check_outputs"]

#: What writers and read-back checks raise when a file cannot be written or read back complete:
#: OSError (disk full, no permission, file too large; gzip's BadGzipFile), RuntimeError (SimpleITK,
#: torch), ValueError (json, a check that found a wrong size), EOFError and zlib.error (a cut gzip stream).
IO_ERRORS: tuple[type[BaseException], ...] = (OSError, RuntimeError, ValueError, EOFError, zlib.error)

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than allowed (a file size limit, see ulimit -f)",
    errno.EACCES: "writing there is not allowed (permission denied)",
    errno.EPERM: "writing there is not allowed (operation not permitted)",
    errno.EROFS: "the file system is read-only",
}
_UNKNOWN_CAUSE = "The disk may be full, a file size limit (ulimit -f) reached or the folder not writable."
_ADVICE = "Free some space, fix the folder's permissions or choose another output location, then run again."


def temporary_path(path: str | Path) -> Path:
    """A fresh hidden name beside ``path`` that keeps its ending.

    Example:
        >>> temporary_path("out/ct.nii.gz").name  # doctest: +SKIP
        '.ct.tmp-4242-9f1c2a.nii.gz'
    """
    path = Path(path)
    head, ending = _split_name(path.name)
    return path.with_name(f".{head}.tmp-{os.getpid()}-{secrets.token_hex(3)}{ending}")


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete temporary files of ``path`` left by killed writers (their process no longer runs).

    Only names made by :func:`temporary_path` for this very ``path`` are touched. POSIX only:
    elsewhere nothing is removed.

    Returns:
        the removed files.
    """
    path = Path(path)
    if os.name != "posix" or not path.parent.is_dir():
        return []
    head, ending = _split_name(path.name)
    pattern = re.compile(rf"\.{re.escape(head)}\.tmp-(\d+)-[0-9a-f]{{6}}{re.escape(ending)}")
    removed = []
    for candidate in path.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if match and not _process_runs(int(match.group(1))):
            with contextlib.suppress(OSError):  # removed meanwhile, or not ours to remove: not worth failing
                candidate.unlink()
                removed.append(candidate)
    return removed


def write_atomically(
    path: str | Path,
    write: Callable[[Path], Any],
    verify: Callable[[Path], Any] | None = None,
    errors: tuple[type[BaseException], ...] = IO_ERRORS,
) -> Path:
    """Write a file so that ``path`` holds either the complete new file or what it held before.

    Args:
        path: the final file. Its folder is created if needed.
        write: writes the file to the temporary path it is given (same folder, same ending).
        verify: reads the temporary file back and raises one of ``errors`` (e.g. ``ValueError``
            naming what is wrong) if it is incomplete. Called only if the file is not empty.
        errors: exception types of ``write`` and ``verify`` that mean "the file could not be
            written"; add e.g. ``safetensors.SafetensorError`` for writers that raise their own.

    Returns:
        ``path``.

    Raises:
        LabelSharingError: the write failed or the file did not read back; the message names
            ``path`` and the reason (disk full, file size limit, permission, ...). The temporary
            file is removed and an existing ``path`` is left unchanged. Any other exception
            (including KeyboardInterrupt) also removes the temporary file and propagates.

    Example:
        >>> write_atomically("notes.txt", lambda tmp: tmp.write_text("done"))  # doctest: +SKIP
    """
    path = Path(path)
    remove_stale_temporaries(path)
    temporary = temporary_path(path)
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(temporary)
            _flush_to_disk(temporary)
        except errors as exc:
            raise _failure(path, exc) from exc
        try:
            if temporary.stat().st_size == 0:
                raise ValueError("the file is empty")
            if verify is not None:
                verify(temporary)
        except errors as exc:
            raise _failure(path, exc, read_back=True) from exc
        try:
            os.replace(temporary, path)
        except OSError as exc:
            raise _failure(path, exc) from exc
    finally:
        if temporary.exists():
            temporary.unlink()
    _flush_folder(path.parent)
    return path


def write_json_atomically(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented UTF-8 JSON with :func:`write_atomically`; checked by reading the text back.

    Raises:
        TypeError: ``data`` is not JSON-serialisable (nothing is written).
        LabelSharingError: as :func:`write_atomically`.
    """
    text = json.dumps(data, indent=2) + "\n"

    def verify(temporary: Path) -> None:
        if temporary.read_text(encoding="utf-8") != text:
            raise ValueError("the text read back differs from the text written")

    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"), verify)


def check_gzip_stream(path: str | Path) -> int:
    """Read a gzip file to its end, so that a cut or damaged stream raises (EOFError, BadGzipFile, zlib.error).

    Needed for ``.nii.gz``: ITK reads a cut NIfTI stream without error, filling zeros.

    Returns:
        the number of decompressed bytes.
    """
    import gzip

    length = 0
    with gzip.open(path, "rb") as stream:
        while True:
            chunk = stream.read(1 << 22)
            if not chunk:
                return length
            length += len(chunk)


def check_outputs(
    outputs: Sequence[str | Path], inputs: Sequence[str | Path] = (), force: bool = False, option: str = "--out"
) -> None:
    """Refuse, before any work, outputs that would replace an input or (without ``force``) any file.

    Args:
        outputs: every file the command will write.
        inputs: the files and folders the command reads. An output may never be an input file
            (same path, a symlink or a hard link to it) nor an existing file inside an input folder.
        force: the user allowed replacing existing files (the CLI's ``--force``); only the
            ``outputs`` themselves are ever replaced.
        option: the command-line option that chooses the output location, named in messages.

    Raises:
        LabelSharingError: an output is an input, two outputs have the same name, an output is
            an existing folder, or (without ``force``) outputs exist; the message names them.
    """
    resolved = [Path(p).resolve() for p in outputs]
    repeated = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if repeated:
        raise LabelSharingError(
            f"Two outputs of this command would have the same name: {', '.join(repeated)}. Rename the inputs "
            f"so that their output names differ, or write them to separate places ({option})."
        )
    existing = [Path(p) for p in outputs if os.path.lexists(p)]
    for output in existing:
        source = _input_behind(output, inputs)
        if source is not None:
            detail = "" if source == output else f" ({source})"
            raise LabelSharingError(
                f"Refusing to write {output}: it is an input of this command{detail}, and --force never replaces "
                f"an input. Choose another output location ({option})."
            )
        if output.is_dir():
            raise LabelSharingError(f"Cannot write {output}: a folder of that name is in the way. Move it or "
                                    f"choose another output location ({option}).")
    if existing and not force:
        names = ", ".join(map(str, existing[:5])) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise LabelSharingError(
            f"{names} already exist{'s' if len(existing) == 1 else ''}. Nothing was written. Pass --force to "
            f"replace the files this command writes, or choose another output location ({option})."
        )


def _input_behind(output: Path, inputs: Sequence[str | Path]) -> Path | None:
    """The input that the existing file ``output`` is (a link to) or lies in, if any."""
    target = output.resolve()
    for source in map(Path, inputs):
        if source.is_dir() and target.is_relative_to(source.resolve()):
            return source
        if source.is_file() and output.exists() and (target == source.resolve() or os.path.samefile(output, source)):
            return source
    return None


def _failure(path: Path, exc: BaseException, read_back: bool = False) -> LabelSharingError:
    """The user's message for a failed write of ``path``: the cause when the system names it."""
    if not read_back and isinstance(exc, OSError) and exc.errno in _REASONS:
        return LabelSharingError(f"Could not write {path}: {_REASONS[exc.errno]}. {_ADVICE}")
    if isinstance(exc, OSError) and exc.strerror:
        detail = exc.strerror
    else:  # library messages (ITK) are long; their last line says what went wrong
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[-1] if lines else type(exc).__name__
    if read_back:
        detail = f"the written file did not read back complete ({detail})"
    return LabelSharingError(f"Could not write {path}: {detail}. {_UNKNOWN_CAUSE} {_ADVICE}")


def _split_name(name: str) -> tuple[str, str]:
    """``ct.nii.gz`` -> (``ct``, ``.nii.gz``); a leading dot is part of the head, and is dropped."""
    dot = name.find(".", 1)
    head, ending = (name, "") if dot < 0 else (name[:dot], name[dot:])
    return head.lstrip("."), ending


def _process_runs(pid: int) -> bool:
    """Whether process ``pid`` exists (POSIX: signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists but belongs to another user
        return True
    return True


def _flush_to_disk(path: Path) -> None:
    """fsync, so that the rename never makes an unflushed file visible after a power cut."""
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


def _flush_folder(folder: Path) -> None:
    """fsync the folder entry of the rename, where the system allows it (not on Windows, nor on some
    network file systems); the file itself is already complete, so a refusal here changes nothing."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
