"""The Wan VAEs from the files ComfyUI users have: tiny stand-ins written in the original Wan key layouts load to
the same ``AutoencoderKLWan``, the full-size layouts map key for key, and the codec gives the latents Wan's
diffusers pipelines give the transformer."""

import re
import types

import pytest
import torch
from safetensors.torch import save_file

from byg_core.loading import shipped_config
from byg_core.wan_vae import (
    WanVAECodec,
    identify_wan_vae,
    load_wan_vae,
    wan22_vae_to_diffusers,
    wan_vae_channels,
)
from helpers import TINY_WAN_VAE, tiny_vae, to_original

SHIPPED = {"wan2.1-vae": "wan2.2-t2v-a14b", "wan2.2-vae": "wan2.2-ti2v-5b"}
KINDS = tuple(TINY_WAN_VAE)
TINY = TINY_WAN_VAE


def to_diffusers(state: dict, kind: str) -> dict:
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    return wan22_vae_to_diffusers(state) if kind == "wan2.2-vae" else convert_wan_vae_to_diffusers(state)


@pytest.fixture(scope="module")
def vaes():
    return {kind: tiny_vae(kind, seed) for seed, kind in enumerate(KINDS)}


def write(path, state: dict):
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path


def original_file(tmp_path, kind: str, vae, name: str | None = None, dtype=None, prefix: str = ""):
    state = to_original(vae.state_dict(), kind, vae.config.num_res_blocks)
    state = {prefix + key: value.to(dtype) if dtype else value for key, value in state.items()}
    return write(tmp_path / (name or f"{kind}.safetensors"), state)


def video(frames: int = 5, size: int = 32, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def outputs(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        z = vae.encode(pixels * 2 - 1).latent_dist.mode()
        return z, vae.decode(z).sample


# --- the layouts -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_the_full_size_original_layout_maps_every_key_once(kind):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan

    with init_empty_weights():
        vae = AutoencoderKLWan.from_config(shipped_config(SHIPPED[kind], "vae"))
    ours = vae.state_dict()
    original = to_original(ours, kind, 2)
    back = to_diffusers(original, kind)
    assert set(back) == set(ours) and len(back) == len(original)
    assert all(back[key].shape == ours[key].shape for key in ours)
    assert identify_wan_vae(original) == kind and identify_wan_vae(ours) == kind
    assert wan_vae_channels(original) == (48 if kind == "wan2.2-vae" else 16)
    assert original["conv1.weight"].shape[:2] == (2 * wan_vae_channels(original),) * 2
    assert {"encoder.conv1.weight", "decoder.middle.0.residual.0.gamma", "conv2.weight", "decoder.head.2.weight"} <= set(original)
    if kind == "wan2.2-vae":
        assert "encoder.downsamples.0.downsamples.0.residual.0.gamma" in original
        assert "encoder.downsamples.0.downsamples.2.resample.1.weight" in original  # 2 resnets, then the resample
        assert "decoder.upsamples.0.upsamples.3.time_conv.weight" in original  # 3 resnets, then the resample
    else:
        assert "encoder.downsamples.0.residual.0.gamma" in original and "decoder.upsamples.3.resample.1.weight" in original


def test_the_wan22_mapping_agrees_with_diffusers_converter_outside_the_residual_blocks():
    """The keys both layouts share (quant convs, conv_in, middle, head): ours and diffusers' Wan2.1 converter,
    written independently, must give the same names."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    with init_empty_weights():
        vae = AutoencoderKLWan.from_config(shipped_config("wan2.2-ti2v-5b", "vae"))
    original = to_original(vae.state_dict(), "wan2.2-vae", 2)
    shared = {key: value for key, value in original.items() if ".downsamples." not in key and ".upsamples." not in key}
    assert len(shared) > 30
    assert wan22_vae_to_diffusers(shared).keys() == convert_wan_vae_to_diffusers(shared).keys()


def test_the_wan22_mapping_refuses_keys_it_does_not_know(vaes):
    original = to_original(vaes["wan2.2-vae"].state_dict(), "wan2.2-vae", 1)
    extra = {**original, "encoder.downsamples.0.downsamples.0.residual.9.weight": torch.zeros(1),
             "model_ema.decay": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"2 keys .*residual\.9\.weight.*model_ema\.decay"):
        wan22_vae_to_diffusers(extra)
    assert wan22_vae_to_diffusers(original).keys() == vaes["wan2.2-vae"].state_dict().keys()


def test_identify_names_each_vae_and_nothing_else(vaes):
    for kind, vae in vaes.items():
        assert identify_wan_vae(to_original(vae.state_dict(), kind, vae.config.num_res_blocks)) == kind
        assert identify_wan_vae(vae.state_dict()) == kind
    flux_like = {"encoder.conv_in.weight": torch.zeros(1, 1, 3, 3), "decoder.conv_out.weight": torch.zeros(1, 1, 3, 3),
                 "quant_conv.weight": torch.zeros(8, 8, 1, 1)}
    assert identify_wan_vae(flux_like) is None
    assert identify_wan_vae({"blocks.0.self_attn.q.weight": torch.zeros(2, 2)}) is None


# --- loading files -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ["fp32", "fp16", "comfy-prefix", "diffusers-keys"])
def test_a_single_file_loads_to_the_same_vae(kind, variant, vaes, tmp_path):
    vae = vaes[kind]
    if variant == "fp16":  # the file holds fp16 weights: the reference holds the same values
        vae = tiny_vae(kind, KINDS.index(kind))
        vae.load_state_dict({key: value.half().float() for key, value in vae.state_dict().items()})
        path = original_file(tmp_path, kind, vae, dtype=torch.float16)
    elif variant == "comfy-prefix":
        path = original_file(tmp_path, kind, vae, prefix="model.diffusion_model.")
    elif variant == "diffusers-keys":
        path = write(tmp_path / "vae.safetensors", vae.state_dict())
    else:
        path = original_file(tmp_path, kind, vae)
    loaded = load_wan_vae(path, expected=kind, config=TINY[kind])
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    pixels = video()
    for ours, theirs in zip(outputs(loaded, pixels), outputs(vae, pixels)):
        assert torch.equal(ours, theirs)


def test_the_dtype_argument_sets_the_weights_dtype(vaes, tmp_path):
    path = original_file(tmp_path, "wan2.2-vae", vaes["wan2.2-vae"])
    loaded = load_wan_vae(path, config=TINY["wan2.2-vae"], dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("kind", KINDS)
def test_a_diffusers_folder_loads_offline(kind, vaes, tmp_path, no_network):
    vaes[kind].save_pretrained(tmp_path / "Wan-Diffusers" / "vae")
    for path in (tmp_path / "Wan-Diffusers", tmp_path / "Wan-Diffusers" / "vae"):
        loaded = load_wan_vae(path, expected=kind)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        for ours, theirs in zip(outputs(loaded, video()), outputs(vaes[kind], video())):
            assert torch.equal(ours, theirs)
    other = "wan2.1-vae" if kind == "wan2.2-vae" else "wan2.2-vae"
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "Wan-Diffusers" / "vae"))):
        load_wan_vae(tmp_path / "Wan-Diffusers", expected=other)


# --- refusals -----------------------------------------------------------------------------------------------------
def test_the_wan21_vae_where_ti2v_5b_needs_the_wan22_one_names_the_file_and_the_fix(vaes, tmp_path):
    path = original_file(tmp_path, "wan2.1-vae", vaes["wan2.1-vae"], name="wan_2.1_vae.safetensors")
    message = (f"TI2V-5B needs wan2.2_vae.safetensors (48 channels); {path} is the Wan2.1 VAE (4 channels), "
               "which is A14B's")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_wan_vae(path, expected="wan2.2-vae", config=TINY["wan2.1-vae"])


def test_the_wan22_vae_where_a14b_needs_the_wan21_one_names_the_file_and_the_fix(vaes, tmp_path):
    path = original_file(tmp_path, "wan2.2-vae", vaes["wan2.2-vae"], name="wan2.2_vae.safetensors")
    with pytest.raises(ValueError, match=re.escape(f"A14B needs wan_2.1_vae.safetensors (16 channels); {path} is "
                                                   "the Wan2.2 VAE (8 channels), which is TI2V-5B's")):
        load_wan_vae(path, expected="wan2.1-vae")


def test_a_file_that_is_no_wan_vae_is_refused_naming_it(tmp_path):
    path = write(tmp_path / "wan2.2_ti2v_5B_fp16.safetensors", {"blocks.0.self_attn.q.weight": torch.zeros(4, 4)})
    with pytest.raises(ValueError, match=re.escape(f"{path} is a Wan diffusion model, not a Wan VAE; pick "
                                                   "wan2.2_vae.safetensors")):
        load_wan_vae(path)


def test_a_file_of_another_size_than_the_config_is_refused_naming_it(vaes, tmp_path):
    path = original_file(tmp_path, "wan2.2-vae", vaes["wan2.2-vae"])
    with pytest.raises(ValueError, match=re.escape(f"{path} does not fit the Wan VAE config")):
        load_wan_vae(path)  # tiny weights, full-size shipped config


def test_a_file_with_a_key_outside_its_layout_or_one_missing_is_refused_naming_it(vaes, tmp_path):
    wan22 = to_original(vaes["wan2.2-vae"].state_dict(), "wan2.2-vae", 1)
    path = write(tmp_path / "extra.safetensors", {**wan22, "decoder.upsamples.0.upsamples.0.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=re.escape(f"{path}: 1 keys are not in the Wan2.2 VAE layout")):
        load_wan_vae(path, config=TINY["wan2.2-vae"])
    wan21 = to_original(vaes["wan2.1-vae"].state_dict(), "wan2.1-vae", 2)
    del wan21["decoder.upsamples.7.resample.1.weight"]
    path = write(tmp_path / "truncated.safetensors", wan21)
    with pytest.raises(ValueError, match=re.escape(f"{path} does not fit the Wan VAE config: 1 weights missing")):
        load_wan_vae(path, config=TINY["wan2.1-vae"])


# --- the codec -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_codec_shapes_and_factors(kind, vaes):
    codec = WanVAECodec(vaes[kind])
    factor, channels = (16, 8) if kind == "wan2.2-vae" else (8, 4)
    assert (codec.spatial_factor, codec.temporal_factor, codec.latent_channels) == (factor, 4, channels)
    with torch.no_grad():
        latents = codec.encode(video(batch=2))
        image_latents = codec.encode(video(batch=2)[:, :, 0])
        assert latents.shape == (2, channels, 2, 32 // factor, 32 // factor)
        assert image_latents.shape == (2, channels, 32 // factor, 32 // factor)
        assert codec.decode(latents).shape == (2, 3, 5, 32, 32)
        assert codec.decode(image_latents).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="4k \\+ 1 frames"):
        codec.encode(video(frames=4))
    with pytest.raises(ValueError, match="not a multiple"):
        codec.encode(video(size=36))


@pytest.mark.parametrize("kind", KINDS)
def test_codec_latents_are_the_normalised_posterior_mode_and_decode_inverts_them(kind, vaes):
    vae = vaes[kind]
    codec = WanVAECodec(vae)
    mean = torch.tensor(TINY[kind]["latents_mean"]).view(1, -1, 1, 1, 1)
    std = torch.tensor(TINY[kind]["latents_std"]).view(1, -1, 1, 1, 1)
    pixels = video()
    with torch.no_grad():
        z, _ = outputs(vae, pixels)
        latents = codec.encode(pixels)
        torch.testing.assert_close(latents, (z - mean) / std, rtol=1e-6, atol=1e-6)
        decoded = codec.decode(latents)
        torch.testing.assert_close(decoded, (vae.decode(latents * std + mean).sample + 1) / 2, rtol=0, atol=1e-5)
        torch.testing.assert_close(decoded, (vae.decode(z).sample + 1) / 2, rtol=0, atol=1e-5)
    assert latents.std() > 0.01 and decoded.min() >= 0 and decoded.max() <= 1


def pipeline_stub(vae, expand_timesteps: bool):
    return types.SimpleNamespace(vae=vae, vae_scale_factor_temporal=vae.config.scale_factor_temporal,
                                 vae_scale_factor_spatial=vae.config.scale_factor_spatial,
                                 config=types.SimpleNamespace(expand_timesteps=expand_timesteps))


@pytest.mark.parametrize("kind", KINDS)
def test_codec_encodes_a_reference_image_as_wan_image_to_video_pipeline_does(kind, vaes):
    """TI2V-5B (expand_timesteps) encodes the image alone; Wan2.1-VAE I2V encodes it followed by zero frames
    (mid-grey in [0, 1])."""
    from diffusers import WanImageToVideoPipeline

    vae = vaes[kind]
    codec = WanVAECodec(vae)
    expand = kind == "wan2.2-vae"
    image = video()[:, :, 0]
    with torch.no_grad():
        condition = WanImageToVideoPipeline.prepare_latents(pipeline_stub(vae, expand), image * 2 - 1, 1,
                                                            vae.config.z_dim, 32, 32, 5, torch.float32,
                                                            torch.device("cpu"))[1]
        theirs = condition[:, -vae.config.z_dim:]  # Wan2.1 I2V puts a 4-channel frame mask before the latents
        if expand:
            ours = codec.encode(image).unsqueeze(2)
        else:
            ours = codec.encode(torch.cat([image.unsqueeze(2), torch.full((1, 3, 4, 32, 32), 0.5)], dim=2))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("model,channels,spatial", [("wan2.2-ti2v-5b", 48, 16), ("wan2.2-t2v-a14b", 16, 8)])
def test_the_shipped_configs_describe_the_real_vaes(model, channels, spatial):
    import inspect

    from diffusers import AutoencoderKLWan

    config = shipped_config(model, "vae")
    assert set(config) <= set(inspect.signature(AutoencoderKLWan.__init__).parameters)
    assert config["z_dim"] == channels == len(config["latents_mean"]) == len(config["latents_std"])
    assert config["scale_factor_spatial"] == spatial == (config["patch_size"] or 1) * 2 ** (len(config["dim_mult"]) - 1)
    assert config["scale_factor_temporal"] == 4 == 2 ** sum(config["temperal_downsample"])
