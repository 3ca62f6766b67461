"""The toy shapes world with motion, and a tiny Wan2.2 backbone to edit it with.

A toy video is one scene of the shapes world (``world.py``) whose shape moves linearly
across ``F = 4k + 1`` frames (5 frames at 16 x 16 px by default), as Wan takes them. An
edit is an image edit of the world applied to every frame (colour or shape changes, the
motion stays), so the true edited video is known and ``evaluate_video_edit`` scores an
editor per frame with ``metrics.py`` plus a motion term (the shape's centroid trajectory
against the true one).

``build_toy_wan_backbone`` gives a tiny random-init ``WanTransformer3DModel`` (one, or two
experts for T2V-A14B) with the toy text encoder and ``ToyVideoCodec``, a lossless codec with
the layout of Wan's causal VAE: frame 0 alone makes latent frame 0, every 4 frames after
it make one latent frame (``temporal_factor = 4``), so the backbone's pixel check refuses
frame counts Wan cannot take, exactly as it does for the real VAE. There is no pretrained
toy video base: a random base proves the plumbing (source tokens, expert routing, gradient
flow, LoRA file formats, the CLI), not editing quality.

    python -m byg_core.toy.video --out data/toy_video --n 16          # writes a video dataset (frame folders)
    python -m byg_core.toy.video --out data/toy_video --n 16 --mp4    # the same as .mp4 files
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Collection, Sequence

import torch

from ..backbones.wan import WAN22_CONFIGS, WanBackbone
from .metrics import PRESERVE_CENTROID_PX, evaluate_edit, mask_centroid, read_scene
from .text import ToyTextEncoder
from .world import (
    DEFAULT_RESOLUTION,
    FAMILIES,
    MARGIN,
    UNSEEN_COMBOS,
    EditTuple,
    Scene,
    check_training_seed,
    render,
    sample_tuples,
    shape_mask,
)

DEFAULT_FRAMES = 5  # the smallest Wan frame count with motion: 4k + 1, k = 1
TEMPORAL_FACTOR = 4  # Wan VAEs (2.1 and 2.2): frames 4k + 1 -> k + 1 latent frames

Velocity = tuple[float, float]  # (dx, dy) per frame, fractions of the image side


# ---------------------------------------------------------------------------------------
# Videos and edit tuples
# ---------------------------------------------------------------------------------------


def scene_at(scene: Scene, velocity: Velocity, frame: int) -> Scene:
    """The scene at ``frame``: the shape moved by ``frame * velocity`` (validated in-bounds)."""
    return replace(scene, cx=scene.cx + velocity[0] * frame, cy=scene.cy + velocity[1] * frame)


def render_video(
    scene: Scene, velocity: Velocity, frames: int = DEFAULT_FRAMES, size: int = DEFAULT_RESOLUTION
) -> torch.Tensor:
    """Exact render of a moving shape: float32 (3, frames, size, size) in [0, 1]."""
    return torch.stack([render(scene_at(scene, velocity, f), size) for f in range(frames)], dim=1)


@dataclass(frozen=True)
class VideoEditTuple:
    """An image edit tuple of the world whose scenes move with ``velocity`` over ``frames``."""

    edit: EditTuple  # captions, instructions and the frame-0 source and target scenes
    velocity: Velocity
    frames: int = DEFAULT_FRAMES

    def frame_tuple(self, frame: int) -> EditTuple:
        """The image tuple of one frame: both scenes moved, the text unchanged."""
        return replace(
            self.edit,
            source=scene_at(self.edit.source, self.velocity, frame),
            target=scene_at(self.edit.target, self.velocity, frame),
        )

    def source_video(self, size: int = DEFAULT_RESOLUTION) -> torch.Tensor:
        return render_video(self.edit.source, self.velocity, self.frames, size)

    def target_video(self, size: int = DEFAULT_RESOLUTION) -> torch.Tensor:
        """The true edited video: for evaluation only, never for ByG training."""
        return render_video(self.edit.target, self.velocity, self.frames, size)

    def record(self) -> dict[str, str]:
        return self.edit.record()


def _motion(scene: Scene, frames: int, rng: random.Random) -> Velocity:
    """A velocity that carries the shape most of the way toward the opposite corner.

    The end position stays MARGIN away from the edges, as sampled scenes do, so every frame
    keeps a pure background border (the metrics read the background there).
    """
    if frames < 2:
        return (0.0, 0.0)
    low, high = MARGIN + scene.size / 2, 1 - MARGIN - scene.size / 2
    step = []
    for start in (scene.cx, scene.cy):
        corner = high if start < 0.5 else low
        step.append(rng.uniform(0.5, 1.0) * (corner - start) / (frames - 1))
    return (step[0], step[1])


def sample_video_tuples(
    n: int,
    seed: int,
    frames: int = DEFAULT_FRAMES,
    families: Sequence[str] = tuple(FAMILIES),
    exclude_combos: Collection[tuple[str, str]] = UNSEEN_COMBOS,
) -> list[VideoEditTuple]:
    """Random video edit tuples (``world.sample_tuples`` plus motion), deterministic from ``seed``."""
    rng = random.Random(seed * 7919 + 1)
    tuples = sample_tuples(n, seed, families, exclude_combos)
    return [VideoEditTuple(t, _motion(t.source, frames, rng), frames) for t in tuples]


def write_video_dataset(
    root: str | Path, n: int, seed: int = 0, frames: int = DEFAULT_FRAMES, size: int = DEFAULT_RESOLUTION,
    mp4: bool = False, overwrite: bool = False, instead: str = "",
) -> list[VideoEditTuple]:
    """A dataset folder: one folder of PNG frames (``mp4``: one .mp4 file) per video and ``edits.jsonl`` with
    ``video`` fields; a folder holding other files is refused unless ``overwrite``, one holding this same
    dataset is left as it is, a stopped write leaves no half dataset (``data.writing_dataset``).

    Returns the tuples (they hold the true edits, which the dataset itself never shows).
    """
    from ..data import writing_dataset
    from ..video_io import save_pixels

    check_training_seed(seed, "seed")
    root = Path(root)
    tuples = sample_video_tuples(n, seed, frames)
    names = [f"{i:05d}.mp4" if mp4 else f"{i:05d}" for i in range(len(tuples))]
    with writing_dataset(root, "video", names, [tup.record() for tup in tuples], overwrite, instead) as folder:
        if folder is not None:
            for name, tup in zip(names, tuples):
                save_pixels(tup.source_video(size).unsqueeze(0), folder / name)
    return tuples


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------

_FRAME_METRICS = ("edit_success", "preservation", "mask_iou", "pixel_error", "source_distance")


def centroid_error(edited_frame: torch.Tensor, target: Scene) -> float:
    """Pixels between the read shape's centroid and the true one (the image side if no shape reads)."""
    side = edited_frame.shape[-1]
    reading = read_scene(edited_frame)
    if reading.centroid is None:
        return float(side)
    (x, y), (tx, ty) = reading.centroid, mask_centroid(shape_mask(target, side))
    return ((x - tx) ** 2 + (y - ty) ** 2) ** 0.5


def evaluate_video_edit(source_video: torch.Tensor, edited_video: torch.Tensor, tup: VideoEditTuple) -> dict:
    """Score an edited (3, F, N, N) video against the true edited video.

    Per-frame ``metrics.evaluate_edit`` terms are averaged over frames (``edit_success`` is
    the fraction of frames where the edit reads); ``trajectory_error`` is the mean centroid
    distance in pixels to the true moving shape and ``motion_preservation`` is 1 when every
    frame's centroid is within ``PRESERVE_CENTROID_PX`` of it.
    """
    if edited_video.ndim != 4 or edited_video.shape[1] != tup.frames:
        raise ValueError(f"expected a (3, {tup.frames}, N, N) video, got {tuple(edited_video.shape)}")
    rows = [evaluate_edit(source_video[:, f], edited_video[:, f], tup.frame_tuple(f)) for f in range(tup.frames)]
    errors = [centroid_error(edited_video[:, f], tup.frame_tuple(f).target) for f in range(tup.frames)]
    return {
        "family": tup.edit.family,
        "unseen": tup.edit.unseen,
        **{k: sum(row[k] for row in rows) / len(rows) for k in _FRAME_METRICS},
        "trajectory_error": sum(errors) / len(errors),
        "motion_preservation": float(max(errors) <= PRESERVE_CENTROID_PX),
    }


# ---------------------------------------------------------------------------------------
# The codec and the tiny Wan backbone
# ---------------------------------------------------------------------------------------


class ToyVideoCodec:
    """Lossless ``LatentCodec`` with the layout of Wan's causal VAE.

    Pixels (B, 3, 4k+1, H, W) in [0, 1] -> latents (B, 3 * 4 * s^2, k + 1, H / s, W / s) in
    [-1, 1]: latent frame 0 holds frame 0 (four copies, so every latent frame has the same
    channels), latent frame j > 0 holds frames 4j-3 .. 4j stacked in channels, and each s x s
    pixel block is folded into channels (``s = spatial_factor``). An image (B, 3, H, W) is one frame, its latents
    (B, C, h, w) without a frame axis, as Wan's VAE codecs give them.
    """

    temporal_factor = TEMPORAL_FACTOR

    def __init__(self, spatial_factor: int = 1) -> None:
        self.spatial_factor = spatial_factor
        self.latent_channels = 3 * TEMPORAL_FACTOR * spatial_factor**2

    def _check(self, pixels: torch.Tensor) -> None:
        frames, height, width = pixels.shape[2:]
        s = self.spatial_factor
        if (frames - 1) % TEMPORAL_FACTOR or height % s or width % s:
            raise ValueError(
                f"ToyVideoCodec takes 4k+1 frames and sizes divisible by {s}, got {frames} frames of {height}x{width}"
            )

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.ndim == 4:
            return self.encode(pixels.unsqueeze(2)).squeeze(2)
        if pixels.ndim != 5 or pixels.shape[1] != 3:
            raise ValueError(f"ToyVideoCodec pixels must be (B, 3, F, H, W) or (B, 3, H, W), got {tuple(pixels.shape)}")
        self._check(pixels)
        x = pixels * 2 - 1
        first = x[:, :, :1, None].expand(-1, -1, -1, TEMPORAL_FACTOR, -1, -1)
        rest = x[:, :, 1:].unflatten(2, (-1, TEMPORAL_FACTOR))
        groups = torch.cat([first, rest], dim=2)  # (B, 3, k + 1, 4, H, W)
        latents = groups.transpose(2, 3).flatten(1, 2)  # (B, 12, k + 1, H, W)
        s = self.spatial_factor
        blocks = latents.unflatten(3, (-1, s)).unflatten(5, (-1, s))  # (B, 12, T, h, s, w, s)
        return blocks.permute(0, 1, 4, 6, 2, 3, 5).flatten(1, 3).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim == 4 and latents.shape[1] == self.latent_channels:
            return self.decode(latents.unsqueeze(2)).squeeze(2)
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"ToyVideoCodec latents must be (B, {self.latent_channels}, T, h, w) or (B, {self.latent_channels}, "
                f"h, w), got {tuple(latents.shape)}"
            )
        s = self.spatial_factor
        blocks = latents.unflatten(1, (-1, s, s))  # (B, 12, s, s, T, h, w)
        x = blocks.permute(0, 1, 4, 5, 2, 6, 3).flatten(5, 6).flatten(3, 4)  # (B, 12, T, H, W)
        groups = x.unflatten(1, (3, TEMPORAL_FACTOR)).transpose(2, 3)  # (B, 3, T, 4, H, W)
        first = groups[:, :, :1].mean(3)  # the four copies of frame 0
        video = torch.cat([first, groups[:, :, 1:].flatten(2, 3)], dim=2)
        return (video + 1) / 2


# toy sizes: head dim 24 gives RoPE 8 channels per axis (t, h, w); text_dim = ToyTextEncoder dim
TOY_WAN_TRANSFORMER = {
    "num_attention_heads": 2,
    "attention_head_dim": 24,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 96,
    "num_layers": 2,
    "rope_max_seq_len": 64,
}
# TI2V-5B's VAE is 16x spatially and has 48 channels, A14B's 8x with 16: the toy keeps the
# ordering (5B: s = 2, 48 channels like the real one; A14B: s = 1, 12 channels)
TOY_SPATIAL_FACTOR = {"ti2v-5b": 2, "t2v-a14b": 1}
TOY_TEXT = {"dim": 32, "pooled_dim": 32, "max_length": 16, "seed": 0}


def toy_wan_config(variant: str, channels: int) -> dict:
    """``WanTransformer3DModel`` kwargs: the variant's layout at toy size, ``channels`` latent channels."""
    return {**WAN22_CONFIGS[variant], **TOY_WAN_TRANSFORMER, "in_channels": channels, "out_channels": channels}


def _random_transformer(config: dict, seed: int) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanTransformer3DModel(**config)


def build_toy_wan_backbone(variant: str = "ti2v-5b", seed: int = 0, positions: str = "same") -> WanBackbone:
    """A tiny random-init Wan2.2 backbone of ``variant`` for toy videos (two experts for A14B).

    Deterministic from ``seed`` (the low-noise expert from ``seed + 1``). Random weights: it
    proves the video path, it does not generate the toy world.
    """
    if variant not in TOY_SPATIAL_FACTOR:
        raise ValueError(f"variant must be one of {sorted(TOY_SPATIAL_FACTOR)}, got {variant!r}")
    codec = ToyVideoCodec(TOY_SPATIAL_FACTOR[variant])
    config = toy_wan_config(variant, codec.latent_channels)
    experts = {"transformer": _random_transformer(config, seed)}
    if variant == "t2v-a14b":
        experts["transformer_2"] = _random_transformer(config, seed + 1)
    return WanBackbone.from_variant(
        variant, **experts, codec=codec, text_encoder=ToyTextEncoder(**TOY_TEXT), positions=positions,
        negative_prompt="",  # the toy vocabulary reads no Chinese: it guides against the empty prompt
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m byg_core.toy.video", description="write a toy video dataset")
    parser.add_argument("--out", required=True, help="dataset folder to write (frames + edits.jsonl)")
    parser.add_argument("--n", type=int, default=16, help="number of videos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="4k+1 frames (Wan's rule)")
    parser.add_argument("--size", type=int, default=DEFAULT_RESOLUTION, help="frame side in pixels")
    parser.add_argument("--mp4", action="store_true", help="write each video as an .mp4 file, not a folder of frames")
    parser.add_argument("--overwrite", action="store_true", help="write into an --out folder that holds other files")
    args = parser.parse_args(argv)
    try:
        write_video_dataset(args.out, args.n, args.seed, args.frames, args.size, args.mp4, args.overwrite,
                            "Pick another --out, or pass --overwrite to write into it")
    except FileExistsError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{args.n} videos of {args.frames} frames at {args.size}x{args.size}: {Path(args.out) / 'edits.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
