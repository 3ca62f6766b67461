"""BYGModelLoader: a base model from byg_core's loader registry, as a ``BYG_MODEL``."""

from __future__ import annotations

from . import host
from . import inputs as I
from .values import MODEL, BygModel

NONE = "(none)"
_SHARED: dict = {}  # (model, file, clip, vae) -> backbone: loader nodes naming one model share one copy of its weights


class BYGModelLoader:
    DESCRIPTION = (
        "Loads a base model for ByG training and editing: the built-in toy models, or FLUX.1-dev from your "
        "diffusion_models file with the graph's CLIP (DualCLIPLoader: clip_l + t5xxl, type flux) and VAE (ae)."
    )
    CATEGORY = "ByG/model"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The base model, with no LoRA.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        from byg_core.loading import LOADERS

        return {
            "required": {
                "model": I.choice(sorted(LOADERS), "Which base model: toy (the shipped toy FLUX-architecture base), "
                                  "toy-wan-* (tiny random Wan2.2 stand-ins), flux1-dev (your FLUX.1-dev file, CLIP and "
                                  "VAE below).", "toy"),
                "diffusion_model": I.choice([NONE, *host.diffusion_model_names()], "For flux1-dev: the model file in "
                                            "diffusion_models (flux1-dev.safetensors, or an fp8 / fp8_scaled variant; "
                                            "FLUX.1 Kontext dev loads too). Unused by the toy models."),
            },
            "optional": {
                "clip": I.socket("CLIP", "For flux1-dev: DualCLIPLoader with clip_l and t5xxl, type flux."),
                "vae": I.socket("VAE", "For flux1-dev: VAELoader with ae.safetensors."),
            },
        }

    @host.outside_inference_mode(grad=False)
    def load(self, model, diffusion_model, clip=None, vae=None):
        from byg_core.loading import NEEDS_FILES, load_backbone

        options = self._files(model, diffusion_model, clip, vae) if model in NEEDS_FILES else {}
        # the host's CLIP and VAE objects themselves (not their ids, which a freed object's successor may reuse)
        key = (model, diffusion_model, clip, vae) if options else (model,)
        if key not in _SHARED:
            try:
                _SHARED[key] = load_backbone(model, **options)
            except (FileNotFoundError, ValueError) as error:
                raise ValueError(f"BYGModelLoader: cannot load model {model!r}: {error}") from error
        return (BygModel(model, _SHARED[key]),)

    @staticmethod
    def _files(model, diffusion_model, clip, vae) -> dict:
        """The user's FLUX.1 file and the graph's CLIP and VAE, as load_backbone's options."""
        import torch
        from byg_core.loading import shipped_config

        missing = [what for what, given in (("pick 'diffusion_model'", diffusion_model != NONE),
                                            ("connect 'clip' (DualCLIPLoader: clip_l + t5xxl, type flux)", clip is not None),
                                            ("connect 'vae' (VAELoader: ae.safetensors)", vae is not None)) if not given]
        if missing:
            raise ValueError(f"BYGModelLoader: {model} is loaded from your files: " + "; ".join(missing))
        latent = shipped_config("flux1-dev", "vae")
        return {
            "transformer": host.diffusion_model_path(diffusion_model),
            "text_encoder": host.HostCLIP(clip),
            "codec": host.HostVAE(vae, latent["shift_factor"], latent["scaling_factor"]),
            "dtype": "bfloat16" if torch.cuda.is_available() else "float32",
        }
