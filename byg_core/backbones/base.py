"""The small interface every backbone family (FLUX, Wan) sits behind.

The objective, the bootstrap rollout, the trainer and the editor only ever call
``EditBackbone.velocity`` on latents; pixels, text and positions are the backbone's
business. Text encoders and the latent codec are pluggable objects so that the toy
world, the CLI (transformers/diffusers modules) and ComfyUI (the host's CLIP/VAE) can all
feed the same code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import nn


def default_device() -> str:
    """Where a model runs unless told otherwise: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


EDIT_STEPS = 20  # inference steps (paper B.1): FLUX's edits, the nodes' default and every training preview


class PixelShapeError(ValueError):
    """Pixels a backbone cannot take; ``dimensions`` says which of "frames", "height", "width" are off,
    so a host can say how to fix them (resize for height and width, pick other frames for frames)."""

    def __init__(self, message: str, dimensions: Sequence[str]) -> None:
        super().__init__(message)
        self.dimensions = frozenset(dimensions)


@dataclass
class TextCond:
    """Text conditioning for a batch of prompts, in the form the transformer consumes."""

    tokens: torch.Tensor  # (B, L, D) per-token states the transformer attends to
    pooled: torch.Tensor | None = None  # (B, P) pooled vector (FLUX's CLIP); None for Wan

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, index) -> "TextCond":
        pooled = None if self.pooled is None else self.pooled[index]
        return TextCond(self.tokens[index], pooled)

    def to(self, device=None, dtype=None) -> "TextCond":
        pooled = None if self.pooled is None else self.pooled.to(device=device, dtype=dtype)
        return TextCond(self.tokens.to(device=device, dtype=dtype), pooled)

    @staticmethod
    def cat(conds: Sequence["TextCond"]) -> "TextCond":
        """Stack single-prompt conditionings into a batch, padding tokens to one length."""
        length = max(c.tokens.shape[1] for c in conds)
        tokens = [nn.functional.pad(c.tokens, (0, 0, 0, length - c.tokens.shape[1])) for c in conds]
        pooled = None if conds[0].pooled is None else torch.cat([c.pooled for c in conds])
        return TextCond(torch.cat(tokens), pooled)


class TextEncoder(Protocol):
    """Anything that turns prompts into a ``TextCond`` (toy encoder, T5+CLIP, ComfyUI CLIP)."""

    def __call__(self, prompts: Sequence[str]) -> TextCond: ...


class LatentCodec(Protocol):
    """Pixels in [0, 1] (B, 3, H, W) or (B, 3, F, H, W) <-> model latents."""

    spatial_factor: int  # pixels per latent cell along H and W
    temporal_factor: int  # frames per latent frame after the first (1 for images)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class EditBackbone(ABC):
    """A frozen text-to-image/video flow model that can also be queried as an editor.

    ``velocity(y, t, text, source)`` is ``G_edit(y_t, t, c, x)`` when a source is given and
    the plain text-to-image query ``G_t2i(y_t, t, p)`` when ``source is None``. Which LoRA
    adapter is active (student, EMA or none = base) is set from outside by
    ``byg_core.adapters.Adapters``; the backbone itself holds one copy of the weights.
    """

    family: str  # "flux" or "wan": names the LoRA key format and the checkpoint loaders
    text_encoder: TextEncoder | None
    codec: LatentCodec

    def __init__(self) -> None:
        self._text_cache: dict[str, TextCond] = {}

    @property
    @abstractmethod
    def transformers(self) -> dict[str, nn.Module]:
        """The trainable networks by name (one for FLUX and Wan 5B, two experts for A14B)."""

    @abstractmethod
    def velocity(
        self, latents: torch.Tensor, t: torch.Tensor, text: TextCond, source: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predicted velocity ``eps - y`` at time ``t`` (shape (B,), 1 = noise) for ``latents``."""

    @abstractmethod
    def lora_target_modules(self) -> list[str]:
        """Module-name suffixes that get LoRA layers by default."""

    @abstractmethod
    def check_pixels(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` saying what to change if pixels of this shape cannot be taken."""

    @abstractmethod
    def lora_file_key(self, module_name: str, expert: str) -> str:
        """Key prefix, in the format stock ComfyUI applies, of the LoRA on ``module_name``."""

    @abstractmethod
    def lora_module_name(self, file_key: str) -> str:
        """Inverse of ``lora_file_key``: the module a LoRA file key belongs to."""

    @abstractmethod
    def make_scheduler(self):
        """A diffusers flow scheduler for inference (its ``sigmas`` are our ``t``)."""

    def schedule(self, steps: int, latent_shape: Sequence[int], device=None):
        """The inference scheduler with its timesteps set for ``steps`` steps on latents of ``latent_shape``."""
        scheduler = self.make_scheduler()
        scheduler.set_timesteps(steps, device=device, **self.schedule_options(steps, latent_shape))
        # from the first timestep, as diffusers' FLUX and Wan pipelines: at a high shift the first whole-number
        # timesteps repeat (999, 999), and a scheduler finding its place by value counts one step ahead
        scheduler.set_begin_index(0)
        return scheduler

    def schedule_options(self, steps: int, latent_shape: Sequence[int]) -> dict:
        """Extra ``set_timesteps`` arguments (a resolution-dependent shift, say); none by default."""
        return {}

    negative_prompt = ""  # what an edit's classifier-free guidance pushes away from (``guide_scale``)
    edit_steps = EDIT_STEPS  # an edit's ODE steps unless asked for others: the model's own sampler's

    def guide_scale(self, t: float) -> float:
        """The classifier-free guidance of an edit at ``t`` against ``negative_prompt``; 1 (none) unless a model's
        own sampler guides (FLUX.1-dev's guidance is distilled into its guidance input instead)."""
        return 1.0

    def expert_for(self, t: float) -> str:
        """Which of ``transformers`` serves timestep ``t`` (only two-expert models override)."""
        return next(iter(self.transformers))

    def expert_range(self, expert: str) -> tuple[float, float]:
        """The interval of t that ``expert`` serves (all of [0, 1] for one-expert models)."""
        return (0.0, 1.0)

    @property
    def device(self) -> torch.device:
        return next(next(iter(self.transformers.values())).parameters()).device

    def to(self, device: str | torch.device, transformers: bool = True) -> "EditBackbone":
        """Put the transformers (unless ``transformers`` is False: a dataset's prompts and sources are encoded
        first, then the trainer moves them) and the torch modules of the text encoder and codec on ``device``;
        a host's CLIP and VAE (ComfyUI's, behind nodes/host.py) are left where their host places them."""
        parts = [*self.transformers.values()] if transformers else []
        for owner in (self.text_encoder, self.codec):
            parts += [part for part in vars(owner).values() if isinstance(part, torch.nn.Module)] if owner else []
        for part in parts:
            part.to(device)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The transformers' compute dtype: diffusers' ``ModelMixin.dtype``, which skips the tables a model keeps in
        fp32 (Wan's ``scale_shift_table`` is its first parameter) and reads layerwise casting's compute dtype."""
        model = next(iter(self.transformers.values()))
        return model.dtype if isinstance(getattr(model, "dtype", None), torch.dtype) else next(model.parameters()).dtype

    @property
    def latent_dtype(self) -> torch.dtype:
        """The dtype latents are kept (and sampled) in: the compute dtype unless a backbone keeps them wider."""
        return self.dtype

    def encode_text(self, prompts: Sequence[str]) -> TextCond:
        """Text conditioning for ``prompts``, each prompt encoded once and cached."""
        self.cache_text(prompts)
        return TextCond.cat([self._text_cache[p] for p in prompts]).to(self.device, self.dtype)

    def cache_text(self, prompts: Sequence[str]) -> None:
        """Encode the prompts not cached yet into the cache; nothing is read back (a disk cache's are on disk)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            if self.text_encoder is None:
                raise RuntimeError(
                    f"no text encoder is loaded and these prompts were never cached: {missing[:3]}"
                )
            with torch.no_grad():
                cond = self.text_encoder(missing)
            for i, prompt in enumerate(missing):  # kept at the compute dtype they are given at: a bf16 model's
                self._text_cache[prompt] = cond.select(slice(i, i + 1)).to(dtype=self.dtype)  # half a host's fp32

    def use_text_cache(self, cache) -> None:
        """Keep encoded prompts in ``cache`` (a mapping, e.g. ``byg_core.textcache.DiskTextCache``), not in memory."""
        self._text_cache = cache

    def flush_text_cache(self) -> None:
        """Write what a disk text cache still holds in memory (nothing to do for the in-memory one)."""
        flush = getattr(self._text_cache, "flush", None)
        if flush is not None:
            flush()

    def release_text_encoder(self) -> None:
        """Drop the text encoder once a dataset's prompts are cached (saves memory)."""
        self.text_encoder = None

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        self.check_pixels(pixels.shape)
        with torch.no_grad():
            return self.codec.encode(pixels.to(self.device)).to(self.latent_dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.codec.decode(latents).clamp(0, 1)
