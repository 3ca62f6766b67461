"""Factories for tests: tiny random configs of the real architectures, nothing downloaded."""

import torch

from byg_core.backbones.flux import FluxBackbone
from byg_core.toy.codec import ToyCodec
from byg_core.toy.text import ToyTextEncoder

TINY_FLUX = dict(
    patch_size=1,
    in_channels=12,  # 3 toy latent channels x 2x2 packing
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=(2, 2, 4),
)


def make_flux_backbone(seed: int = 0, **kwargs) -> FluxBackbone:
    """A FLUX-architecture backbone with random weights, the toy text encoder and codec."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**TINY_FLUX)
    return FluxBackbone(transformer, ToyTextEncoder(strict=False), ToyCodec(), **kwargs)
