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


def load_backbone(model: str, **options) -> EditBackbone:
    """The backbone named ``model`` (see ``LOADERS``)."""
    if model not in LOADERS:
        raise ValueError(f"unknown model {model!r}; available: {sorted(LOADERS)}")
    return LOADERS[model](**options)
