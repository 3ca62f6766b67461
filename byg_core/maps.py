"""Where the base model's edit direction acts: a picture of the directional prior's target."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .adapters import Adapters
from .backbones.base import EditBackbone, TextCond
from .objective import noise
from .sample import as_batch, base_model, initial_noise


@torch.no_grad()
def edit_direction_map(
    backbone: EditBackbone,
    adapters: Adapters | None,
    pixels: torch.Tensor,
    p_src: TextCond,
    p_tgt: TextCond,
    t: float = 0.5,
    seed: int = 0,
    encoded: Callable[[], None] | None = None,
) -> torch.Tensor:
    """|v_tgt - v_src| of G_t2i at y_t = (1 - t) x + t eps per pixel, each map scaled to max 1 (paper 4.2); (B, 1, H, W).
    ``encoded()`` is called once the image is encoded, before the model runs (a host frees its VAE and text encoder)."""
    x = backbone.encode_pixels(pixels)
    if encoded is not None:
        encoded()
    if x.ndim != 4:
        raise ValueError(f"edit_direction_map takes images (B, 3, H, W), got latents {tuple(x.shape)}")
    t_vec = torch.full((x.shape[0],), float(t), device=x.device)
    y_t = noise(x, initial_noise(x.shape, seed, x.device, x.dtype), t_vec)
    p_src, p_tgt = as_batch(p_src, x.shape[0]), as_batch(p_tgt, x.shape[0])
    with base_model(adapters):
        delta = backbone.velocity(y_t, t_vec, p_tgt) - backbone.velocity(y_t, t_vec, p_src)
    magnitude = delta.float().norm(dim=1, keepdim=True)
    magnitude = magnitude / magnitude.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return F.interpolate(magnitude, size=tuple(pixels.shape[-2:]), mode="bilinear", align_corners=False).clamp(0, 1)
