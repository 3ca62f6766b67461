"""Wan2.2 video backbone (diffusers ``WanTransformer3DModel``) behind ``EditBackbone``.

Time convention, checked against diffusers: Wan's schedulers noise as
``x_t = (1 - s) x + s eps`` (``FlowMatchEulerDiscreteScheduler.scale_noise``) and the
transformer predicts ``v = eps - x`` (UniPC ``flow_prediction``: ``x0 = x_t - s v``), the
same as ours, so the velocity is the model output unchanged. The transformer takes
timesteps in 0..1000 as given (no internal scaling), so ``t`` in [0, 1] goes in as
``t * 1000``.

Editing (paper B.2): the source latents are patchified with the model's own patch
embedding and appended to the noisy tokens along the sequence; the source tokens get the
*same* RoPE positions as the noisy tokens, so each clean source token is the aligned twin
of a noisy one and the model tells them apart by noise level only. The output keeps the
noisy tokens. ``source=None`` runs the same code with no extra tokens, which is exactly the
stock forward (pinned by a test).

Variants: TI2V-5B takes per-token timesteps (``expand_timesteps``); there the clean source
tokens get timestep 0, as TI2V-5B's own image-to-video mode gives its clean first frame.
With one timestep per sample (A14B) the source tokens share the noisy tokens' modulation and
differ from them by content alone (clean vs noisy), as in the paper.
T2V-A14B has two experts, ``transformer`` for high noise (``t >= boundary_ratio``) and
``transformer_2`` for low noise, as in diffusers' ``WanPipeline``; a batch whose samples
fall on different experts is split, run per expert and put back in order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import count
from typing import Callable, Sequence

import torch
from diffusers import UniPCMultistepScheduler
from torch import nn

from .base import EDIT_STEPS, EditBackbone, LatentCodec, PixelShapeError, TextCond, TextEncoder

NUM_TRAIN_TIMESTEPS = 1000  # Wan's timestep range; the transformer does not rescale t
A14B_BOUNDARY_RATIO = 0.875  # diffusers scripts/convert_wan_to_diffusers.py, Wan2.2-T2V-A14B
NATIVE_PREFIX = "diffusion_model."  # what stock ComfyUI's LoRA loader expects on Wan keys

Rotary = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), (1, tokens, 1, head_dim): what WanAttnProcessor takes


# ---------------------------------------------------------------------------------------
# Source-token positions (paper B.2)
# ---------------------------------------------------------------------------------------


def same_positions(model: nn.Module, latents: torch.Tensor, source: torch.Tensor) -> Rotary:
    """Paper B.2: source tokens get the noisy tokens' RoPE, marking them as aligned twins."""
    cos, sin = model.rope(latents)
    return torch.cat([cos, cos], dim=1), torch.cat([sin, sin], dim=1)


def offset_positions(model: nn.Module, latents: torch.Tensor, source: torch.Tensor) -> Rotary:
    """Control: source tokens sit where the frames after the noisy ones would be.

    ``model.rope`` reads only the shape of its input and orders tokens frame-major, so the
    rotary embedding of the two videos stacked in time is noisy frames then source frames.
    """
    return model.rope(torch.cat([latents, source], dim=2))


POSITION_SCHEMES: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], Rotary]] = {
    "same": same_positions,
    "offset": offset_positions,
}


# ---------------------------------------------------------------------------------------
# The forward pass, rebuilt from the model's own submodules
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenGrid:
    """Latent video size in patches; the noisy tokens come first, frame-major."""

    frames: int
    height: int
    width: int

    @classmethod
    def of(cls, model: nn.Module, latents: torch.Tensor) -> "TokenGrid":
        p_t, p_h, p_w = model.config.patch_size
        _, _, frames, height, width = latents.shape
        return cls(frames // p_t, height // p_h, width // p_w)

    @property
    def tokens(self) -> int:
        return self.frames * self.height * self.width


@dataclass
class Conditions:
    """What ``model.condition_embedder`` makes of the timestep and the text."""

    temb: torch.Tensor  # (B, D), or (B, tokens, D) with per-token timesteps
    timestep_proj: torch.Tensor  # (B, 6, D), or (B, tokens, 6, D): the blocks' modulation
    text: torch.Tensor  # (B, L, D) projected text states for cross-attention


def token_timesteps(timestep: torch.Tensor, noisy: int, clean: int, per_token: bool) -> torch.Tensor:
    """Wan timesteps: (B,), or per token (B, noisy + clean) as TI2V-5B's pipeline builds them.

    Per token, the clean source tokens get timestep 0, as diffusers' TI2V-5B image-to-video
    mode does for its clean first frame (``first_frame_mask``).
    """
    if not per_token:
        return timestep
    noisy_steps = timestep[:, None].expand(-1, noisy)
    return torch.cat([noisy_steps, timestep.new_zeros(timestep.shape[0], clean)], dim=1)


def patchify(model: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, tokens, D) with the model's own patch embedding."""
    return model.patch_embedding(latents).flatten(2).transpose(1, 2)


def unpatchify(model: nn.Module, tokens: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
    """(B, tokens, C * patch volume) -> (B, C, F, H, W), the inverse of ``patchify``'s layout."""
    p_t, p_h, p_w = model.config.patch_size
    patches = tokens.reshape(tokens.shape[0], grid.frames, grid.height, grid.width, p_t, p_h, p_w, -1)
    return patches.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)


def embed_conditions(model: nn.Module, timestep: torch.Tensor, text: torch.Tensor) -> Conditions:
    """Timestep and text embeddings, per sample or (TI2V-5B) per token."""
    seq_len = timestep.shape[1] if timestep.ndim == 2 else None
    temb, projection, text_states, _ = model.condition_embedder(
        timestep.flatten(), text, None, timestep_seq_len=seq_len
    )
    return Conditions(temb, projection.unflatten(-1, (6, -1)), text_states)


def run_blocks(model: nn.Module, hidden: torch.Tensor, cond: Conditions, rotary: Rotary) -> torch.Tensor:
    """The transformer blocks, honouring the model's gradient checkpointing switch."""
    checkpointing = torch.is_grad_enabled() and model.gradient_checkpointing
    for block in model.blocks:
        args = (hidden, cond.text, cond.timestep_proj, rotary)
        hidden = model._gradient_checkpointing_func(block, *args) if checkpointing else block(*args)
    return hidden


def output_head(model: nn.Module, hidden: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """Modulated output norm and projection back to patch channels."""
    # a per-sample temb gets a token axis so one path serves both timestep layouts
    temb = temb if temb.ndim == 3 else temb.unsqueeze(1)
    modulation = model.scale_shift_table.to(temb.device) + temb.unsqueeze(2)
    shift, scale = modulation.to(hidden.device).unbind(2)
    hidden = (model.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
    return model.proj_out(hidden)


def edit_forward(
    model: nn.Module,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    text: torch.Tensor,
    source: torch.Tensor | None = None,
    positions: str = "same",
    per_token_timesteps: bool = False,
) -> torch.Tensor:
    """``WanTransformer3DModel`` output for ``latents`` with optional source tokens appended.

    ``timestep`` is (B,) in Wan's 0..1000 units; ``text`` the (B, L, text_dim) states.
    Without a source this is the stock forward; with one, see the module docstring.
    """
    grid = TokenGrid.of(model, latents)
    videos = [latents] if source is None else [latents, source]
    hidden = torch.cat([patchify(model, video) for video in videos], dim=1).contiguous()
    rotary = model.rope(latents) if source is None else POSITION_SCHEMES[positions](model, latents, source)
    steps = token_timesteps(timestep, grid.tokens, hidden.shape[1] - grid.tokens, per_token_timesteps)
    cond = embed_conditions(model, steps, text)
    hidden = run_blocks(model, hidden, cond, rotary)
    noisy_out = output_head(model, hidden, cond.temb)[:, : grid.tokens]
    return unpatchify(model, noisy_out, grid)


# ---------------------------------------------------------------------------------------
# Text: UMT5-XXL, as Wan's pipelines encode prompts
# ---------------------------------------------------------------------------------------

# Wan2.2's sample_neg_prompt (wan/configs/shared_config.py), the negative prompt its sampler guides against
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，"
    "多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，"
    "倒着走"
)
MAX_TEXT_TOKENS = 512  # WanPipeline's max_sequence_length; ComfyUI's UMT5 tokenizer pads to the same


class SentencePieceTokenizer:
    """UMT5's tokenizer from the SentencePiece model that ComfyUI's ``umt5_xxl_*.safetensors`` files carry
    (their ``spiece_model`` tensor), called like a transformers tokenizer: ids end with ``</s>`` (1) and are
    padded with 0, as google/umt5-xxl's tokenizer and ComfyUI's ``UMT5XXlTokenizer`` do."""

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece

        self.processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto, add_bos=False, add_eos=True)

    def __call__(self, prompts: Sequence[str], max_length: int = MAX_TEXT_TOKENS, **_):
        from transformers import BatchEncoding

        ids = torch.zeros(len(prompts), max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            tokens = self.processor.encode(prompt)[:max_length]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return BatchEncoding({"input_ids": ids, "attention_mask": mask})


class WanTextEncoder:
    """``TextEncoder`` of Wan: UMT5-XXL's states of the prompt's tokens, zero past its end, 512 tokens,
    as ``WanPipeline._get_t5_prompt_embeds`` makes them (and ComfyUI's ``zero_out_masked``)."""

    def __init__(self, umt5, tokenizer, max_sequence_length: int = MAX_TEXT_TOKENS) -> None:
        self.umt5, self.tokenizer, self.max_sequence_length = umt5, tokenizer, max_sequence_length

    def __call__(self, prompts: Sequence[str]) -> TextCond:
        inputs = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_sequence_length,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        device = self.umt5.device
        mask = inputs["attention_mask"].to(device)
        states = self.umt5(inputs["input_ids"].to(device), mask).last_hidden_state
        return TextCond(states * mask[..., None].to(states.dtype))


# ---------------------------------------------------------------------------------------
# The backbone
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertBatch:
    """The samples of a batch that one expert serves."""

    name: str
    index: list[int]


@dataclass(frozen=True)
class PixelRule:
    """One constraint on a pixel dimension, and the nearest values that meet it."""

    got: str  # how the offending value reads, e.g. "{} frames"
    needs: str  # the rule in words, e.g. "4k+1 frames"
    valid: Callable[[int], bool]

    def complaint(self, value: int) -> str | None:
        if self.valid(value):
            return None
        below = next((v for v in range(value - 1, 0, -1) if self.valid(v)), None)
        above = next(v for v in count(value + 1) if self.valid(v))
        options = " or ".join(str(v) for v in (below, above) if v is not None)
        return f"got {self.got.format(value)}; Wan needs {self.needs}: use {options}"


def check_wan_pixels(shape: Sequence[int], patch_size: Sequence[int], spatial_factor: int, temporal_factor: int) -> None:
    """Raise naming the nearest sizes unless ``shape`` is video (B, 3, F, H, W) or images (B, 3, H, W) that a VAE of
    these factors and the transformer's (t, h, w) patches divide."""
    if len(shape) not in (4, 5) or shape[1] != 3:
        raise ValueError(f"Wan takes RGB video (B, 3, F, H, W) or images (B, 3, H, W), got {tuple(shape)}")
    frames = shape[2] if len(shape) == 5 else 1
    values = (frames, shape[-2], shape[-1])
    rules = _pixel_rules(patch_size, spatial_factor, temporal_factor)
    problems = {dim: rule.complaint(v) for dim, rule, v in zip(("frames", "height", "width"), rules, values)}
    problems = {dim: p for dim, p in problems.items() if p}
    if problems:
        raise PixelShapeError("; ".join(problems.values()), problems)


def _pixel_rules(patch_size: Sequence[int], sf: int, tf: int) -> list[PixelRule]:
    p_t, p_h, p_w = patch_size

    def frames_ok(frames: int) -> bool:
        # the codec keeps the first frame and packs every `tf` after it into one latent frame
        return (frames - 1) % tf == 0 and ((frames - 1) // tf + 1) % p_t == 0

    frames_rule = f"{tf}k+1 frames" + ("" if p_t == 1 else f" giving a multiple of {p_t} latent frames")
    return [
        PixelRule("{} frames", frames_rule, frames_ok),
        PixelRule("height {}", f"a height divisible by {sf * p_h}", lambda h: h % (sf * p_h) == 0),
        PixelRule("width {}", f"a width divisible by {sf * p_w}", lambda w: w % (sf * p_w) == 0),
    ]


class WanBackbone(EditBackbone):
    """Wan2.2 (TI2V-5B or the two-expert T2V-A14B) as a ByG editor."""

    family = "wan"

    def __init__(
        self,
        transformer: nn.Module,
        *,
        codec: LatentCodec,
        transformer_2: nn.Module | None = None,
        boundary_ratio: float | None = None,
        text_encoder: TextEncoder | None = None,
        expand_timesteps: bool = False,
        positions: str = "same",
        flow_shift: float = 5.0,
        guide_scales: Sequence[float] | None = None,
        negative_prompt: str = WAN_NEGATIVE_PROMPT,
        edit_steps: int = EDIT_STEPS,
    ) -> None:
        super().__init__()
        if boundary_ratio is not None and transformer_2 is None:
            raise ValueError("boundary_ratio only applies with two experts: pass transformer_2 too")
        if positions not in POSITION_SCHEMES:
            raise ValueError(f"positions must be one of {sorted(POSITION_SCHEMES)}, got {positions!r}")
        self._transformers = {"transformer": transformer}
        if transformer_2 is not None:
            self._transformers["transformer_2"] = transformer_2
            boundary_ratio = A14B_BOUNDARY_RATIO if boundary_ratio is None else boundary_ratio
        self.boundary_ratio = boundary_ratio
        self.codec = codec
        self.text_encoder = text_encoder
        self.expand_timesteps = expand_timesteps  # TI2V-5B: per-token timesteps
        self.positions = positions  # paper B.2 "same"; "offset" is the control
        self.flow_shift = flow_shift  # Wan2.2's UniPC shift: 5.0 for TI2V-5B, 12.0 for A14B (its sample_shift)
        # an edit's classifier-free guidance per expert against Wan's negative prompt (1: none)
        scales = [1.0] * len(self._transformers) if guide_scales is None else list(guide_scales)
        if len(scales) != len(self._transformers):
            raise ValueError(f"guide_scales gives {len(scales)} values for {len(self._transformers)} experts")
        self.guide_scales = dict(zip(self._transformers, map(float, scales)))
        self.negative_prompt = negative_prompt
        self.edit_steps = edit_steps  # Wan2.2's sample_steps (paper B.2 samples with its default configuration)

    @classmethod
    def from_variant(cls, variant: str, transformer: nn.Module, **kwargs) -> "WanBackbone":
        """A backbone with the expert boundary and timestep layout of a Wan2.2 release."""
        spec = WAN22_VARIANTS[variant]
        if spec.two_experts and kwargs.get("transformer_2") is None:
            raise ValueError(f"Wan2.2 {variant} has two experts: pass the low-noise one as transformer_2")
        kwargs.setdefault("expand_timesteps", spec.expand_timesteps)
        kwargs.setdefault("boundary_ratio", spec.boundary_ratio)
        kwargs.setdefault("flow_shift", spec.flow_shift)
        kwargs.setdefault("guide_scales", spec.guide_scales)
        kwargs.setdefault("edit_steps", spec.sample_steps)
        return cls(transformer, **kwargs)

    @property
    def transformers(self) -> dict[str, nn.Module]:
        return self._transformers

    def guide_scale(self, t: float) -> float:
        """Wan2.2's sampler guides every step against its negative prompt, each expert at its own scale (paper B.2
        edits with "the default configuration provided by Wan2.2": ``sample_guide_scale``)."""
        return self.guide_scales[self.expert_for(t)]

    @property
    def latent_dtype(self) -> torch.dtype:
        """float32 whatever the model's dtype: WanPipeline keeps its latents in fp32 and casts the model's input."""
        return torch.float32

    def expert_for(self, t: float) -> str:
        """High-noise ``transformer`` for ``t >= boundary_ratio``, else ``transformer_2`` (diffusers)."""
        if self.boundary_ratio is None or t >= self.boundary_ratio:
            return "transformer"
        return "transformer_2"

    def expert_range(self, expert: str) -> tuple[float, float]:
        if self.boundary_ratio is None:
            return (0.0, 1.0)
        return (self.boundary_ratio, 1.0) if expert == "transformer" else (0.0, self.boundary_ratio)

    def make_scheduler(self) -> UniPCMultistepScheduler:
        """UniPC as Wan2.2 configures it (paper B.2 samples with "the default configuration provided by Wan2.2")."""
        return UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            flow_shift=self.flow_shift,
        )

    def velocity(
        self, latents: torch.Tensor, t: torch.Tensor, text: TextCond, source: torch.Tensor | None = None
    ) -> torch.Tensor:
        if source is not None and source.shape != latents.shape:
            raise ValueError(f"source latents {tuple(source.shape)} must match latents {tuple(latents.shape)}")
        t = torch.as_tensor(t, device=latents.device).expand(latents.shape[0])
        batches = self.split_by_expert(t)
        if len(batches) == 1:
            return self.expert_velocity(batches[0].name, latents, t, text, source)
        parts = [self._velocity_of(batch, latents, t, text, source) for batch in batches]
        order = torch.tensor([i for batch in batches for i in batch.index], device=latents.device)
        return torch.cat(parts)[order.argsort()]

    def split_by_expert(self, t: torch.Tensor) -> list[ExpertBatch]:
        """Group a batch's samples by the expert their timestep falls on (one expert: t is not read, so a GPU
        is not synchronised for it)."""
        if len(self._transformers) == 1:
            return [ExpertBatch("transformer", list(range(t.shape[0])))]
        groups: dict[str, list[int]] = {}
        for i, time in enumerate(t.tolist()):
            groups.setdefault(self.expert_for(time), []).append(i)
        return [ExpertBatch(name, index) for name, index in groups.items()]

    def _velocity_of(
        self, batch: ExpertBatch, latents: torch.Tensor, t: torch.Tensor, text: TextCond, source: torch.Tensor | None
    ) -> torch.Tensor:
        index = torch.tensor(batch.index, device=latents.device)
        sub_source = None if source is None else source[index]
        return self.expert_velocity(batch.name, latents[index], t[index], text.select(index), sub_source)

    def expert_velocity(
        self, name: str, latents: torch.Tensor, t: torch.Tensor, text: TextCond, source: torch.Tensor | None
    ) -> torch.Tensor:
        """Velocity from one named expert, whatever the timesteps (no routing); its input is cast to the expert's
        compute dtype and its output back to the latents' (WanPipeline: ``latents.to(transformer_dtype)``). Image
        latents (B, C, H, W), as the codecs encode an image, are a one-frame video's."""
        if latents.ndim == 4:
            frame = None if source is None else source.unsqueeze(2)
            return self.expert_velocity(name, latents.unsqueeze(2), t, text, frame).squeeze(2)
        model = self._transformers[name]
        dtype = model.dtype
        v = edit_forward(
            model,
            latents.to(dtype),
            t * NUM_TRAIN_TIMESTEPS,
            text.tokens.to(dtype),
            None if source is None else source.to(dtype),
            self.positions,
            self.expand_timesteps,
        )
        return v.to(latents.dtype)

    def lora_target_modules(self) -> list[str]:
        """Self- and cross-attention and FFN linears of every block (musubi-tuner's targets)."""
        return list(LORA_TARGETS)

    def lora_file_key(self, module_name: str, expert: str = "transformer") -> str:
        """Native key prefix; each A14B expert gets its own file, so ``expert`` leaves it alone."""
        return NATIVE_PREFIX + to_native_key(module_name)

    def lora_module_name(self, file_key: str) -> str:
        if not file_key.startswith(NATIVE_PREFIX):
            raise ValueError(f"Wan LoRA key {file_key!r} does not start with {NATIVE_PREFIX!r}")
        return from_native_key(file_key[len(NATIVE_PREFIX) :])

    def check_pixels(self, shape: Sequence[int]) -> None:
        """Video (B, 3, F, H, W) or one image (B, 3, H, W) that the codec and patches divide."""
        check_wan_pixels(shape, self._transformers["transformer"].config.patch_size, self.codec.spatial_factor,
                         self.codec.temporal_factor)


# ---------------------------------------------------------------------------------------
# LoRA targets and native (Wan / ComfyUI) key names
# ---------------------------------------------------------------------------------------

_ATTENTION = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}

# Inside ``blocks.N``: diffusers module name -> native name. Source of truth: diffusers
# loaders/lora_conversion_utils.py ``_convert_non_diffusers_wan_lora_to_diffusers``.
_BLOCK_NAMES = {
    **{f"attn1.{ours}": f"self_attn.{theirs}" for ours, theirs in _ATTENTION.items()},
    **{f"attn2.{ours}": f"cross_attn.{theirs}" for ours, theirs in _ATTENTION.items()},
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}

# Outside the blocks (same source, plus single_file_utils ``convert_wan_transformer_to_diffusers``).
_TOP_NAMES = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "patch_embedding": "patch_embedding",
    "proj_out": "head.head",
}

LORA_TARGETS = tuple(name for name in _BLOCK_NAMES if "add_" not in name)  # no image cross-attn in T2V/TI2V

_BLOCK_MODULE = re.compile(r"blocks\.(\d+)\.(.+)")


def _invert(table: dict[str, str]) -> dict[str, str]:
    return {value: key for key, value in table.items()}


@dataclass(frozen=True)
class NameMap:
    """Renames module paths between diffusers and native Wan, block index kept."""

    block: dict[str, str]
    top: dict[str, str]
    source: str  # what the input names are, for the error message

    def __call__(self, name: str) -> str:
        match = _BLOCK_MODULE.fullmatch(name)
        prefix, rest, table = (f"blocks.{match[1]}.", match[2], self.block) if match else ("", name, self.top)
        if rest not in table:
            raise ValueError(f"{name!r} is not a {self.source} module name with a known Wan LoRA key")
        return prefix + table[rest]

    def inverse(self, source: str) -> "NameMap":
        return NameMap(_invert(self.block), _invert(self.top), source)


_TO_NATIVE = NameMap(_BLOCK_NAMES, _TOP_NAMES, "diffusers")
_FROM_NATIVE = _TO_NATIVE.inverse("native Wan")


def to_native_key(diffusers_module_name: str) -> str:
    """``blocks.0.attn1.to_q`` -> ``blocks.0.self_attn.q``; the LoRA writer adds ``diffusion_model.``."""
    return _TO_NATIVE(diffusers_module_name)


def from_native_key(native: str) -> str:
    """``blocks.0.self_attn.q`` -> ``blocks.0.attn1.to_q`` (no ``diffusion_model.`` prefix)."""
    return _FROM_NATIVE(native)


# ---------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WanVariant:
    """A Wan2.2 release: its transformer config and the facts that live outside it.

    Values from diffusers scripts/convert_wan_to_diffusers.py (``get_transformer_config``
    and the pipelines it builds) and the original Wan2.2 configs (wan/configs/*.py:
    ``vae_stride``, ``boundary``); no weights are loaded here.
    """

    transformer: dict  # WanTransformer3DModel(**transformer)
    two_experts: bool  # A14B ships a high-noise and a low-noise transformer
    boundary_ratio: float | None  # t >= ratio -> high-noise expert
    expand_timesteps: bool  # TI2V-5B takes per-token timesteps
    vae_spatial_factor: int  # Wan2.2 VAE 16, Wan2.1 VAE 8
    vae_temporal_factor: int  # 4: frames 4k+1 -> k+1 latent frames
    flow_shift: float  # UniPC flow_shift: Wan2.2's own sample_shift (paper B.2: "the default configuration")
    guide_scales: tuple[float, ...]  # Wan2.2's sample_guide_scale, per expert in order (high-noise first)
    sample_steps: int  # Wan2.2's sample_steps: an edit's default


def _wan_transformer(heads: int, channels: int, ffn_dim: int, layers: int) -> dict:
    """The WanTransformer3DModel kwargs every Wan2.x T2V model shares, plus its size."""
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": heads,
        "attention_head_dim": 128,
        "in_channels": channels,
        "out_channels": channels,
        "text_dim": 4096,  # umT5-XXL
        "freq_dim": 256,
        "ffn_dim": ffn_dim,
        "num_layers": layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
    }


WAN22_VARIANTS = {
    "ti2v-5b": WanVariant(
        transformer=_wan_transformer(heads=24, channels=48, ffn_dim=14336, layers=30),
        two_experts=False,
        boundary_ratio=None,
        expand_timesteps=True,
        vae_spatial_factor=16,
        vae_temporal_factor=4,
        flow_shift=5.0,
        guide_scales=(5.0,),  # wan/configs/wan_ti2v_5B.py
        sample_steps=50,
    ),
    "t2v-a14b": WanVariant(
        transformer=_wan_transformer(heads=40, channels=16, ffn_dim=13824, layers=40),
        two_experts=True,
        boundary_ratio=A14B_BOUNDARY_RATIO,
        expand_timesteps=False,
        vae_spatial_factor=8,
        vae_temporal_factor=4,
        flow_shift=12.0,  # Wan2.2's T2V-A14B sample_shift (its own config; diffusers' pipeline config says 3.0)
        guide_scales=(4.0, 3.0),  # wan/configs/wan_t2v_A14B.py sample_guide_scale = (3.0, 4.0): (low, high) noise
        sample_steps=40,
    ),
}

WAN22_CONFIGS = {name: variant.transformer for name, variant in WAN22_VARIANTS.items()}

# tiny stand-ins for tests: head dim 12 gives RoPE 4 channels per axis (t, h, w)
_TINY = {
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "text_dim": 16,
    "freq_dim": 16,
    "ffn_dim": 32,
    "num_layers": 2,
    "rope_max_seq_len": 32,
}
# the real variants' latent channels (48, 16) shrunk, kept distinct so a mix-up fails loudly
_TINY_CHANNELS = {"ti2v-5b": 8, "t2v-a14b": 4}


def tiny_wan_config(variant: str = "ti2v-5b") -> dict:
    """A few-thousand-parameter ``WanTransformer3DModel`` config with the variant's layout."""
    channels = _TINY_CHANNELS[variant]
    return {**WAN22_CONFIGS[variant], **_TINY, "in_channels": channels, "out_channels": channels}
