"""Model weight files as users have them: what a file is, and its tensors in diffusers' layout.

Safetensors only (never unpickled), local files only. A single file may carry ComfyUI's
``model.diffusion_model.`` prefix, fp8 weights (``float8_e4m3fn``), or ComfyUI's *scaled* fp8
(a ``scaled_fp8`` marker and one ``<weight>.scale_weight`` per weight, dequantised here as
``weight * scale_weight``). ``identify`` names what a file holds from its keys and shapes, so a
loader can refuse a file of another model with a message that says what it is.

FLUX.1 single files use Black Forest Labs' key names (fused ``qkv``, fused single-block
``linear1``). diffusers' converter (``convert_flux_transformer_checkpoint_to_diffusers``) hard-codes
FLUX.1's width (``inner_dim = 3072``), so small test files cannot go through it; ``bfl_to_diffusers``
is the same mapping with the widths read from the tensors, checked against diffusers' converter at
full size in the tests.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

COMFY_PREFIX = "model.diffusion_model."
SCALE_SUFFIXES = (".scale_weight", ".scale_input")
SCALED_FP8_MARKER = "scaled_fp8"

# what each kind of file is called in messages, and where a ComfyUI user keeps it
KINDS = {
    "flux-bfl": "a FLUX.1 diffusion model",
    "flux-diffusers": "a FLUX.1 diffusion model (diffusers' keys)",
    "flux2": "a FLUX.2 diffusion model (this pack trains FLUX.1-dev)",
    "flux-vae": "the FLUX.1 VAE (ae.safetensors, for the vae folder)",
    "sd-vae": "a Stable Diffusion VAE (4 latent channels; FLUX.1's has 16)",
    "wan": "a Wan diffusion model",
    "wan-ti2v-5b": "the Wan2.2 TI2V-5B diffusion model (48 latent channels)",
    "wan-14b": "a Wan 14B text-to-video expert (Wan2.2 T2V-A14B high- or low-noise, 16 latent channels)",
    "wan-i2v": "a Wan image-to-video diffusion model (36 input channels; this pack trains the text-to-video models)",
    "wan-1.3b": "the Wan2.1 T2V-1.3B diffusion model (not a Wan2.2 model)",
    "wan2.1-vae": "the Wan2.1 VAE (wan_2.1_vae.safetensors: 16 channels, for T2V-A14B)",
    "wan2.2-vae": "the Wan2.2 VAE (wan2.2_vae.safetensors: 48 channels, for TI2V-5B)",
    "umt5": "the UMT5-XXL text encoder (umt5_xxl_*.safetensors, for Wan)",
    "sd-checkpoint": "a Stable Diffusion / SDXL checkpoint",
    "lora": "a LoRA (for the loras folder, not a base model)",
    "clip-l": "the CLIP-L text encoder (for the text_encoders folder)",
    "t5": "the T5-XXL text encoder (for the text_encoders folder)",
    "unknown": "no model this pack knows",
}


SAFETENSORS_SUFFIXES = (".safetensors", ".sft")  # .sft: BFL's names for FLUX.1's files (flux1-dev.sft, ae.sft)


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, ComfyUI's prefix removed and scaled fp8 dequantised; errors name the file."""
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise ValueError(f"{what} {path} is not a .safetensors file; only safetensors are read (nothing is unpickled)")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    refuse_shard(path, what)
    try:
        with safe_open(path, framework="pt") as handle:
            quantized = next((key for key in handle.keys() if key.endswith((".comfy_quant", ".weight_scale"))), None)
            # cloned: a tensor read from the file sits at an offset set by the header's length, which misaligns
            # it for vector kernels (their results then differ in the last bits from a fresh model's)
            state = {} if quantized else {key: handle.get_tensor(key).clone() for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{what} {path} is not a readable safetensors file ({error}); it may be truncated") from error
    if quantized is not None:  # codes of W / s beside their scales: read as weights they would be W / s, in silence
        raise ValueError(f"{what} {path} is in ComfyUI's newer quantized layout ({quantized}), which this pack does "
                         "not read: give its fp16, bf16 or fp8_scaled file")
    return dequantize_scaled_fp8(strip_prefix(state))


def refuse_shard(path: Path, what: str) -> None:
    """One shard of a sharded model (transformers' and diffusers' names, ``-00001-of-00003``) is part of the weights:
    read alone it fails on the first weight that sits in another shard."""
    shard = re.search(r"-\d{5}-of-(\d{5})$", path.stem)
    if shard and int(shard[1]) > 1:
        raise ValueError(f"{what} {path} is one of {int(shard[1])} shards of a model: give the folder that holds "
                         "them all with their index (a diffusers folder), or a single-file checkpoint (ComfyUI's)")


def header_state(path: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """A safetensors file's keys and shapes as meta tensors, no weight read (what ``identify`` reads), ComfyUI's
    prefix removed; None where the file cannot be read (its loader names it)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {key: torch.empty(handle.get_slice(key).get_shape(), device="meta") for key in handle.keys()}
    except (SafetensorError, OSError, ValueError):
        return None
    return strip_prefix(state)


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = COMFY_PREFIX) -> dict[str, torch.Tensor]:
    """Drop ComfyUI's checkpoint prefix when every model key carries it; from an all-in-one checkpoint (ComfyUI's
    checkpoints/flux1-dev-fp8.safetensors: model, VAE and text encoders) keep the FLUX.1 or Wan model alone."""
    if state and all(key.startswith(prefix) for key in state if key != SCALED_FP8_MARKER):
        return {key.removeprefix(prefix): value for key, value in state.items()}
    inner = {key.removeprefix(prefix): value for key, value in state.items()
             if key.startswith(prefix) or key == SCALED_FP8_MARKER}
    if inner and identify(inner).startswith(("flux", "wan")):
        return inner
    return state


def dequantize_scaled_fp8(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """ComfyUI's ``*_fp8_scaled`` layout -> plain weights: ``weight.float() * scale_weight`` in ``dtype``."""
    if SCALED_FP8_MARKER not in state and not any(key.endswith(".scale_weight") for key in state):
        return state
    plain = {}
    for key, value in state.items():
        if key == SCALED_FP8_MARKER or key.endswith(SCALE_SUFFIXES):
            continue
        scale = state.get(key.removesuffix(".weight") + ".scale_weight") if key.endswith(".weight") else None
        plain[key] = (value.float() * scale.float()).to(dtype) if scale is not None else value
    return plain


def identify(state: dict[str, torch.Tensor]) -> str:
    """What a state dict holds (a key of ``KINDS``), from its keys."""
    keys = set(state)

    def has(pattern: str) -> bool:
        return any(re.search(pattern, key) for key in keys)

    if has(r"lora_[AB]\.|lora_(up|down)\.|\.alpha$"):
        return "lora"
    if keys & {"single_stream_modulation.lin.weight", "single_stream_modulation.linear.weight"}:  # BFL's, diffusers'
        return "flux2"  # FLUX.2's blocks share modulation; its double blocks are named as FLUX.1's
    if "double_blocks.0.img_attn.qkv.weight" in keys:
        return "flux-bfl"
    if "transformer_blocks.0.attn.add_q_proj.weight" in keys and "single_transformer_blocks.0.proj_mlp.weight" in keys:
        return "flux-diffusers"
    if has(r"^(blocks\.0\.self_attn\.q\.weight|blocks\.0\.attn1\.to_q\.weight)$"):
        return _wan_kind(state)
    if has(r"^(model\.diffusion_model\.|first_stage_model\.|conditioner\.|cond_stage_model\.)"):
        return "sd-checkpoint"
    if "decoder.middle.0.residual.0.gamma" in keys:  # Wan's causal video VAE, original key names
        # the layout decides, not the width (any size is named): Wan2.2's encoder has residual down blocks
        return "wan2.2-vae" if has(r"^encoder\.downsamples\.0\.downsamples\.") else "wan2.1-vae"
    if "encoder.conv_in.weight" in keys and "decoder.conv_out.weight" in keys:
        if "quant_conv.weight" in keys and state["quant_conv.weight"].ndim == 5:  # Wan's VAE in diffusers' keys
            return "wan2.2-vae" if "encoder.down_blocks.0.resnets.0.conv1.weight" in keys else "wan2.1-vae"
        conv_out = state.get("encoder.conv_out.weight")
        return "flux-vae" if conv_out is not None and conv_out.shape[0] == 32 else "sd-vae"
    if has(r"^text_model\.encoder\.layers\.0\."):
        return "clip-l"
    if has(r"^encoder\.block\.0\.layer\.0\.SelfAttention\.q\.weight$"):
        # UMT5 gives every block its own relative position bias; T5 only the first
        return "umt5" if "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in keys else "t5"
    return "unknown"


def refuse_unless(kind: str, expected: str, path: str | os.PathLike, fix: str) -> None:
    """Raise naming the file, what it is, and what to give instead, unless it is ``expected``."""
    if kind != expected:
        raise ValueError(f"{path} is {KINDS[kind]}, not {KINDS[expected]}; {fix}")


# --- FLUX.1: Black Forest Labs' keys -> diffusers' FluxTransformer2DModel ---------------------------------------
_BFL_TOP = {  # whole tensors, renamed
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
}
_BFL_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
}
_BFL_DOUBLE_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                   "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_BFL_SINGLE = {
    "modulation.lin": "norm.linear",
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
    "linear2": "proj_out",
}
_BFL_SINGLE_LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


def _swap_scale_shift(weight: torch.Tensor) -> torch.Tensor:
    """BFL's final AdaLN projection outputs (shift, scale); diffusers' AdaLayerNormContinuous (scale, shift)."""
    shift, scale = weight.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def bfl_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FLUX.1 BFL keys -> ``FluxTransformer2DModel`` keys, at any width; every key must map. Empties ``state`` as it
    goes, so each fused qkv / linear1 is freed once split (kept, the model was held twice in host RAM)."""
    doubles, singles = _block_indices(state, "double_blocks"), _block_indices(state, "single_blocks")
    left = state
    out: dict[str, torch.Tensor] = {}

    def move(source: str, target: str) -> None:
        """A whole key (a norm's ``scale``), or a module's ``.weight`` and ``.bias``."""
        if source in left:
            out[target] = left.pop(source)
        for suffix in (".weight", ".bias"):
            if source + suffix in left:
                out[target + suffix] = left.pop(source + suffix)

    for source, target in _BFL_TOP.items():
        move(source, target)
    for name in ("weight", "bias"):
        key = f"final_layer.adaLN_modulation.1.{name}"
        if key in left:
            out[f"norm_out.linear.{name}"] = _swap_scale_shift(left.pop(key))
    for i in doubles:
        prefix, target = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for source, name in _BFL_DOUBLE.items():
            move(prefix + source, target + name)
        for source, names in _BFL_DOUBLE_QKV.items():
            for suffix in (".weight", ".bias"):
                for name, part in zip(names, left.pop(prefix + source + suffix).chunk(3, dim=0)):
                    out[target + name + suffix] = part.clone()  # its own storage, as a fresh model's weight has
    for i in singles:
        prefix, target = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for source, name in _BFL_SINGLE.items():
            move(prefix + source, target + name)
        inner = out[target + "proj_out.weight"].shape[0]  # linear2 maps back to the model width
        for suffix in (".weight", ".bias"):
            fused = left.pop(prefix + "linear1" + suffix)
            parts = fused.split([inner, inner, inner, fused.shape[0] - 3 * inner], dim=0)
            out |= {target + name + suffix: part.clone() for name, part in zip(_BFL_SINGLE_LINEAR1, parts)}
    if left:
        raise ValueError(f"{len(left)} FLUX.1 key(s) did not map to diffusers' FluxTransformer2DModel: {sorted(left)[:5]}")
    return out


def _block_indices(state: dict[str, torch.Tensor], name: str) -> list[int]:
    return sorted({int(key.split(".")[1]) for key in state if key.startswith(name + ".")})


def flux_config_from_weights(state: dict[str, torch.Tensor], axes_dims_rope: list[int]) -> dict:
    """``FluxTransformer2DModel`` config of a diffusers-keyed FLUX.1 state dict, read from its shapes."""
    head_dim = state["transformer_blocks.0.attn.norm_q.weight"].shape[0]
    width, in_channels = state["x_embedder.weight"].shape
    if sum(axes_dims_rope) != head_dim:
        raise ValueError(f"rotary axes {axes_dims_rope} do not add up to the attention head width {head_dim}")
    return {
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": state["proj_out.weight"].shape[0],
        "num_layers": len(_block_indices(state, "transformer_blocks")),
        "num_single_layers": len(_block_indices(state, "single_transformer_blocks")),
        "attention_head_dim": head_dim,
        "num_attention_heads": width // head_dim,
        "joint_attention_dim": state["context_embedder.weight"].shape[1],
        "pooled_projection_dim": state["time_text_embed.text_embedder.linear_1.weight"].shape[1],
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in state,
        "axes_dims_rope": list(axes_dims_rope),
    }


# --- Wan: original (and ComfyUI's) keys -> diffusers' WanTransformer3DModel -------------------------------------
def _wan_kind(state: dict[str, torch.Tensor]) -> str:
    """Which Wan model a transformer state dict holds, from its input channels and width (either key layout)."""
    patch = state.get("patch_embedding.weight")
    if patch is None:
        return "wan"
    width, channels = patch.shape[:2]
    if channels == 36:
        return "wan-i2v"
    if channels == 48:
        return "wan-ti2v-5b"
    if channels == 16:  # Wan2.1 T2V-14B has the A14B experts' shapes; 1.3B is the narrow one
        return "wan-1.3b" if width == 1536 else "wan-14b"
    return "wan"


def wan_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan's original keys (``blocks.0.self_attn.q``, ``head.head``) -> diffusers' (``blocks.0.attn1.to_q``,
    ``proj_out``) with diffusers' own single-file converter, which renames only (any size); a diffusers-keyed
    state dict is returned as it is."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    if "blocks.0.attn1.to_q.weight" in state:
        return dict(state)
    return convert_wan_transformer_to_diffusers(dict(state))  # it pops from what it is given



def wan_config_from_weights(state: dict[str, torch.Tensor], shipped: dict) -> dict:
    """``WanTransformer3DModel`` config of a diffusers-keyed Wan state dict: ``shipped`` (the model's shipped
    config) with the sizes read from the tensors. The head width cannot be read (the q/k norms span all heads):
    it is the shipped one, 128 in every Wan2.x model."""
    width, in_channels, *patch = state["patch_embedding.weight"].shape
    return shipped | {
        "patch_size": list(patch),
        "num_attention_heads": width // shipped["attention_head_dim"],
        "in_channels": in_channels,
        "out_channels": state["proj_out.weight"].shape[0] // (patch[0] * patch[1] * patch[2]),
        "text_dim": state["condition_embedder.text_embedder.linear_1.weight"].shape[1],
        "freq_dim": state["condition_embedder.time_embedder.linear_1.weight"].shape[1],
        "ffn_dim": state["blocks.0.ffn.net.0.proj.weight"].shape[0],
        "num_layers": len(_block_indices(state, "blocks")),
    }
