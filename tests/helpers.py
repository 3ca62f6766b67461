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


def diffusers_to_bfl(state: dict) -> dict:
    """FluxTransformer2DModel keys -> Black Forest Labs' (flux1-dev.safetensors) keys: how test files are written
    in the real layout. The inverse of byg_core.checkpoints.bfl_to_diffusers; diffusers' own converter must map
    its output back exactly (tests/test_checkpoints.py)."""
    from byg_core.checkpoints import _BFL_DOUBLE, _BFL_DOUBLE_QKV, _BFL_SINGLE, _BFL_SINGLE_LINEAR1, _BFL_TOP

    state = dict(state)
    out = {}

    def back(source: str, target: str) -> None:
        if target in state:
            out[source] = state.pop(target)
        for suffix in (".weight", ".bias"):
            if target + suffix in state:
                out[source + suffix] = state.pop(target + suffix)

    for source, target in _BFL_TOP.items():
        back(source, target)
    for name in ("weight", "bias"):
        scale, shift = state.pop(f"norm_out.linear.{name}").chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{name}"] = torch.cat([shift, scale], dim=0)
    for i in sorted({int(k.split(".")[1]) for k in list(state) if k.startswith("transformer_blocks.")}):
        prefix, target = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for source, name in _BFL_DOUBLE.items():
            back(prefix + source, target + name)
        for source, names in _BFL_DOUBLE_QKV.items():
            for suffix in (".weight", ".bias"):
                out[prefix + source + suffix] = torch.cat([state.pop(target + n + suffix) for n in names], dim=0)
    for i in sorted({int(k.split(".")[1]) for k in list(state) if k.startswith("single_transformer_blocks.")}):
        prefix, target = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for source, name in _BFL_SINGLE.items():
            back(prefix + source, target + name)
        for suffix in (".weight", ".bias"):
            out[prefix + "linear1" + suffix] = torch.cat([state.pop(target + n + suffix) for n in _BFL_SINGLE_LINEAR1])
    assert not state, sorted(state)[:5]
    return out


def scaled_fp8(state: dict) -> dict:
    """ComfyUI's *_fp8_scaled layout: 2-D weights as float8_e4m3fn with a per-tensor scale_weight, a marker."""
    out = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2:
            scale = value.abs().max().float().clamp_min(1e-12) / 448.0
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[key.removesuffix(".weight") + ".scale_weight"] = scale.reshape(1)
        else:
            out[key] = value
    return out
