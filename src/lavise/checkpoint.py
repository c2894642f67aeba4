"""Explainer checkpoints on disk: a folder with ``lavise.json`` and ``explainer.safetensors``.

``lavise.json`` carries everything needed to check that a checkpoint fits a model,
a layer and a word space; ``explainer.safetensors`` the trained head (absent for a
``conse`` explainer). Every way a checkpoint can be damaged or foreign -- truncated
or corrupt weights, malformed or missing metadata, another format version, weights
whose shapes disagree with the metadata -- raises :class:`CheckpointError`: one line
naming the file and saying what to do.

Format versions (``lavise.json`` ``"version"``):

1. lavise 0.1.0: no record of the weights file.
2. ``"weights"`` records the tensors of ``explainer.safetensors`` (names and shapes)
   and its SHA-256, checked on load.

Older versions load (they are upgraded in memory; :func:`upgrade_checkpoint` rewrites
one on disk); newer versions are refused with the advice to upgrade lavise.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_VERSION", "CheckpointError", "read_metadata", "read_weights", "write_checkpoint",
           "upgrade_checkpoint"]

CHECKPOINT_VERSION = 2
FORMAT = "lavise-explainer"
METADATA_FILE = "lavise.json"
WEIGHTS_FILE = "explainer.safetensors"

_RETRAIN = "copy the whole checkpoint folder again, or train a new one with `lavise train`"


class CheckpointError(ValueError):
    """A checkpoint is damaged, incomplete, foreign or of an unsupported format version.

    Attributes:
        path: The offending file (or folder).
    """

    def __init__(self, path: str | Path, problem: str, remedy: str = _RETRAIN) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {problem}; {remedy}")


def _require(meta: dict, file: Path, section: str, fields: dict[str, type]) -> dict:
    value = meta.get(section)
    if not isinstance(value, dict):
        raise CheckpointError(file, f"malformed checkpoint metadata: {section!r} is missing or not an object")
    for name, kind in fields.items():
        v = value.get(name)
        ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
        if not ok or (kind is int and v <= 0):
            raise CheckpointError(file, f"malformed checkpoint metadata: {section}.{name} is missing or invalid")
    return value


def _upgrade(meta: dict) -> dict:
    """Brings metadata of an older format version to :data:`CHECKPOINT_VERSION` (in memory)."""
    meta = dict(meta)
    if meta["version"] == 1:
        meta["weights"] = None  # not recorded: the weights file is checked by shape only
        meta["version"] = 2
    return meta


def read_metadata(directory: str | Path) -> dict:
    """Reads, checks and upgrades a checkpoint's ``lavise.json``.

    Returns:
        The metadata in the current format version.

    Raises:
        FileNotFoundError: No ``lavise.json`` in ``directory``.
        CheckpointError: Unreadable, malformed, not a lavise checkpoint, or newer.
    """
    directory = Path(directory)
    file = directory / METADATA_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no lavise checkpoint in {directory} ({METADATA_FILE} missing)")
    try:
        meta = json.loads(file.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        problem = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(file, f"unreadable checkpoint metadata ({problem})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(file, "not a lavise explainer checkpoint",
                              "point --checkpoint at a folder written by `lavise train`")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(file, f"malformed checkpoint metadata: bad format version {version!r}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            file, f"checkpoint format version {version} was written by a newer lavise "
                  f"(this one reads versions 1 to {CHECKPOINT_VERSION})",
            "upgrade lavise (pip install -U lavise) to load it")
    _require(meta, file, "model", {"name": str, "weights_id": str, "weights_hash": str})
    _require(meta, file, "layer", {"name": str, "channels": int})
    _require(meta, file, "word_space", {"name": str, "dim": int, "fingerprint": str})
    exp = _require(meta, file, "explainer", {"kind": str, "has_head": bool})
    if not isinstance(exp.get("conse_top", 10), int) or not isinstance(exp.get("pooling", "mean"), str):
        raise CheckpointError(file, "malformed checkpoint metadata: explainer.conse_top or pooling is invalid")
    if meta.get("split") is not None and not isinstance(meta["split"], dict):
        raise CheckpointError(file, "malformed checkpoint metadata: 'split' is not an object")
    meta = _upgrade(meta)
    weights = meta.get("weights")
    if weights is not None and not (
        isinstance(weights, dict) and isinstance(weights.get("sha256"), str)
        and isinstance(weights.get("tensors"), dict)
        and all(isinstance(s, list) and all(isinstance(v, int) for v in s) for s in weights["tensors"].values())
    ):
        raise CheckpointError(file, "malformed checkpoint metadata: 'weights' is invalid")
    if version < CHECKPOINT_VERSION:
        logger.info("%s: checkpoint format version %d, upgraded in memory (lavise.checkpoint."
                    "upgrade_checkpoint rewrites it)", file, version)
    return meta


def read_weights(directory: str | Path, meta: dict,
                 expected: dict[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """Reads ``explainer.safetensors``, checking its checksum and tensor shapes.

    Args:
        directory: The checkpoint folder.
        meta: Its metadata from :func:`read_metadata`.
        expected: Tensor names and shapes the head needs (checked when given).

    Raises:
        CheckpointError: Missing, truncated or corrupt file, a failed checksum, or
            tensors that disagree with the metadata or ``expected``.
    """
    from safetensors import safe_open

    file = Path(directory) / WEIGHTS_FILE
    if not file.is_file():
        raise CheckpointError(file, "missing: the checkpoint's metadata says it has a trained head")
    record = meta.get("weights")
    if record is not None:
        from lavise._cache import sha256_file

        if sha256_file(file) != record["sha256"]:
            raise CheckpointError(file, "fails its checksum (damaged or a partial copy)")
    try:
        with safe_open(str(file), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError, ...: the file is damaged
        problem = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(file, f"unreadable weights, truncated or corrupt ({problem})") from None
    want = {k: tuple(v) for k, v in record["tensors"].items()} if record is not None else None
    for ref, what in ((want, "the checkpoint's metadata"), (expected, f"the head for {_dims(meta)}")):
        if ref is None:
            continue
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if got != ref:
            diff = sorted(set(got) ^ set(ref)) or sorted(k for k in got if got[k] != ref[k])
            raise CheckpointError(file, f"weights do not match {what} (differs in {', '.join(diff[:3])})")
    return tensors


def _dims(meta: dict) -> str:
    return f"{meta['layer']['channels']} filters and {meta['word_space']['dim']}-d words"


def write_checkpoint(directory: str | Path, meta: dict, tensors: dict[str, torch.Tensor] | None) -> Path:
    """Writes ``lavise.json`` (+ ``explainer.safetensors``) to ``directory`` atomically.

    The folder is written under a temporary name beside ``directory`` and renamed into
    place, so a reader never sees a half-written checkpoint. ``meta`` gets the current
    ``format``, ``version`` and, with ``tensors``, the ``weights`` record.

    Raises:
        OSError: The folder cannot be written (the message names ``directory``).
    """
    from safetensors.torch import save_file

    from lavise._cache import sha256_file

    directory = Path(directory)
    meta = {"format": FORMAT, "version": CHECKPOINT_VERSION, **meta}
    meta["format"], meta["version"] = FORMAT, CHECKPOINT_VERSION
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    except OSError as e:
        raise type(e)(e.errno, f"cannot write the checkpoint {directory}: {e.strerror}",
                      str(e.filename or directory)) from None
    try:
        meta["weights"] = None
        if tensors is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            meta["weights"] = {"file": WEIGHTS_FILE, "sha256": sha256_file(tmp / WEIGHTS_FILE),
                               "tensors": {k: list(v.shape) for k, v in state.items()}}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1))
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def upgrade_checkpoint(directory: str | Path) -> Path:
    """Rewrites a checkpoint of an older format version in the current one (atomically)."""
    meta = read_metadata(directory)
    tensors = read_weights(directory, meta) if meta["explainer"]["has_head"] else None
    meta = {k: v for k, v in meta.items() if k != "weights"}
    return write_checkpoint(directory, meta, tensors)
