"""Resumable training: the working folder of a run and its end-of-epoch checkpoint.

``train`` and ``add-task`` keep a working folder beside their output, ``<parent>/.<name>.work/``:

* ``run.json`` says which run it belongs to (command, inputs, options, the command that resumes
  it), so ``--resume`` refuses to continue a different run;
* ``checkpoint.json`` + ``checkpoint.safetensors`` hold (no pickle), after every finished epoch, what the next epoch needs: network,
  optimiser, scheduler and gradient-scaler states, the best weights so far, the epoch log and
  the elapsed time. It is written to a temporary name and renamed, so a kill (even SIGKILL)
  leaves the previous epoch's checkpoint whole.

Random streams are not stored: every epoch re-seeds its sampler, augmentation and torch's global
generator from ``(seed, rank, epoch)`` (:func:`epoch_seed`), so a run resumed after epoch ``e``
draws exactly what the uninterrupted run drew, and on the CPU ends with the same weights.
The working folder is removed once the model folder is written. :func:`claim_output` makes
an output a run's before any work (checks, lock, working folder).
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from labelsharing.errors import LabelSharingError
from labelsharing.model import check_model_output, lock_model_output
from labelsharing.train.distributed import launch_from_env
from labelsharing.utils import write_atomically, write_json_atomically

__all__ = ["RunFolder", "work_folder_for", "epoch_seed", "claim_output", "open_run", "resume_command", "run_options",
           "trainer_checkpoint", "restore_trainer"]

CHECKPOINT_FILE = "checkpoint.json"
CHECKPOINT_TENSORS = "checkpoint.safetensors"
RUN_FILE = "run.json"


def work_folder_for(out: str | Path) -> Path:
    """The working folder of a run writing the model folder ``out``: ``<parent>/.<name>.work``."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.work"


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of one process's epoch: distinct per (seed, rank, epoch), below 2**32.

    Example:
        >>> epoch_seed(0, 0, 1) != epoch_seed(0, 0, 2) != epoch_seed(0, 1, 1)
        True
    """
    return (seed * 1_000_003 + rank * 10_007 + epoch) % (2**32)


@dataclass(frozen=True)
class RunFolder:
    """The working folder of one training run (see the module docstring).

    Args:
        folder: the working folder, normally :func:`work_folder_for` of the output.
        identity: what the run is (command, inputs, options); ``--resume`` must repeat it.
        resume_command: how a user resumes the run, shown when it was interrupted.
    """

    folder: Path
    identity: Mapping[str, Any] = field(default_factory=dict)
    resume_command: str = "the same command with --resume"

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    def exists(self) -> bool:
        return self.folder.is_dir()

    def start(self) -> None:
        """Create the folder for a new run and record what the run is and how to resume it."""
        if self.exists():
            raise ValueError(f"{self.folder} exists; check it with check_resumable or remove it first")
        self.folder.mkdir(parents=True)
        write_json_atomically(self.folder / RUN_FILE, {"identity": dict(self.identity),
                                                       "resume_command": self.resume_command, "epochs_done": 0})

    def record(self) -> dict:
        """The ``run.json`` of the run: ``identity``, ``resume_command``, ``epochs_done`` (empty if absent)."""
        path = self.folder / RUN_FILE
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise LabelSharingError(f"{path} is damaged ({exc}); delete {self.folder} and start the run again.") from exc

    def check_resumable(self) -> None:
        """Refuse to resume a different run: the recorded identity must equal this run's.

        Raises:
            LabelSharingError: no working folder, no checkpoint yet, or another command,
                other inputs or other options than the interrupted run.
        """
        if not self.exists():
            raise LabelSharingError(f"Nothing to resume: {self.folder} does not exist. Start the run without --resume.")
        record = self.record()
        recorded = record.get("identity", {})
        identity = json.loads(json.dumps(dict(self.identity)))  # as it reads back from run.json (tuples -> lists)
        differences = [key for key in sorted(set(recorded) | set(identity)) if recorded.get(key) != identity.get(key)]
        if differences:
            details = "; ".join(f"{key}: interrupted run {recorded.get(key)!r}, now {identity.get(key)!r}"
                                for key in differences)
            raise LabelSharingError(
                f"--resume must repeat the interrupted run's command, but {details}. Resume with "
                f"'{record.get('resume_command', 'the same command')}', or delete {self.folder} to start over."
            )

    def describe_leftover(self) -> str:
        """The message for a leftover working folder met without ``--resume``."""
        record = self.record()
        done = record.get("epochs_done", 0)
        progress = f"{done} of {record['epochs']} epochs done" if "epochs" in record else f"{done} epochs done"
        if self.checkpoint_path.is_file():
            progress += f", last checkpoint {_age(self.checkpoint_path)}"
        command = record.get("resume_command", "the same command with --resume")
        return (f"An interrupted run left its working folder {self.folder} ({progress}). Continue it with: "
                f"{command}  - or delete that folder to start over.")

    def save(self, state: Mapping[str, Any], epoch: int, epochs: int) -> None:
        """Write the checkpoint after ``epoch`` of ``epochs`` atomically (temporary file, fsync, rename).

        Like a model folder, it holds no pickle: the tensors go to ``checkpoint.safetensors``,
        the rest (optimiser settings, epoch log, ...) to ``checkpoint.json``, which points at them.

        Raises:
            LabelSharingError: the checkpoint could not be written (disk full, ...): the run stops
                rather than go on without a way back.
        """
        from safetensors.torch import save_file

        tensors: dict[str, Any] = {}
        structure = _to_json(dict(state), "", tensors)
        write_atomically(self.folder / CHECKPOINT_TENSORS, lambda temporary: save_file(tensors, str(temporary)))
        write_json_atomically(self.checkpoint_path, structure)
        write_json_atomically(self.folder / RUN_FILE, {**self.record(), "epochs_done": epoch, "epochs": epochs})

    def load(self) -> dict | None:
        """The last checkpoint (tensors on the CPU), or ``None`` if no epoch finished.

        Raises:
            LabelSharingError: the checkpoint cannot be read.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not self.checkpoint_path.is_file():
            return None
        try:
            tensors = load_file(str(self.folder / CHECKPOINT_TENSORS))
            return _from_json(json.loads(self.checkpoint_path.read_text()), tensors)
        except (OSError, ValueError, KeyError, SafetensorError) as exc:
            raise LabelSharingError(
                f"The checkpoint in {self.folder} cannot be read ({exc}); delete {self.folder} and start over."
            ) from exc

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    @contextmanager
    def removed_on_failure(self, active: bool = True) -> Iterator[None]:
        """Remove the folder if the block fails (when ``active``: a run this process just
        started). A run that fails before training, on a broken case say, leaves nothing to resume."""
        completed = False
        try:
            yield
            completed = True
        finally:
            if active and not completed:
                self.remove()


@contextmanager
def claim_output(out: Path, inputs: Sequence[str | Path], force: bool, identity: Mapping, resume: bool,
                 command: Sequence[str] | None) -> Iterator[RunFolder]:
    """Before any work, make ``out`` this run's: check that it may be written (never an input,
    ``--force`` only over a model folder, a writable place), hold its lock for the whole run so a
    second writer is refused at once, and open the run's working folder.

    Under torchrun only the main process, which writes, checks and locks.

    Yields:
        the run's :class:`~labelsharing.train.checkpoint.RunFolder`.
    """
    launch = launch_from_env()
    if launch is not None and launch.rank != 0:
        yield RunFolder(work_folder_for(out), identity, resume_command(command))
        return
    with lock_model_output(out):
        check_model_output(out, inputs, force)
        yield open_run(out, identity, resume, command)


def open_run(out: Path, identity: Mapping, resume: bool, command: Sequence[str] | None) -> RunFolder:
    """The working folder of a run into ``out``, checked: ``resume`` needs the same run's folder,
    a new run refuses a leftover one (and says how to resume it)."""
    run = RunFolder(work_folder_for(out), identity, resume_command(command))
    if resume:
        run.check_resumable()
    elif run.exists():
        raise LabelSharingError(run.describe_leftover())
    return run


def resume_command(command: Sequence[str] | None) -> str:
    import shlex

    if command is None:
        return "the same Python call with resume=True"
    arguments = list(command) + ([] if "--resume" in command else ["--resume"])
    return " ".join(shlex.quote(a) for a in ["labelsharing", *arguments])


#: Options a resumed run may change: they do not change what is computed.
_FREE_OPTIONS = ("device", "slice_memory_mb")


def run_options(options) -> dict:
    """The options that must not change between an interrupted run and its resumption."""
    return {key: value for key, value in vars(options).items() if key not in _FREE_OPTIONS}


def trainer_checkpoint(trainer_state: Mapping, result, epoch: int, seconds: float) -> dict:
    """What the next epoch needs: the ``state_dict()`` of each of ``trainer_state``'s objects
    (network, optimiser, scheduler, gradient scaler) and ``result``'s best weights and epoch log."""
    state = {key: value.state_dict() for key, value in trainer_state.items()}
    state.update(epoch=epoch, seconds=seconds, best_state=result.best_state, best_dice=result.best_dice,
                 best_epoch=result.best_epoch, epochs=result.epochs, planned_epochs=result.planned_epochs)
    return state


def restore_trainer(run: RunFolder | None, trainer_state: Mapping, result, log: Callable[[str], None]) -> tuple[int, float]:
    """Load the run's last checkpoint into ``trainer_state``'s objects and ``result`` (a
    :class:`~labelsharing.train.trainer.FitResult`); returns ``(first epoch to train, seconds spent)``."""
    checkpoint = run.load() if run is not None else None
    if checkpoint is None:
        return 1, 0.0
    for key, value in trainer_state.items():
        value.load_state_dict(checkpoint[key])
    result.best_state, result.best_dice = checkpoint["best_state"], float(checkpoint["best_dice"])
    result.best_epoch, result.epochs = int(checkpoint["best_epoch"]), list(checkpoint["epochs"])
    result.planned_epochs = int(checkpoint["planned_epochs"])
    log(f"resuming after epoch {checkpoint['epoch']} (checkpoint in {run.folder})")
    return int(checkpoint["epoch"]) + 1, float(checkpoint["seconds"])


def _to_json(value: Any, path: str, tensors: dict) -> Any:
    """``value`` (nested dicts, lists, tensors, numbers) as JSON; tensors go into ``tensors``
    under their path and are replaced by ``{"tensor": path}``. Dicts become key/value pairs, so
    the optimiser's integer keys come back as integers."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().to("cpu").contiguous()
        return {"tensor": path}
    if isinstance(value, Mapping):
        return {"items": [[key, _to_json(item, f"{path}/{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_to_json(item, f"{path}/{index}", tensors) for index, item in enumerate(value)]
    return value


def _from_json(value: Any, tensors: Mapping) -> Any:
    """Inverse of :func:`_to_json`."""
    if isinstance(value, dict):
        if "tensor" in value:
            return tensors[value["tensor"]]
        return {key: _from_json(item, tensors) for key, item in value["items"]}
    if isinstance(value, list):
        return [_from_json(item, tensors) for item in value]
    return value


def _age(path: Path) -> str:
    from datetime import datetime

    return "on " + datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
