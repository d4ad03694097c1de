"""The entry point: parse, run the command, and turn every failure into a message for the user.

User errors (``LabelSharingError``, bad flags) print one ``error: <message>`` line on stderr and
exit with 2. Anything else is a bug: the command says "internal error", writes the traceback to
a file and exits with 1. ``--debug`` shows every traceback instead.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Sequence

from labelsharing import __version__
from labelsharing.cli.parser import build_parser
from labelsharing.errors import LabelSharingError, file_error_message
from labelsharing.utils import ProgressReporter

__all__ = ["main"]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    # OpenMP threads that spin while waiting make torch on a busy CPU (Slicer beside it, other
    # jobs) many times slower; passive waiting costs little on an idle one. Set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    progress = ProgressReporter(args.progress or ("bar" if sys.stderr.isatty() else "none"))
    if not args.debug:
        warnings.showwarning = _show_warning
    try:
        return args.handler(args, progress)
    except LabelSharingError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written for the unfinished step.", file=sys.stderr)
        return 130
    except OSError as exc:  # the environment: a full disk, a missing or read-only file
        if args.debug or file_error_message(exc) is None:
            raise
        print(f"error: {file_error_message(exc)}", file=sys.stderr)
        return 2
    except Exception:  # a bug, not the user's doing: say so in one line, keep the traceback in a file
        if args.debug:
            raise
        print(f"error: internal error ({_describe_exception()}); the traceback was written to {_save_traceback()}. "
              "Please report it with that file; --debug shows it here.", file=sys.stderr)
        return 1


def _describe_exception() -> str:
    kind, value, _ = sys.exc_info()
    text = str(value).strip().splitlines()
    return f"{kind.__name__}: {text[0]}" if text else kind.__name__


def _save_traceback() -> str:
    """Write the current exception's traceback to a new file in the temporary folder; its path."""
    import tempfile
    import traceback

    handle, path = tempfile.mkstemp(prefix="labelsharing-error-", suffix=".txt")
    with os.fdopen(handle, "w") as stream:
        stream.write(f"labelsharing {__version__}, python {sys.version.split()[0]}\n")
        traceback.print_exc(file=stream)
    return path
