"""Checkpoints in safetensors: weights, optimizer state and config, never pickled code.

A checkpoint is one ``.safetensors`` file. Its tensors are the leaves of the trainer's
nested state; the nesting itself (dicts, lists, numbers, with tensors replaced by their
key) is stored as JSON in the header's metadata, beside the resolved run config and a
format tag. Loading parses JSON and raw tensor bytes only, so it cannot run code.

Files are written atomically: into a temporary file in the same folder, flushed, fsynced,
then renamed over the target, so a crash leaves either the old or the new file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from forwardforward.errors import CheckpointError

FORMAT = "forwardforward-checkpoint-v1"


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and a rename."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON skeleton of ``obj`` with each tensor moved into ``tensors`` under its path."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        # NOTE: kept as pairs, since optimizer state is keyed by int and JSON keys are str
        return {"__dict__": [[k, _flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(path: str | Path, state: dict[str, Any], config: dict[str, Any]) -> None:
    """Write ``state`` (nested dicts, lists, numbers, tensors) and ``config`` atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "state", tensors)
    metadata = {
        "format": FORMAT,
        "config": json.dumps(config, sort_keys=True),
        "skeleton": json.dumps(skeleton),
    }
    atomic_write(path, st_save(tensors, metadata=metadata))


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint; returns ``(state, config)``.

    Raises:
        CheckpointError: the file is missing, truncated, not safetensors, or not ours.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        # one read, so the tensors and the header come from the same version of the file
        raw = path.read_bytes()
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a safetensors file ({err})"
        ) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has unknown format {metadata.get('format')!r}; "
            f"expected {FORMAT!r} (written by forwardforward train)"
        )
    try:
        state = _unflatten(json.loads(metadata["skeleton"]), tensors)
        config = json.loads(metadata["config"])
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} has a damaged header ({err})") from None
    return state, config
