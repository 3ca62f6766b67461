"""BYGDataset: a folder of images (or frame folders) plus ``edits.jsonl``, validated."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from . import host
from . import inputs as I
from .values import DATASET, BygDataset


def read_dataset(folder: Path, strict: bool, size: tuple[int, int] | None, node: str, frames: int | None = None,
                 frame_stride: int = 1) -> BygDataset:
    """Validate the folder; the error says what to change (nothing usable, bad lines in strict mode)."""
    from byg_core.data import DatasetError, EditDataset

    layout = ("a folder holding images and an edits.jsonl with the fields image, src_caption, instruction, "
              "tgt_caption, reverse_instruction")
    try:
        return BygDataset(EditDataset.from_folder(folder, strict=strict, frames=frames, stride=frame_stride), size,
                          frames, frame_stride)
    except FileNotFoundError as error:
        raise ValueError(f"{node}: {error}\nPoint 'folder' at {layout}.") from error
    except DatasetError as error:
        fix = "Fix or remove the lines listed" if error.rejected else "Add edit tuples"
        raise ValueError(f"{node}: {error}\n{fix}, or point 'folder' at {layout}.") from error


def _unquoted(folder: str) -> str:
    """The widget's path without the spaces, newline or one pair of quotes a paste brings (Windows' "Copy as path")."""
    folder = folder.strip()
    return folder[1:-1].strip() if len(folder) >= 2 and folder[0] == folder[-1] and folder[0] in "\"'" else folder


def _resolve(folder: str) -> Path:
    path = Path(_unquoted(folder))
    return path if path.is_absolute() else host.input_dir() / path


def training_size(width: int, height: int) -> tuple[int, int] | None:
    if width == 0 and height == 0:
        return None
    if width == 0 or height == 0:
        raise ValueError(f"BYGDataset: set both width and height (or both to 0 to keep file sizes), got {width}x{height}")
    return (height, width)


class BYGDataset:
    DESCRIPTION = (
        "Reads an unpaired edit dataset: a folder of images plus edits.jsonl (image, src_caption, instruction, "
        "tgt_caption, reverse_instruction per line). Bad lines are rejected and reported."
    )
    CATEGORY = "ByG/data"
    RETURN_TYPES = (DATASET, "STRING")
    RETURN_NAMES = ("dataset", "report")
    OUTPUT_TOOLTIPS = ("The validated edit tuples.", "How many tuples were kept, and each rejected line with its reason.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": I.text("", "Dataset folder holding edits.jsonl; a relative path is read from ComfyUI's input folder."),
                "strict": I.flag(False, "On: any bad line stops the run. Off: bad lines are skipped and listed in the report."),
                "width": I.integer(0, 0, 8192, "Resize (centre-crop) every source to this width; 0 with height 0 keeps file sizes.", 8),
                "height": I.integer(0, 0, 8192, "Resize (centre-crop) every source to this height; 0 with width 0 keeps file sizes.", 8),
            },
            "optional": {
                "frames": I.integer(0, 0, 1001, "Videos: frames per clip, 4k+1 (Wan's rule: 5, 9, ..., 81); 0 takes "
                                    "the longest 4k+1 run up to 81. The paper trains at 320x576."),
                "frame_stride": I.integer(1, 1, 64, "Videos: take every n-th frame (2 halves the frame rate)."),
            },
        }

    @classmethod
    def IS_CHANGED(cls, folder, **_):
        """Re-read the dataset when its edits.jsonl or any file beside it (a frame folder's too) changes: ComfyUI
        otherwise keeps the node's output, and a picture added, fixed or replaced after a run skipped its line would
        go unseen. One stat per file."""
        root = _resolve(folder)
        if not root.is_dir():
            return ""
        stamps, entries = [], list(os.scandir(root))
        for entry in (*entries, *(e for d in entries if d.is_dir() for e in os.scandir(d.path))):
            stat = entry.stat()
            stamps.append((os.path.relpath(entry.path, root), stat.st_size, stat.st_mtime_ns))
        return hashlib.sha256(repr(sorted(stamps)).encode()).hexdigest()

    def load(self, folder, strict, width, height, frames=0, frame_stride=1):
        if not _unquoted(folder):
            raise ValueError("BYGDataset: set 'folder' to a dataset folder holding edits.jsonl")
        path = _resolve(folder)
        if frames:
            from byg_core.video_io import check_frame_count

            try:
                check_frame_count(frames)
            except ValueError as error:
                raise ValueError(f"BYGDataset: widget 'frames': {error} (0 takes the longest run)") from error
        data = read_dataset(path, strict, training_size(width, height), "BYGDataset", frames or None, frame_stride)
        if data.dataset.rejected:  # the shipped workflows leave 'report' unconnected: the server log says it too
            logging.getLogger("comfyui-byg").warning("BYGDataset %s: %d line(s) skipped (strict is off):\n%s", path,
                                                     len(data.dataset.rejected), "\n".join(data.dataset.rejected))
        return (data, data.report)
