"""Model loading from local files only (never the network), one loader per model name.

``toy`` is the shipped toy base (the FLUX architecture at toy size). Real FLUX.1 and
Wan2.2 weights are loaded from local files a user already has; their loaders register here.
"""

from __future__ import annotations

from typing import Callable

from .backbones.base import EditBackbone

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
