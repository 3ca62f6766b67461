"""FLUX.1 weight files in the layouts users have, loaded through the path real files take (nothing downloaded):
the key mapping proven against diffusers' own converter at full size, tiny files in every layout giving the
velocity of the model they were written from, files of other models refused by name."""

import copy
import json
import re

import pytest
import torch
from safetensors.torch import save_file

from byg_core.checkpoints import (KINDS, bfl_to_diffusers, dequantize_scaled_fp8, flux_config_from_weights, identify,
                                  read_state_dict)
from byg_core.loading import FLUX_DEV, load_flux_transformer, shipped_config
from helpers import TINY_FLUX, diffusers_to_bfl, make_flux_backbone, scaled_fp8

TINY_AXES = list(TINY_FLUX["axes_dims_rope"])


@pytest.fixture(scope="module")
def full_size_state():
    """FLUX.1-dev's transformer at full size from the shipped config, on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(shipped_config("flux1-dev", "transformer"))
    return model.state_dict()


def test_every_bfl_key_of_flux1_dev_maps_as_diffusers_maps_it(full_size_state):
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    bfl = diffusers_to_bfl(full_size_state)
    assert len(bfl) == 780 and "double_blocks.18.img_attn.qkv.weight" in bfl and "single_blocks.37.linear1.weight" in bfl
    ours = bfl_to_diffusers(dict(bfl))  # it empties what it is given
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    shapes = lambda state: {k: tuple(v.shape) for k, v in state.items()}  # noqa: E731
    assert shapes(ours) == shapes(theirs) == shapes(full_size_state)  # nothing left over, nothing missing
    assert sum(v.numel() for v in ours.values()) / 1e9 == pytest.approx(11.9, abs=0.05)
    shipped = shipped_config("flux1-dev", "transformer")
    assert flux_config_from_weights(ours, shipped["axes_dims_rope"]) == shipped | {"out_channels": 64}


def test_the_mapping_moves_the_same_values_as_diffusers_at_full_size(full_size_state):
    """Each tensor at its true first dimension (what the splits and swaps act on), one column wide."""
    generator = torch.Generator().manual_seed(0)
    narrow = {k: torch.randn(v.shape[0], 1, generator=generator) for k, v in diffusers_to_bfl(full_size_state).items()}
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    theirs = convert_flux_transformer_checkpoint_to_diffusers(copy.deepcopy(narrow))
    ours = bfl_to_diffusers(narrow)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def write_layout(path, transformer, layout: str):
    """Write a tiny transformer's weights the way a user's file holds FLUX.1."""
    state = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    if layout != "diffusers":
        state = diffusers_to_bfl(state)
    if layout in ("comfy_prefix", "comfy_checkpoint"):
        state = {f"model.diffusion_model.{k}": v for k, v in state.items()}
    if layout == "comfy_checkpoint":  # ComfyUI's all-in-one checkpoints/flux1-dev-fp8.safetensors: VAE and encoders too
        state |= {"first_stage_model.decoder.conv_in.weight": torch.zeros(4, 16, 3, 3),
                  "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": torch.ones(8)}
    if layout == "fp8":
        state = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state.items()}
    if layout == "fp8_scaled":
        state = scaled_fp8(state)
    save_file(state, path)
    return path


def velocity(transformer, seed=0):
    backbone = make_flux_backbone()
    backbone.transformer = transformer
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(1, 3, 8, 8, generator=g)
    x = torch.randn(1, 3, 8, 8, generator=g)
    text = backbone.encode_text(["a red circle on a blue background"])
    with torch.no_grad():
        return backbone.velocity(y, torch.tensor([0.7]), text, source=x)


@pytest.mark.parametrize("layout", ["bfl", "comfy_prefix", "comfy_checkpoint", "diffusers"])
def test_a_tiny_file_in_each_layout_gives_the_models_velocity(tmp_path, layout):
    model = make_flux_backbone(seed=3).transformer
    path = write_layout(tmp_path / "flux1-dev.safetensors", model, layout)
    loaded = load_flux_transformer(path, axes_dims_rope=TINY_AXES)
    torch.testing.assert_close(velocity(loaded), velocity(model), rtol=0, atol=0)


def fp8_round(weight: torch.Tensor, scaled: bool) -> torch.Tensor:
    """One BFL weight as an fp8 file stores it and the loader reads it back."""
    if not scaled:
        return weight.to(torch.float8_e4m3fn).float()
    scale = weight.abs().max().float().clamp_min(1e-12) / 448.0
    return ((weight.float() / scale).to(torch.float8_e4m3fn).float() * scale).to(torch.bfloat16).float()


@pytest.mark.parametrize("layout", ["fp8", "fp8_scaled"])
def test_fp8_files_load_as_their_weights_rounded_to_fp8(tmp_path, layout):
    model = make_flux_backbone(seed=3).transformer
    path = write_layout(tmp_path / f"flux1-dev-{layout}.safetensors", model, layout)
    loaded = load_flux_transformer(path, axes_dims_rope=TINY_AXES)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    bfl = diffusers_to_bfl(model.state_dict())  # rounding acts on the file's tensors (a fused qkv shares one scale)
    rounded = bfl_to_diffusers({k: fp8_round(v, layout == "fp8_scaled") if v.ndim == 2 else v for k, v in bfl.items()})
    expected = copy.deepcopy(model)
    expected.load_state_dict(rounded)
    v_loaded, v_model = velocity(loaded), velocity(model)
    torch.testing.assert_close(v_loaded, velocity(expected), rtol=0, atol=0)
    relative = float((v_loaded - v_model).norm() / v_model.norm())
    assert 0 < relative < 0.1  # fp8 rounding moves the velocity, a little


def test_a_diffusers_folder_loads_from_disk_only(tmp_path):
    model = make_flux_backbone(seed=3).transformer
    model.save_pretrained(tmp_path / "FLUX.1-dev" / "transformer")
    loaded = load_flux_transformer(tmp_path / "FLUX.1-dev")
    torch.testing.assert_close(velocity(loaded), velocity(model), rtol=0, atol=0)


def test_loading_never_opens_a_socket(tmp_path, no_network):
    model = make_flux_backbone(seed=3).transformer
    model.save_pretrained(tmp_path / "folder" / "transformer")
    load_flux_transformer(tmp_path / "folder")
    load_flux_transformer(write_layout(tmp_path / "f.safetensors", model, "comfy_prefix"), axes_dims_rope=TINY_AXES)


def test_files_of_other_models_are_refused_naming_the_file_and_what_it_is(tmp_path):
    cases = {
        "wan2.2_ti2v_5B_fp16.safetensors": {"blocks.0.self_attn.q.weight": torch.zeros(4, 4)},
        "byg_lora.safetensors": {"transformer.x_embedder.lora_A.weight": torch.zeros(2, 4)},
        "sdxl.safetensors": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
                             "conditioner.embedders.0.x": torch.zeros(1)},
        "clip_l.safetensors": {"text_model.encoder.layers.0.mlp.fc1.weight": torch.zeros(4, 4)},
    }
    for name, state in cases.items():
        save_file(state, tmp_path / name)
        kind = identify(read_state_dict(tmp_path / name, "test"))
        with pytest.raises(ValueError, match=rf"{name} is {re.escape(KINDS[kind])}, not a FLUX.1 diffusion model; "
                                             r"pick flux1-dev.safetensors"):
            load_flux_transformer(tmp_path / name)
    assert [identify(read_state_dict(tmp_path / n, "t")) for n in cases] == ["wan", "lora", "sd-checkpoint", "clip-l"]

    good = write_layout(tmp_path / "whole.safetensors", make_flux_backbone().transformer, "bfl")
    (tmp_path / "truncated.safetensors").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated.safetensors is not a readable safetensors file.*truncated"):
        load_flux_transformer(tmp_path / "truncated.safetensors")
    (tmp_path / "flux1-dev.ckpt").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"flux1-dev.ckpt is not a .safetensors file.*nothing is unpickled"):
        load_flux_transformer(tmp_path / "flux1-dev.ckpt")
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
        load_flux_transformer(tmp_path / "missing.safetensors")
    # BFL's own release names its files flux1-dev.sft and ae.sft (safetensors; ComfyUI lists them): read as such
    (tmp_path / "flux1-dev.SFT").write_bytes(good.read_bytes())
    torch.testing.assert_close(load_flux_transformer(tmp_path / "flux1-dev.SFT", axes_dims_rope=TINY_AXES).state_dict(),
                               load_flux_transformer(good, axes_dims_rope=TINY_AXES).state_dict(), rtol=0, atol=0)


def test_scaled_fp8_dequantises_weight_times_scale():
    w = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    state = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn), "a.weight": w.to(torch.float8_e4m3fn),
             "a.scale_weight": torch.tensor([0.25]), "a.bias": torch.ones(2)}
    plain = dequantize_scaled_fp8(state, dtype=torch.float32)
    assert set(plain) == {"a.weight", "a.bias"} and torch.equal(plain["a.weight"], w * 0.25)


def test_the_shipped_configs_are_plain_json_files_in_the_package():
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        assert json.loads((FLUX_DEV / part / "config.json").read_text())
    assert shipped_config("flux1-dev", "vae")["shift_factor"] == 0.1159
