"""Files written atomically; safetensors files read with errors that name the file.

Every file the pack writes goes through ``atomic_path`` (a temporary file in the same folder, then
``os.replace``): a crash or a Cancel mid-write leaves the previous file intact and no half file.
Nothing here unpickles: tensors come from safetensors, everything else from its JSON metadata.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file


@contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """A new hidden temporary name beside ``path``, moved onto ``path`` when the block succeeds and removed
    when it fails: a crash never leaves half a file under ``path``'s name (a kill mid-write leaves the hidden one,
    removed by the next write of ``path``). It ends in ``.partial``, so no listing of LoRAs or media takes it for
    one, unless ``keep_suffix`` (for writers that pick the format from the suffix: PIL, PyAV)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = new_file(path.parent, f".{path.name}.", f".partial{path.suffix}" if keep_suffix else ".partial")
    made = partial.stat()
    mode, began = stat.S_IMODE(made.st_mode), made.st_mtime
    try:
        yield partial
        os.chmod(partial, mode)  # a writer may have put its own file there (safetensors writes one of 0600)
        os.replace(partial, path)
    except (OSError, SafetensorError) as error:
        said = _write_error(error, path)
        if said is error:
            raise  # not a fault of the write (a safetensors error other than the disk's): as it came
        raise said from error
    finally:
        partial.unlink(missing_ok=True)
    _remove_killed_writes(path, began)


def _remove_killed_writes(path: Path, began: float) -> None:
    """The hidden half files of ``path`` that writes killed mid-way left, untouched for a minute before this write
    began (not another write of it under way): what the writers that fill the partial file leave (images, videos,
    text, a LoRA copied into loras/). safetensors' ``save_file`` writes a ``.tmpXXXXXX`` of its own beside it and
    renames that onto the partial: a checkpoint save killed mid-way leaves that one, which is not ours to remove."""
    for half in path.parent.glob(f".{glob.escape(path.name)}.{'[0-9a-f]' * 8}.partial*"):  # new_file's names for it
        if half.stat().st_mtime < began - 60:
            half.unlink(missing_ok=True)


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def _write_error(error: OSError | SafetensorError, path: Path) -> BaseException:
    """A failed write said with the file it was for and what was kept; a full disk in words (safetensors says it
    as "(os error 28)", older releases as ``IoError(Os { code: 28, ...``); any other safetensors error as it is."""
    code = error.errno if isinstance(error, OSError) else next(  # safetensors 0.8: "(os error 28)"; older "code: 28,"
        (c for c in FULL_DISK if f"(os error {c})" in str(error) or f"code: {c}," in str(error)), None)
    if code is None and not isinstance(error, OSError):
        return error
    reason = error.strerror if isinstance(error, OSError) and error.strerror else os.strerror(code) if code else error
    kept = "nothing was replaced, the earlier file is kept" if path.exists() else "nothing was written"
    if code in FULL_DISK:
        message = f"could not write {path}: the disk is full ({reason}); {kept}: free space on {path.parent}'s disk " \
                  "and run it again"
    else:
        message = f"could not write {path} ({reason}); {kept}"
    said = (type(OSError(code, "")) if code is not None else OSError)(message)  # FileNotFoundError for ENOENT, ...
    said.errno = code  # set apart from the message, which then reads without "[Errno N]"
    return said


def new_file(folder: Path, prefix: str, suffix: str) -> Path:
    """A new empty file of a random name in ``folder``, with the mode the user's umask gives new files (0644 under
    the usual 022), as the file written in place would have: ``tempfile.mkstemp``'s 0600, kept through the rename,
    had left every LoRA, image and report unreadable to any other user (a ComfyUI served by another account)."""
    for _ in range(100):
        name = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return name
    raise FileExistsError(f"no free temporary name in {folder} (prefix {prefix!r})")


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """A text file (a report, a JSON file) written all or nothing."""
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8")
    return Path(path)


def save_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write ``tensors`` with JSON-encoded ``metadata`` values to ``path``, all or nothing (the file and its
    folder fsynced: a checkpoint or LoRA written is on disk once this returns)."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as partial:
        save_file(contiguous, partial, metadata=meta)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_folder(Path(path).parent)  # the rename too: after a power cut the name points at this file
    return Path(path)


def _fsync_folder(folder: Path) -> None:
    """A folder's entries on disk (POSIX; Windows cannot open a folder to fsync it)."""
    if os.name != "posix":
        return
    try:  # best effort, after the file is in place: network shares (SMB, WSL's drives) refuse a folder's fsync
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
    except OSError:
        pass


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


def read_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """A safetensors file's metadata alone (no tensor is read); None where the file cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None


def meta_json(metadata: dict[str, str], key: str, path: str | os.PathLike) -> Any:
    """One JSON value from a file's metadata, with an error naming the file and key."""
    if key not in metadata:
        raise ValueError(f"{path} has no '{key}' metadata; it was not written by comfyui-byg")
    value = metadata[key]
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
