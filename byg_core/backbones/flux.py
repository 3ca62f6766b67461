"""FLUX.1 behind ``EditBackbone``: diffusers' ``FluxTransformer2DModel`` with Kontext-style
source conditioning (paper B.1: source latents concatenated along the token sequence).

Latents are (B, C, H, W); the transformer sees them packed into 2x2 patches
(B, H/2 * W/2, 4C) with position ids ``[index, row, col]``. Noisy tokens carry index 0.
Source tokens carry index 1 (``positions="index"``), which is what ComfyUI's
``ReferenceLatent`` and FLUX.1 Kontext use, so a LoRA trained here also works in stock
ComfyUI graphs; ``positions="same"`` gives them the noisy tokens' ids instead.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from einops import rearrange

from .base import EditBackbone, LatentCodec, PixelShapeError, TextCond, TextEncoder

PATCH = 2  # FLUX packs 2x2 latent cells into one token
SOURCE_POSITIONS = ("index", "same")

# diffusers' Flux Kontext LoRA script (train_dreambooth_lora_flux_kontext.py) default targets
FLUX_LORA_TARGETS = [
    "attn.to_k",
    "attn.to_q",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
]


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C), the token layout of diffusers' FluxPipeline."""
    return rearrange(latents, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=PATCH, pw=PATCH)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of ``pack_latents`` for latents of spatial size (height, width)."""
    return rearrange(
        tokens, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=height // PATCH, w=width // PATCH, ph=PATCH, pw=PATCH
    )


def image_ids(height: int, width: int, index: int, device=None) -> torch.Tensor:
    """Position ids ``[index, row, col]`` of the packed tokens of a (height, width) latent."""
    rows = torch.arange(height // PATCH, device=device)
    cols = torch.arange(width // PATCH, device=device)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    return torch.cat([torch.full_like(grid[:, :1], index), grid], dim=1).float()


@functools.lru_cache(maxsize=64)
def position_ids(height: int, width: int, source_index: int | None, text_tokens: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The image ids (noisy tokens, then the source's with ``source_index`` when there is a source) and the text
    ids of one call, made once per shape: every rollout step, editor pass and base query of a step shares them
    (the transformer reads them, never writes). Made outside inference mode: a cached inference tensor would be
    refused by a later training pass."""
    with torch.inference_mode(False):
        ids = image_ids(height, width, 0, device)
        if source_index is not None:
            ids = torch.cat([ids, image_ids(height, width, source_index, device)])
        return ids, torch.zeros(text_tokens, 3, device=device)


class FluxBackbone(EditBackbone):
    """FLUX.1 text-to-image model queried as ``G_t2i`` (no source) or ``G_edit`` (with source)."""

    family = "flux"

    def __init__(
        self,
        transformer: FluxTransformer2DModel,
        text_encoder: TextEncoder | None,
        codec: LatentCodec,
        guidance: float = 3.5,
        positions: str = "index",
        scheduler_shift: float = 1.0,
        scheduler_config: dict | None = None,
    ) -> None:
        super().__init__()
        if positions not in SOURCE_POSITIONS:
            raise ValueError(f"positions must be one of {SOURCE_POSITIONS}, got {positions!r}")
        self.transformer = transformer
        self.text_encoder = text_encoder
        self.codec = codec
        self.guidance = guidance  # FLUX.1-dev is guidance-distilled: one value for base and editor
        self.positions = positions
        self.scheduler_shift = scheduler_shift
        self.scheduler_config = scheduler_config  # FLUX.1-dev's: dynamic shifting by image size

    @property
    def transformers(self) -> dict[str, torch.nn.Module]:
        return {"transformer": self.transformer}

    def lora_target_modules(self) -> list[str]:
        return list(FLUX_LORA_TARGETS)

    def lora_file_key(self, module_name: str, expert: str = "transformer") -> str:
        """Prefix under which stock ComfyUI's LoraLoaderModelOnly finds diffusers FLUX keys."""
        return f"transformer.{module_name}"

    def lora_module_name(self, file_key: str) -> str:
        if not file_key.startswith("transformer."):
            raise ValueError(f"FLUX LoRA key {file_key!r} does not start with 'transformer.'")
        return file_key[len("transformer.") :]

    def make_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        """The flow-matching Euler scheduler FLUX pipelines sample with (FLUX.1-dev's config when given)."""
        if self.scheduler_config is not None:
            return FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        return FlowMatchEulerDiscreteScheduler(shift=self.scheduler_shift)

    def schedule_options(self, steps: int, latent_shape: Sequence[int]) -> dict:
        """FluxPipeline's schedule: sigmas 1 .. 1/steps, shifted by mu, which grows with the token count."""
        config = self.scheduler_config
        if not config or not config.get("use_dynamic_shifting"):
            return {}
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        tokens = (latent_shape[-2] // PATCH) * (latent_shape[-1] // PATCH)
        mu = calculate_shift(tokens, config["base_image_seq_len"], config["max_image_seq_len"], config["base_shift"],
                             config["max_shift"])
        return {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": mu}

    def check_pixels(self, shape: Sequence[int]) -> None:
        check_flux_pixels(shape, self.codec.spatial_factor)

    def velocity(
        self, latents: torch.Tensor, t: torch.Tensor, text: TextCond, source: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, _, height, width = latents.shape
        tokens = pack_latents(latents)
        source_index = None
        if source is not None:
            # paper B.1: source tokens appended after the noisy tokens (Kontext layout)
            source_index = 1 if self.positions == "index" else 0
            tokens = torch.cat([tokens, pack_latents(source)], dim=1)
        ids, txt_ids = position_ids(height, width, source_index, text.tokens.shape[1], latents.device)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((batch,), self.guidance, device=latents.device, dtype=latents.dtype)
        out = self.transformer(
            hidden_states=tokens,
            encoder_hidden_states=text.tokens,
            pooled_projections=text.pooled,
            timestep=t.to(latents.dtype),  # FLUX multiplies t in [0, 1] by 1000 inside
            img_ids=ids,
            txt_ids=txt_ids,
            guidance=guidance,
            return_dict=False,
        )[0]
        n_noisy = (height // PATCH) * (width // PATCH)
        return unpack_latents(out[:, :n_noisy], height, width)


def check_flux_pixels(shape: Sequence[int], spatial_factor: int) -> None:
    """Raise saying what to change unless ``shape`` is images (B, 3, H, W) that the VAE's ``spatial_factor`` times
    the 2x2 patches divide."""
    if len(shape) != 4 or shape[1] != 3:
        raise ValueError(f"FLUX edits images shaped (B, 3, H, W); got shape {tuple(shape)}")
    step = spatial_factor * PATCH
    for name, size in (("height", shape[2]), ("width", shape[3])):
        if size % step or size == 0:
            lower = max(step, size // step * step)
            raise PixelShapeError(
                f"image {name} {size} px is not a multiple of {step} (VAE factor x 2x2 patches); "
                f"resize or crop it to {lower} or {lower + step} px",
                [name],
            )


def vae_spatial_factor(config) -> int:
    """Pixels per latent cell of FLUX.1's VAE (an ``AutoencoderKL`` config, or the shipped one's dict): one halving per
    block after the first."""
    blocks = config["block_out_channels"] if isinstance(config, dict) else config.block_out_channels
    return 2 ** (len(blocks) - 1)


class FluxVAECodec:
    """``LatentCodec`` over FLUX.1's VAE (diffusers ``AutoencoderKL``): pixels in [0, 1] <-> the latents FLUX's
    pipelines feed the transformer, ``(z - shift_factor) * scaling_factor`` with ``z`` the posterior's mode
    (``FluxKontextPipeline`` encodes its reference image so)."""

    temporal_factor = 1

    def __init__(self, vae) -> None:
        self.vae = vae
        self.spatial_factor = vae_spatial_factor(vae.config)
        self.latent_channels = vae.config.latent_channels

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = vae.encode((pixels * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mode()
        return (z - vae.config.shift_factor) * vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        return (vae.decode(z, return_dict=False)[0].float() + 1) / 2


class FluxTextEncoder:
    """``TextEncoder`` of FLUX.1: T5-XXL token states (512 tokens) and CLIP-L's pooled vector, as
    ``FluxPipeline.encode_prompt`` makes them (transformers models and tokenizers)."""

    def __init__(self, clip, clip_tokenizer, t5, t5_tokenizer, max_sequence_length: int = 512) -> None:
        self.clip, self.clip_tokenizer = clip, clip_tokenizer
        self.t5, self.t5_tokenizer = t5, t5_tokenizer
        self.max_sequence_length = max_sequence_length

    def __call__(self, prompts: Sequence[str]) -> TextCond:
        # CLIP's 77 positions (ComfyUI's copy of the tokenizer says 8192, so its own length is not used)
        clip_ids = self.clip_tokenizer(list(prompts), padding="max_length",
                                       max_length=self.clip.config.max_position_embeddings, truncation=True,
                                       return_tensors="pt").input_ids
        t5_ids = self.t5_tokenizer(list(prompts), padding="max_length", max_length=self.max_sequence_length,
                                   truncation=True, return_tensors="pt").input_ids
        pooled = self.clip(clip_ids.to(self.clip.device), output_hidden_states=False).pooler_output
        tokens = self.t5(t5_ids.to(self.t5.device), output_hidden_states=False)[0]
        return TextCond(tokens, pooled)
