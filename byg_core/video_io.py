"""Video files in and out, over PyAV (the library ComfyUI's own video nodes use).

Frames: Wan2.2's VAE takes 4k+1 frames (frame 0 alone, then 4 frames per latent frame), so a
video becomes a clip by one rule, ``sample_frames``: every ``stride``-th frame from the first,
``frames`` of them when given (it must be 4k+1 and the video long enough), else the longest
4k+1 run the video holds, at most ``MAX_FRAMES`` (81, Wan2.2's usual clip). Folders of frames
follow the same rule (``data.load_media``), so a clip reads the same however it is stored.

Size: ``size=(H, W)`` centre-crops every frame to that aspect, then resizes it, the rule
images follow (``data.image_tensor``). The paper trains video at 320x576 and edits at
480x832 (H x W); both divide by 32, so both Wan2.2 variants take them (T2V-A14B needs sides
divisible by 16, TI2V-5B by 32). Give a size of the source's aspect to crop nothing.

Writing: H.264 (libx264) in yuv420p, which every player and browser plays and which ComfyUI's
own video saving writes; MPEG-4 part 2 where a PyAV build has no libx264 (an LGPL-only
ffmpeg); VP9 for ``.webm``, which does not allow H.264. yuv420p stores colour at half
resolution, so both sides must be even: an odd side is refused, never padded, so a clip keeps
its size. Files are written atomically (``safefiles.atomic_path``: a temporary name beside the target, then
``os.replace``); whether an existing file may be replaced is the caller's decision.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import image_tensor
from .safefiles import atomic_path

try:
    import av
except ImportError:  # only video files need PyAV: images, the toy world and the GPU machine's image run without it
    av = None

MAX_FRAMES = 81  # Wan2.2's usual clip length, 4 * 20 + 1
TEMPORAL_FACTOR = 4  # Wan VAEs: 4k+1 frames -> k+1 latent frames
DEFAULT_FPS = 16.0  # Wan2.2 T2V-A14B's rate; a folder of frames has none of its own
CRF = 17  # constant quality, lower is better; about visually lossless for H.264
WRITE_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v", ".webm")
# encoders in order of preference, per container
ENCODERS = {".webm": ("libvpx-vp9",)}
DEFAULT_ENCODERS = ("libx264", "mpeg4")
MPEG4_BITS_PER_PIXEL = 1.0  # mpeg4 has no constant-quality mode in PyAV's options: a generous bit rate


# ---------------------------------------------------------------------------------------
# The frame rule
# ---------------------------------------------------------------------------------------


def check_frame_count(frames: int, name: str = "frames") -> None:
    """Refuse a frame count Wan cannot take, naming the nearest counts it can."""
    if frames >= 1 and (frames - 1) % TEMPORAL_FACTOR == 0:
        return
    below = (frames - 1) // TEMPORAL_FACTOR * TEMPORAL_FACTOR + 1
    nearest = [n for n in (below, below + TEMPORAL_FACTOR) if n >= 1] or [1]
    raise ValueError(f"{name}={frames} is not 4k+1 (Wan's frame rule): use {' or '.join(map(str, nearest))}")


def longest_frame_count(available: int) -> int:
    """The largest 4k+1 not above ``available`` (>= 1)."""
    return (available - 1) // TEMPORAL_FACTOR * TEMPORAL_FACTOR + 1


def _check_rule(frames: int | None, stride: int) -> None:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a whole number >= 1, got {stride!r}")
    if frames is not None:
        check_frame_count(frames)


def sample_frames(
    total: int, frames: int | None = None, stride: int = 1, max_frames: int = MAX_FRAMES, source: object = "video"
) -> list[int]:
    """Indices of the frames a clip takes from a video of ``total`` frames (``source`` names it in errors).

    Every ``stride``-th frame from the first; ``frames`` of them (4k+1), or with ``frames=None``
    the longest 4k+1 run available, at most ``max_frames``.
    """
    _check_rule(frames, stride)
    if total < 1:
        raise ValueError(f"{source} holds no frames")
    available = (total - 1) // stride + 1
    if frames is None:
        frames = longest_frame_count(min(available, max_frames))
    elif frames > available:
        raise ValueError(
            f"{source} has {total} frames at stride {stride}; "
            f"use frames={longest_frame_count(available)} or a longer video"
        )
    return list(range(0, frames * stride, stride))


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def read_video(
    path: str | Path,
    frames: int | None = None,
    stride: int = 1,
    size: tuple[int, int] | None = None,
    max_frames: int = MAX_FRAMES,
) -> tuple[torch.Tensor, float]:
    """A clip by ``sample_frames``' rule: (3, F, H, W) float in [0, 1], and its frame rate.

    The rate is the file's divided by ``stride``, so the clip plays at the source's speed.
    Frames are turned upright by the file's display rotation (a phone's portrait clip), as players
    and ComfyUI's LoadVideo show them. ``size=(H, W)`` centre-crops and resizes every frame as images
    are, each as it is decoded, so a long 4K clip is never held at full size.
    """
    path = Path(path)
    _check_rule(frames, stride)
    wanted = frames if frames is not None else max_frames
    kept, total, fps = _decode(path, limit=(wanted - 1) * stride + 1, stride=stride, size=size)
    index = sample_frames(total, frames, stride, max_frames, path)
    return torch.stack([kept[i // stride] for i in index], dim=1), fps / stride


def pyav():
    """PyAV, or an error that says how to get it (a declared dependency, which ComfyUI installs too)."""
    if av is None:
        raise ImportError("reading or writing video files needs PyAV, which is not installed here: pip install av")
    return av


def frame_count(path: str | Path, limit: int) -> int:
    """The frames a video file holds, counted from its packets up to ``limit`` (nothing is decoded)."""
    with pyav().open(str(path)) as container:
        total = 0
        for packet in container.demux(container.streams.video[0]):
            # the demuxer ends with an empty packet; a trimmed .mp4/.mov's edit list marks the frames cut off discard
            total += packet.size > 0 and not packet.is_discard
            if total >= limit:
                break
    return total


def has_audio(path: str | Path) -> bool:
    """Whether a video file holds a sound stream (an edit does not carry it over)."""
    with pyav().open(str(path)) as container:
        return bool(container.streams.audio)


def upright(frame) -> Image.Image:
    """A decoded frame as a player shows it: turned by its display rotation (degrees counter-clockwise)."""
    image = frame.to_image()
    return image.rotate(frame.rotation, expand=True) if frame.rotation % 360 else image


def _decode(path: Path, limit: int, stride: int, size: tuple[int, int] | None) -> tuple[list[torch.Tensor], int, float]:
    """Every ``stride``-th of the first ``limit`` frames as (3, H, W) pixels fitted to ``size``, how many frames
    were decoded, and the file's rate."""
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    pyav()  # said as itself, not as a broken file below
    kept, total = [], 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("it holds no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if total % stride == 0:
                    kept.append(image_tensor(upright(frame), size))
                    if kept[-1].shape != kept[0].shape:
                        raise _SizeChange(f"frame {total} is {kept[-1].shape[2]}x{kept[-1].shape[1]} where frame 0 "
                                          f"is {kept[0].shape[2]}x{kept[0].shape[1]} (width x height); give a size "
                                          "(resolution) to fit every frame to, or re-encode it at one size")
                total += 1
                if total == limit:  # decode no further than the clip needs
                    break
            rate = stream.average_rate or stream.guessed_rate
    except _SizeChange as error:
        raise ValueError(f"{path}: {error}") from None
    except (av.FFmpegError, ValueError) as error:  # a broken file (not, say, a MemoryError: that is not the file's)
        reason = getattr(error, "strerror", None) or error  # FFmpeg's errors repeat the path
        raise ValueError(f"cannot decode {path}: {reason}; use a complete copy or re-encode it") from error
    if total == 0:
        raise ValueError(f"cannot decode {path}: it holds no video frame")
    return kept, total, float(rate) if rate else DEFAULT_FPS


class _SizeChange(Exception):
    """The frames of one file change size (said with the file's name, not as a broken file)."""


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def encoder_for(path: Path) -> str:
    """The first encoder PyAV's ffmpeg has for the file's container (H.264, else MPEG-4; VP9 for WebM)."""
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(f"cannot write video {path}: give a name ending in {', '.join(WRITE_SUFFIXES)}")
    choices = ENCODERS.get(suffix, DEFAULT_ENCODERS)
    for name in choices:
        if name in pyav().codecs_available:
            return name
    raise ValueError(f"cannot write video {path}: this PyAV build has none of the encoders {', '.join(choices)}")


def write_video(path: str | Path, video: torch.Tensor, fps: float = DEFAULT_FPS, crf: int = CRF) -> Path:
    """Write (3, F, H, W) in [0, 1] as a yuv420p video file, atomically; ``crf``: quality, lower is better."""
    path = Path(path)
    codec = encoder_for(path)
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"cannot write video {path}: expected (3, F, H, W) pixels, got {tuple(video.shape)}")
    _, _, height, width = video.shape
    if height % 2 or width % 2:
        raise ValueError(
            f"cannot write video {path}: {height}x{width} has an odd side and yuv420p takes even sizes; "
            f"resize or crop to {height // 2 * 2}x{width // 2 * 2}"
        )
    rate = Fraction(fps).limit_denominator(1001)  # 29.97 stays 30000/1001
    frames = (video.detach().clamp(0, 1).permute(1, 2, 3, 0).cpu().numpy() * 255).round().astype(np.uint8)
    with atomic_path(path, keep_suffix=True) as partial, av.open(str(partial), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        _tag_colours(stream.codec_context)
        _set_quality(stream, codec, crf, width * height * float(rate))
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode(None))  # flush the encoder's delayed frames
    return path


def _tag_colours(context) -> None:
    """Say how the pixels were made YUV (swscale's default: BT.601 matrix, limited range) so that players and
    readers that assume BT.709 for an untagged file (most, for HD) convert them back with the same matrix."""
    context.colorspace, context.color_range = 6, 1  # AVCOL_SPC_SMPTE170M (BT.601), AVCOL_RANGE_MPEG
    context.color_primaries, context.color_trc = 1, 1  # BT.709 primaries and transfer: sRGB's


def _set_quality(stream, codec: str, crf: int, pixels_per_second: float) -> None:
    if codec == "mpeg4":
        stream.bit_rate = max(int(MPEG4_BITS_PER_PIXEL * pixels_per_second), 1_000_000)
    else:
        stream.options = {"crf": str(crf)}


def save_pixels(pixels: torch.Tensor, path: str | Path, fps: float | None = None) -> Path:
    """(1, 3, H, W) in [0, 1] -> PNG; a video (1, 3, F, H, W) -> a video file when ``path`` names one
    (.mp4 .mov .mkv .m4v .webm, at ``fps``, default ``video_io.DEFAULT_FPS``), else a folder of PNG frames.
    Every file is written atomically."""
    path = Path(path)
    if pixels.ndim == 5 and path.suffix.lower() in WRITE_SUFFIXES:
        return write_video(path, pixels[0], fps or DEFAULT_FPS)
    if pixels.ndim == 5:
        count = pixels.shape[2]
        for i, frame in enumerate(pixels.unbind(2)):
            save_pixels(frame, path / f"{i:05d}.png")
        for stale in path.glob("[0-9][0-9][0-9][0-9][0-9].png"):  # an overwritten longer clip's frames
            if int(stale.stem) >= count:
                stale.unlink()
        return path
    array = (pixels[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    with atomic_path(path, keep_suffix=True) as partial:
        Image.fromarray(array).save(partial)
    return path
