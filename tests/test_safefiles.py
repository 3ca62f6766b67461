"""Files written atomically: all or nothing, and readable as any file the user writes is."""

import os
import stat

import pytest
import torch
from PIL import Image

from byg_core.safefiles import atomic_path, load_checked, save_atomic, write_text_atomic


@pytest.fixture
def umask():
    """Set the process's umask for one test, then put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_every_written_file_has_the_mode_the_users_umask_gives(tmp_path, umask, mask, expected):
    umask(mask)
    report = write_text_atomic(tmp_path / "results.json", "{}")
    lora = save_atomic({"w": torch.ones(2)}, tmp_path / "lora.safetensors", {"rank": 4})
    with atomic_path(tmp_path / "preview.png", keep_suffix=True) as partial:
        Image.new("RGB", (4, 4)).save(partial)
    # mkstemp had made each 0600 whatever the umask: a LoRA another account's ComfyUI could not read
    assert [_mode(p) for p in (report, lora, tmp_path / "preview.png")] == [expected] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors", "preview.png", "results.json"]
    assert torch.equal(load_checked(lora, "LoRA")[0]["w"], torch.ones(2))


def test_a_failed_write_leaves_the_previous_file_and_no_partial_one(tmp_path):
    path = write_text_atomic(tmp_path / "summary.md", "finished work")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(path) as partial:
            partial.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "finished work" and [p.name for p in tmp_path.iterdir()] == ["summary.md"]


@pytest.mark.parametrize("said", [  # safetensors 0.8's words, and older releases'
    "Error while serializing: I/O error: No space left on device (os error 28)",
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'])
def test_a_full_disk_names_the_file_and_says_the_earlier_one_is_kept(tmp_path, monkeypatch, said):
    """safetensors says a full disk as 'Error while serializing: IoError(Os { code: 28, kind: StorageFull ...' and
    an image writer as 'No space left on device': neither named the checkpoint or LoRA being written."""
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    path = save_atomic({"w": torch.ones(2)}, tmp_path / "checkpoint.safetensors", {"step": "2"})

    def full(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise SafetensorError(said)

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr("byg_core.safefiles.save_file", full)
    with pytest.raises(OSError, match=rf"could not write {path}: the disk is full \(No space left on device\); "
                                      rf"nothing was replaced, the earlier file is kept: free space on {tmp_path}'s "
                                      "disk") as error:
        save_atomic({"w": torch.zeros(2)}, path, {"step": "4"})
    assert error.value.errno == errno.ENOSPC and str(error.value).startswith("could not write")
    with pytest.raises(OSError, match=rf"could not write {tmp_path / 'x.png'}: the disk is full .*; nothing was "
                                      "written: free space"):
        with atomic_path(tmp_path / "x.png", keep_suffix=True):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert torch.equal(load_checked(path, "checkpoint")[0]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"]  # no partial file left
    with pytest.raises(SafetensorError, match="^other$") as other:  # not the disk's: as it came, its own cause
        with atomic_path(tmp_path / "y.safetensors"):
            raise SafetensorError("other")
    assert other.value.__cause__ is None


def test_a_save_removes_the_half_file_a_killed_save_of_it_left(tmp_path):
    """A save killed mid-write (power off, SIGKILL, an out-of-memory kill) leaves its hidden .partial file, for a
    real model's checkpoint gigabytes; the next save of that file removes it, and only its own."""
    path = tmp_path / "checkpoint.safetensors"
    stale = tmp_path / ".checkpoint.safetensors.0a1b2c3d.partial"
    others = [tmp_path / ".lora.safetensors.0a1b2c3d.partial", tmp_path / "notes.partial"]
    for half in (stale, *others):
        half.write_bytes(b"half")
        os.utime(half, (1e9, 1e9))  # written long before this save began
    save_atomic({"w": torch.ones(2)}, path, {})
    assert not stale.exists() and all(p.exists() for p in others)
    assert torch.equal(load_checked(path, "checkpoint")[0]["w"], torch.ones(2))


def test_a_saved_checkpoint_is_on_disk_data_and_name_before_save_atomic_returns(tmp_path, monkeypatch):
    """The file's bytes were fsynced but not the folder after the rename: after a power cut the name could still
    point at the earlier checkpoint (or at nothing, for a first save) though the run had gone on past it."""
    import os

    from byg_core import safefiles

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    path = tmp_path / "run" / "checkpoint.safetensors"
    safefiles.save_atomic({"w": torch.ones(2)}, path, {"byg.step": 3})
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].endswith(".partial") and events[1][1] == str(path) and events[2][1] == str(path.parent)
