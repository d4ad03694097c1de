"""The ``labelsharing`` command line: argparse only; every command calls the typed API.

User errors (``LabelSharingError``) print ``error: <message>`` on stderr and exit with 2;
anything else is a bug and keeps its traceback (``--debug`` re-raises user errors too).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence

from labelsharing import __version__
from labelsharing.errors import LabelSharingError
from labelsharing.progress import PROGRESS_MODES, ProgressReporter

__all__ = ["main", "build_parser"]


def _cmd_plan(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.plan import read_pins
    from labelsharing.planning import plan_table, plan_tasks, summarise_tasks

    summaries = summarise_tasks(args.datasets, progress)
    plan = plan_tasks(summaries, read_pins(args.pins) if args.pins else None)
    for note in [w for s in summaries for w in s.warnings] + plan.warnings:
        print(f"warning: {note}", file=sys.stderr)
    print(plan_table(plan))
    print(f"\n{plan.n_shared} shared labels for {len(plan.task_names)} task(s).")
    if args.json:
        plan.save_json(args.json)
        print(f"Plan written to {args.json}")
    else:
        print(json.dumps(plan.to_dict(), indent=2))
    return 0


def _cmd_demo_data(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.demo_data import make_demo_datasets

    folders = make_demo_datasets(args.out, cases=args.cases, seed=args.seed)
    print("Wrote demo tasks:")
    for folder in folders:
        print(f"  {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labelsharing",
        description="Train one segmentation network for many independent multi-label tasks by label sharing.",
    )
    parser.add_argument("--version", action="version", version=f"labelsharing {__version__}")
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="bar",
                        help="[OPTIONAL] progress display: a bar (default), 'lines' (PROGRESS <percent> <text> "
                             "on stdout, for programs) or none.")
    parser.add_argument("--debug", action="store_true", help="[OPTIONAL] show tracebacks for user errors too.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    plan = commands.add_parser("plan", help="rank each task's labels by size and print the shared-label plan")
    plan.add_argument("datasets", nargs="+", metavar="DATASET", help="[REQUIRED] task dataset folders")
    plan.add_argument("--pins", metavar="FILE",
                      help='[OPTIONAL] JSON fixing some labels: {"<task>": {"<label>": <shared label>}}')
    plan.add_argument("--json", metavar="FILE", help="[OPTIONAL] write the plan JSON here instead of printing it")
    plan.set_defaults(handler=_cmd_plan)

    demo = commands.add_parser("demo-data", help="write the built-in synthetic demo tasks")
    demo.add_argument("out", metavar="OUT", help="[REQUIRED] output folder (one sub-folder per task)")
    demo.add_argument("--cases", type=_positive_int, default=20, help="[OPTIONAL] training cases per task (20)")
    demo.add_argument("--seed", type=int, default=0, help="[OPTIONAL] random seed (0); same seed, same files")
    demo.set_defaults(handler=_cmd_demo_data)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    progress = ProgressReporter(args.progress)
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
