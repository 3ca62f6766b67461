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
