"""The ``labelsharing`` command line: argparse only; every command calls the typed API.

User errors (``LabelSharingError``, bad flags) print one ``error: <message>`` line on stderr and
exit with 2. Anything else is a bug: the command says "internal error", writes the traceback to
a file and exits with 1. ``--debug`` shows every traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from typing import Sequence

from labelsharing import __version__
from labelsharing.errors import LabelSharingError, file_error_message
from labelsharing.utils.progress import PROGRESS_MODES, ProgressReporter

__all__ = ["main", "build_parser"]


def _cmd_plan(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.plan.shared_labels import read_pins
    from labelsharing.plan.planner import plan_table, plan_task_datasets
    from labelsharing.utils.safe_write import check_outputs, write_json_atomically

    if args.json:
        check_outputs([args.json], inputs=[*args.datasets, *([args.pins] if args.pins else [])], force=True,
                      option="--json")
    plan, _, _ = plan_task_datasets(args.datasets, read_pins(args.pins) if args.pins else None, progress,
                                 log=lambda message: print(message, file=sys.stderr))
    print(plan_table(plan))
    print(f"\n{plan.n_shared} shared labels for {len(plan.task_names)} task(s).")
    if args.json:
        write_json_atomically(args.json, plan.to_dict())
        print(f"Plan written to {args.json}")
    else:
        print(json.dumps(plan.to_dict(), indent=2))
    return 0


def _cmd_demo_data(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.demo.data import make_demo_datasets

    folders = make_demo_datasets(args.out, cases=args.cases, seed=args.seed)
    print("Wrote demo tasks:")
    for folder in folders:
        print(f"  {folder}")
    return 0


def _log_for(progress: ProgressReporter):
    """Print messages without breaking a progress bar."""
    if progress.mode == "bar":
        from tqdm import tqdm

        return lambda message: tqdm.write(message, file=sys.stdout)
    return lambda message: print(message, flush=True)


def _cmd_train(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.plan.shared_labels import read_pins
    from labelsharing.train.trainer import TrainingOptions, train

    options = TrainingOptions(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, time_budget=args.time_budget,
                              batch_size=args.batch_size, input_size=args.input_size,
                              features=args.features, learning_rate=args.lr, val_fraction=args.val_fraction,
                              device=args.device, seed=args.seed, axis=args.axis, val_every=args.val_every,
                              slice_memory_mb=args.slice_memory)
    train(args.datasets, args.out, options, pins=read_pins(args.pins) if args.pins else None, force=args.force,
          progress=progress, log=_log_for(progress), resume=args.resume, command=args.argv)
    return 0


def _cmd_add_task(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.train.incremental import add_task
    from labelsharing.plan.shared_labels import read_pins
    from labelsharing.train.trainer import TrainingOptions

    options = TrainingOptions(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, time_budget=args.time_budget,
                              batch_size=args.batch_size, learning_rate=args.lr,
                              val_fraction=args.val_fraction, device=args.device, seed=args.seed,
                              val_every=args.val_every, slice_memory_mb=args.slice_memory)
    add_task(args.model, args.dataset, args.out, options, replay=args.replay,
             pins=read_pins(args.pins) if args.pins else None, force=args.force, progress=progress,
             log=_log_for(progress), resume=args.resume, command=args.argv)
    return 0


def _cmd_predict(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.infer.predictor import Predictor
    from labelsharing.utils.device import describe_device

    log = _log_for(progress)
    predictor = Predictor.from_model_dir(args.model, device=args.device, batch_size=args.batch_size,
                                         backend=args.backend, precision=args.precision, log=log)
    log(f"device: {describe_device(predictor.device)}; backend: {predictor.backend.describe()}")
    written = predictor.predict_files(args.inputs, args.task, args.out, file_format=args.format,
                                      probabilities=args.probabilities, progress=progress, force=args.force)
    for path in written:
        log(f"wrote {path}")
    return 0


def _cmd_worker(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.serve.worker import serve, standard_streams

    requests, replies = standard_streams()
    return serve(args.model, requests, replies, device=args.device, backend=args.backend, precision=args.precision,
                 batch_size=args.batch_size)


def _cmd_evaluate(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.data.datasets import read_task_dataset
    from labelsharing.infer.evaluation import evaluate_model, evaluation_table, split_warning
    from labelsharing.infer.predictor import Predictor
    from labelsharing.utils.safe_write import check_outputs, write_json_atomically

    if args.json:
        check_outputs([args.json], inputs=[args.model, *args.datasets], force=True, option="--json")
    predictor = Predictor.from_model_dir(args.model, device=args.device, backend=args.backend, precision=args.precision,
                                         log=lambda message: print(message, file=sys.stderr))
    tasks = [read_task_dataset(folder) for folder in args.datasets]
    for warning in filter(None, map(split_warning, tasks)):
        print(f"warning: {warning}", file=sys.stderr)
    result = evaluate_model(predictor, tasks, progress=progress)
    print(evaluation_table(result))
    if args.json:
        write_json_atomically(args.json, result)
        print(f"Dice written to {args.json}")
    return 0


def _cmd_demo(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.demo.run import DemoSettings, run_demo

    settings = DemoSettings.quick() if args.quick else DemoSettings()
    run_demo(args.out, settings, device=args.device, seed=args.seed, progress=progress, log=_log_for(progress))
    return 0


def _cmd_info(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.model.description import describe_model

    print(describe_model(args.model))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labelsharing",
        description="Train one segmentation network for many independent multi-label tasks by label sharing.",
    )
    parser.add_argument("--version", action="version", version=f"labelsharing {__version__}")
    parser.add_argument("--progress", choices=PROGRESS_MODES, default=None,
                        help="[OPTIONAL] progress display: a bar (default on a terminal), 'lines' (PROGRESS "
                             "<percent> <text> on stdout, for programs) or none (default when stderr is not a "
                             "terminal, so logs stay readable).")
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
    demo.add_argument("--seed", type=_seed, default=0, help="[OPTIONAL] random seed (0); same seed, same files")
    demo.set_defaults(handler=_cmd_demo_data)

    train = commands.add_parser("train", help="train one shared-label model on several task datasets",
                                epilog=_SEVERAL_GPUS.format(command="train DATASET... --out MODEL"))
    train.add_argument("datasets", nargs="+", metavar="DATASET", help="[REQUIRED] task dataset folders")
    train.add_argument("--out", required=True, metavar="MODEL", help="[REQUIRED] model folder to write")
    _add_training_flags(train)
    train.add_argument("--input-size", type=_positive_int, default=None, metavar="S",
                       help="[OPTIONAL] square network input size, a multiple of 16 (default: from the tasks' "
                            "slice sizes, at most 256)")
    train.add_argument("--features", type=_positive_int, default=16,
                       help="[OPTIONAL] UNet width: features of the first level (16: ~1.6 M parameters, good on "
                            "a CPU; 32 or more on a GPU)")
    train.add_argument("--val-fraction", type=_fraction, default=0.2,
                       help="[OPTIONAL] fraction of each task's training cases held out for validation Dice (0.2)")
    train.add_argument("--axis", type=int, choices=(0, 1, 2), default=None,
                       help="[OPTIONAL] slice 3D volumes, viewed in LPS, across this axis (0=L: sagittal, "
                            "1=P: coronal, 2=S: axial); default: the axis "
                            "with the largest spacing")
    train.add_argument("--pins", metavar="FILE", help="[OPTIONAL] pins file (see 'plan')")
    train.add_argument("--force", action="store_true", help="[OPTIONAL] replace an existing MODEL folder")
    train.set_defaults(handler=_cmd_train)

    add = commands.add_parser("add-task", help="teach a trained model one more task (fine-tuning with replay)",
                              epilog=_SEVERAL_GPUS.format(command="add-task MODEL DATASET --out NEW_MODEL"))
    add.add_argument("model", metavar="MODEL", help="[REQUIRED] trained model folder (left unchanged)")
    add.add_argument("dataset", metavar="DATASET", help="[REQUIRED] the new task's dataset folder")
    add.add_argument("--out", required=True, metavar="NEW_MODEL", help="[REQUIRED] folder for the new model")
    add.add_argument("--replay", type=_fraction, default=0.5,
                     help="[OPTIONAL] fraction of each batch drawn from the old tasks' training cases (0.5); "
                          "0 needs no old data but does not guard against forgetting")
    add.add_argument("--val-fraction", type=_fraction, default=0.2,
                     help="[OPTIONAL] fraction of the new task's cases held out for validation Dice (0.2)")
    add.add_argument("--pins", metavar="FILE", help="[OPTIONAL] pins file for the new task (see 'plan')")
    add.add_argument("--force", action="store_true", help="[OPTIONAL] replace an existing NEW_MODEL folder")
    _add_training_flags(add, epochs=10, lr=5e-4)
    add.set_defaults(handler=_cmd_add_task)

    predict = commands.add_parser("predict", help="segment images with a model, in one task's own labels")
    predict.add_argument("model", metavar="MODEL", help="[REQUIRED] model folder")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="[REQUIRED] image files")
    predict.add_argument("--task", required=True, help="[REQUIRED] task name (see 'labelsharing info MODEL')")
    predict.add_argument("--out", required=True, metavar="OUTDIR",
                         help="[REQUIRED] output folder; each file is written complete or not at all")
    predict.add_argument("--format", choices=("nii.gz", "nrrd", "seg.nrrd"), default="nii.gz",
                         help="[OPTIONAL] output format (nii.gz); seg.nrrd keeps segment names and colours for Slicer")
    predict.add_argument("--probabilities", action="store_true",
                         help="[OPTIONAL] also write <case>_probabilities.nii.gz (one component per task label)")
    _add_device_flag(predict)
    _add_backend_flags(predict)
    predict.add_argument("--batch-size", type=_positive_int, default=16, help="[OPTIONAL] slices per batch (16)")
    predict.add_argument("--force", action="store_true",
                         help="[OPTIONAL] replace existing files in OUTDIR that this command writes (<case>.<format>, "
                              "<case>_probabilities.nii.gz); never an input image and never any other file. Without "
                              "it, an existing output stops the command before anything is predicted")
    predict.set_defaults(handler=_cmd_predict)

    worker = commands.add_parser("worker", help="keep a model loaded and predict request after request: JSON lines "
                                                "on stdin, replies on stdout (docs/CONTRACTS.md; Slicer's Apply)")
    worker.add_argument("model", metavar="MODEL", help="[REQUIRED] model folder")
    _add_device_flag(worker)
    _add_backend_flags(worker)
    worker.add_argument("--batch-size", type=_positive_int, default=16, help="[OPTIONAL] slices per batch (16)")
    worker.set_defaults(handler=_cmd_worker)

    evaluate = commands.add_parser("evaluate", help="Dice per task and label on the datasets' test splits")
    evaluate.add_argument("model", metavar="MODEL", help="[REQUIRED] model folder")
    evaluate.add_argument("datasets", nargs="+", metavar="DATASET", help="[REQUIRED] task dataset folders")
    evaluate.add_argument("--json", metavar="FILE", help="[OPTIONAL] write the Dice JSON here")
    _add_device_flag(evaluate)
    _add_backend_flags(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)

    demo_run = commands.add_parser("demo", help="the whole story on the built-in data: plan, train 3 tasks, add a "
                                                "4th, evaluate, write a report (make demo)")
    demo_run.add_argument("--out", default="demo_output", help="[OPTIONAL] output folder (demo_output)")
    demo_run.add_argument("--quick", action="store_true", help="[OPTIONAL] a small run of about two minutes")
    demo_run.add_argument("--seed", type=_seed, default=0, help="[OPTIONAL] random seed (0)")
    _add_device_flag(demo_run)
    demo_run.set_defaults(handler=_cmd_demo)

    info = commands.add_parser("info", help="describe a model folder: tasks, labels, shared labels, history")
    info.add_argument("model", metavar="MODEL", help="[REQUIRED] model folder")
    info.set_defaults(handler=_cmd_info)

    defaults = commands.add_parser("defaults", help="the defaults and limits of the train and add-task options")
    defaults.add_argument("--json", action="store_true", help="[OPTIONAL] print JSON (for the Slicer module)")
    defaults.set_defaults(handler=_cmd_defaults)
    return parser


def _add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                        help="[OPTIONAL] auto (default) picks CUDA, then MPS, then the CPU")


def _add_backend_flags(parser: argparse.ArgumentParser) -> None:
    from labelsharing.infer.backends import BACKENDS, PRECISIONS

    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="[OPTIONAL] what runs the network: auto (default) is PyTorch on a GPU; on the CPU "
                             "OpenVINO if installed (pip install \"labelsharing[fast-cpu]\"), else PyTorch. The "
                             "exported graph is built once and cached in MODEL/.cache")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="[OPTIONAL] fp32 (default), or bf16: faster on CPUs with bfloat16 units, labels differ "
                             "from fp32 on a small fraction of voxels")


#: ``slice_store.DEFAULT_SLICE_MEMORY_MB``, repeated so ``--help`` starts without numpy (a test keeps them equal)
_SLICE_MEMORY_MB = 512.0


def _add_training_flags(parser: argparse.ArgumentParser, epochs: int = 25, lr: float = 2e-3) -> None:
    parser.add_argument("--epochs", type=_positive_int, default=epochs,
                        help=f"[OPTIONAL] epochs ({epochs}); an epoch is --steps-per-epoch optimisation steps of "
                             "--batch-size slices drawn task-balanced from all tasks, then validation")
    parser.add_argument("--steps-per-epoch", type=_positive_int, default=50,
                        help="[OPTIONAL] optimisation steps per epoch (50), whatever the data set's size")
    parser.add_argument("--time-budget", type=_minutes, default=None, metavar="MINUTES",
                        help="[OPTIONAL] fit the number of epochs to this many minutes (measured on the first "
                             "epoch, validation included); replaces --epochs")
    parser.add_argument("--batch-size", type=_positive_int, default=16,
                        help="[OPTIONAL] slices per batch (16), per process under torchrun (N processes: N x 16 "
                             "slices per step)")
    parser.add_argument("--lr", type=_learning_rate, default=lr, help=f"[OPTIONAL] peak AdamW learning rate ({lr:g})")
    parser.add_argument("--seed", type=_seed, default=0, help="[OPTIONAL] random seed (0); repeatable on the CPU")
    parser.add_argument("--val-every", type=_positive_int, default=None, metavar="N",
                        help="[OPTIONAL] validate every N epochs, and the first and last (default: every epoch, or "
                             "every few when the held-out cases have many more slices than an epoch trains on)")
    parser.add_argument("--slice-memory", type=_megabytes, default=_SLICE_MEMORY_MB, metavar="MB",
                        help=f"[OPTIONAL] training slices kept in RAM ({_SLICE_MEMORY_MB:g} MB); those beyond "
                             "are kept in a memory-mapped file in the run's working folder (same results, less RAM)")
    parser.add_argument("--resume", action="store_true",
                        help="[OPTIONAL] continue an interrupted run of this same command from its last end-of-epoch "
                             "checkpoint (kept in <out's folder>/.<out's name>.work/ until the model is written)")
    _add_device_flag(parser)


_SEVERAL_GPUS = ("Several GPUs: torchrun --nproc_per_node=N -m labelsharing {command} starts one process per GPU "
                 "(DistributedDataParallel, NCCL; with --device cpu, N CPU processes over gloo). Every process makes "
                 "the epoch's steps on its own draws of --batch-size slices (N x the images per step); process 0 "
                 "validates, logs and writes the model.")


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**32 - 1, got {value}")
    return value


def _learning_rate(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text} (AdamW is usually run at 1e-4 to 1e-2)")
    return value


def _minutes(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text}")
    return value


def _megabytes(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of MB >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


#: the limits each option type enforces, for programs that offer these options (``defaults``)
_TYPE_LIMITS = {
    _positive_int: {"minimum": 1},
    _fraction: {"minimum": 0.0, "maximum": 1.0, "maximum_exclusive": True},
    _learning_rate: {"minimum": 0.0, "minimum_exclusive": True, "maximum": 1.0},
    _megabytes: {"minimum": 0.0},
}
_DEFAULTS_COMMANDS = ("train", "add-task")
_DEFAULTS_OPTIONS = ("epochs", "steps_per_epoch", "batch_size", "lr", "replay", "val_fraction", "slice_memory")


def training_defaults() -> dict:
    """Default and limits of each training option of ``train`` and ``add-task``, read from the parser.

    The parser is the one source: defaults from its actions (argparse's ``_actions``), limits from
    the type each action validates with (``_TYPE_LIMITS``). The Slicer module calls this function;
    it imports nothing beyond this module's own imports (no torch).

    Returns:
        ``{command: {option dest: {"default": value, "minimum": ..., "maximum": ...,
        "minimum_exclusive": bool, "maximum_exclusive": bool}}}``; a missing bound is unbounded.
    """
    [subparsers] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    result = {}
    for command in _DEFAULTS_COMMANDS:
        result[command] = {
            action.dest: {"default": action.default, **_TYPE_LIMITS.get(action.type, {})}
            for action in subparsers.choices[command]._actions if action.dest in _DEFAULTS_OPTIONS
        }
    return result


def _cmd_defaults(args: argparse.Namespace, progress: ProgressReporter) -> int:
    defaults = training_defaults()
    if args.json:
        print(json.dumps(defaults, indent=2))
        return 0
    for command, options in defaults.items():
        for dest, entry in options.items():
            print(f"{command} --{dest.replace('_', '-')} {entry['default']:g}; {_describe_limits(entry)}")
    return 0


def _describe_limits(entry: dict) -> str:
    """``at least 1``, ``within [0, 1)`` or ``within (0, 1]``."""
    if "maximum" not in entry:
        return f"at least {entry['minimum']:g}"
    low = "(" if entry.get("minimum_exclusive") else "["
    high = ")" if entry.get("maximum_exclusive") else "]"
    return f"within {low}{entry['minimum']:g}, {entry['maximum']:g}{high}"


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
