"""The three ways to run a federation: all on one machine, a coordinator, a site.

* :func:`run_local`: a SuperLink and one SuperNode per dataset on 127.0.0.1 (insecure: local
  loopback only), ``flwr run``, then every process stopped: ``labelsharing federated local``.
* :func:`run_coordinator`: the SuperLink with TLS and SuperNode authentication as Flower provides
  them (``--ssl-*``, ``--enable-supernode-auth`` and ``flwr supernode register``), then ``flwr run``
  against it: ``labelsharing federated coordinator``. Its settings file is described in README.md
  ("Several hospitals").
* :func:`run_site`: one SuperNode serving the site's datasets until it is stopped:
  ``labelsharing federated site``.
"""

from __future__ import annotations

import os
import tempfile
from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

from labelsharing.errors import LabelSharingError
from labelsharing.federated.flower_apps import DEFAULT_SETTINGS
from labelsharing.federated.runtime import CONNECTION, Processes, flower_environment, flower_tool, free_port, \
    run_flower_app, wait_for_port, write_flower_app

__all__ = ["run_local", "run_coordinator", "run_site", "read_sites_file", "supernode_command"]


def _settings(out: str | Path, overrides: Mapping[str, object]) -> dict[str, object]:
    unknown = sorted(set(overrides) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(f"unknown federated settings {unknown}")
    return {**DEFAULT_SETTINGS, **overrides, "out": str(Path(out).resolve())}


def supernode_command(superlink: str, datasets: Sequence[str | Path], device: str, clientappio: str,
                      root_certificates: str | None = None, private_key: str | None = None) -> list[str]:
    """The ``flower-supernode`` command of a site (insecure when no root certificate is given).

    Authentication needs only the site's private key: Flower derives the public key from it (the
    coordinator registers the public key, see :func:`run_coordinator`).
    """
    config = f'datasets="{os.pathsep.join(str(Path(d).resolve()) for d in datasets)}" device="{device}"'
    command = [flower_tool("flower-supernode"), "--superlink", superlink, "--clientappio-api-address", clientappio,
               "--node-config", config]
    command += ["--root-certificates", root_certificates] if root_certificates else ["--insecure"]
    if private_key:
        command += ["--auth-supernode-private-key", private_key]
    return command


def _superlink_command(fleet: str, control: str, serverappio: str, certificates: Mapping[str, str] | None,
                       authenticate: bool) -> list[str]:
    command = [flower_tool("flower-superlink"), "--fleet-api-address", fleet, "--control-api-address", control,
               "--serverappio-api-address", serverappio, "--disable-runtime-dependency-installation"]
    if certificates is None:
        command.append("--insecure")
    else:
        command += ["--ssl-ca-certfile", certificates["ca"], "--ssl-certfile", certificates["certificate"],
                    "--ssl-keyfile", certificates["key"]]
    if authenticate:
        command.append("--enable-supernode-auth")
    return command


def run_local(datasets: Sequence[str | Path], out: str | Path, overrides: Mapping[str, object] | None = None,
              work: str | Path | None = None, device: str = "auto") -> Path:
    """Train a model federatedly on one machine, each dataset one site; returns ``out``.

    A SuperLink and one SuperNode per dataset run on 127.0.0.1 in insecure mode (each started again
    on other ports when one was taken before it bound it), ``flwr run`` drives the run once all
    listen, and every process is stopped at the end, also on failure or Ctrl+C. Their logs go to
    ``work`` (default: a temporary folder, removed afterwards).
    """
    settings = _settings(out, {"sites": len(datasets), "min-sites": len(datasets), **(overrides or {})})
    with tempfile.TemporaryDirectory(prefix="labelsharing-federated-") as temporary:
        folder = Path(work or temporary)
        env = flower_environment(folder / "flower-home")
        with Processes(env, folder / "logs") as processes:
            fleet, control = start_local_superlink(processes)
            for i, dataset in enumerate(datasets, 1):  # a SuperNode opens its ClientAppIo API before it connects
                processes.start_listening(f"site-{i}", partial(supernode_command, fleet, [dataset], device), 1)
            run_flower_app(write_flower_app(folder / "app", settings), control, settings, env, insecure=True)
    return Path(out)


def start_local_superlink(processes: Processes, attempts: int = 3) -> tuple[str, str]:
    """Start an insecure SuperLink on free 127.0.0.1 ports (again on other ports when one was taken
    meanwhile, see :meth:`Processes.start_listening`); returns its Fleet and Control addresses once
    its three APIs listen."""
    fleet, control, _ = processes.start_listening(
        "superlink", partial(_superlink_command, certificates=None, authenticate=False), 3, attempts)
    return fleet, control


def read_sites_file(path: str | Path) -> dict:
    """Read the coordinator's settings file (TOML; see README.md, "Several hospitals").

    Raises:
        LabelSharingError: unreadable, or TLS files missing without ``insecure = true``.
    """
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LabelSharingError(f"Cannot read the sites file {path}: {exc}") from exc
    base = path.resolve().parent  # Flower wants absolute certificate paths
    link = data.get("superlink", {})
    keys = [str(base / key) for key in data.get("sites", {}).get("public-keys", [])]
    certificates = None
    if not link.get("insecure", False):
        names = {"ca": "ca-certificate", "certificate": "certificate", "key": "private-key"}
        missing = [v for v in names.values() if v not in link]
        if missing:
            raise LabelSharingError(f"{path}: [superlink] needs {', '.join(missing)} for TLS (or insecure = true, "
                                    "for a test on one machine only).")
        certificates = {k: str(base / link[v]) for k, v in names.items()}
    return {"fleet": link.get("fleet-address", "0.0.0.0:9092"), "control": link.get("control-address", "127.0.0.1:9093"),
            "serverappio": link.get("serverappio-address", "127.0.0.1:9091"), "certificates": certificates,
            "public_keys": keys, "expected": int(data.get("sites", {}).get("expected", max(len(keys), 2)))}


def run_coordinator(sites_file: str | Path, out: str | Path, overrides: Mapping[str, object] | None = None,
                    work: str | Path | None = None) -> Path:
    """Run the coordinator: the SuperLink of ``sites_file``, the sites' keys registered, ``flwr run``;
    the SuperLink is stopped at the end. Returns ``out``."""
    sites = read_sites_file(sites_file)
    settings = _settings(out, {"sites": sites["expected"], "min-sites": sites["expected"], **(overrides or {})})
    certificates = sites["certificates"]
    folder = Path(work) if work else Path(out).resolve().parent / f".{Path(out).name}.coordinator"
    env = flower_environment(folder / "flower-home")
    with Processes(env, folder / "logs") as processes:
        link = processes.start("superlink", _superlink_command(sites["fleet"], sites["control"], sites["serverappio"],
                                                               certificates, bool(sites["public_keys"])))
        wait_for_port(sites["control"], 60, link)
        if sites["public_keys"]:
            _register_sites(sites, env, folder)
        run_flower_app(write_flower_app(folder / "app", settings), sites["control"], settings, env,
                       insecure=certificates is None, root_certificates=certificates and certificates["ca"])
    return Path(out)


def _register_sites(sites: Mapping, env: Mapping[str, str], folder: Path) -> None:
    """Register every site's public key with the SuperLink (``flwr supernode register``)."""
    import subprocess

    import tomli_w

    home = Path(env["FLWR_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    connection = {"address": sites["control"], "insecure": sites["certificates"] is None}
    if sites["certificates"]:
        connection["root-certificates"] = sites["certificates"]["ca"]
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}}))
    for key in sites["public_keys"]:
        done = subprocess.run([flower_tool("flwr"), "supernode", "register", key, CONNECTION], env=dict(env),
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise LabelSharingError(f"Could not register the site key {key}: {done.stdout.strip()} {done.stderr.strip()}")


def run_site(datasets: Sequence[str | Path], superlink: str, root_certificates: str | None = None,
             private_key: str | None = None, device: str = "auto",
             insecure: bool = False, retry_seconds: float = 10.0) -> int:
    """Serve the site's datasets as a SuperNode until it is stopped (Ctrl+C); returns its exit code.

    A SuperNode gives up when the SuperLink is not reachable for a few seconds, or refuses its
    key because the coordinator has not registered it yet; the site then starts it again every
    ``retry_seconds``, so sites may start before their coordinator and outlive its runs.
    """
    import subprocess
    import sys
    import time

    from labelsharing.data import read_task_dataset

    for folder in datasets:  # a wrong folder is said now, not when the first round reaches the site
        read_task_dataset(folder)
    if root_certificates is None and not insecure:
        raise LabelSharingError("Give the coordinator's CA certificate (--root-certificates ca.crt), or --insecure "
                                "for a test on one machine only.")
    with tempfile.TemporaryDirectory(prefix="labelsharing-site-") as home:
        try:
            while True:  # a fresh ClientAppIo port each start: the last one may have been taken meanwhile
                command = supernode_command(superlink, datasets, device, f"127.0.0.1:{free_port()}",
                                            root_certificates, private_key)
                code = subprocess.run(command, env=flower_environment(Path(home))).returncode
                if code == 0:
                    return 0
                print(f"[labelsharing] the SuperNode stopped (exit {code}): the coordinator at {superlink} is not up, "
                      "or has not registered this site's key yet, or its local port was taken (its output above "
                      f"says which); starting it again in {retry_seconds:g} s (Ctrl+C to stop)",
                      file=sys.stderr, flush=True)
                time.sleep(retry_seconds)
        except KeyboardInterrupt:
            return 130
