"""Edit-tuple datasets (paper appendix D): a folder of images or videos plus ``edits.jsonl``.

One JSON object per line::

    {"image": "cat.png", "src_caption": "...", "instruction": "...",
     "tgt_caption": "...", "reverse_instruction": "..."}

(``video`` instead of ``image`` for a video file, .mp4 .mov .mkv .webm .avi .m4v .gif, read
with PyAV, or a folder of image frames). A video becomes a clip of 4k+1 frames by one rule
for files and folders alike (``video_io.sample_frames``: every ``stride``-th frame, the
longest 4k+1 run up to 81 unless ``frames`` is given). Every line is validated (a video
file must decode) and a bad one is reported with its file and line number. The reverse
instruction must be self-contained: "restore", "revert" and "undo" refer to an original the
model never sees. Text conditioning and source latents are computed once (``cache``), so
text encoders and the VAE need not stay loaded during training.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from .backbones.base import EditBackbone
from .objective import EditBatch
from .safefiles import write_text_atomic

TEXT_FIELDS = ("src_caption", "instruction", "tgt_caption", "reverse_instruction")
MEDIA_FIELDS = ("image", "video")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# containers read with PyAV (byg_core.video_io)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif")
# the words, not words that begin so ("undocked", "restorer", "reverted" counts)
NON_SELF_CONTAINED = re.compile(r"\b(restor(e|es|ed|ing)|revert(s|ed|ing)?|undo(es|ing|ne)?)\b", re.IGNORECASE)


@dataclass(frozen=True)
class EditRecord:
    """One tuple (x, p_src, p_tgt, c, c_bar) before encoding."""

    media: Path
    src_caption: str
    instruction: str
    tgt_caption: str
    reverse_instruction: str
    line: int = 0


class DatasetError(ValueError):
    """A dataset that cannot be used; ``rejected`` lists its bad lines ("file:line: reason"), if any."""

    def __init__(self, message: str, rejected: list[str]) -> None:
        super().__init__(message + ":" + "".join(f"\n{line}" for line in rejected) if rejected else message)
        self.rejected = rejected


@dataclass
class EditDataset:
    """Validated records of one ``edits.jsonl`` and the lines that were rejected, with reasons."""

    root: Path
    records: list[EditRecord]
    rejected: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @classmethod
    def from_folder(
        cls, root: str | Path, strict: bool = True, frames: int | None = None, stride: int = 1
    ) -> "EditDataset":
        """Read ``root/edits.jsonl``; ``strict`` raises on any bad line, else bad lines are skipped and listed.
        ``frames`` and ``stride``: the clip rule training will read videos by, so a clip too short is a bad line."""
        root = Path(root)
        index = root / "edits.jsonl"
        if not index.is_file():
            raise FileNotFoundError(f"{index} not found: a dataset is a folder with images and an edits.jsonl")
        records, rejected = [], []
        lines = read_jsonl_text(index)
        if lines.lstrip().startswith("["):  # one JSON error per physical line would say nothing of the cause
            raise DatasetError(f"{index} holds a JSON array: write one JSON object per line (JSON Lines), each "
                               "tuple's fields on its own line", [])
        # lines end at \n, \r\n or \r (a JSON string holds neither raw); not at U+2028 or U+0085, which
        # str.splitlines() also splits at and a JSON string may hold raw
        for number, text in enumerate(lines.replace("\r\n", "\n").replace("\r", "\n").split("\n"), start=1):
            if not text.strip():
                continue
            try:
                records.append(parse_record(json.loads(text), root, number, frames, stride))
            except (ValueError, json.JSONDecodeError) as error:
                rejected.append(f"{index}:{number}: {error}")
        if strict and rejected:
            raise DatasetError("bad lines in the dataset", rejected)
        if not records and not rejected:
            raise DatasetError(f"{index} has no edit tuple: write one JSON object per line", [])
        if not records:
            raise DatasetError(f"{index} has no usable edit tuple", rejected)
        return cls(root, records, rejected)


def data_fingerprint(records: Sequence[EditRecord]) -> str:
    """What a run trains on, as a hash: each tuple's prompts and its media (the file's name, size and modification
    time; a folder's, each frame's), so that a dataset edited since (a line, a picture) gives another."""
    import hashlib

    def stamp(path: Path) -> list:
        rows = []
        for p in frame_paths(path) if path.is_dir() else [path]:
            stat = p.stat() if p.is_file() else None
            rows.append([p.name] + ([stat.st_size, stat.st_mtime_ns] if stat else []))
        return rows

    rows = [[r.src_caption, r.instruction, r.tgt_caption, r.reverse_instruction, str(r.media), stamp(Path(r.media))]
            for r in records]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def read_jsonl_text(index: Path) -> str:
    """edits.jsonl as text: UTF-8, with or without the byte-order mark Windows editors write."""
    raw = index.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DatasetError(f"{index}:{line}: not UTF-8 text (byte {raw[error.start]:#x}); save the file as UTF-8", []) \
            from error


def parse_record(obj: dict, root: Path, line: int, frames: int | None = None, stride: int = 1) -> EditRecord:
    """Validate one line's object (fields, media file and, for a video, the clip ``frames`` and ``stride`` take from
    it; self-contained reverse instruction)."""
    if not isinstance(obj, dict):
        raise ValueError("a line must be a JSON object")
    media_keys = [k for k in MEDIA_FIELDS if k in obj]
    if len(media_keys) != 1:
        raise ValueError("give exactly one of 'image' or 'video'")
    for name in (media_keys[0], *TEXT_FIELDS):
        if not isinstance(obj.get(name), str) or not obj[name].strip():
            raise ValueError(f"missing or empty field '{name}'" + (" (a file name, as text)" if name in MEDIA_FIELDS else ""))
    if NON_SELF_CONTAINED.search(obj["reverse_instruction"]):
        raise ValueError(
            f"reverse_instruction {obj['reverse_instruction']!r} refers to an original state "
            "(restore/revert/undo); state the inverse edit itself, e.g. 'change the car colour to red'"
        )
    if obj["src_caption"].strip() == obj["tgt_caption"].strip():  # v_tgt - v_src = 0: no direction (section 4.2)
        raise ValueError("tgt_caption is src_caption: describe the edited image, so the base model's two captions "
                         "give the edit's direction")
    media = root / obj[media_keys[0]]
    if media_keys[0] == "video":
        check_video(media)
    elif is_video(media):  # it would be read as one, and refused later by tensor shapes
        raise ValueError(f"image {media} is a video (a folder of frames or a video file): give it as 'video', or "
                         "save the still as a PNG")
    check_media(media)
    if media_keys[0] == "video":
        check_clip(media, frames, stride)
    return EditRecord(media, *(obj[name].strip() for name in TEXT_FIELDS), line=line)


def check_media(path: Path) -> None:
    """An image must open, a video file must decode at least one frame, a folder must hold image frames."""
    if path.is_dir():
        frame_paths(path)  # one sequence of images, or refused
        return  # check_clip decodes the frames its clip takes
    if not path.is_file():
        if path.name != path.name.strip() and (path.parent / path.name.strip()).exists():  # a space no one sees
            raise ValueError(f"file {path.parent / repr(path.name)} does not exist; {path.name.strip()!r} exists: the "
                             "name has a space or tab at its start or end, remove it")
        hint = "; write paths with / (a \\ is part of the file name here)" if "\\" in str(path) and os.sep == "/" else ""
        other_case = _names_by_case(path.parent, path.parent.stat().st_mtime_ns).get(path.name.lower()) \
            if path.parent.is_dir() else None
        if other_case:  # a dataset made on Windows or macOS, whose file names ignore case
            hint = f"; {other_case} exists: file names are case-sensitive here"
        raise ValueError(f"file {path} does not exist{hint}")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        from .video_io import read_video  # video_io builds on this module

        read_video(path, frames=1)
        return
    check_image(path)


@functools.lru_cache(maxsize=8)
def _names_by_case(folder: Path, mtime_ns: int) -> dict[str, str]:
    """A folder's file names by their lower-case form, listed once per state of the folder (many lines may miss)."""
    return {p.name.lower(): p.name for p in folder.iterdir()}


def check_image(path: Path) -> None:
    """An image must decode whole: ``verify()`` checks a PNG's chunks but reads no JPEG data, so a half-copied photo
    is found only by decoding it."""
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # PIL raises many types for a broken file
        raise ValueError(f"cannot read image {path}: {error}") from error


MIN_CLIP_FRAMES = 5  # the shortest clip that is a video to Wan: one latent frame after the first


def check_clip(path: Path, frames: int | None, stride: int) -> None:
    """A video gives a clip of ``frames`` frames at ``stride`` (``video_io.sample_frames``); unless ``frames`` asks
    for fewer, of at least 5 frames: a stride past its length would leave one frame, a still, silently."""
    from .video_io import frame_count, sample_frames  # video_io builds on this module

    need = ((frames or MIN_CLIP_FRAMES) - 1) * stride + 1
    paths = frame_paths(path) if path.is_dir() else []
    total = len(paths) if path.is_dir() else frame_count(path, limit=need)
    taken = sample_frames(total, frames, stride, source=path)
    for index in taken if path.is_dir() else []:  # the frames training reads, decoded whole (not all of a long folder)
        check_image(paths[index])
    clip = len(taken)
    if frames is None and clip < MIN_CLIP_FRAMES:  # ``total`` is whole: fewer than ``need`` were there
        fix = "lower frame_stride, or " if stride > 1 else ""
        raise ValueError(f"{path} gives a clip of {clip} frame{'s' * (clip > 1)} ({total} frames at frame_stride "
                         f"{stride}); a video clip takes at least {MIN_CLIP_FRAMES} (4k+1): {fix}give a still as "
                         "'image'")


def check_video(path: Path) -> None:
    """A ``video`` is a video file or a folder of frames (``check_media`` then opens it)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise ValueError(
            f"video {path} is an image: give it as 'image', or give 'video' a video file or a folder of frames"
        )
    if path.is_file() and path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(
            f"video {path} is neither a video file ({' '.join(VIDEO_SUFFIXES)}) nor a folder of frames: "
            "convert it to one of these containers"
        )


def is_video(path: Path) -> bool:
    """A video source: a video file by its suffix, or a folder of frames."""
    return path.is_dir() or path.suffix.lower() in VIDEO_SUFFIXES


def frame_paths(folder: Path) -> list[Path]:
    """A folder's frames in name order, numbers by their value (ffmpeg's ``frame%d.png`` writes frame2 before
    frame10); hidden files (a write stopped half-way) are not frames. Its images must be one numbered sequence,
    one name pattern (a .png and a .jpg export side by side, or a thumbnail.png, would be cut into the clip); a
    folder of none is refused, saying what it holds instead."""
    shown = [p for p in folder.iterdir() if not p.name.startswith(".")]
    frames = sorted((p for p in shown if p.suffix.lower() in IMAGE_SUFFIXES),
                    key=lambda p: ([int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", p.name))],
                                   p.name))
    if not frames:
        others: dict[str, list[str]] = {}
        for path in sorted(shown):
            others.setdefault(path.suffix.lower() or "no suffix", []).append(path.name)
        held = "; ".join(f"{suffix}: {len(names)}, e.g. {names[0]}" for suffix, names in others.items())
        raise ValueError(f"video folder {folder} holds no image frames ({' '.join(IMAGE_SUFFIXES)}): " + (
            f"it holds {sum(map(len, others.values()))} other files ({held}); convert the frames to one of these"
            if others else "it is empty"))
    patterns: dict[str, list[Path]] = {}
    for path in frames:
        patterns.setdefault(re.sub(r"\d+", "#", path.name), []).append(path)
    if len(patterns) > 1:
        groups = "; ".join(f"{pattern}: {len(paths)} file{'s' * (len(paths) > 1)}"
                           + (f", e.g. {paths[0].name}" if "#" in pattern else "")
                           for pattern, paths in sorted(patterns.items(), key=lambda item: -len(item[1])))
        raise ValueError(f"video folder {folder} holds images of {len(patterns)} name patterns ({groups}): a frame "
                         "folder holds one numbered sequence; move the other images out")
    return frames


def load_image(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(3, H, W) in [0, 1]; resized (centre-cropped to the aspect first) when ``size`` is given."""
    with Image.open(path) as image:
        # upright as a viewer shows it: a phone photo stores its pixels sideways with an EXIF orientation tag
        return image_tensor(ImageOps.exif_transpose(image), size)


def image_tensor(image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A PIL image (a file's or a video frame's) as (3, H, W) in [0, 1], fitted to ``size`` if given."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit greyscale: convert("RGB") would clip it to white
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).clip(0, 255).round().astype(np.uint8))
    image = image.convert("RGB")
    if size is not None and image.size != (size[1], size[0]):
        image = _fit(image, size)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    height, width = size
    scale = max(width / image.width, height / image.height)
    resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def load_media(
    path: Path, size: tuple[int, int] | None = None, frames: int | None = None, stride: int = 1
) -> torch.Tensor:
    """An image (3, H, W), or a video file or folder of frames as a (3, F, H, W) clip.

    ``frames`` and ``stride`` pick a video's frames by ``video_io.sample_frames``' rule; images ignore them.
    """
    from .video_io import read_video, sample_frames  # video_io builds on this module

    if path.is_dir():
        paths = frame_paths(path)
        clip = [load_image(paths[i], size) for i in sample_frames(len(paths), frames, stride, source=path)]
        sizes = sorted({tuple(f.shape[1:]) for f in clip})
        if len(sizes) > 1:
            raise ValueError(f"frames of video {path} differ in size {sizes}; set a size to resize them alike "
                             "(byg edit's --size H W, a training TOML's resolution, BYGDataset's width and height)")
        return torch.stack(clip, dim=1)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return read_video(path, frames, stride, size)[0]
    return load_image(path, size)


@dataclass
class CachedEdits:
    """A dataset in model space: source latents and the prompts, whose encodings the backbone caches."""

    x: torch.Tensor  # (N, C, ...) source latents
    records: list[EditRecord]
    y: torch.Tensor | None = None  # (N, C, ...) true edited latents, for the supervised reference only

    def __len__(self) -> int:
        return len(self.records)

    def batch(self, backbone: EditBackbone, index: Sequence[int], uncond: bool = False) -> EditBatch:
        """The tuples ``index`` as a batch; ``uncond``: with the empty prompt's conditioning (a guided prior's)."""
        rows = [self.records[i] for i in index]
        return EditBatch(
            x=self.x[list(index)].to(backbone.device),
            p_src=backbone.encode_text([r.src_caption for r in rows]),
            p_tgt=backbone.encode_text([r.tgt_caption for r in rows]),
            c=backbone.encode_text([r.instruction for r in rows]),
            c_bar=backbone.encode_text([r.reverse_instruction for r in rows]),
            y=None if self.y is None else self.y[list(index)].to(backbone.device),
            uncond=backbone.encode_text([""] * len(rows)) if uncond else None,
        )


def _size_mismatch(a: tuple[EditRecord, torch.Size], b: tuple[EditRecord, torch.Size]) -> str:
    """Two sources of one batch-able dataset that differ: what each is, and the setting that makes them alike."""
    def describe(record, shape):
        clip = f"{shape[2]} frames of " if len(shape) == 5 else ""
        return f"{record.media} (edits.jsonl line {record.line}) is {clip}{shape[-1]}x{shape[-2]} px"

    (_, one), (_, other) = a, b
    if len(one) != len(other):
        fix = "a run trains on clips or on images, not both: give the stills a dataset of their own"
    elif len(one) == 5 and one[2] != other[2]:
        fix = "set frames (a 4k+1 count every clip has, e.g. frames = 9) so every clip gives as many"
    else:
        fix = "set a training resolution (resolution = [height, width]; the node's width and height) to resize all alike"
    return f"sources differ in size: {describe(*a)}, {describe(*b)}; {fix}"


def cache(
    dataset: EditDataset,
    backbone: EditBackbone,
    size: tuple[int, int] | None = None,
    frames: int | None = None,
    stride: int = 1,
) -> CachedEdits:
    """Encode every source once and every prompt once (then the text encoder can be released).

    ``frames`` and ``stride`` pick each video's clip (``video_io.sample_frames``); a video too short
    for ``frames`` is refused with its file and line.
    """
    latents = encode_sources(dataset, backbone, size, frames, stride)
    encode_prompts(dataset, backbone)
    return CachedEdits(latents, list(dataset.records))


def encode_sources(
    dataset: EditDataset,
    backbone: EditBackbone,
    size: tuple[int, int] | None = None,
    frames: int | None = None,
    stride: int = 1,
) -> torch.Tensor:
    """Every source's latents (N, ...) on the CPU, in the dataset's order; a file that cannot be read or encoded is
    named with its line."""
    latents, first = [], None
    for record in dataset.records:
        try:
            pixels = load_media(record.media, size, frames, stride).unsqueeze(0)
        except (ValueError, OSError) as error:  # a file changed or broken since it was checked
            raise ValueError(f"{record.media} (edits.jsonl line {record.line}): {error}") from error
        first = first or (record, pixels.shape)
        if pixels.shape != first[1]:  # found before the rest is encoded
            raise ValueError(_size_mismatch(first, (record, pixels.shape)))
        try:
            latents.append(backbone.encode_pixels(pixels).cpu())
        except ValueError as error:
            raise ValueError(f"{record.media} (edits.jsonl line {record.line}): {error}") from error
    return torch.cat(latents)


def encode_prompts(dataset: EditDataset, backbone: EditBackbone) -> None:
    """Every tuple's four prompts into the backbone's text cache (a disk cache's last shard written)."""
    for record in dataset.records:
        backbone.cache_text([record.src_caption, record.tgt_caption, record.instruction, record.reverse_instruction])
    # a guided prior's empty prompt (ObjectiveConfig.prior_guidance); the negative prompt a preview edit guides against
    backbone.cache_text(["", backbone.negative_prompt])
    backbone.flush_text_cache()  # a disk cache writes its last, partly filled shard


@contextmanager
def writing_dataset(root: Path, media: str, names: list[str], rows: list[dict], overwrite: bool = False,
                    instead: str = "") -> Iterator[Path | None]:
    """Where a dataset is written whose ``edits.jsonl`` lists the files ``names`` (under the ``media`` field,
    "image" or "video") with ``rows``' text fields: None when ``root`` already holds it (a repeated run: nothing
    to write). A new or empty ``root`` is written as a hidden folder beside it, moved onto
    it with ``edits.jsonl`` once every file is there, so a stopped write leaves no half dataset; a folder holding
    anything else is never written into (nothing the user made is lost) unless ``overwrite``, which writes into it
    with its old ``edits.jsonl`` removed first, and ``instead`` says what to do."""
    text = "".join(json.dumps({media: name, **{k: row[k] for k in TEXT_FIELDS}}) + "\n" for name, row in zip(names, rows))
    if (root / "edits.jsonl").is_file() and (root / "edits.jsonl").read_text(encoding="utf-8") == text:
        yield None
        return
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} is a file; a dataset is a folder. {instead or 'Write it to another path'}.")
    found = sorted(path.name for path in root.iterdir()) if root.is_dir() else []
    if found and not overwrite:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise FileExistsError(f"{root} already holds other files ({shown}); nothing was overwritten. "
                              f"{instead or 'Write the dataset to an empty or new folder'}.")
    folder = root if found else root.with_name(f".{root.name}.partial")
    if folder == root:  # an overwrite: until the new edits.jsonl, the folder is no dataset (not old text, new images)
        (root / "edits.jsonl").unlink(missing_ok=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)  # an earlier stopped write's
        folder.mkdir(parents=True)
    try:
        yield folder
        write_text_atomic(folder / "edits.jsonl", text)
        if folder != root:
            if root.is_dir():
                root.rmdir()  # empty; a folder cannot replace another on every system
            os.replace(folder, root)
    finally:
        if folder != root:
            shutil.rmtree(folder, ignore_errors=True)


def write_dataset(root: str | Path, rows: list[dict], images: list[torch.Tensor], overwrite: bool = False,
                  instead: str = "") -> Path:
    """Write a dataset folder (images as PNG + edits.jsonl); ``rows`` hold the text fields. A stopped write
    leaves no half dataset, a folder holding other files is refused unless ``overwrite`` (``writing_dataset``)."""
    from .video_io import save_pixels  # video_io builds on this module

    root = Path(root)
    names = [f"{i:05d}.png" for i in range(len(images))]
    with writing_dataset(root, "image", names, rows, overwrite, instead) as folder:
        if folder is not None:
            for name, pixels in zip(names, images):
                save_pixels(pixels.unsqueeze(0), folder / name)
    return root
