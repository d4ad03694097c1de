"""Where inference backends keep the graphs they build: next to the model, keyed by the weights.

A backend that exports the network (an OpenVINO IR, an ONNX file, ``torch.compile``'s
artefacts) builds it once and stores it as ``<folder>/<key><ending>`` files plus a manifest
``<folder>/<key>.json``, written last, that records the SHA-256 of the weights the graph was
built from and of each stored file. The key names the backend, the first 16 hex digits of the
weights' hash, the input size and the backend's version, e.g.
``openvino-3f2a9c0d1e4b5a6c-s256-2026.4.1``. A stored graph is used only if its manifest names
the same full weights hash and every file still has the hash the manifest records; anything
else is rebuilt.

``<folder>`` is ``<model>/.cache`` when the model has a folder, else (or when that folder cannot
be written, e.g. a read-only model folder) the user's cache folder: ``$XDG_CACHE_HOME/labelsharing``
or ``~/.cache/labelsharing``. Every file is written atomically (:mod:`labelsharing.utils.safe_write`),
and a cache that cannot be written only costs the next run the build: it never fails a prediction.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from labelsharing.errors import LabelSharingError
from labelsharing.utils import write_atomically, write_json_atomically

__all__ = ["GraphCache", "log_line", "network_sha256", "user_cache_dir"]


def log_line(message: str) -> None:
    """Default ``log`` of the backends: one line on stderr."""
    print(message, file=sys.stderr)


def network_sha256(network) -> str:
    """SHA-256 of a torch module's parameters and buffers (names, dtypes, shapes and values).

    Computed from the module itself, not from ``model.json``, so a network changed in memory
    (fine-tuned after loading) never meets a graph built from its old weights.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/labelsharing``, else ``~/.cache/labelsharing``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "labelsharing"


@dataclass(frozen=True)
class GraphCache:
    """The stored graph of one backend for one network.

    Args:
        key: file name stem, e.g. ``openvino-<sha16>-s256-2026.4.1``.
        weights_sha256: full hash of the network (:func:`network_sha256`).
        model_dir: the model folder, if any; its ``.cache`` is tried first.
        log: receives one line when the cache cannot be written.
    """

    key: str
    weights_sha256: str
    model_dir: Path | None = None
    log: Callable[[str], None] = field(default=log_line, compare=False)

    @property
    def folders(self) -> tuple[Path, ...]:
        """Where the graph is looked for and written, in order."""
        from labelsharing.model import CACHE_FOLDER

        own = (Path(self.model_dir) / CACHE_FOLDER,) if self.model_dir is not None else ()
        return own + (user_cache_dir(),)

    def load(self) -> tuple[dict[str, bytes], dict] | None:
        """The stored files (ending -> bytes) and manifest, or None if absent or not trustworthy."""
        for folder in self.folders:
            found = self._load_from(folder)
            if found is not None:
                return found
        return None

    def store(self, files: Mapping[str, bytes], extra: Mapping | None = None) -> Path | None:
        """Write ``files`` (ending -> bytes) and then the manifest into the first writable folder.

        Returns:
            the folder written, or None if no folder could be written (logged, not raised).
        """
        manifest = {"key": self.key, "weights_sha256": self.weights_sha256,
                    "files": {ending: hashlib.sha256(data).hexdigest() for ending, data in files.items()},
                    **(extra or {})}
        reasons = []
        for folder in self.folders:
            try:
                for ending, data in files.items():
                    write_atomically(folder / f"{self.key}{ending}", lambda path, data=data: path.write_bytes(data))
                write_json_atomically(folder / f"{self.key}.json", manifest)
            except LabelSharingError as exc:
                reasons.append(str(exc).split(". ")[0])
                continue
            return folder
        self.log(f"note: the built graph could not be cached ({'; '.join(reasons)}); it will be built again "
                 "next time.")
        return None

    def _load_from(self, folder: Path) -> tuple[dict[str, bytes], dict] | None:
        try:
            manifest = json.loads((folder / f"{self.key}.json").read_text(encoding="utf-8"))
            if not isinstance(manifest, dict) or manifest.get("weights_sha256") != self.weights_sha256:
                return None
            files = {}
            for ending, expected in dict(manifest["files"]).items():
                data = (folder / f"{self.key}{ending}").read_bytes()
                if hashlib.sha256(data).hexdigest() != expected:
                    return None
                files[ending] = data
        except (OSError, ValueError, KeyError, TypeError):  # absent, unreadable or not a manifest of ours
            return None
        return files, manifest
