"""The command line's parser: commands, flags, their defaults and the limits each flag enforces.

:func:`training_defaults` reads the defaults and limits of the training flags back from the
parser, so ``labelsharing defaults --json`` (what the Slicer module's spin boxes show) has no
second copy of them.
"""

from __future__ import annotations

import argparse
import math

from labelsharing import __version__
from labelsharing.cli import commands
from labelsharing.utils import PROGRESS_MODES

__all__ = ["build_parser", "training_defaults"]


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
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    plan = subcommands.add_parser("plan", help="rank each task's labels by size and print the shared-label plan")
    plan.add_argument("datasets", nargs="+", metavar="DATASET", help="[REQUIRED] task dataset folders")
    plan.add_argument("--pins", metavar="FILE",
                      help='[OPTIONAL] JSON fixing some labels: {"<task>": {"<label>": <shared label>}}')
    plan.add_argument("--json", metavar="FILE", help="[OPTIONAL] write the plan JSON here instead of printing it")
    _add_keep_apart_flag(plan)
    plan.set_defaults(handler=commands.plan_command)

    demo = subcommands.add_parser("demo-data", help="write the built-in synthetic demo tasks")
    demo.add_argument("out", metavar="OUT", help="[REQUIRED] output folder (one sub-folder per task)")
    demo.add_argument("--cases", type=_positive_int, default=20, help="[OPTIONAL] training cases per task (20)")
    demo.add_argument("--seed", type=_seed, default=0, help="[OPTIONAL] random seed (0); same seed, same files")
    demo.set_defaults(handler=commands.demo_data_command)

    train = subcommands.add_parser("train", help="train one shared-label model on several task datasets",
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
    _add_keep_apart_flag(train)
    train.add_argument("--force", action="store_true", help="[OPTIONAL] replace an existing MODEL folder")
    train.set_defaults(handler=commands.train_command)

    add = subcommands.add_parser("add-task", help="teach a trained model one more task (fine-tuning with replay)",
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
    _add_keep_apart_flag(add, " (a MODEL trained with it keeps every new task apart without it)")
    add.add_argument("--force", action="store_true", help="[OPTIONAL] replace an existing NEW_MODEL folder")
    _add_training_flags(add, epochs=10, lr=5e-4)
    add.set_defaults(handler=commands.add_task_command)

    update = subcommands.add_parser(
        "update", help="teach a trained model more cases of one of its tasks (e.g. corrected ones added with add-case), "
                       "with replay of its other tasks",
        epilog=_SEVERAL_GPUS.format(command="update MODEL --task NAME DATASET --out NEW_MODEL"))
    update.add_argument("model", metavar="MODEL", help="[REQUIRED] trained model folder (left unchanged)")
    update.add_argument("dataset", metavar="DATASET",
                        help="[REQUIRED] the task's dataset folder: its original cases and the added ones")
    update.add_argument("--task", required=True, help="[REQUIRED] the task to update (see 'labelsharing info MODEL')")
    update.add_argument("--out", required=True, metavar="NEW_MODEL", help="[REQUIRED] folder for the new model")
    update.add_argument("--replay", type=_fraction, default=0.5,
                        help="[OPTIONAL] fraction of each batch drawn from the model's other tasks (0.5); 0 needs no "
                             "other data but does not guard against forgetting")
    update.add_argument("--validation-cases", nargs="+", default=[], metavar="ID",
                        help="[OPTIONAL] cases added since the model was trained to hold out for validation from now "
                             "on (default: every added case is trained on; the task's held-out cases never change)")
    update.add_argument("--force", action="store_true", help="[OPTIONAL] replace an existing NEW_MODEL folder")
    _add_training_flags(update, epochs=10, lr=5e-4)
    update.set_defaults(handler=commands.update_command)

    add_case = subcommands.add_parser(
        "add-case", help="add a labelled case (e.g. a corrected segmentation) to a task's dataset folder, checked as "
                         "training checks it")
    add_case.add_argument("dataset", metavar="DATASET", help="[REQUIRED] the task's dataset folder")
    add_case.add_argument("image", metavar="IMAGE", help="[REQUIRED] the image (any SimpleITK format or a DICOM series)")
    add_case.add_argument("label", metavar="LABEL",
                          help="[REQUIRED] its label map in the task's label values, or a Slicer .seg.nrrd whose "
                               "segment names are the task's labels")
    add_case.add_argument("--case-id", metavar="ID", default=None,
                          help="[OPTIONAL] the new case's id (default: the next free one, e.g. abd_021 after abd_020); "
                               "an existing case is never replaced")
    add_case.set_defaults(handler=commands.add_case_command)

    predict = subcommands.add_parser("predict", help="segment images with a model, in one task's own labels")
    predict.add_argument("model", metavar="MODEL", help="[REQUIRED] model folder")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="[REQUIRED] image files, or DICOM series (a folder or .zip of one series' files)")
    predict.add_argument("--task", required=True,
                         help="[REQUIRED] task name (see 'labelsharing info MODEL'), or 'auto': recognise each "
                              "image's task (refused, with the candidates' scores, when unsure). Either way "
                              "<case>.prediction.json records the task and a warning if the image looks unlike "
                              "the task's training images")
    predict.add_argument("--out", required=True, metavar="OUTDIR",
                         help="[REQUIRED] output folder; each file is written complete or not at all")
    predict.add_argument("--format", choices=("nii.gz", "nrrd", "seg.nrrd", "dcm"), default="nii.gz",
                         help="[OPTIONAL] output format (nii.gz); seg.nrrd keeps segment names and colours for Slicer; "
                              "dcm writes a DICOM SEG per input DICOM series (needs labelsharing[dicom])")
    predict.add_argument("--series", metavar="UID", default=None,
                         help="[OPTIONAL] SeriesInstanceUID to read when an input DICOM folder holds several series")
    predict.add_argument("--seg-type", choices=("binary", "labelmap"), default="binary",
                         help="[OPTIONAL] DICOM SEG type for --format dcm: binary (default, read by every SEG reader) "
                              "or labelmap (smaller; newer readers only)")
    predict.add_argument("--probabilities", action="store_true",
                         help="[OPTIONAL] also write <case>_probabilities.nii.gz (one component per task label)")
    _add_device_flag(predict)
    _add_backend_flags(predict)
    predict.add_argument("--batch-size", type=_positive_int, default=16, help="[OPTIONAL] slices per batch (16)")
    _add_keep_islands_flag(predict)
    predict.add_argument("--force", action="store_true",
                         help="[OPTIONAL] replace existing files in OUTDIR that this command writes (<case>.<format>, "
                              "<case>_probabilities.nii.gz); never an input image and never any other file. Without "
                              "it, an existing output stops the command before anything is predicted")
    predict.set_defaults(handler=commands.predict_command)

    export_seg = subcommands.add_parser(
        "export-seg", help="write an existing segmentation (label map + .labels.json, or .seg.nrrd) as a DICOM SEG of "
                           "the DICOM series it was drawn on")
    export_seg.add_argument("labels", metavar="LABELS",
                            help="[REQUIRED] a label map with <name>.labels.json beside it (the Slicer module's "
                                 "label-map export), or a Slicer .seg.nrrd")
    export_seg.add_argument("source", metavar="SERIES",
                            help="[REQUIRED] the DICOM series it was drawn on (a folder or .zip)")
    export_seg.add_argument("--out", required=True, metavar="FILE", help="[REQUIRED] the DICOM SEG file to write")
    export_seg.add_argument("--series", metavar="UID", default=None,
                            help="[OPTIONAL] SeriesInstanceUID to read when SERIES holds several series")
    export_seg.add_argument("--seg-type", choices=("binary", "labelmap"), default="binary",
                            help="[OPTIONAL] binary (default, read by every SEG reader) or labelmap (newer "
                                 "readers only)")
    export_seg.add_argument("--force", action="store_true", help="[OPTIONAL] replace FILE if it exists")
    export_seg.set_defaults(handler=commands.export_seg_command)

    worker = subcommands.add_parser("worker", help="keep a model loaded and predict request after request: JSON lines "
                                                "on stdin, replies on stdout (docs/CONTRACTS.md; Slicer's Apply)")
    worker.add_argument("model", metavar="MODEL", help="[REQUIRED] model folder")
    _add_device_flag(worker)
    _add_backend_flags(worker)
    worker.add_argument("--batch-size", type=_positive_int, default=16, help="[OPTIONAL] slices per batch (16)")
    worker.set_defaults(handler=commands.worker_command)

    serve = subcommands.add_parser("serve", help="serve every model under a folder over HTTPS to many Slicers: "
                                              "predict, train and add-task jobs (pip install \"labelsharing[serve]\"; "
                                              "README, 'Server')")
    serve.add_argument("--models", required=True, metavar="DIR",
                       help="[REQUIRED] folder of model folders; training jobs write new models into it")
    serve.add_argument("--host", default="127.0.0.1",
                       help="[OPTIONAL] address to listen on (127.0.0.1: this machine only, e.g. behind a TLS proxy)")
    serve.add_argument("--port", type=_port, default=8000, help="[OPTIONAL] port (8000; 0 picks a free one)")
    serve.add_argument("--token-file", metavar="F",
                       help="[OPTIONAL] where the access token is kept (DIR/.labelsharing-serve/token), mode 0600")
    serve.add_argument("--rotate-token", action="store_true",
                       help="[OPTIONAL] make a new token (printed once); the old one stops working")
    serve.add_argument("--tls-cert", metavar="C", help="[OPTIONAL] PEM certificate: serve HTTPS (with --tls-key)")
    serve.add_argument("--tls-key", metavar="K", help="[OPTIONAL] PEM private key of --tls-cert")
    serve.add_argument("--insecure", action="store_true",
                       help="[OPTIONAL] DANGER ZONE! allow a non-loopback --host without TLS: the token and the "
                            "images travel unencrypted")
    serve.add_argument("--max-upload-mb", type=_positive_number, default=2048.0, metavar="N",
                       help="[OPTIONAL] largest upload, and largest unpacked zip, in MB (2048)")
    serve.add_argument("--workers", type=_positive_int, default=1,
                       help="[OPTIONAL] training jobs run at once (1: one GPU job at a time)")
    serve.add_argument("--max-loaded", type=_positive_int, default=4,
                       help="[OPTIONAL] models kept loaded for prediction (4); the least recently used is dropped")
    _add_device_flag(serve)
    _add_backend_flags(serve)
    serve.add_argument("--batch-size", type=_positive_int, default=16, help="[OPTIONAL] slices per batch (16)")
    serve.set_defaults(handler=commands.serve_command)

    evaluate = subcommands.add_parser("evaluate", help="Dice per task and label on the datasets' test splits")
    evaluate.add_argument("model", metavar="MODEL", help="[REQUIRED] model folder")
    evaluate.add_argument("datasets", nargs="+", metavar="DATASET", help="[REQUIRED] task dataset folders")
    evaluate.add_argument("--json", metavar="FILE", help="[OPTIONAL] write the Dice JSON here")
    _add_device_flag(evaluate)
    _add_backend_flags(evaluate)
    _add_keep_islands_flag(evaluate)
    evaluate.set_defaults(handler=commands.evaluate_command)

    demo_run = subcommands.add_parser("demo", help="the whole story on the built-in data: plan, train 3 tasks, add a "
                                                "4th, evaluate, write a report (make demo)")
    demo_run.add_argument("--out", default="demo_output", help="[OPTIONAL] output folder (demo_output)")
    demo_run.add_argument("--quick", action="store_true", help="[OPTIONAL] a small run of about two minutes")
    demo_run.add_argument("--seed", type=_seed, default=0, help="[OPTIONAL] random seed (0)")
    _add_device_flag(demo_run)
    demo_run.set_defaults(handler=commands.demo_command)

    _add_federated_commands(subcommands)

    info = subcommands.add_parser("info", help="describe a model folder: tasks, labels, shared labels, history")
    info.add_argument("model", metavar="MODEL", help="[REQUIRED] model folder")
    info.set_defaults(handler=commands.info_command)

    defaults = subcommands.add_parser("defaults", help="the defaults and limits of the train, add-task and update options")
    defaults.add_argument("--json", action="store_true", help="[OPTIONAL] print JSON (for the Slicer module)")
    defaults.set_defaults(handler=commands.defaults_command)
    return parser


def _add_federated_commands(subcommands) -> None:
    """``federated coordinator|site|local``: training on Flower, images never leaving their site."""
    federated = subcommands.add_parser("federated", help="train one model across sites (hospitals) on Flower; images "
                                                         "never leave a site (needs labelsharing[federated])")
    modes = federated.add_subparsers(dest="federated_command", metavar="MODE", required=True)
    coordinator = modes.add_parser("coordinator", help="run the SuperLink and the federated training, write MODEL")
    coordinator.add_argument("--sites", required=True, metavar="FILE",
                             help="[REQUIRED] sites.toml: the SuperLink's addresses, TLS files and the sites' public "
                                  "keys (README, 'Several hospitals')")
    local = modes.add_parser("local", help="try it on one machine: one site per dataset on 127.0.0.1")
    local.add_argument("datasets", nargs="+", metavar="DATASET", help="[REQUIRED] task dataset folders, one site each")
    for parser in (coordinator, local):
        parser.add_argument("--out", required=True, metavar="MODEL", help="[REQUIRED] model folder to write")
        parser.add_argument("--rounds", type=_positive_int, default=30,
                            help="[OPTIONAL] federated rounds (30: many short rounds, see the README)")
        parser.add_argument("--local-epochs", type=_positive_int, default=1,
                            help="[OPTIONAL] epochs each site trains per round (1)")
        parser.add_argument("--steps-per-epoch", type=_positive_int, default=10,
                            help="[OPTIONAL] optimisation steps per local epoch (10)")
        parser.add_argument("--batch-size", type=_positive_int, default=16, help="[OPTIONAL] slices per batch (16)")
        parser.add_argument("--lr", type=_learning_rate, default=2e-3, help="[OPTIONAL] peak AdamW learning rate")
        parser.add_argument("--features", type=_positive_int, default=16, help="[OPTIONAL] UNet width (16)")
        parser.add_argument("--seed", type=_seed, default=0, help="[OPTIONAL] random seed (0)")
        parser.add_argument("--min-sites", type=_positive_int, default=None,
                            help="[OPTIONAL] a round goes on with this many answering sites (default: all)")
        parser.add_argument("--proximal-mu", type=_megabytes, default=0.0, metavar="MU",
                            help="[OPTIONAL] FedProx's proximal weight for sites whose data differ strongly "
                                 "(0: FedAvg)")
        parser.add_argument("--site-weighting", choices=("tasks", "slices"), default="tasks",
                            help="[OPTIONAL] each site's weight in the average: 'tasks' (default): the number of "
                                 "tasks it trains, every task an equal share as pooled 'train' draws tasks; "
                                 "'slices': its training slices (FedAvg's usual weighting; a 3D task's hundreds "
                                 "of slices then outweigh a 2D task's dozen)")
        parser.add_argument("--add-to", metavar="PARENT_MODEL",
                            help="[OPTIONAL] federated add-task: the one site task PARENT_MODEL lacks is added as "
                                 "'add-task' adds it; its site trains it, the old sites replay their own tasks")
        parser.add_argument("--replay", type=_replay_share, default="tasks",
                            help="[OPTIONAL] with --add-to: the old tasks' share of the average, in [0, 1), or "
                                 "'tasks' (default): every task an equal share, the new one included (0: only the "
                                 "new site trains)")
        parser.add_argument("--pins", metavar="FILE", help="[OPTIONAL] pins file (see 'plan'), on the coordinator")
        parser.add_argument("--force", action="store_true", help="[OPTIONAL] replace an existing MODEL folder")
        parser.set_defaults(handler=commands.federated_command)
    _add_device_flag(local)
    site = modes.add_parser("site", help="serve this site's datasets to a coordinator (a Flower SuperNode)")
    site.add_argument("--dataset", action="append", required=True, metavar="DATASET",
                      help="[REQUIRED] a task dataset folder of this site (repeat for several)")
    site.add_argument("--superlink", required=True, metavar="HOST:PORT",
                      help="[REQUIRED] the coordinator's Fleet API address")
    site.add_argument("--root-certificates", metavar="CA_CRT", help="[OPTIONAL] the coordinator's CA certificate (TLS)")
    site.add_argument("--auth-private-key", metavar="KEY",
                      help="[OPTIONAL] this site's private key (authentication; its public key goes to the coordinator)")
    site.add_argument("--insecure", action="store_true",
                      help="[OPTIONAL] no TLS: only for a test on one machine, never across a network")
    _add_device_flag(site)
    site.set_defaults(handler=commands.federated_command)


def _add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                        help="[OPTIONAL] auto (default) picks CUDA, then MPS, then the CPU")


def _add_backend_flags(parser: argparse.ArgumentParser) -> None:
    from labelsharing.infer import BACKENDS, PRECISIONS

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


def _port(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {value}")
    return value


def _positive_number(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
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


def _replay_share(text: str) -> float | str:
    """``tasks`` or a fraction in [0, 1) (federated ``--replay``)."""
    return text if text == "tasks" else _fraction(text)


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
_DEFAULTS_COMMANDS = ("train", "add-task", "update")
_DEFAULTS_OPTIONS = ("epochs", "steps_per_epoch", "batch_size", "lr", "replay", "val_fraction", "slice_memory")


def _add_keep_islands_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-small-islands", dest="remove_islands", action="store_false",
                        help="[OPTIONAL] keep every island the network paints; by default a label's islands under 1 %% "
                             "of its median training size are removed where training found that this does not lower "
                             "its held-out Dice ('labelsharing info' lists them)")


def _add_keep_apart_flag(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument("--keep-look-alikes-apart", dest="keep_apart", action="store_true",
                        help="[OPTIONAL] tasks whose images look alike get their different structures on different "
                             "shared labels (more network outputs), each left out of the other's softmax, so an "
                             "unlabelled structure of one task never teaches the other's channel 'background'" + note)


def training_defaults() -> dict:
    """Default and limits of each training option of ``train``, ``add-task`` and ``update``, read from the parser.

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
