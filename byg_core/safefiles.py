"""Safetensors files written atomically and read with errors that name the file.

Nothing here unpickles: tensors come from safetensors, everything else from its JSON
metadata. A crash mid-write leaves the previous file intact (write to a temporary file in
the same folder, fsync, then ``os.replace``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file


def save_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` with JSON-encoded ``metadata`` values to ``path``, all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(contiguous, tmp, metadata=meta)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_checked(path: str | os.PathLike, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and raw metadata of a safetensors file; a missing or corrupt file says which and why."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{what} {path} is not a readable safetensors file ({error}); it may be truncated") from error
    return tensors, metadata


def meta_json(metadata: dict[str, str], key: str, path: str | os.PathLike) -> Any:
    """One JSON value from a file's metadata, with an error naming the file and key."""
    if key not in metadata:
        raise ValueError(f"{path} has no '{key}' metadata; it was not written by comfyui-byg")
    value = metadata[key]
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
