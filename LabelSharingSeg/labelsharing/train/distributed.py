"""Several processes (one per GPU) for one training run: torchrun + DistributedDataParallel.

``torchrun --nproc_per_node=N -m labelsharing train ...`` starts N copies of the command; each
reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` from its environment. :func:`start_distributed`
turns them into a :class:`DistributedContext` (NCCL on CUDA, gloo on the CPU); without torchrun it
returns a single-process context whose collectives do nothing, so training runs one code path.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Mapping

from labelsharing.errors import LabelSharingError
from labelsharing.utils import SILENT, ProgressReporter, describe_device, select_device

__all__ = ["Launch", "DistributedContext", "launch_from_env", "choose_device", "start_distributed", "main_process_output", "describe_processes"]

#: How long a process waits for the others (the main rank validates while they wait).
TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch | None:
    """The torchrun launch described by ``env`` (default ``os.environ``); ``None`` for one process.

    Raises:
        LabelSharingError: ``WORLD_SIZE`` is set but the other variables are missing or invalid.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return None
    try:
        world_size = int(env["WORLD_SIZE"])
        rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", world_size))
    except (KeyError, ValueError) as exc:
        raise LabelSharingError(f"WORLD_SIZE is set, but RANK/LOCAL_RANK are missing or not integers ({exc}); "
                                "start several processes with torchrun, or unset WORLD_SIZE.") from None
    if world_size < 1 or not 0 <= rank < world_size or not 0 <= local_rank < local_world_size:
        raise LabelSharingError(f"Inconsistent torchrun variables: RANK={rank}, LOCAL_RANK={local_rank}, "
                                f"WORLD_SIZE={world_size}, LOCAL_WORLD_SIZE={local_world_size}.")
    return None if world_size == 1 else Launch(rank, world_size, local_rank, local_world_size)


def choose_device(requested: str, launch: Launch, cuda_devices: int) -> tuple[str, str]:
    """``(device, backend)`` of one process of a launch: ``cuda:LOCAL_RANK`` + NCCL, or ``cpu`` + gloo.

    Args:
        requested: the ``--device`` flag: ``auto`` (CUDA if present), ``cuda`` or ``cpu``.
        launch: this process's place in the launch.
        cuda_devices: CUDA devices visible to this process (``torch.cuda.device_count()``).
    """
    name = str(requested).strip().lower()
    if name == "cpu" or (name == "auto" and cuda_devices == 0):
        return "cpu", "gloo"
    if name not in ("auto", "cuda"):
        raise LabelSharingError(f"--device {requested} cannot be shared by several processes; under torchrun use "
                                "auto or cuda (process k uses cuda:k) or cpu (gloo).")
    if cuda_devices == 0:
        raise LabelSharingError("--device cuda was requested but torch sees no CUDA device.")
    if launch.local_world_size > cuda_devices:
        raise LabelSharingError(f"{launch.local_world_size} processes per node but {cuda_devices} CUDA device(s); "
                                f"pass --nproc_per_node={cuda_devices} to torchrun (one process per GPU).")
    return f"cuda:{launch.local_rank}", "nccl"


class DistributedContext:
    """This process's rank, world size and device, and the collectives training needs.

    A single-process context (``launch=None``) has rank 0, world size 1, and no-op collectives.
    """

    def __init__(self, device: Any, launch: Launch | None = None, backend: str | None = None, owns_group: bool = False):
        self.device = device
        self.rank = launch.rank if launch else 0
        self.world_size = launch.world_size if launch else 1
        self.backend = backend
        self._owns_group = owns_group

    def __repr__(self) -> str:
        return f"DistributedContext(rank={self.rank}, world_size={self.world_size}, device={self.device}, " \
               f"backend={self.backend})"

    @property
    def is_main(self) -> bool:
        """The process that validates, logs, shows progress and writes the model."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def mean(self, value: float) -> float:
        """``value`` averaged over the ranks (every rank must call it)."""
        if self.world_size == 1:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor) / self.world_size

    @contextmanager
    def together(self) -> Iterator[None]:
        """Run a step on every rank; if it fails on any rank, every rank raises (none waits forever).

        The main rank raises its own error, else the first failure of another rank; the other ranks
        raise a short :class:`LabelSharingError` (or their own traceback for errors that are bugs),
        so a user error is printed once.
        """
        if self.world_size == 1:
            yield
            return
        error = None
        try:
            yield
        except Exception as exc:  # noqa: BLE001 -- re-raised below, after telling the other ranks
            error = exc
        import torch.distributed as dist

        failures: list = [None] * self.world_size
        dist.all_gather_object(failures, None if error is None else (isinstance(error, LabelSharingError), str(error)))
        failed = [(rank, f) for rank, f in enumerate(failures) if f is not None]
        if not failed:
            return
        if error is not None and (self.is_main or not isinstance(error, LabelSharingError)):
            raise error
        rank, (user_error, message) = failed[0]
        if not self.is_main:
            raise LabelSharingError(f"stopped because process {rank} failed; process 0 reports the error.")
        if user_error:
            raise LabelSharingError(message)
        raise RuntimeError(f"process {rank} of {self.world_size} failed: {message} (see its traceback)")

    def close(self) -> None:
        """End the process group if this context started it."""
        if self._owns_group:
            import torch.distributed as dist

            # gloo's worker threads free their last finished work only when they get the GIL; if the
            # interpreter is shutting down by then the process aborts ("terminate called without an
            # active exception", about one run in five with torch 2.13). Hand them the GIL first.
            time.sleep(0.1)
            dist.destroy_process_group()
            self._owns_group = False


def start_distributed(requested_device: str = "auto", env: Mapping[str, str] | None = None) -> DistributedContext:
    """Join the torchrun launch this process belongs to (or return a single-process context).

    Reuses a process group the caller already started. Call :meth:`DistributedContext.close` at the end.
    """
    launch = launch_from_env(env)
    if launch is None:

        return DistributedContext(select_device(requested_device))
    import torch
    import torch.distributed as dist

    device, backend = choose_device(requested_device, launch, torch.cuda.device_count())
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return DistributedContext(device, launch, backend=dist.get_backend())
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return DistributedContext(device, launch, backend=backend, owns_group=True)


def main_process_output(context: DistributedContext, progress: ProgressReporter,
                        log: Callable[[str], None]) -> tuple[ProgressReporter, Callable[[str], None]]:
    """Progress and messages of the main process; the other processes stay quiet."""
    return (progress, log) if context.is_main else (SILENT, lambda message: None)


def describe_processes(context: DistributedContext) -> str:
    """``device: ...`` line, with the number of processes and the backend under torchrun."""
    text = f"device: {describe_device(context.device)}"
    if context.world_size > 1:
        text += f" in each of {context.world_size} processes ({context.backend})"
    return text
