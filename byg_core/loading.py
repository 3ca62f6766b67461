"""Model loading from local files only (never the network), one loader per model name.

``toy`` is the shipped toy base (the FLUX architecture at toy size). Real FLUX.1 and
Wan2.2 weights are loaded from local files a user already has; their loaders register here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch

from .backbones.base import EditBackbone
from .checkpoints import bfl_to_diffusers, flux_config_from_weights, identify, read_state_dict, refuse_unless

CONFIGS = Path(__file__).parent / "configs"  # the configs of the real models, shipped: nothing asks the hub
FLUX_DEV = CONFIGS / "flux1-dev"

LOADERS: dict[str, Callable[..., EditBackbone]] = {}
PRESET_OF: dict[str, str] = {}  # model name -> its training preset (byg_core.config.PRESETS)


def register_loader(name: str, preset: str | None = None):
    """Decorator: make ``load_backbone(name)`` call the decorated function; ``preset`` names the
    training values the model takes by default (None: its family's, see ``training_preset``)."""

    def wrap(fn: Callable[..., EditBackbone]) -> Callable[..., EditBackbone]:
        LOADERS[name] = fn
        if preset is not None:
            PRESET_OF[name] = preset
        return fn

    return wrap


def training_preset(model: str, family: str) -> str:
    """The preset a model trains with by default: its loader's, else its family's (``flux``, ``wan``)."""
    return PRESET_OF.get(model, family)


@register_loader("toy", preset="toy")
def _load_toy(**options) -> EditBackbone:
    from .toy.model import build_toy_backbone

    return build_toy_backbone(**options)


@register_loader("toy-wan-5b", preset="toy-wan")
def _load_toy_wan_5b(seed: int = 0, **options) -> EditBackbone:
    """Tiny random-init Wan2.2 TI2V-5B layout for toy videos (no pretrained toy video base)."""
    from .toy.video import build_toy_wan_backbone

    return build_toy_wan_backbone("ti2v-5b", seed=seed, **options)


@register_loader("toy-wan-a14b", preset="toy-wan")
def _load_toy_wan_a14b(seed: int = 0, **options) -> EditBackbone:
    """Tiny random-init Wan2.2 T2V-A14B layout (two experts) for toy videos."""
    from .toy.video import build_toy_wan_backbone

    return build_toy_wan_backbone("t2v-a14b", seed=seed, **options)


def load_backbone(model: str, **options) -> EditBackbone:
    """The backbone named ``model`` (see ``LOADERS``)."""
    if model not in LOADERS:
        raise ValueError(f"unknown model {model!r}; available: {sorted(LOADERS)}")
    return LOADERS[model](**options)


def shipped_config(model: str, part: str) -> dict:
    """A shipped config, e.g. ``shipped_config("flux1-dev", "transformer")``."""
    folder = CONFIGS / model / part
    name = "scheduler_config.json" if part == "scheduler" else "config.json"
    return json.loads((folder / name).read_text(encoding="utf-8"))


def load_flux_transformer(
    path: str | Path, dtype: torch.dtype = torch.float32, axes_dims_rope: Sequence[int] | None = None
):
    """FLUX.1's transformer (dev; Kontext dev has the same architecture) from local files only.

    ``path`` is a single file (BFL or diffusers keys; ComfyUI's ``model.diffusion_model.`` prefix; fp8 or
    ComfyUI's scaled fp8, upcast to ``dtype``) or a diffusers folder (its ``transformer/``). The config is
    read from the weights' shapes, which for FLUX.1 is the shipped ``configs/flux1-dev`` one; only the
    rotary axes cannot be read from weights (the shipped ones serve FLUX.1's 128-wide heads).
    """
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    path = Path(path)
    if path.is_dir():
        folder = path / "transformer" if (path / "transformer").is_dir() else path
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} holds no config.json: give a FLUX.1 diffusers folder or a .safetensors file")
        return FluxTransformer2DModel.from_pretrained(folder, local_files_only=True, torch_dtype=dtype).requires_grad_(False)
    state = read_state_dict(path, "FLUX.1 model file")
    kind = identify(state)
    if kind != "flux-diffusers":
        refuse_unless(kind, "flux-bfl", path, "pick flux1-dev.safetensors (or an fp8 variant) from the "
                      "diffusion_models folder")
        state = bfl_to_diffusers(state)
    axes = list(axes_dims_rope or shipped_config("flux1-dev", "transformer")["axes_dims_rope"])
    config = flux_config_from_weights(state, axes)
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(config)
    result = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fill a FLUX.1 transformer: missing {result.missing_keys[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}; the file may be truncated or of another FLUX variant"
        )
    return model.eval().requires_grad_(False)
