"""Starting and stopping Flower's deployment runtime: a SuperLink, SuperNodes, and ``flwr run``.

Every Flower process is started in its own session (process group): a SuperLink starts a
SuperExec that starts the ServerApp, a SuperNode a SuperExec that starts a ClientApp per message,
so stopping one means ending its whole group (SIGTERM, then SIGKILL after a grace period).
:class:`Processes` stops every group it started when it leaves its ``with`` block, whatever happened.

The Flower App itself is written on the fly (:func:`write_flower_app`): a ``pyproject.toml`` whose
components are :mod:`labelsharing.federated.flower_apps` of the installed package and whose config
defaults are :data:`~labelsharing.federated.flower_apps.DEFAULT_SETTINGS`. Runtime installation of
app dependencies (``uv sync``) is switched off: every machine runs the labelsharing it has installed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Callable, Mapping, Sequence

from labelsharing.errors import LabelSharingError

__all__ = ["Processes", "write_flower_app", "free_port", "wait_for_port", "flower_environment", "flower_tool",
           "run_flower_app", "CONNECTION"]

#: The name of the SuperLink connection ``flwr run`` uses (in ``$FLWR_HOME/config.toml``).
CONNECTION = "labelsharing"
_GRACE_SECONDS = 10.0


def flower_tool(name: str) -> str:
    """The path of a Flower executable (``flower-superlink``, ``flwr``, ...) beside this Python."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise LabelSharingError(f"{name} is not installed beside {sys.executable}; install Flower with "
                                "pip install \"labelsharing[federated]\" (Python 3.11 or newer).")
    return str(path)


def flower_environment(flower_home: Path) -> dict[str, str]:
    """The environment of the Flower processes: ``FLWR_HOME`` set, this Python's tools first on the PATH
    (the SuperLink and SuperNodes start ``flower-superexec`` and the apps by name)."""
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flower_home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def write_flower_app(folder: Path, settings: Mapping[str, object]) -> Path:
    """Write the Flower App's ``pyproject.toml`` into ``folder`` (its run config defaults: ``settings``)."""
    import tomli_w

    from labelsharing import __version__

    folder.mkdir(parents=True, exist_ok=True)
    project = {
        "project": {"name": "labelsharing-federated", "version": __version__.split("+")[0],
                    "description": "Federated label sharing (labelsharing federated)", "license": "Apache-2.0",
                    "dependencies": ["flwr>=1.32.1"]},
        "tool": {"flwr": {"app": {
            "publisher": "labelsharing",
            "components": {"serverapp": "labelsharing.federated.flower_apps:server_app",
                           "clientapp": "labelsharing.federated.flower_apps:client_app"},
            "config": dict(settings)}}},
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project))
    return folder


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(address: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Wait until something listens on ``host:port`` (raises if ``process`` ends first or on timeout)."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise LabelSharingError(f"A Flower process ended at start (exit {process.returncode}); see its log.")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise LabelSharingError(f"Nothing listens on {address} after {timeout:g} s.")


class Processes:
    """Flower processes started by one command, each in its own session; all stopped on exit."""

    def __init__(self, env: Mapping[str, str], log_folder: Path):
        self.env, self.log_folder = dict(env), log_folder
        self.started: dict[str, subprocess.Popen] = {}
        self._logs: list[IO] = []

    def start(self, name: str, command: Sequence[str]) -> subprocess.Popen:
        """Start ``command`` as ``name`` (output to ``<log folder>/<name>.log``)."""
        self.log_folder.mkdir(parents=True, exist_ok=True)
        log = open(self.log_folder / f"{name}.log", "wb")
        self._logs.append(log)
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                   start_new_session=True)
        self.started[name] = process
        return process

    def start_listening(self, name: str, command: Callable[..., Sequence[str]], ports: int, attempts: int = 3,
                        timeout: float = 60.0) -> list[str]:
        """Start ``command(*addresses)`` as ``name`` on ``ports`` fresh 127.0.0.1 addresses and wait until
        something listens on each of them; returns the addresses.

        A port found free can be taken by another program before the process binds it: a Flower process
        then ends at start ("Port in server address ... is already in use") and is started again on
        other ports, up to ``attempts`` times. One still running at the timeout is not started again.

        Raises:
            LabelSharingError: the last attempt ended at start, or nothing listened within ``timeout``.
        """
        attempt = 1
        while True:
            addresses = [f"127.0.0.1:{free_port()}" for _ in range(ports)]
            process = self.start(name, command(*addresses))
            try:
                for address in addresses:
                    wait_for_port(address, timeout, process)
                return addresses
            except LabelSharingError:
                ended_at_start = process.poll() is not None  # not a timeout
                self.stop(name)
                if attempt >= attempts or not ended_at_start:
                    raise
                attempt += 1

    def stop(self, name: str) -> None:
        """End ``name``'s whole process group: SIGTERM, then SIGKILL after a grace period."""
        process = self.started.pop(name)
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        try:  # the group outlives its leader when a child ignores SIGTERM
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        for name in list(self.started)[::-1]:
            self.stop(name)
        for log in self._logs:
            log.close()


def run_flower_app(app: Path, control_address: str, settings: Mapping[str, object], env: Mapping[str, str],
                   insecure: bool, root_certificates: str | None = None, out: IO | None = None) -> None:
    """``flwr run`` the app against the SuperLink's Control API, streaming the run's log to ``out``.

    Raises:
        LabelSharingError: ``flwr run`` failed, or the run did not end with a written model.
    """
    import tomli_w

    home = Path(env["FLWR_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    connection = {"address": control_address, "insecure": insecure}
    if root_certificates:
        connection["root-certificates"] = str(Path(root_certificates).resolve())
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}}))
    run_config = home / "run-config.toml"
    run_config.write_text(tomli_w.dumps(dict(settings)))
    command = [flower_tool("flwr"), "run", str(app), CONNECTION, "--run-config", str(run_config), "--stream"]
    failed = False
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env), text=True) as run:
        for line in run.stdout:
            failed = failed or "[labelsharing] error:" in line
            print(line, end="", file=out or sys.stdout, flush=True)
    if run.returncode != 0 or failed:
        raise LabelSharingError("The federated run failed (see its log above).")
