"""One function per command: read the parsed flags, call the engine's API, print the outcome.

Each imports its stage when it runs, so a command pays only for what it uses. Returns the exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from labelsharing.utils import ProgressReporter


def plan_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.plan import plan_table, plan_task_datasets, read_pins
    from labelsharing.utils import check_outputs, write_json_atomically

    if args.json:
        check_outputs([args.json], inputs=[*args.datasets, *([args.pins] if args.pins else [])], force=True,
                      option="--json")
    plan, _, _ = plan_task_datasets(args.datasets, read_pins(args.pins) if args.pins else None, progress,
                                 log=lambda message: print(message, file=sys.stderr), keep_apart=args.keep_apart)
    print(plan_table(plan))
    print(f"\n{plan.n_shared} shared labels for {len(plan.task_names)} task(s).")
    if args.json:
        write_json_atomically(args.json, plan.to_dict())
        print(f"Plan written to {args.json}")
    else:
        print(json.dumps(plan.to_dict(), indent=2))
    return 0


def demo_data_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.demo import make_demo_datasets

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


def train_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.plan import read_pins
    from labelsharing.train import TrainingOptions, train

    options = TrainingOptions(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, time_budget=args.time_budget,
                              batch_size=args.batch_size, input_size=args.input_size,
                              features=args.features, learning_rate=args.lr, val_fraction=args.val_fraction,
                              device=args.device, seed=args.seed, axis=args.axis, val_every=args.val_every,
                              slice_memory_mb=args.slice_memory)
    train(args.datasets, args.out, options, pins=read_pins(args.pins) if args.pins else None, force=args.force,
          progress=progress, log=_log_for(progress), resume=args.resume, command=args.argv, keep_apart=args.keep_apart)
    return 0


def add_task_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.plan import read_pins
    from labelsharing.train import TrainingOptions, add_task

    options = TrainingOptions(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, time_budget=args.time_budget,
                              batch_size=args.batch_size, learning_rate=args.lr,
                              val_fraction=args.val_fraction, device=args.device, seed=args.seed,
                              val_every=args.val_every, slice_memory_mb=args.slice_memory)
    add_task(args.model, args.dataset, args.out, options, replay=args.replay,
             pins=read_pins(args.pins) if args.pins else None, force=args.force, progress=progress,
             log=_log_for(progress), resume=args.resume, command=args.argv, keep_apart=args.keep_apart)
    return 0


def update_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.train import TrainingOptions, update

    options = TrainingOptions(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, time_budget=args.time_budget,
                              batch_size=args.batch_size, learning_rate=args.lr, device=args.device, seed=args.seed,
                              val_every=args.val_every, slice_memory_mb=args.slice_memory)
    update(args.model, args.task, args.dataset, args.out, options, replay=args.replay,
           validation_cases=args.validation_cases, force=args.force, progress=progress, log=_log_for(progress),
           resume=args.resume, command=args.argv)
    return 0


def add_case_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.data import add_case

    case = add_case(args.dataset, args.image, args.label, case_id=args.case_id)
    print(f"added case {case.case_id}: {case.image} and {case.label}")
    return 0


def predict_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.infer import Predictor
    from labelsharing.utils import describe_device

    log = _log_for(progress)
    predictor = Predictor.from_model_dir(args.model, device=args.device, batch_size=args.batch_size,
                                         backend=args.backend, precision=args.precision, log=log,
                                         remove_islands=args.remove_islands)
    log(f"device: {describe_device(predictor.device)}; backend: {predictor.backend.describe()}")
    written = predictor.predict_files(args.inputs, args.task, args.out, file_format=args.format,
                                      probabilities=args.probabilities, progress=progress, force=args.force,
                                      series_uid=args.series, seg_type=args.seg_type)
    for path in written:
        log(f"wrote {path}")
    return 0


def export_seg_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.infer import export_dicom_seg
    from labelsharing.utils import check_outputs, write_atomically

    check_outputs([args.out], inputs=[args.labels, args.source], force=args.force)
    written = write_atomically(args.out, lambda temporary: export_dicom_seg(
        args.labels, args.source, temporary, series_uid=args.series, seg_type=args.seg_type))
    _log_for(progress)(f"wrote {written}")
    return 0


def worker_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.serve import serve, standard_streams

    requests, replies = standard_streams()
    return serve(args.model, requests, replies, device=args.device, backend=args.backend, precision=args.precision,
                 batch_size=args.batch_size)


def serve_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.serve import run_server

    predictor = dict(device=args.device, backend=args.backend, precision=args.precision, batch_size=args.batch_size)
    return run_server(args.models, host=args.host, port=args.port, token_file=args.token_file,
                      tls_cert=args.tls_cert, tls_key=args.tls_key, insecure=args.insecure,
                      rotate_token=args.rotate_token, max_upload_mb=args.max_upload_mb, workers=args.workers,
                      max_loaded=args.max_loaded, predictor=predictor, device=args.device)


def evaluate_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.data import read_task_dataset, split_overlapping_task
    from labelsharing.infer import Predictor, evaluate_model, evaluation_table, split_warning
    from labelsharing.utils import check_outputs, write_json_atomically

    if args.json:
        check_outputs([args.json], inputs=[args.model, *args.datasets], force=True, option="--json")
    predictor = Predictor.from_model_dir(args.model, device=args.device, backend=args.backend, precision=args.precision,
                                         log=lambda message: print(message, file=sys.stderr),
                                         remove_islands=args.remove_islands)
    # a task with overlapping segments is scored per sub-task (one per layer), as it was trained
    tasks = [sub for folder in args.datasets for sub in split_overlapping_task(read_task_dataset(folder))]
    for warning in filter(None, map(split_warning, tasks)):
        print(f"warning: {warning}", file=sys.stderr)
    result = evaluate_model(predictor, tasks, progress=progress)
    print(evaluation_table(result))
    if args.json:
        write_json_atomically(args.json, result)
        print(f"Dice written to {args.json}")
    return 0


def federated_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.federated import run_coordinator, run_local, run_site
    from labelsharing.model import check_model_output

    if args.federated_command == "site":
        return run_site(args.dataset, args.superlink, args.root_certificates, args.auth_private_key, args.device,
                        args.insecure)
    check_model_output(args.out, force=args.force, inputs=[*getattr(args, "datasets", []), *filter(None, [args.add_to])])
    settings = {"rounds": args.rounds, "local-epochs": args.local_epochs, "steps-per-epoch": args.steps_per_epoch,
                "batch-size": args.batch_size, "lr": args.lr, "features": args.features, "seed": args.seed,
                "proximal-mu": args.proximal_mu, "pins": str(Path(args.pins).resolve()) if args.pins else "",
                "force": args.force, "site-weighting": args.site_weighting, "replay": args.replay,
                "add-to": str(Path(args.add_to).resolve()) if args.add_to else ""}
    if args.min_sites is not None:
        settings["min-sites"] = args.min_sites
    if args.federated_command == "local":
        run_local(args.datasets, args.out, settings, device=args.device)
    else:
        run_coordinator(args.sites, args.out, settings)
    return 0


def demo_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.demo import DemoSettings, run_demo

    settings = DemoSettings.quick() if args.quick else DemoSettings()
    run_demo(args.out, settings, device=args.device, seed=args.seed, progress=progress, log=_log_for(progress))
    return 0


def info_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.model import describe_model

    print(describe_model(args.model))
    return 0


def defaults_command(args: argparse.Namespace, progress: ProgressReporter) -> int:
    from labelsharing.cli.parser import training_defaults

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
