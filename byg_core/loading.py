"""Model loading from local files only (never the network), one loader per model name.

``toy`` is the shipped toy base (the FLUX architecture at toy size). Real FLUX.1 and
Wan2.2 weights are loaded from local files a user already has; their loaders register here.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Sequence

import torch

from .backbones.base import EditBackbone
from .checkpoints import (KINDS, SAFETENSORS_SUFFIXES, bfl_to_diffusers, flux_config_from_weights, identify, read_state_dict, refuse_unless,
                          wan_config_from_weights, wan_to_diffusers)

CONFIGS = Path(__file__).parent / "configs"  # the configs of the real models, shipped: nothing asks the hub
FLUX_DEV = CONFIGS / "flux1-dev"

LOADERS: dict[str, Callable[..., EditBackbone]] = {}
PRESET_OF: dict[str, str] = {}  # model name -> its training preset (byg_core.config.PRESETS)
NEEDS_FILES: set[str] = set()  # models loaded from the user's files (the rest are built in)


def register_loader(name: str, preset: str | None = None, needs_files: bool = False):
    """Decorator: make ``load_backbone(name)`` call the decorated function; ``preset`` names the
    training values the model takes by default (None: its family's, see ``training_preset``);
    ``needs_files``: the model is the user's weights, named in the loader's options."""

    def wrap(fn: Callable[..., EditBackbone]) -> Callable[..., EditBackbone]:
        LOADERS[name] = fn
        if preset is not None:
            PRESET_OF[name] = preset
        if needs_files:
            NEEDS_FILES.add(name)
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


def check_model_name(model: str) -> None:
    """A model this pack loads (``LOADERS``), or refused with the nearest name and the list."""
    import difflib

    if model not in LOADERS:
        close = difflib.get_close_matches(model, LOADERS, 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model {model!r}{hint}; known models: {', '.join(sorted(LOADERS))}")


HOST_OPTIONS = ("text_encoder", "codec")  # a host's own objects (ComfyUI's CLIP and VAE), not what a config names


def check_model_files(model: str, files: dict, top_level: Sequence[str] = ()) -> None:
    """A config's model files and options against ``model``'s loader when the config is read, not when loading
    reaches them: unknown keys (the nearest named; a ``top_level`` setting written below the table said so), a path
    that is not text, dtype and storage out of their lists. The toys take any option."""
    import difflib
    import inspect

    parameters = inspect.signature(LOADERS[model]).parameters if model in LOADERS else {}
    if not parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    keys = [k for k in parameters if k not in ("model", *HOST_OPTIONS)]
    for key, value in files.items():
        if key in top_level and key not in keys:
            raise ValueError(f"{key!r} is a top-level setting, not a model file: write it above the first [table] "
                             "(a TOML table holds every key below it up to the next table)")
        if key not in keys:
            close = difflib.get_close_matches(key, keys, 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{key!r} is not one of {model}'s files or options{hint}; it takes {', '.join(keys)}")
        if "Path" in str(parameters[key].annotation) and not isinstance(value, str):
            raise ValueError(f"{key} must be a path (text), got {value!r}")
    for key in ("dtype", "storage"):
        if files.get(key) is not None and not isinstance(files[key], str):
            raise ValueError(f"{key} must be text, e.g. \"bfloat16\", got {files[key]!r}")
    if "dtype" in files:
        torch_dtype_of(files["dtype"])
    if files.get("storage") is not None and files["storage"] not in STORAGE:
        raise ValueError(f"storage must be one of {sorted(STORAGE)}, got {files['storage']!r}")


def model_experts(model: str) -> tuple[str, ...] | None:
    """A real model's transformers, by name (A14B: high-noise ``transformer``, low-noise ``transformer_2``); None for
    the toys, whose loaded backbone says."""
    if model == "flux1-dev":
        return ("transformer",)
    if model in WAN_MODELS:
        from .backbones.wan import WAN22_VARIANTS

        return ("transformer", "transformer_2") if WAN22_VARIANTS[WAN_MODELS[model][0]].two_experts else ("transformer",)
    return None


def load_backbone(model: str, **options) -> EditBackbone:
    """The backbone named ``model`` (see ``LOADERS``); ``options`` are its loader's (the files it reads)."""
    import inspect

    check_model_name(model)
    loader = LOADERS[model]
    parameters = inspect.signature(loader).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(options) - set(parameters))
        if unknown:
            raise ValueError(f"model {model!r} takes {sorted(parameters)}, not {unknown}")
    return loader(**options)


def check_size_before_loading(model: str, height: int, width: int, frames: int | None = None) -> None:
    """A real model's pixel rule from its shipped configs, so a size it cannot take is refused before minutes of
    loading (``PixelShapeError``; the loaded model checks again, and the toys, loaded in a second, are checked then)."""
    if model == "flux1-dev":
        from .backbones.flux import check_flux_pixels, vae_spatial_factor

        check_flux_pixels((1, 3, height, width), vae_spatial_factor(shipped_config(model, "vae")))
    elif model in WAN_MODELS:
        from .backbones.wan import WAN22_VARIANTS, check_wan_pixels

        variant = WAN22_VARIANTS[WAN_MODELS[model][0]]
        check_wan_pixels((1, 3, frames or 1, height, width), variant.transformer["patch_size"],
                         variant.vae_spatial_factor, variant.vae_temporal_factor)


def missing_model_files(model: str, files: dict) -> list[tuple[str, str]]:
    """The (option, path) pairs of ``files`` that name a path (the loader's ``Path`` options) not on disk: found
    before the model loads, not when its part's turn comes (FLUX.1's VAE after the 12B transformer)."""
    import inspect

    options = inspect.signature(LOADERS[model]).parameters if model in LOADERS else {}
    return [(key, str(value)) for key, value in files.items()
            if key in options and "Path" in str(options[key].annotation) and value is not None
            and not Path(value).exists()]


def file_kinds(model: str) -> dict[str, tuple[str, ...]]:
    """A real model's single-file options -> the kinds (``checkpoints.KINDS``) a file given there may be."""
    if model == "flux1-dev":
        return {"transformer": ("flux-bfl", "flux-diffusers"), "vae": ("flux-vae",), "clip_l": ("clip-l",),
                "t5": ("t5",)}
    if model in WAN_MODELS:
        _, transformer, vae, _ = WAN_MODELS[model]
        return {"transformer": (transformer,), "transformer_2": (transformer,), "vae": (vae,), "umt5": ("umt5",)}
    return {}


def wrong_kind_files(model: str, files: dict) -> list[str]:
    """What is wrong with each single file given for a part of another kind (or one shard of a model), read from its
    header (``checkpoints.header_state``): a VAE or text encoder of another model is found before minutes of loading
    the transformers, not after. A file that cannot be read is left to its loader, which names it."""
    from .checkpoints import header_state, refuse_shard

    wrong = []
    for option, kinds in file_kinds(model).items():
        path = Path(files[option]) if isinstance(files.get(option), str) else None
        if path is None or not path.is_file():
            continue
        try:
            refuse_shard(path, f"model file {option} =")
            state = header_state(path)
            if state is not None and option.startswith("transformer") and model in WAN_MODELS:
                _refuse_other_wan(identify(state), model, path)  # its advice: the Wan model that file is
            elif state is not None and identify(state) not in kinds:
                wrong.append(f"model file {option} = {path} is {KINDS[identify(state)]}, not {KINDS[kinds[0]]}")
        except ValueError as error:
            wrong.append(str(error) if str(error).startswith("model file") else f"model file {option} = {error}")
    return wrong


def check_guidance_before_loading(model: str, scales) -> None:
    """An edit's classifier-free guidance (``sample.guide_scale_values``) against a real model's experts, from its
    shipped facts, before minutes of loading (the toys, loaded in a second, are checked once loaded)."""
    from .sample import guide_scale_values

    if model == "flux1-dev":
        guide_scale_values(scales, None, "flux")
    elif model in WAN_MODELS:
        from .backbones.wan import WAN22_VARIANTS

        guide_scale_values(scales, len(WAN22_VARIANTS[WAN_MODELS[model][0]].guide_scales), "wan")


def check_distilled_guidance_before_loading(model: str) -> None:
    """A distilled guidance (``sample.distilled_guidance_of``) asked of a real Wan2.2 model, which has no such input,
    refused before minutes of loading (the toys are checked once loaded)."""
    from .sample import NO_DISTILLED_GUIDANCE

    if model in WAN_MODELS:
        raise ValueError(NO_DISTILLED_GUIDANCE.format(family="wan"))


def shipped_config(model: str, part: str) -> dict:
    """A shipped config as constructor arguments (its ``_class_name``-style keys left out),
    e.g. ``shipped_config("flux1-dev", "transformer")``."""
    folder = CONFIGS / model / part
    name = "scheduler_config.json" if part == "scheduler" else "config.json"
    return {k: v for k, v in json.loads((folder / name).read_text(encoding="utf-8")).items() if not k.startswith("_")}


def from_folder(cls, folder: Path, **options):
    """``cls.from_pretrained`` on a local diffusers / transformers folder: its .safetensors weights only (a folder
    holding only pickled .bin weights is refused, never unpickled), never the network."""
    config = folder / "config.json"
    named = json.loads(config.read_text(encoding="utf-8")).get("_class_name") if config.is_file() else None
    if named is not None and named != cls.__name__:  # e.g. Wan-AI's own repos: "WanModel", Wan's key names
        raise ValueError(f"{config} names {named}, not {cls.__name__}: a folder of another layout (Wan-AI's own "
                         "repos: use their -Diffusers ones); give the model's diffusers folder or its single .safetensors file")
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True, output_loading_info=True,
                                          **options)
    except OSError as error:
        raise FileNotFoundError(f"{folder} holds no .safetensors weights for {cls.__name__} ({error}); nothing is "
                                "unpickled: give a folder with .safetensors files, or the model's single file") from error
    # a weight the folder lacks is only a log line: diffusers leaves it on the meta device (no data), transformers
    # fills it at random (an encoder that turns every caption into noise); refused here, by name
    missing = sorted(info["missing_keys"])
    if missing:
        raise ValueError(f"{folder} does not hold {len(missing)} of {cls.__name__}'s weights ({', '.join(missing[:3])}"
                         f"{', ...' if len(missing) > 3 else ''}): its files are incomplete or of another model; give "
                         "the model's whole diffusers folder or its single .safetensors file")
    return model


def _part_folder(path: Path, part: str) -> Path:
    """A diffusers folder's ``part/`` (``transformer``, ``vae``, ...), or ``path`` itself when it is that part."""
    return path / part if (path / part).is_dir() else path


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
        folder = _part_folder(path, "transformer")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} holds no config.json: give a FLUX.1 diffusers folder or a .safetensors file")
        model = from_folder(FluxTransformer2DModel, folder, torch_dtype=dtype)
        refuse_other_flux1(model.config, folder)
        return model.requires_grad_(False)
    state = read_state_dict(path, "FLUX.1 model file")
    kind = identify(state)
    if kind != "flux-diffusers":
        refuse_unless(kind, "flux-bfl", path, "pick flux1-dev.safetensors (or an fp8 variant) from the "
                      "diffusion_models folder")
        state = bfl_to_diffusers(state)
    axes = list(axes_dims_rope or shipped_config("flux1-dev", "transformer")["axes_dims_rope"])
    config = flux_config_from_weights(state, axes)
    refuse_other_flux1(config, path)
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(config)
    result = model.load_state_dict(cast_each(state, lambda key: dtype), strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fill a FLUX.1 transformer: missing {result.missing_keys[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}; the file may be truncated or of another FLUX variant"
        )
    return model.eval().requires_grad_(False)


def refuse_other_flux1(config, path: str | Path) -> None:
    """FLUX.1-dev (or Kontext dev) only: schnell has no guidance embedder (timestep-distilled, another schedule),
    Fill / Depth / Canny take their condition as extra input channels; either would train a LoRA labelled dev."""
    config = dict(config)
    if not config["guidance_embeds"]:
        raise ValueError(f"{path} is a FLUX.1 model without a guidance embedder (FLUX.1-schnell): ByG trains on "
                         "FLUX.1-dev; pick flux1-dev.safetensors (or an fp8 variant)")
    if config["in_channels"] != (config.get("out_channels") or config["in_channels"]):
        raise ValueError(f"{path} is a FLUX.1 model taking {config['in_channels']} input channels for "
                         f"{config['out_channels']} out (FLUX.1 Fill, Depth or Canny): ByG trains on FLUX.1-dev; "
                         "pick flux1-dev.safetensors (or an fp8 variant)")


# kept at compute precision under fp8 storage: norms and the layers into and out of the model (diffusers'
# defaults), the embedders; a LoRA injected later wraps its base layer and stays in its own dtype
FP8_SKIP = ("norm", "^proj_out$", "^x_embedder$", "^context_embedder$", "time_text_embed", "pos_embed")
STORAGE = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}


# Wan: diffusers' own skip list for WanTransformer3DModel plus the output projection
WAN_FP8_SKIP = ("patch_embedding", "condition_embedder", "norm", "^proj_out$")


def store_in_fp8(model, storage: str, compute: torch.dtype, skip: Sequence[str] = FP8_SKIP) -> None:
    """Weights stored as ``storage`` and upcast per layer to ``compute`` as it runs (diffusers' layerwise casting)."""
    if storage not in STORAGE:
        raise ValueError(f"storage must be one of {sorted(STORAGE)}, got {storage!r}")
    model.enable_layerwise_casting(storage_dtype=STORAGE[storage], compute_dtype=compute, skip_modules_pattern=tuple(skip))


def load_flux_vae(path: str | Path, config: dict | None = None):
    """FLUX.1's VAE (``ae.safetensors``, or a diffusers folder's ``vae/``) as diffusers' ``AutoencoderKL``,
    converted by diffusers' own LDM converter with the shipped config (``config`` for other sizes)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    path = Path(path)
    if path.is_dir():
        folder = _part_folder(path, "vae")
        return from_folder(AutoencoderKL, folder).requires_grad_(False)
    state = read_state_dict(path, "FLUX.1 VAE file")
    refuse_unless(identify(state), "flux-vae", path, "pick ae.safetensors from the vae folder")
    config = config or shipped_config("flux1-dev", "vae")
    vae = AutoencoderKL.from_config(config)
    # BFL's ae.safetensors has the original (LDM) names; the FLUX.1-dev repo's vae/ file, copied alone, diffusers' own
    diffusers_keys = "encoder.down_blocks.0.resnets.0.conv1.weight" in state
    try:
        result = vae.load_state_dict(state if diffusers_keys else convert_ldm_vae_checkpoint(state, vae.config),
                                     strict=False)
    except (RuntimeError, KeyError) as error:
        raise ValueError(f"{path} does not fit FLUX.1's VAE ({error}); the file may be truncated or of another VAE") from error
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path} does not fill FLUX.1's VAE: missing {result.missing_keys[:3]}, unexpected "
                         f"{result.unexpected_keys[:3]}; the file may be truncated or of another VAE")
    return vae.eval().requires_grad_(False)


def _load_text_model(cls, path: Path, part: str, kind: str, what: str, config: dict | None, dtype: torch.dtype,
                     model_name: str = "flux1-dev"):
    """A transformers text model from a single file (transformers' key names) or a diffusers folder's ``part/``;
    a single file's config is ``config`` or ``model_name``'s shipped one."""
    if path.is_dir():
        folder = _part_folder(path, part)
        return from_folder(cls, folder, torch_dtype=dtype).eval().requires_grad_(False)
    from accelerate import init_empty_weights

    state = read_state_dict(path, f"{what} file")
    refuse_unless(identify(state), kind, path, f"pick {what} from the text_encoders folder")
    with init_empty_weights():  # no random full-size copy (T5-XXL: 19 GB in fp32) beside the file's weights
        model = cls(cls.config_class(**(config or shipped_config(model_name, part))))
    model_keys = set(model.state_dict())
    state = _match_prefix(state, model_keys, "text_model.")
    # at from_pretrained's precisions: T5's wo stays fp32 under fp16 (where it overflows), as transformers keeps it
    keep = [*(model._keep_in_fp32_modules or [] if dtype == torch.float16 else []),
            *(model._keep_in_fp32_modules_strict or [] if dtype in (torch.float16, torch.bfloat16) else [])]
    cast_each(state, lambda key: precision_of(key, keep, dtype))
    if "shared.weight" in state and "encoder.embed_tokens.weight" in model_keys:
        state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])  # T5 files hold the tied table once
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if "position_ids" not in k]  # older CLIP files carry no position_ids
    if missing:
        raise ValueError(f"{path} does not fill {what}: missing {missing[:3]}; the file may be truncated")
    return model.eval().requires_grad_(False)


def _match_prefix(state: dict, model_keys: set[str], prefix: str) -> dict:
    """Files name CLIP's weights ``text_model.*``; transformers 5's ``CLIPTextModel`` names them without it."""
    file_has = any(k.startswith(prefix) for k in state)
    model_has = any(k.startswith(prefix) for k in model_keys)
    if file_has and not model_has:
        return {k.removeprefix(prefix): v for k, v in state.items()}
    if model_has and not file_has:
        return {prefix + k: v for k, v in state.items()}
    return state


def load_clip_l(path: str | Path, config: dict | None = None, dtype: torch.dtype = torch.float32):
    """CLIP-L (``clip_l.safetensors``) as transformers' ``CLIPTextModel``."""
    from transformers import CLIPTextModel

    return _load_text_model(CLIPTextModel, Path(path), "text_encoder", "clip-l", "CLIP-L (clip_l.safetensors)", config, dtype)


def load_t5_xxl(path: str | Path, config: dict | None = None, dtype: torch.dtype = torch.float32):
    """T5-XXL's encoder (``t5xxl_fp16.safetensors`` or an fp8 variant) as transformers' ``T5EncoderModel``."""
    from transformers import T5EncoderModel

    return _load_text_model(T5EncoderModel, Path(path), "text_encoder_2", "t5", "T5-XXL (t5xxl_fp16.safetensors)", config,
                            dtype)


# where the two tokenizers sit: a FLUX.1-dev diffusers folder, or a ComfyUI installation (the ones it ships)
FLUX_TOKENIZER_LAYOUTS = {
    "a FLUX.1-dev diffusers folder": ("tokenizer", "tokenizer_2"),
    "a ComfyUI folder": ("comfy/sd1_tokenizer", "comfy/text_encoders/t5_tokenizer"),
}


def load_flux_tokenizers(folder: str | Path):
    """CLIP-L's and T5's tokenizers from a local FLUX.1 diffusers folder (``tokenizer/``, ``tokenizer_2/``) or the
    ComfyUI folder a user of ComfyUI's single files has (``comfy/sd1_tokenizer``, ``comfy/text_encoders/t5_tokenizer``)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    for parts in FLUX_TOKENIZER_LAYOUTS.values():
        if all((folder / part).is_dir() for part in parts):
            return tuple(AutoTokenizer.from_pretrained(folder / part, local_files_only=True) for part in parts)
    layouts = "; or ".join(f"{name} ({' and '.join(p + '/' for p in parts)})" for name, parts in FLUX_TOKENIZER_LAYOUTS.items())
    raise FileNotFoundError(f"{folder} holds no FLUX.1 tokenizers: name as 'tokenizers' {layouts}")


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype_of(dtype: str) -> torch.dtype:
    """The torch dtype a loader's ``dtype`` option names."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def file_or_folder(model: str, folder: str | Path | None, title: str | None = None) -> Callable:
    """``need(value, name)``: a part's own file, else the model's diffusers ``folder``, else an error naming both
    (``title``: the folder's name in the message, default ``model``)."""

    def need(value, name: str):
        path = value or folder
        if path is None:
            raise ValueError(f"{model} needs '{name}' (a file) or 'folder' (a local {title or model} diffusers folder)")
        return path

    return need


@register_loader("flux1-dev", preset="flux", needs_files=True)
def load_flux(
    folder: str | Path | None = None,
    transformer: str | Path | None = None,
    vae: str | Path | None = None,
    clip_l: str | Path | None = None,
    t5: str | Path | None = None,
    tokenizers: str | Path | None = None,
    text_encoder=None,
    codec=None,
    dtype: str = "float32",
    storage: str | None = None,
    axes_dims_rope: Sequence[int] | None = None,
    configs: dict | None = None,
) -> EditBackbone:
    """FLUX.1-dev (or Kontext dev) from local files: a diffusers ``folder``, or single files (``transformer``,
    ``vae``, ``clip_l``, ``t5``; tokenizers from a diffusers ``tokenizers`` folder). A host may hand in its own
    ``text_encoder`` and ``codec`` (ComfyUI's CLIP and VAE) instead of the files. ``configs`` (keys ``vae``,
    ``clip_l``, ``t5``) replace the shipped FLUX.1-dev configs for files of another size (the tests' tiny ones).
    ``storage = "float8_e4m3fn"`` keeps the transformer's weights in fp8 and upcasts each layer to ``dtype``
    as it runs (the 24 GB path, ``store_in_fp8``)."""
    from .backbones.flux import FluxBackbone, FluxTextEncoder, FluxVAECodec

    torch_dtype = torch_dtype_of(dtype)
    need = file_or_folder("flux1-dev", folder, "FLUX.1-dev")

    model = load_flux_transformer(need(transformer, "transformer"), torch_dtype, axes_dims_rope)
    if storage is not None:
        store_in_fp8(model, storage, torch_dtype)
    if codec is None:
        configs = configs or {}
        codec = FluxVAECodec(load_flux_vae(need(vae, "vae"), configs.get("vae")).to(torch_dtype))
    if text_encoder is None:
        clip_tokenizer, t5_tokenizer = load_flux_tokenizers(need(tokenizers, "tokenizers"))
        configs = configs or {}
        text_encoder = FluxTextEncoder(load_clip_l(need(clip_l, "clip_l"), configs.get("clip_l"), torch_dtype),
                                       clip_tokenizer, load_t5_xxl(need(t5, "t5"), configs.get("t5"), torch_dtype),
                                       t5_tokenizer)
    return FluxBackbone(model, text_encoder, codec, guidance=3.5, positions="index",
                        scheduler_config=shipped_config("flux1-dev", "scheduler"))


# --- Wan2.2 ------------------------------------------------------------------------------------------------------
# model name -> (WanBackbone variant, what its transformer files are, the VAE it takes, the files to pick)
WAN_MODELS = {
    "wan2.2-ti2v-5b": ("ti2v-5b", "wan-ti2v-5b", "wan2.2-vae", "wan2.2_ti2v_5B_fp16.safetensors"),
    "wan2.2-t2v-a14b": ("t2v-a14b", "wan-14b", "wan2.1-vae", "wan2.2_t2v_high_noise_14B_fp16.safetensors (transformer) "
                        "and wan2.2_t2v_low_noise_14B_fp16.safetensors (transformer_2), or their fp8_scaled variants"),
}
EXPERT_NOISE = {"transformer": "high", "transformer_2": "low"}  # A14B: t >= 0.875 -> high-noise expert


def _refuse_other_wan(found: str, model: str, path: Path) -> None:
    """Raise naming ``path``, what it holds and what to give, unless it holds ``model``'s transformer."""
    _, kind, _, files = WAN_MODELS[model]
    if found in ("wan-ti2v-5b", "wan-14b") and found != kind:
        other = next(name for name, spec in WAN_MODELS.items() if spec[1] == found)
        raise ValueError(f"{path} is {KINDS[found]}, not {KINDS[kind]}: load it as model {other!r}, or pick {files}")
    refuse_unless(found, kind, path, f"pick {files} from the diffusion_models folder")


def load_wan_transformer(path: str | Path, model: str, part: str = "transformer", dtype: torch.dtype = torch.float32,
                         config: dict | None = None):
    """One Wan2.2 transformer (``part``: ``transformer``, or A14B's low-noise ``transformer_2``) from a single file
    (Wan's or diffusers' keys, ComfyUI's prefix, fp8 or scaled fp8, upcast to ``dtype``) or a diffusers folder.
    A single file's config is ``model``'s shipped one with the sizes read from its tensors (``config`` replaces
    it), always passed: diffusers' single-file detection has no TI2V-5B entry and would pick another model's."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    files = WAN_MODELS[model][3]
    path = Path(path)
    if path.is_dir():
        folder = _part_folder(path, part)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} holds no config.json: give a {model} diffusers folder or a .safetensors file")
        transformer = from_folder(WanTransformer3DModel, folder, torch_dtype=dtype)
        _refuse_other_wan(identify(transformer.state_dict()), model, folder)
        return transformer.requires_grad_(False)
    state = read_state_dict(path, f"{model} {part} file")
    _refuse_other_wan(identify(state), model, path)
    state = wan_to_diffusers(state)
    with init_empty_weights():
        transformer = WanTransformer3DModel.from_config(config or wan_config_from_weights(state, shipped_config(model, part)))
    keep = transformer._keep_in_fp32_modules or []
    try:
        result = transformer.load_state_dict(cast_each(state, lambda key: precision_of(key, keep, dtype)),
                                             strict=False, assign=True)
    except RuntimeError as error:  # a shape mismatch: a file of another size
        raise ValueError(f"{path} does not fit {model}'s {part} ({str(error).splitlines()[-1].strip()}); "
                         f"pick {files}") from error
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path} does not fill {model}'s {part}: missing {result.missing_keys[:3]}, unexpected "
                         f"{result.unexpected_keys[:3]}; the file may be truncated or of another Wan model")
    return transformer.eval().requires_grad_(False)


def cast_each(state: dict[str, torch.Tensor], dtype_of: Callable[[str], torch.dtype]) -> dict[str, torch.Tensor]:
    """``state`` cast in place, one tensor at a time, so the file's copy of each is freed as it is cast (a new dict
    of cast tensors held the whole model twice in host RAM: 24 GB more for FLUX.1-dev from an fp8 file)."""
    for key in list(state):
        state[key] = state[key].to(dtype_of(key))
    return state


def precision_of(key: str, keep_in_fp32: Sequence[str], dtype: torch.dtype) -> torch.dtype:
    """float32 for the modules a diffusers model keeps in fp32 (Wan: rope, time embedder, modulation tables,
    norms), as its ``from_pretrained`` does; ``dtype`` for the rest."""
    return torch.float32 if any(name in key.split(".") for name in keep_in_fp32) else dtype


def cast_keeping_fp32(model, dtype: torch.dtype):
    """``model.to(dtype)`` with the modules and tables its class keeps in fp32 left in fp32."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        tensor.data = tensor.data.to(precision_of(name, keep, dtype))
    return model


def check_expert_pair(high: str | Path, low: str | Path) -> None:
    """A14B's two experts: two different files, the high-noise one first (as ComfyUI's files name them)."""
    high, low = Path(high), Path(low)
    if high.resolve() == low.resolve():
        raise ValueError(f"transformer and transformer_2 are the same file {high}: give the high-noise expert as "
                         "transformer and the low-noise one as transformer_2")
    named = {part: _noise_in_name(path) for part, path in (("transformer", high), ("transformer_2", low))}
    if named == {"transformer": "low", "transformer_2": "high"}:
        raise ValueError(f"the experts are given in the wrong order: {high.name} is the low-noise expert and "
                         f"{low.name} the high-noise one; swap them (transformer = high noise, transformer_2 = low noise)")
    if named["transformer"] == named["transformer_2"] is not None:
        raise ValueError(f"{high.name} and {low.name} are both the {named['transformer']}-noise expert: A14B needs "
                         "wan2.2_t2v_high_noise_14B_* as transformer and wan2.2_t2v_low_noise_14B_* as transformer_2")


def _noise_in_name(path: Path) -> str | None:
    """``high`` or ``low`` when a file's name says which A14B expert it is (ComfyUI's and Wan's names do)."""
    name = path.name.lower().replace("-", "_")
    found = [noise for noise in ("high", "low") if f"{noise}_noise" in name]
    return found[0] if len(found) == 1 else None


def _same_weights(high, low) -> bool:
    """Whether two loaded experts hold the same weights (one expert's file copied under both names)."""
    key = "blocks.0.attn1.to_q.weight"
    return torch.equal(high.state_dict()[key].float(), low.state_dict()[key].float())


def load_umt5(path: str | Path, model: str, config: dict | None = None, dtype: torch.dtype = torch.float32):
    """UMT5-XXL's encoder (``umt5_xxl_fp16.safetensors``, an fp8 or scaled-fp8 variant, or a diffusers folder's
    ``text_encoder/``) as transformers' ``UMT5EncoderModel``."""
    from transformers import UMT5EncoderModel

    return _load_text_model(UMT5EncoderModel, Path(path), "text_encoder", "umt5", "UMT5-XXL (umt5_xxl_fp16.safetensors)",
                            config, dtype, model)


def load_umt5_tokenizer(tokenizer: str | Path | None, umt5: str | Path | None):
    """UMT5's tokenizer: a local diffusers folder's ``tokenizer/``, else the SentencePiece model that ComfyUI's
    UMT5 files carry (``spiece_model``)."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from .backbones.wan import SentencePieceTokenizer

    if tokenizer is not None:
        folder = _part_folder(Path(tokenizer), "tokenizer")
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} does not exist: 'tokenizer' is a local Wan2.2 diffusers folder")
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if umt5 is not None and Path(umt5).suffix.lower() in SAFETENSORS_SUFFIXES:
        with safe_open(umt5, framework="pt") as handle:
            if "spiece_model" in handle.keys():
                return SentencePieceTokenizer(handle.get_tensor("spiece_model").numpy().tobytes())
    raise ValueError(f"no UMT5 tokenizer: {umt5} carries none (ComfyUI's umt5_xxl files do); name a local Wan2.2 "
                     "diffusers folder as 'tokenizer' (its tokenizer/ folder is read)")


def load_wan(
    model: str,
    folder: str | Path | None = None,
    transformer: str | Path | None = None,
    transformer_2: str | Path | None = None,
    vae: str | Path | None = None,
    umt5: str | Path | None = None,
    tokenizer: str | Path | None = None,
    text_encoder=None,
    codec=None,
    dtype: str = "float32",
    storage: str | None = None,
    configs: dict | None = None,
) -> EditBackbone:
    """Wan2.2 ``model`` (a key of ``WAN_MODELS``) from local files: a diffusers ``folder``, or single files
    (``transformer``, A14B's low-noise ``transformer_2``, ``vae``, ``umt5``; the tokenizer from the UMT5 file or a
    diffusers ``tokenizer`` folder). A host may hand in its own ``text_encoder`` and ``codec`` (ComfyUI's CLIP and
    VAE). ``configs`` (keys ``transformer``, ``vae``, ``umt5``) replace the shipped configs for files of another
    size (the tests' tiny ones). ``storage = "float8_e4m3fn"`` keeps the experts' weights in fp8."""
    from .backbones.wan import WanBackbone, WanTextEncoder
    from .wan_vae import WanVAECodec, load_wan_vae

    torch_dtype, configs = torch_dtype_of(dtype), configs or {}
    variant, _, vae_kind, _ = WAN_MODELS[model]
    need = file_or_folder(model, folder)

    parts = ["transformer", "transformer_2"] if variant == "t2v-a14b" else ["transformer"]
    given = {"transformer": transformer, "transformer_2": transformer_2}
    if len(parts) == 2 and folder is None:
        check_expert_pair(need(transformer, "transformer"), need(transformer_2, "transformer_2"))
    experts = {}
    for part in parts:  # each stored in fp8 before the next is read: host RAM holds one expert at full precision
        experts[part] = load_wan_transformer(need(given[part], part), model, part, torch_dtype, configs.get("transformer"))
        if storage is not None:
            store_in_fp8(experts[part], storage, torch_dtype, WAN_FP8_SKIP)
    if len(parts) == 2 and _same_weights(experts["transformer"], experts["transformer_2"]):
        raise ValueError(f"{need(transformer, 'transformer')} and {need(transformer_2, 'transformer_2')} hold the same "
                         "weights: one expert was given twice; A14B needs the high-noise and the low-noise expert")
    if codec is None:
        codec = WanVAECodec(load_wan_vae(need(vae, "vae"), expected=vae_kind, config=configs.get("vae"),
                                         dtype=torch_dtype))
    if text_encoder is None:
        umt5_path = need(umt5, "umt5")
        text_encoder = WanTextEncoder(load_umt5(umt5_path, model, configs.get("umt5"), torch_dtype),
                                      load_umt5_tokenizer(tokenizer if tokenizer or umt5 else folder, umt5_path))
    return WanBackbone.from_variant(variant, **experts, codec=codec, text_encoder=text_encoder)


for _name in WAN_MODELS:  # each takes load_wan's options (a partial keeps its signature for load_backbone's check)
    register_loader(_name, preset="wan", needs_files=True)(functools.partial(load_wan, _name))
