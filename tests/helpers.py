"""Factories for tests: tiny random configs of the real architectures, nothing downloaded."""

import re

import torch

from byg_core.backbones.flux import FluxBackbone
from byg_core.toy.codec import ToyCodec
from byg_core.toy.text import ToyTextEncoder

TINY_FLUX = dict(
    patch_size=1,
    in_channels=12,  # 3 toy latent channels x 2x2 packing
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=(2, 2, 4),
)


def make_flux_backbone(seed: int = 0, **kwargs) -> FluxBackbone:
    """A FLUX-architecture backbone with random weights, the toy text encoder and codec."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**TINY_FLUX)
    return FluxBackbone(transformer, ToyTextEncoder(strict=False), ToyCodec(), **kwargs)


def diffusers_to_bfl(state: dict) -> dict:
    """FluxTransformer2DModel keys -> Black Forest Labs' (flux1-dev.safetensors) keys: how test files are written
    in the real layout. The inverse of byg_core.checkpoints.bfl_to_diffusers; diffusers' own converter must map
    its output back exactly (tests/test_checkpoints.py)."""
    from byg_core.checkpoints import _BFL_DOUBLE, _BFL_DOUBLE_QKV, _BFL_SINGLE, _BFL_SINGLE_LINEAR1, _BFL_TOP

    state = dict(state)
    out = {}

    def back(source: str, target: str) -> None:
        if target in state:
            out[source] = state.pop(target)
        for suffix in (".weight", ".bias"):
            if target + suffix in state:
                out[source + suffix] = state.pop(target + suffix)

    for source, target in _BFL_TOP.items():
        back(source, target)
    for name in ("weight", "bias"):
        scale, shift = state.pop(f"norm_out.linear.{name}").chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{name}"] = torch.cat([shift, scale], dim=0)
    for i in sorted({int(k.split(".")[1]) for k in list(state) if k.startswith("transformer_blocks.")}):
        prefix, target = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for source, name in _BFL_DOUBLE.items():
            back(prefix + source, target + name)
        for source, names in _BFL_DOUBLE_QKV.items():
            for suffix in (".weight", ".bias"):
                out[prefix + source + suffix] = torch.cat([state.pop(target + n + suffix) for n in names], dim=0)
    for i in sorted({int(k.split(".")[1]) for k in list(state) if k.startswith("single_transformer_blocks.")}):
        prefix, target = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for source, name in _BFL_SINGLE.items():
            back(prefix + source, target + name)
        for suffix in (".weight", ".bias"):
            out[prefix + "linear1" + suffix] = torch.cat([state.pop(target + n + suffix) for n in _BFL_SINGLE_LINEAR1])
    assert not state, sorted(state)[:5]
    return out


def scaled_fp8(state: dict) -> dict:
    """ComfyUI's *_fp8_scaled layout: 2-D weights as float8_e4m3fn with a per-tensor scale_weight, a marker."""
    out = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2:
            scale = value.abs().max().float().clamp_min(1e-12) / 448.0
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[key.removesuffix(".weight") + ".scale_weight"] = scale.reshape(1)
        else:
            out[key] = value
    return out


# --- tiny FLUX.1 parts, written in the layouts users' files have -------------------------------------------------
WORDS = ["<pad>", "</s>", "<unk>", "<|startoftext|>", "<|endoftext|>", "a", "red", "green", "blue", "circle", "square",
         "on", "background", "change", "the", "circle's", "colour", "to"]


def tiny_tokenizer(eos: str, bos: str | None = None, max_length: int = 77):
    """A word-level tokenizer made in memory (no download), saved and reloaded like a real one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    special = [bos, "$A", eos] if bos else ["$A", eos]
    core.post_processor = processors.TemplateProcessing(
        single=" ".join(special), special_tokens=[(t, vocab[t]) for t in (bos, eos) if t])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, pad_token=eos if bos else "<pad>",
                                   unk_token="<unk>", model_max_length=max_length)


FLUX_HEADS = dict(attention_head_dim=128, num_attention_heads=1, axes_dims_rope=(16, 56, 56))  # FLUX.1's head width


def tiny_flux_parts(seed: int = 0, **transformer) -> dict:
    """FLUX.1's five parts at toy size: transformer (16 latent channels), VAE, CLIP-L, T5 encoder, tokenizers.
    ``transformer`` overrides its config (``FLUX_HEADS``: one head of FLUX.1's width, so its shipped rotary
    axes apply, as a host loading a file without a config needs)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    parts = {
        "transformer": FluxTransformer2DModel(**(TINY_FLUX | {"in_channels": 64} | transformer)),
        "vae": AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=16, norm_num_groups=4,
                             layers_per_block=1, use_quant_conv=False, use_post_quant_conv=False,
                             shift_factor=0.1159, scaling_factor=0.3611),
        "clip_l": CLIPTextModel(CLIPTextConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                               projection_dim=32, bos_token_id=3, eos_token_id=4, pad_token_id=4)),
        "t5": T5EncoderModel(T5Config(vocab_size=len(WORDS), d_model=32, d_ff=64, d_kv=8, num_heads=2, num_layers=1,
                                      feed_forward_proj="gated-gelu", relative_attention_num_buckets=8)),
        "tokenizer": tiny_tokenizer("<|endoftext|>", "<|startoftext|>"),
        "tokenizer_2": tiny_tokenizer("</s>", max_length=512),
    }
    for part in parts.values():
        if isinstance(part, torch.nn.Module):
            part.eval()  # no dropout: a pipeline and our encoder must see the same function
    return parts


def vae_to_ldm(state: dict, up_blocks: int) -> dict:
    """AutoencoderKL keys -> the LDM keys of FLUX.1's ae.safetensors (diffusers' converter maps them back)."""
    import re

    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                     lambda m: f"decoder.up.{up_blocks - 1 - int(m.group(1))}.block.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{up_blocks - 1 - int(m.group(1))}.upsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", new)
        if "mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.").replace("group_norm", "norm")
            new = new.replace("to_q", "q").replace("to_k", "k").replace("to_v", "v").replace("to_out.0", "proj_out")
            value = value[:, :, None, None] if value.ndim == 2 else value  # LDM's 1x1 convolutions
        out[new] = value
    return out


def write_flux_files(root, parts: dict) -> dict:
    """The files a ComfyUI user has (diffusion_models, vae, text_encoders) plus a tokenizers folder; their paths."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    plain = lambda module: {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}  # noqa: E731
    files = {
        "transformer": root / "flux1-dev.safetensors", "vae": root / "ae.safetensors",
        "clip_l": root / "clip_l.safetensors", "t5": root / "t5xxl_fp16.safetensors", "tokenizers": root / "tokenizers",
    }
    save_file(diffusers_to_bfl(plain(parts["transformer"])), files["transformer"])
    save_file(vae_to_ldm(plain(parts["vae"]), len(parts["vae"].config.up_block_types)), files["vae"])
    clip = plain(parts["clip_l"])  # ComfyUI's clip_l.safetensors names its weights text_model.*
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in clip.items()}, files["clip_l"])
    t5 = plain(parts["t5"])
    t5.pop("encoder.embed_tokens.weight")  # tied to shared.weight; ComfyUI's files hold it once
    save_file(t5, files["t5"])
    parts["tokenizer"].save_pretrained(files["tokenizers"] / "tokenizer")
    parts["tokenizer_2"].save_pretrained(files["tokenizers"] / "tokenizer_2")
    return files


def tiny_configs(parts: dict) -> dict:
    """The configs the tiny files need (the shipped ones are FLUX.1-dev's full size)."""
    return {"vae": dict(parts["vae"].config), "clip_l": parts["clip_l"].config.to_dict(), "t5": parts["t5"].config.to_dict()}


# --- Wan2.2 files ------------------------------------------------------------------------------------------------
_WAN_FROM_DIFFUSERS = [  # diffusers' WanTransformer3DModel names -> Wan's original ones (what ComfyUI's files hold)
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1.", "self_attn."), ("attn2.", "cross_attn."),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
]


def diffusers_to_wan(state: dict) -> dict:
    """WanTransformer3DModel keys -> Wan's original keys (wan2.2_ti2v_5B_fp16.safetensors): how test files are
    written in the real layout. Written from Wan's model code, not from diffusers' converter, which must map it
    back exactly (tests/test_wan_files.py)."""
    out = {}
    for key, value in state.items():
        new = key
        for ours, theirs in _WAN_FROM_DIFFUSERS:
            new = new.replace(ours, theirs)
        if new == "scale_shift_table":
            new = "head.modulation"
        new = new.replace(".scale_shift_table", ".modulation").replace("proj_out.", "head.head.")
        # diffusers orders a block's norms self-attn, cross-attn, FFN; Wan calls the cross-attn one norm3
        new = new.replace(".norm2.", ".norm__.").replace(".norm3.", ".norm2.").replace(".norm__.", ".norm3.")
        out[new] = value
    return out


TINY_WAN = dict(num_attention_heads=2, attention_head_dim=12, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
                rope_max_seq_len=32)  # the real latent channels (48 / 16) kept: the loaders tell models apart by them


def tiny_spiece(words=tuple(WORDS[5:])) -> bytes:
    """A tiny SentencePiece model (the kind ComfyUI's umt5_xxl files carry as ``spiece_model``)."""
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter([" ".join(words)] * 8 + list(words) * 4),
                                             model_writer=model, vocab_size=30, model_type="unigram", pad_id=0,
                                             eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    return model.getvalue()


def tiny_umt5(seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(vocab_size=32, d_model=16, d_ff=32, d_kv=8, num_heads=2, num_layers=2,
                                       feed_forward_proj="gated-gelu", relative_attention_num_buckets=8)).eval()


WAN_HEADS = dict(attention_head_dim=128, num_attention_heads=1, rope_max_seq_len=1024)  # as a file without a config loads


def tiny_wan_transformer(variant: str, seed: int = 0, **config):
    from diffusers import WanTransformer3DModel

    from byg_core.backbones.wan import WAN22_CONFIGS

    torch.manual_seed(seed)
    return WanTransformer3DModel(**(WAN22_CONFIGS[variant] | TINY_WAN | config)).eval()


def write_umt5_file(path, umt5, spiece: bytes | None):
    """ComfyUI's umt5_xxl_fp16.safetensors layout: transformers' keys, the embedding once, the tokenizer inside."""
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in umt5.state_dict().items()}
    state.pop("encoder.embed_tokens.weight")
    if spiece is not None:
        state["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    save_file(state, path)
    return path


# --- Wan VAE files (original Wan key names, as wan_2.1_vae / wan2.2_vae.safetensors hold them) ---------------
# the full architectures at toy width; Wan2.1 keeps 4 stages x 2 res blocks, which diffusers' converter hard-codes
TINY_WAN_VAE = {
    "wan2.1-vae": dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                       latents_mean=[0.3, -0.2, 0.1, -0.5], latents_std=[1.5, 0.7, 2.0, 1.1]),
    "wan2.2-vae": dict(base_dim=8, decoder_base_dim=16, z_dim=8, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                       is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                       latents_mean=[0.3, -0.2, 0.1, -0.5, 0.05, 0.2, -0.1, 0.4],
                       latents_std=[1.5, 0.7, 2.0, 1.1, 0.5, 0.9, 1.3, 0.6]),
}

# --- writing test files in the original layouts: diffusers' names -> Wan's ---------------------------------------
_LEAF = {"norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight", "conv1.bias": "residual.2.bias",
         "norm2.gamma": "residual.3.gamma", "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
         "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias"}


def _leaf(part: str) -> str:
    return _LEAF.get(part, part)  # resample.1.* and time_conv.* keep their names


def original_key(key: str, kind: str, num_res_blocks: int) -> str:
    """One diffusers key's name in Wan's own modules (wan/modules/vae2_1.py, vae2_2.py): Encoder3d/Decoder3d with
    conv1, downsamples/upsamples, middle (resnet, attention, resnet), head (norm, silu, conv); the top-level
    conv1/conv2 are the quant convs. Wan2.1's stages are one flat Sequential (the decoder's: num_res_blocks + 1
    resnets then the upsampler); Wan2.2's are blocks whose Sequential ends with the resample layer."""
    rules = [
        (r"quant_conv\.(.+)", lambda m: f"conv1.{m[1]}"),
        (r"post_quant_conv\.(.+)", lambda m: f"conv2.{m[1]}"),
        (r"(encoder|decoder)\.conv_in\.(.+)", lambda m: f"{m[1]}.conv1.{m[2]}"),
        (r"(encoder|decoder)\.norm_out\.gamma", lambda m: f"{m[1]}.head.0.gamma"),
        (r"(encoder|decoder)\.conv_out\.(.+)", lambda m: f"{m[1]}.head.2.{m[2]}"),
        (r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", lambda m: f"{m[1]}.middle.{2 * int(m[2])}.{_leaf(m[3])}"),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", lambda m: f"{m[1]}.middle.1.{m[2]}"),
    ]
    if kind == "wan2.1-vae":
        per_stage = num_res_blocks + 2
        rules += [
            (r"encoder\.down_blocks\.(\d+)\.(.+)", lambda m: f"encoder.downsamples.{m[1]}.{_leaf(m[2])}"),
            (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
             lambda m: f"decoder.upsamples.{int(m[1]) * per_stage + int(m[2])}.{_leaf(m[3])}"),
            (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)",
             lambda m: f"decoder.upsamples.{int(m[1]) * per_stage + per_stage - 1}.{m[2]}"),
        ]
    else:
        rules += [
            (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
             lambda m: f"encoder.downsamples.{m[1]}.downsamples.{m[2]}.{_leaf(m[3])}"),
            (r"encoder\.down_blocks\.(\d+)\.downsampler\.(.+)",
             lambda m: f"encoder.downsamples.{m[1]}.downsamples.{num_res_blocks}.{m[2]}"),
            (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
             lambda m: f"decoder.upsamples.{m[1]}.upsamples.{m[2]}.{_leaf(m[3])}"),
            (r"decoder\.up_blocks\.(\d+)\.upsampler\.(.+)",
             lambda m: f"decoder.upsamples.{m[1]}.upsamples.{num_res_blocks + 1}.{m[2]}"),
        ]
    for pattern, rename in rules:
        if match := re.fullmatch(pattern, key):
            return rename(match)
    raise AssertionError(f"no Wan name for {key}")


def to_original(state: dict, kind: str, num_res_blocks: int) -> dict:
    out = {original_key(key, kind, num_res_blocks): value for key, value in state.items()}
    assert len(out) == len(state)
    return out


# --- tiny VAEs -----------------------------------------------------------------------------------------------------
def tiny_vae(kind: str, seed: int = 0, **config):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**(TINY_WAN_VAE[kind] | config))
    with torch.no_grad():
        for parameter in vae.parameters():  # no two weights alike (norms start at 1, attention's proj at 0)
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return vae.eval().requires_grad_(False)




WAN_PARTS = {  # variant -> (VAE kind, latent channels, the transformer file names ComfyUI's repackaged files have)
    "ti2v-5b": ("wan2.2-vae", 48, ("wan2.2_ti2v_5B_fp16.safetensors",)),
    "t2v-a14b": ("wan2.1-vae", 16, ("wan2.2_t2v_high_noise_14B_fp16.safetensors",
                                    "wan2.2_t2v_low_noise_14B_fp16.safetensors")),
}


def tiny_wan_parts(variant: str, seed: int = 0) -> dict:
    """Wan2.2's parts at toy size with the real latent channels: transformer(s), VAE, UMT5 and its tokenizer."""
    kind, channels, _ = WAN_PARTS[variant]
    g = torch.Generator().manual_seed(seed)
    stats = dict(latents_mean=(torch.rand(channels, generator=g) - 0.5).tolist(),
                 latents_std=(torch.rand(channels, generator=g) + 0.5).tolist())
    parts = {"transformer": tiny_wan_transformer(variant, seed), "vae": tiny_vae(kind, seed, z_dim=channels, **stats),
             "umt5": tiny_umt5(seed), "spiece": tiny_spiece()}
    if variant == "t2v-a14b":
        parts["transformer_2"] = tiny_wan_transformer(variant, seed + 1)
    return parts


def write_wan_files(root, variant: str, parts: dict) -> dict:
    """The files a ComfyUI user has for ``variant`` (diffusion_models, vae, text_encoders), in the original layouts."""
    from safetensors.torch import save_file

    kind, _, names = WAN_PARTS[variant]
    root.mkdir(parents=True, exist_ok=True)
    plain = lambda module: {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}  # noqa: E731
    files = {}
    for part, name in zip(("transformer", "transformer_2"), names):
        files[part] = root / name
        save_file(diffusers_to_wan(plain(parts[part])), files[part])
    files["vae"] = root / ("wan2.2_vae.safetensors" if kind == "wan2.2-vae" else "wan_2.1_vae.safetensors")
    save_file(to_original(plain(parts["vae"]), kind, parts["vae"].config.num_res_blocks), files["vae"])
    files["umt5"] = write_umt5_file(root / "umt5_xxl_fp16.safetensors", parts["umt5"], parts["spiece"])
    return files


def wan_configs(parts: dict) -> dict:
    """The configs the tiny files need (the shipped ones are full size)."""
    return {"transformer": dict(parts["transformer"].config), "vae": dict(parts["vae"].config),
            "umt5": parts["umt5"].config.to_dict()}


FAST_OBJECTIVE = dict(  # DirectionalPriorLoss widgets, the paper's except a short rollout for CPU tests
    lambda_cycle=1.0, lambda_prior=1.0, lambda_id=0.2, alpha=0.1, rollout_steps=2, gradient_routing=True,
    cycle=True, directional=True, bootstrap=True, regularization=True, identity_steps=True,
)
