"""The one adapter to ComfyUI's host modules, plus IMAGE <-> tensor conversion.

Every host import (``folder_paths``, ``comfy.utils``, ``comfy.model_management``) happens
inside a function, so the pack imports and its tests run without ComfyUI. Without the
host: the ``loras`` folder is ``$BYG_LORAS_DIR`` (else ``./loras``), the output, input and temp
folders are ``$BYG_OUTPUT_DIR`` / ``$BYG_INPUT_DIR`` / ``$BYG_TEMP_DIR`` (else ``./output`` ...), the
progress bar does nothing and ComfyUI's interrupt never fires.

ComfyUI's IMAGE is (B, H, W, C) float in [0, 1]; byg_core takes pixels (B, 3, H, W) and
videos (B, 3, F, H, W).
"""

from __future__ import annotations

import filecmp
import functools
import gc
import os
import shutil
from pathlib import Path

import torch

LORA_SUFFIXES = (".safetensors",)


# --- folders ----------------------------------------------------------------------------
def _folder_paths():
    try:
        import folder_paths
    except ImportError:
        return None
    return folder_paths


def loras_dir() -> Path:
    """Where new LoRAs are saved: the first of ComfyUI's ``loras`` folders."""
    host = _folder_paths()
    if host is not None:
        return Path(host.get_folder_paths("loras")[0])
    return Path(os.environ.get("BYG_LORAS_DIR", "loras"))


def lora_names() -> list[str]:
    """LoRA files ComfyUI lists (relative names), safetensors only."""
    host = _folder_paths()
    if host is not None:
        names = host.get_filename_list("loras")
    else:
        root = loras_dir()
        names = [p.relative_to(root).as_posix() for p in root.rglob("*")] if root.is_dir() else []
    return sorted(n for n in names if n.lower().endswith(LORA_SUFFIXES))  # ComfyUI lists B.SAFETENSORS too


def lora_path(name: str) -> Path:
    """The full path of a LoRA listed by ``lora_names``."""
    host = _folder_paths()
    path = host.get_full_path("loras", name) if host is not None else loras_dir() / name
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(f"LoRA {name!r} is not in the loras folder ({loras_dir()}); refresh the node list")
    return Path(path)


def output_dir() -> Path:
    host = _folder_paths()
    if host is not None:
        return Path(host.get_output_directory())
    return Path(os.environ.get("BYG_OUTPUT_DIR", "output"))


def temp_dir() -> Path:
    host = _folder_paths()
    if host is not None:
        return Path(host.get_temp_directory())
    return Path(os.environ.get("BYG_TEMP_DIR", "temp"))


def ui_images(image: torch.Tensor, prefix: str) -> dict:
    """Show IMAGE frames under the node, as ``PreviewImage`` does: PNGs in the temp folder, listed in a ``ui`` dict."""
    from PIL import Image

    from byg_core.safefiles import new_file

    folder = temp_dir() / "byg"
    folder.mkdir(parents=True, exist_ok=True)
    shown = []
    for frame in image:
        path = new_file(folder, f"{prefix}_", ".png")
        Image.fromarray((frame.clamp(0, 1).numpy() * 255).round().astype("uint8")).save(path)
        shown.append({"filename": path.name, "subfolder": "byg", "type": "temp"})
    return {"images": shown}


def input_dir() -> Path:
    host = _folder_paths()
    if host is not None:
        return Path(host.get_input_directory())
    return Path(os.environ.get("BYG_INPUT_DIR", "input"))


def install_loras(paths: list[Path]) -> list[Path]:
    """Copy trained LoRA files into the loras folder (atomically: a half-copied file is never listed)."""
    from byg_core.safefiles import atomic_path

    target_dir = loras_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    installed = []
    for path in paths:
        target = target_dir / Path(path).name
        if not (target.is_file() and filecmp.cmp(path, target, shallow=False)):  # a finished run asked again
            with atomic_path(target) as partial:
                shutil.copyfile(path, partial)
        installed.append(target)
    return installed


# --- progress and interrupt ---------------------------------------------------------------
def _model_management():
    try:
        import comfy.model_management as model_management
    except ImportError:
        return None
    return model_management


def torch_device():
    """The device ComfyUI runs models on (its --cpu, --directml, ... choice); without the host, the GPU if any."""
    host = _model_management()
    if host is None:
        from byg_core.backbones.base import default_device

        return default_device()
    return host.get_torch_device()


def free_host_models(backbone) -> None:
    """Take the host's own models (its CLIP, VAE) off the GPU once a run on ``backbone`` has what it needs of them:
    ours are outside its bookkeeping, so it would keep T5-XXL (9 GB) beside a training or an edit; it loads them again
    when asked. A backbone using neither (the toys) leaves the host's models as they are."""
    host = _model_management()
    if host is not None and (isinstance(backbone.text_encoder, HostCLIP) or isinstance(backbone.codec, HostVAE)):
        host.unload_all_models()
        empty_cache()


def empty_cache() -> None:
    """Give the GPU memory of models just dropped back (the host's own call where there is one)."""
    gc.collect()
    host = _model_management()
    if host is not None:
        host.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def interrupted() -> bool:
    """Whether the user pressed ComfyUI's Cancel (polled, the flag stays set)."""
    host = _model_management()
    return bool(host is not None and host.processing_interrupted())


def _is_interrupt(error: BaseException) -> bool:
    return type(error).__name__ == "InterruptProcessingException"


class Progress:
    """ComfyUI's progress bar for a long loop that must stop cleanly, not mid-step.

    ComfyUI's bar raises ``InterruptProcessingException`` from ``update`` once the user
    cancels; a trainer must first save its checkpoint, so that exception is caught here,
    ``should_stop`` reports it, and ``raise_if_interrupted`` re-raises it afterwards.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self._stopped: BaseException | None = None
        try:
            from comfy.utils import ProgressBar
        except ImportError:
            self._bar = None
        else:
            self._bar = ProgressBar(total)

    def update(self, value: int, preview_image=None) -> None:
        """Move the bar to ``value``; ``preview_image`` (a PIL image) shows under the node."""
        if self._bar is None or self.should_stop():
            return
        preview = None if preview_image is None else ("JPEG", preview_image, 512)
        try:
            self._bar.update_absolute(value, self.total, preview)
        except Exception as error:  # the host's interrupt exception is not importable without the host
            if not _is_interrupt(error):
                raise
            self._stopped = error

    def should_stop(self) -> bool:
        return self._stopped is not None or interrupted()

    def raise_if_interrupted(self) -> None:
        """Re-raise the user's interrupt, so ComfyUI stops the queue and caches no partial result."""
        if self._stopped is not None:
            raise self._stopped
        host = _model_management()
        if host is not None:
            host.throw_exception_if_processing_interrupted()


# --- the executor's inference mode ----------------------------------------------------------
def outside_inference_mode(grad: bool):
    """Decorator for a node's FUNCTION: run it with inference mode off and autograd on (``grad``) or off.

    ComfyUI's executor runs every node under ``torch.inference_mode()``. Tensors made there are
    inference tensors, which autograd refuses ("does not require grad", "cannot be saved for
    backward"), so a node that trains leaves inference mode and enables grad, as ComfyUI's own
    ``TrainLoraNode`` does; a node that builds or patches the shared backbone (model loader, LoRA
    loader, samplers) leaves it too, or the weights and adapters it creates could never be trained
    later. Host tensors entering here are cloned by ``image_to_pixels`` / ``frames_to_video``.
    """

    def wrap(function):
        @functools.wraps(function)
        def call(*args, **kwargs):
            with torch.inference_mode(False), torch.set_grad_enabled(grad):
                return function(*args, **kwargs)

        return call

    return wrap


# --- the host's CLIP and VAE behind byg_core's TextEncoder and LatentCodec ------------------------------------------
class HostCLIP:
    """ComfyUI's CLIP (e.g. DualCLIPLoader's clip_l + t5xxl, type flux) as a byg_core ``TextEncoder``: each
    prompt tokenized and encoded by the host, giving the token states and the pooled vector FLUX takes."""

    def __init__(self, clip) -> None:
        self.clip = clip

    def __call__(self, prompts):
        from byg_core.backbones.base import TextCond

        conds = []
        for prompt in prompts:
            tokens, pooled = self.clip.encode_from_tokens(self.clip.tokenize(prompt), return_pooled=True)
            conds.append(TextCond(tokens.float(), None if pooled is None else pooled.float()))
        return TextCond.cat(conds)


class HostVAE:
    """ComfyUI's VAE as a byg_core ``LatentCodec`` in the transformer's latent space: the host's VAE gives the
    first stage's ``z``; the model takes ``(z - shift) * scale``, per channel where ``shift`` and ``scale`` are
    lists (FLUX.1: 0.1159 and 0.3611; Wan: the VAE's latents_mean and 1 / latents_std), as ComfyUI's own latent
    formats apply inside the model. A video VAE (``temporal_factor`` > 1, Wan) takes each sample's frames as one
    video, as ComfyUI's VAEEncode does, and images as one-frame videos."""

    def __init__(self, vae, shift, scale, temporal_factor: int = 1) -> None:
        self.vae, self.temporal_factor = vae, temporal_factor
        self.spatial_factor = vae.spacial_compression_encode()
        self.latent_channels = vae.latent_channels
        self.shift, self.scale = (torch.as_tensor(v, dtype=torch.float32) for v in (shift, scale))
        if self.shift.numel() not in (1, self.latent_channels):
            raise ValueError(f"this VAE has {self.latent_channels} latent channels, the model takes "
                             f"{self.shift.numel()}: connect the VAE the model was trained with")

    def _per_channel(self, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return value.to(like.device).reshape(-1, *([1] * (like.ndim - 2))) if value.numel() > 1 else value.to(like.device)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.temporal_factor == 1:
            z = self.vae.encode(pixels.permute(0, 2, 3, 1).clone())  # ComfyUI's IMAGE layout (B, H, W, C)
        else:  # one video (F, H, W, C) per sample; an image is a one-frame video
            videos = pixels.unsqueeze(2) if pixels.ndim == 4 else pixels
            z = torch.cat([self.vae.encode(video.permute(1, 2, 3, 0).clone()) for video in videos])
            z = z.squeeze(2) if pixels.ndim == 4 else z
        z = z.to(pixels.device, torch.float32)
        return (z - self._per_channel(self.shift, z)) * self._per_channel(self.scale, z)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float() / self._per_channel(self.scale, latents) + self._per_channel(self.shift, latents)
        if self.temporal_factor == 1:
            return self.vae.decode(z.cpu()).permute(0, 3, 1, 2).to(latents.device, torch.float32)
        videos = z.unsqueeze(2) if z.ndim == 4 else z
        frames = self.vae.decode(videos.cpu())  # (B, F, H, W, C)
        pixels = frames.permute(0, 4, 1, 2, 3).to(latents.device, torch.float32)
        return pixels.squeeze(2) if z.ndim == 4 else pixels


def diffusion_model_names() -> list[str]:
    """Model files in ComfyUI's diffusion_models folder (and its old name, unet): .safetensors, or BFL's .sft."""
    from byg_core.checkpoints import SAFETENSORS_SUFFIXES

    host = _folder_paths()
    if host is None:
        root = Path(os.environ.get("BYG_DIFFUSION_MODELS_DIR", "models/diffusion_models"))
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.suffix.lower() in SAFETENSORS_SUFFIXES) if root.is_dir() else []
    return sorted(n for n in host.get_filename_list("diffusion_models") if n.lower().endswith(SAFETENSORS_SUFFIXES))


def diffusion_model_path(name: str) -> Path:
    host = _folder_paths()
    path = (host.get_full_path("diffusion_models", name) if host is not None
            else Path(os.environ.get("BYG_DIFFUSION_MODELS_DIR", "models/diffusion_models")) / name)
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(f"{name!r} is not in the diffusion_models folder; refresh the node list")
    return Path(path)


# --- IMAGE <-> pixels ---------------------------------------------------------------------
def _check_image(image: torch.Tensor, what: str) -> None:
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"{what} must be a ComfyUI IMAGE (batch, height, width, 3), got shape {tuple(image.shape)}")


def image_to_pixels(image: torch.Tensor) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> pixels (B, 3, H, W), a fresh tensor (never the host's inference tensor); no alpha."""
    _check_image(image, "image")
    return image[..., :3].permute(0, 3, 1, 2).float().clone(memory_format=torch.contiguous_format)


def pixels_to_image(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, H, W) -> IMAGE (B, H, W, 3), float32 on the CPU, clamped to [0, 1]."""
    return pixels.detach().permute(0, 2, 3, 1).float().clamp(0, 1).cpu().contiguous()


def frames_to_video(frames: torch.Tensor) -> torch.Tensor:
    """IMAGE frames (F, H, W, C) -> one video (1, 3, F, H, W), a fresh tensor (see ``image_to_pixels``)."""
    _check_image(frames, "frames")
    return frames[..., :3].permute(3, 0, 1, 2).unsqueeze(0).float().clone(memory_format=torch.contiguous_format)


def video_to_frames(video: torch.Tensor) -> torch.Tensor:
    """Videos (B, 3, F, H, W) -> IMAGE frames (B * F, H, W, 3), as VAEDecode flattens video."""
    return video.detach().permute(0, 2, 3, 4, 1).flatten(0, 1).float().clamp(0, 1).cpu().contiguous()
