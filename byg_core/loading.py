"""Model loading from local files only (never the network), one loader per model name.

``toy`` is the shipped toy base (the FLUX architecture at toy size). Real FLUX.1 and
Wan2.2 weights are loaded from local files a user already has; their loaders register here.
"""

from __future__ import annotations

from typing import Callable

from .backbones.base import EditBackbone

LOADERS: dict[str, Callable[..., EditBackbone]] = {}


def register_loader(name: str):
    """Decorator: make ``load_backbone(name)`` call the decorated function."""

    def wrap(fn: Callable[..., EditBackbone]) -> Callable[..., EditBackbone]:
        LOADERS[name] = fn
        return fn

    return wrap


@register_loader("toy")
def _load_toy(**options) -> EditBackbone:
    from .toy.model import build_toy_backbone

    return build_toy_backbone(**options)


@register_loader("toy-wan-5b")
def _load_toy_wan_5b(seed: int = 0, **options) -> EditBackbone:
    """Tiny random-init Wan2.2 TI2V-5B layout for toy videos (no pretrained toy video base)."""
    from .toy.video import build_toy_wan_backbone

    return build_toy_wan_backbone("ti2v-5b", seed=seed, **options)


@register_loader("toy-wan-a14b")
def _load_toy_wan_a14b(seed: int = 0, **options) -> EditBackbone:
    """Tiny random-init Wan2.2 T2V-A14B layout (two experts) for toy videos."""
    from .toy.video import build_toy_wan_backbone

    return build_toy_wan_backbone("t2v-a14b", seed=seed, **options)


def load_backbone(model: str, **options) -> EditBackbone:
    """The backbone named ``model`` (see ``LOADERS``)."""
    if model not in LOADERS:
        raise ValueError(f"unknown model {model!r}; available: {sorted(LOADERS)}")
    return LOADERS[model](**options)
