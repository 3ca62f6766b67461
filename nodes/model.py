"""BYGModelLoader: a base model from byg_core's loader registry, as a ``BYG_MODEL``."""

from __future__ import annotations

from dataclasses import dataclass

from . import host
from . import inputs as I
from .values import MODEL, BygModel

NONE = "(none)"
STORAGE = {"bf16": None, "fp8": "float8_e4m3fn"}  # the weights widget -> load_backbone's storage option
_SHARED: dict = {}  # (model, files, clip, vae) -> backbone: loader nodes naming one model share one copy of its weights
# (of the user's files, the last loaded alone)


@dataclass(frozen=True)
class HostFiles:
    """What a model loaded from the user's files takes from the graph, in the words a user reads."""

    diffusion_model: str
    clip: str
    vae: str
    diffusion_model_2: str | None = None  # Wan2.2 A14B's low-noise expert


HOST_FILES = {
    "flux1-dev": HostFiles("flux1-dev.safetensors (or an fp8 / fp8_scaled variant)",
                           "DualCLIPLoader: clip_l + t5xxl, type flux", "VAELoader: ae.safetensors"),
    "wan2.2-ti2v-5b": HostFiles("wan2.2_ti2v_5B_fp16.safetensors", "CLIPLoader: umt5_xxl_fp16 (or fp8_scaled), type wan",
                                "VAELoader: wan2.2_vae.safetensors"),
    "wan2.2-t2v-a14b": HostFiles("wan2.2_t2v_high_noise_14B_fp16.safetensors (or fp8_scaled)",
                                 "CLIPLoader: umt5_xxl_fp16 (or fp8_scaled), type wan",
                                 "VAELoader: wan_2.1_vae.safetensors",
                                 "wan2.2_t2v_low_noise_14B_fp16.safetensors (or fp8_scaled)"),
}


class BYGModelLoader:
    DESCRIPTION = (
        "Loads a base model for ByG training and editing: the built-in toy models, FLUX.1-dev, or Wan2.2 (TI2V-5B, "
        "or T2V-A14B's two experts) from your diffusion_models files with the graph's CLIP and VAE."
    )
    CATEGORY = "ByG/model"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The base model, with no LoRA.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        from byg_core.loading import LOADERS

        files = [NONE, *host.diffusion_model_names()]
        each = lambda what: "; ".join(f"{name}: {getattr(spec, what)}" for name, spec in HOST_FILES.items()  # noqa: E731
                                      if getattr(spec, what))
        return {
            "required": {
                "model": I.choice(sorted(LOADERS), "Which base model: toy (the shipped toy FLUX-architecture base), "
                                  "toy-wan-* (tiny random Wan2.2 stand-ins), or your files: flux1-dev, wan2.2-ti2v-5b, "
                                  "wan2.2-t2v-a14b (model files, CLIP and VAE below).", "toy"),
                "diffusion_model": I.choice(files, "The model file in diffusion_models. " + each("diffusion_model")
                                            + ". Unused by the toy models."),
            },
            "optional": {
                "diffusion_model_2": I.choice(files, "Wan2.2 T2V-A14B only: its low-noise expert (the high-noise one "
                                              "goes in diffusion_model). " + each("diffusion_model_2")),
                "weights": I.choice(list(STORAGE), "How the model's weights are kept on the GPU: bf16, or fp8 (half "
                                    "the memory: FLUX.1-dev on 24 GB, both A14B experts on 48 GB; the LoRA still "
                                    "trains in full precision). Unused by the toy models.", "bf16"),
                "clip": I.socket("CLIP", each("clip") + "."),
                "vae": I.socket("VAE", each("vae") + "."),
            },
        }

    @host.outside_inference_mode(grad=False)
    def load(self, model, diffusion_model, diffusion_model_2=NONE, weights="bf16", clip=None, vae=None):
        from byg_core.loading import NEEDS_FILES, load_backbone
        from byg_core.memory import check_weights_fit, gpu_bytes

        options = self._files(model, diffusion_model, diffusion_model_2, clip, vae) if model in NEEDS_FILES else {}
        if options and STORAGE[weights]:
            options["storage"] = STORAGE[weights]
        # the host's CLIP and VAE objects themselves (not their ids, which a freed object's successor may reuse)
        key = (model, diffusion_model, diffusion_model_2, weights, clip, vae) if options else (model,)
        if key not in _SHARED:
            try:
                if options:  # refused before a byte is read when the weights cannot fit the GPU
                    check_weights_fit(model, options.get("storage"), options["dtype"], gpu_bytes(host.torch_device()))
                    _release_file_models()
                # the transformer (and a toy's own text encoder and codec) on ComfyUI's device; its CLIP and VAE
                # stay where ComfyUI places them
                _SHARED[key] = load_backbone(model, **options).to(host.torch_device())
            except (FileNotFoundError, ValueError) as error:
                raise ValueError(f"BYGModelLoader: cannot load model {model!r}: {error}") from error
        return (BygModel(model, _SHARED[key]),)

    @staticmethod
    def _files(model, diffusion_model, diffusion_model_2, clip, vae) -> dict:
        """The user's model file(s) and the graph's CLIP and VAE, as load_backbone's options."""
        import torch

        spec = HOST_FILES[model]
        wanted = [(f"pick 'diffusion_model' ({spec.diffusion_model})", diffusion_model != NONE),
                  (f"connect 'clip' ({spec.clip})", clip is not None), (f"connect 'vae' ({spec.vae})", vae is not None)]
        if spec.diffusion_model_2:
            wanted.insert(1, (f"pick 'diffusion_model_2' ({spec.diffusion_model_2})", diffusion_model_2 != NONE))
        missing = [what for what, given in wanted if not given]
        if missing:
            raise ValueError(f"BYGModelLoader: {model} is loaded from your files: " + "; ".join(missing))
        options = {
            "transformer": host.diffusion_model_path(diffusion_model),
            "text_encoder": host.HostCLIP(clip),
            "codec": host_codec(model, vae),
            "dtype": "bfloat16" if torch.device(host.torch_device()).type == "cuda" else "float32",
        }
        if spec.diffusion_model_2:
            options["transformer_2"] = host.diffusion_model_path(diffusion_model_2)
        return options


def _release_file_models() -> None:
    """Drop the model of the user's files loaded before (a toy's key is its name alone) before another loads: the
    host dropped its node's output when an input changed (the weights widget, a CLIP it loaded again), so only this
    cache kept it, on the GPU and beyond the host's reach (FLUX fp8 twice: 24 GB)."""
    for key in [key for key in _SHARED if len(key) > 1]:
        del _SHARED[key]
    host.empty_cache()


def host_codec(model: str, vae) -> host.HostVAE:
    """The host's VAE with the latent normalisation of ``model``'s shipped VAE config (FLUX.1: shift and scale;
    Wan: per-channel mean and std), refused with the VAE to connect when its channels do not fit."""
    from byg_core.loading import shipped_config

    config = shipped_config(model, "vae")
    channels = config.get("z_dim", config.get("latent_channels"))  # Wan's config names them z_dim, FLUX.1's not
    if vae.latent_channels != channels:
        raise ValueError(f"BYGModelLoader: {model} takes a VAE of {channels} latent channels; the connected one "
                         f"has {vae.latent_channels}: connect {HOST_FILES[model].vae}")
    if config.get("latents_mean") is None:  # FLUX.1 (its config names the key, empty)
        return host.HostVAE(vae, config["shift_factor"], config["scaling_factor"])
    return host.HostVAE(vae, config["latents_mean"], [1 / s for s in config["latents_std"]],
                        config.get("scale_factor_temporal", 4))
