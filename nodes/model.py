"""BYGModelLoader: a base model from byg_core's loader registry, as a ``BYG_MODEL``."""

from __future__ import annotations

from . import host
from . import inputs as I
from .values import MODEL, BygModel

_SHARED: dict = {}  # name -> backbone: two loader nodes naming one model share one copy of its weights


class BYGModelLoader:
    DESCRIPTION = "Loads a base model for ByG training and editing (the toy FLUX-architecture base for now)."
    CATEGORY = "ByG/model"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The base model, with no LoRA.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        from byg_core.loading import LOADERS

        return {"required": {"model": I.choice(sorted(LOADERS), "Which base model to load (byg_core's loader registry).")}}

    @host.outside_inference_mode(grad=False)
    def load(self, model):
        from byg_core.loading import load_backbone

        if model not in _SHARED:
            try:
                _SHARED[model] = load_backbone(model)
            except (FileNotFoundError, ValueError) as error:
                raise ValueError(f"BYGModelLoader: cannot load model {model!r}: {error}") from error
        return (BygModel(model, _SHARED[model]),)
