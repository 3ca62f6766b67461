"""The Wan VAEs, from the files ComfyUI users have, as diffusers' ``AutoencoderKLWan``, and a latent codec over them.

Two VAEs serve Wan2.2 (Wan-Video/Wan2.2 ``wan/configs``: ``vae_checkpoint``, ``vae_stride``):

- ``wan2.1-vae``, ``vae/wan_2.1_vae.safetensors``: 16 latent channels, 8x spatial, 4x temporal; used by
  Wan2.2 T2V-A14B (and I2V-A14B, and Wan2.1). diffusers converts its single file with its own
  ``convert_wan_vae_to_diffusers`` (loaders/single_file_utils.py), which this module calls.
- ``wan2.2-vae``, ``vae/wan2.2_vae.safetensors``: 48 latent channels, 16x spatial (2x2 patches, then 8x),
  4x temporal; used by Wan2.2 TI2V-5B. Its encoder and decoder are residual down/up blocks
  (``AutoencoderKLWan(is_residual=True)``), which diffusers' single-file converter does not map;
  ``wan22_vae_to_diffusers`` is the mapping of diffusers' ``convert_vae_22`` (scripts/convert_wan_to_diffusers.py),
  table-driven and strict: every key must map, at any size.

Both files keep the original Wan key names (``encoder.conv1.weight``, ``encoder.downsamples.0...``,
``decoder.middle.0.residual.0.gamma``, ``conv1.weight``, ``conv2.weight``, ``decoder.head.2.weight``), in fp32,
fp16 or bf16. A diffusers folder (``Wan2.2-TI2V-5B-Diffusers/`` or its ``vae/``) loads through ``from_pretrained``.

The shipped configs (``configs/<model>/vae/config.json``) are the diffusers repos' ``vae/config.json``:

- wan2.2-ti2v-5b: Wan-AI/Wan2.2-TI2V-5B-Diffusers ``vae/config.json`` as republished with its ``_name_or_path`` by
  huggingface.co/nvidia/Cosmos3-Edge and huggingface.co/Intel/Wan2.2-TI2V-5B-Diffusers-int4-AutoRound, equal to
  ``vae22_diffusers_config`` in diffusers' scripts/convert_wan_to_diffusers.py (base_dim 160, decoder_base_dim 256,
  z_dim 48, in/out channels 12, patch_size 2, scale_factor_spatial 16, the 48 latents_mean / latents_std).
  Its ``clip_output: false`` is left out: diffusers' ``AutoencoderKLWan`` no longer takes that argument.
- wan2.2-t2v-a14b: the Wan2.1 VAE's config of Wan-AI/Wan2.1-T2V-1.3B-Diffusers as republished by
  huggingface.co/ai-toolkit/wan2.1-vae (the 14B and VACE-14B Diffusers repos carry the same numbers; they are also
  ``AutoencoderKLWan``'s defaults): base_dim 96, z_dim 16, the 16 latents_mean / latents_std.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import KINDS, identify, read_state_dict


@dataclass(frozen=True)
class WanVAEKind:
    """One Wan VAE as the messages name it: the file a ComfyUI user has, its latent channels, who uses it."""

    title: str
    file: str
    channels: int
    used_by: str
    model: str  # the shipped config folder (configs/<model>/vae)


WAN_VAES = {
    "wan2.1-vae": WanVAEKind("the Wan2.1 VAE", "wan_2.1_vae.safetensors", 16, "A14B", "wan2.2-t2v-a14b"),
    "wan2.2-vae": WanVAEKind("the Wan2.2 VAE", "wan2.2_vae.safetensors", 48, "TI2V-5B", "wan2.2-ti2v-5b"),
}
PICK_ANY = "pick wan2.2_vae.safetensors (TI2V-5B) or wan_2.1_vae.safetensors (A14B) from ComfyUI's vae folder"

# --- Wan2.2 original keys -> AutoencoderKLWan(is_residual=True), after diffusers' convert_vae_22 ---------------
_TOP = {"conv1.weight": "quant_conv.weight", "conv1.bias": "quant_conv.bias",
        "conv2.weight": "post_quant_conv.weight", "conv2.bias": "post_quant_conv.bias"}
_TOWER = {"conv1.weight": "conv_in.weight", "conv1.bias": "conv_in.bias", "head.0.gamma": "norm_out.gamma",
          "head.2.weight": "conv_out.weight", "head.2.bias": "conv_out.bias"}  # inside encoder. / decoder.
_RESNET = {"residual.0.gamma": "norm1.gamma", "residual.2.weight": "conv1.weight", "residual.2.bias": "conv1.bias",
           "residual.3.gamma": "norm2.gamma", "residual.6.weight": "conv2.weight", "residual.6.bias": "conv2.bias",
           "shortcut.weight": "conv_shortcut.weight", "shortcut.bias": "conv_shortcut.bias"}
_ATTENTION = ("norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight", "proj.bias")
_RESAMPLE = ("resample.1.weight", "resample.1.bias", "time_conv.weight", "time_conv.bias")
_MIDDLE = re.compile(r"middle\.(\d+)\.(.+)")
_SAMPLES = {"encoder": re.compile(r"downsamples\.(\d+)\.downsamples\.(\d+)\.(.+)"),
            "decoder": re.compile(r"upsamples\.(\d+)\.upsamples\.(\d+)\.(.+)")}
_BLOCKS = {"encoder": ("down_blocks", "downsampler"), "decoder": ("up_blocks", "upsampler")}


def _wan22_key(key: str) -> str | None:
    """A Wan2.2 VAE key's diffusers name, or None when it is not one of the layout's."""
    if key in _TOP:
        return _TOP[key]
    tower, _, rest = key.partition(".")
    if tower not in _SAMPLES:
        return None
    if rest in _TOWER:
        return f"{tower}.{_TOWER[rest]}"
    if middle := _MIDDLE.fullmatch(rest):
        index, part = int(middle[1]), middle[2]
        if index == 1 and part in _ATTENTION:
            return f"{tower}.mid_block.attentions.0.{part}"
        if index in (0, 2) and part in _RESNET:  # middle = resnet, attention, resnet
            return f"{tower}.mid_block.resnets.{index // 2}.{_RESNET[part]}"
        return None
    if samples := _SAMPLES[tower].fullmatch(rest):
        block, layer, part = samples[1], samples[2], samples[3]
        blocks, sampler = _BLOCKS[tower]
        if part in _RESNET:
            return f"{tower}.{blocks}.{block}.resnets.{layer}.{_RESNET[part]}"
        if part in _RESAMPLE:  # the block's last layer; diffusers keeps it outside the resnets, unnumbered
            return f"{tower}.{blocks}.{block}.{sampler}.{part}"
    return None


def wan22_vae_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan2.2 VAE original keys -> ``AutoencoderKLWan(is_residual=True)`` keys (diffusers' ``convert_vae_22``
    mapping); block and layer indices are carried over, so any size maps. Raises listing unmapped keys."""
    names = {key: _wan22_key(key) for key in state}
    unmapped = sorted(key for key, name in names.items() if name is None)
    if unmapped:
        raise ValueError(f"{len(unmapped)} keys are not in the Wan2.2 VAE layout: {unmapped[:8]}")
    if len(set(names.values())) < len(names):
        raise ValueError("two keys of the Wan2.2 VAE map to one diffusers weight (two resample layers in one block)")
    return {names[key]: value for key, value in state.items()}


def identify_wan_vae(state: dict[str, torch.Tensor]) -> str | None:
    """``"wan2.1-vae"``, ``"wan2.2-vae"`` or None, from the keys (original Wan or diffusers names).

    The layout decides, not the width, so that any size is named: the Wan2.2 VAE has residual down blocks
    (``encoder.downsamples.0.downsamples.0...``; diffusers: ``encoder.down_blocks.0.resnets.0...``), the Wan2.1
    VAE plain ones (``encoder.downsamples.0.residual...``). At full size ``conv1.weight`` (diffusers
    ``quant_conv.weight``) has 2 x 48 or 2 x 16 output channels, ``wan_vae_channels`` reads them.
    """
    kind = identify(state)  # named where every other file is
    return kind if kind in WAN_VAES else None


def _is_diffusers_wan_vae(state: dict[str, torch.Tensor]) -> bool:
    # AutoencoderKL (SD, FLUX) has 2-D quant convs or none; Wan's are causal 3-D convs
    return {"quant_conv.weight", "encoder.conv_in.weight", "decoder.conv_out.weight"} <= state.keys() and \
        state["quant_conv.weight"].ndim == 5


def wan_vae_channels(state: dict[str, torch.Tensor]) -> int:
    """Latent channels of a Wan VAE state dict: half the encoder's output (it gives mean and log-variance)."""
    return state["conv1.weight" if "conv1.weight" in state else "quant_conv.weight"].shape[0] // 2


def _refuse_other_vae(kind: str, expected: str | None, channels: int, path: Path | str) -> None:
    """Raise naming the file, which VAE it is, and the file the model needs instead."""
    if expected is None or kind == expected:
        return
    need, have = WAN_VAES[expected], WAN_VAES[kind]
    raise ValueError(f"{need.used_by} needs {need.file} ({need.channels} channels); {path} is {have.title} "
                     f"({channels} channels), which is {have.used_by}'s: pick {need.file} from ComfyUI's vae folder")


def _to_diffusers(state: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    if _is_diffusers_wan_vae(state):
        return state
    return wan22_vae_to_diffusers(state) if kind == "wan2.2-vae" else convert_wan_vae_to_diffusers(state)


def load_wan_vae(path: str | os.PathLike, expected: str | None = None, config: dict | None = None,
                 dtype: torch.dtype = torch.float32):
    """A Wan VAE as diffusers' ``AutoencoderKLWan``, in eval mode, frozen, in ``dtype``, from local files only.

    ``path`` is a single ``.safetensors`` file (original Wan or diffusers keys; ComfyUI's prefix and scaled fp8
    handled by ``read_state_dict``) or a diffusers folder (its ``vae/``). ``expected`` (``"wan2.1-vae"`` /
    ``"wan2.2-vae"``) refuses the other VAE with a message naming the file to pick. A single file is built with
    the shipped config of the VAE it is, or ``config`` (other sizes).
    """
    from .loading import shipped_config  # imported here: loading imports this module for Wan's loaders

    path = Path(path)
    if path.is_dir():
        return _load_folder(path, expected, dtype)
    state = read_state_dict(path, "Wan VAE file")
    kind = identify_wan_vae(state)
    if kind is None:
        raise ValueError(f"{path} is {KINDS[identify(state)]}, not a Wan VAE; {PICK_ANY}")
    _refuse_other_vae(kind, expected, wan_vae_channels(state), path)
    try:
        state = _to_diffusers(state, kind)
    except ValueError as error:
        raise ValueError(f"{path}: {error}; it is not a Wan2.2 VAE as Wan-AI and ComfyUI ship it") from error
    return _build(state, config or shipped_config(WAN_VAES[kind].model, "vae"), path, dtype)


def _build(state: dict[str, torch.Tensor], config: dict, path: Path, dtype: torch.dtype):
    """``AutoencoderKLWan(**config)`` holding ``state``: built empty, then the tensors assigned (strict)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan

    with init_empty_weights():
        vae = AutoencoderKLWan.from_config(config)
    shapes = {key: value.shape for key, value in vae.state_dict().items()}
    misfit = sorted(shapes.keys() ^ state.keys()) + sorted(
        key for key in shapes.keys() & state.keys() if shapes[key] != state[key].shape)
    if misfit:
        raise ValueError(f"{path} does not fit the Wan VAE config: {len(misfit)} weights missing, extra or of "
                         f"another shape ({misfit[:3]}); the file may be truncated, or of another size than the config")
    vae.load_state_dict({key: value.to(dtype) for key, value in state.items()}, strict=True, assign=True)
    return vae.eval().requires_grad_(False)


def _load_folder(path: Path, expected: str | None, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan

    from .loading import _part_folder, from_folder

    folder = _part_folder(path, "vae")
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if config.get("_class_name") != "AutoencoderKLWan":
        raise ValueError(f"{folder} holds no AutoencoderKLWan config.json: give a Wan diffusers folder "
                         f"(e.g. Wan2.2-TI2V-5B-Diffusers) or a .safetensors file; {PICK_ANY}")
    kind = "wan2.2-vae" if config.get("is_residual") else "wan2.1-vae"
    _refuse_other_vae(kind, expected, config.get("z_dim", 16), folder)
    vae = from_folder(AutoencoderKLWan, folder, torch_dtype=dtype)
    return vae.eval().requires_grad_(False)


class WanVAECodec:
    """``LatentCodec`` over a Wan VAE (diffusers ``AutoencoderKLWan``): pixels in [0, 1] <-> the latents Wan's
    pipelines feed the transformer, ``(z - latents_mean) / latents_std`` per channel with ``z`` the posterior's
    mode, computed as ``WanImageToVideoPipeline.prepare_latents`` does (in float32, times ``1 / std``); ``decode``
    inverts it as ``WanPipeline`` does before ``vae.decode`` (in the VAE's dtype). Videos are (B, 3, F, H, W) with
    F = 4k + 1; an image (B, 3, H, W) is one frame, and its latents are 4-D too.
    """

    def __init__(self, vae) -> None:
        self.vae = vae
        self.spatial_factor = vae.config.scale_factor_spatial
        self.temporal_factor = vae.config.scale_factor_temporal
        self.latent_channels = vae.config.z_dim

    def _statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and 1/std, shaped, cast and inverted in the order the pipelines use."""
        config = self.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(like.device, like.dtype)
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(like.device, like.dtype)
        return mean, inverse_std

    def _check(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3 or (video.shape[2] - 1) % self.temporal_factor:
            raise ValueError(f"Wan VAEs encode (B, 3, F, H, W) with F = {self.temporal_factor}k + 1 frames, or "
                             f"(B, 3, H, W) images; got shape {tuple(video.shape)}")
        height, width = video.shape[-2:]
        if height % self.spatial_factor or width % self.spatial_factor:
            raise ValueError(f"{height}x{width} px is not a multiple of this Wan VAE's {self.spatial_factor} px "
                             "cells; resize or crop it")

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        video = pixels.unsqueeze(2) if pixels.ndim == 4 else pixels
        self._check(video)
        z = vae.encode((video * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mode().float()  # as prepare_latents
        mean, inverse_std = self._statistics(z)
        latents = (z - mean) * inverse_std
        return latents.squeeze(2) if pixels.ndim == 4 else latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = (latents.unsqueeze(2) if latents.ndim == 4 else latents).to(vae.device, vae.dtype)
        mean, inverse_std = self._statistics(z)
        video = (vae.decode(z / inverse_std + mean, return_dict=False)[0].float() + 1) / 2
        return video.squeeze(2) if latents.ndim == 4 else video
