"""Wan2.2 backbone: stock-forward parity, source tokens with shared RoPE (paper B.2),
TI2V-5B per-token timesteps, A14B expert routing, pixel checks and native LoRA names.

Tiny random ``WanTransformer3DModel``s with fixed seeds; nothing is downloaded.
"""

from dataclasses import dataclass

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers

from byg_core.backbones.base import TextCond
from byg_core.backbones.wan import (
    WAN22_CONFIGS,
    WAN22_VARIANTS,
    WanBackbone,
    from_native_key,
    tiny_wan_config,
    to_native_key,
)

torch.set_num_threads(1)

BATCH, FRAMES, HEIGHT, WIDTH, TEXT_LEN = 2, 3, 4, 6, 5


@dataclass
class StandInCodec:
    """Identity codec with the factors ``check_pixels`` reads."""

    spatial_factor: int = 1
    temporal_factor: int = 1

    def encode(self, pixels):
        return pixels

    def decode(self, latents):
        return latents


def tiny_model(variant="ti2v-5b", seed=0):
    torch.manual_seed(seed)
    return WanTransformer3DModel(**tiny_wan_config(variant)).eval()


def tiny_inputs(model, batch=BATCH, seed=1):
    generator = torch.Generator().manual_seed(seed)
    channels, text_dim = model.config.in_channels, model.config.text_dim
    latents = torch.randn(batch, channels, FRAMES, HEIGHT, WIDTH, generator=generator)
    text = TextCond(torch.randn(batch, TEXT_LEN, text_dim, generator=generator))
    return latents, text


def stock(model, latents, timestep, text):
    return model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text.tokens).sample


@torch.no_grad()
def test_no_source_is_the_stock_forward():
    model = tiny_model("t2v-a14b")
    backbone = WanBackbone(model, codec=StandInCodec())
    latents, text = tiny_inputs(model)
    t = torch.tensor([0.3, 0.8])
    expected = stock(model, latents, t * 1000, text)
    torch.testing.assert_close(backbone.velocity(latents, t, text), expected, atol=1e-6, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("variant", ["ti2v-5b", "t2v-a14b"])
def test_an_image_is_a_one_frame_video(variant):
    """The codecs encode an image (B, 3, H, W) to latents without a frame axis; the velocity of those is the
    one-frame video's (they had failed to unpack in the transformer: BootstrapSampler on a Wan model)."""
    models = {"transformer_2": tiny_model(variant, seed=1)} if variant == "t2v-a14b" else {}
    backbone = WanBackbone.from_variant(variant, tiny_model(variant), codec=StandInCodec(), **models)
    latents, text = tiny_inputs(backbone.transformers["transformer"])
    frame, source = latents[:, :, :1], latents[:, :, 1:2]
    t = torch.tensor([0.3, 0.95])
    video = backbone.velocity(frame, t, text, source=source)
    image = backbone.velocity(frame[:, :, 0], t, text, source=source[:, :, 0])
    assert image.shape == frame[:, :, 0].shape
    torch.testing.assert_close(image, video[:, :, 0], atol=1e-6, rtol=0)


@torch.no_grad()
def test_per_token_timesteps_match_the_pipeline():
    model = tiny_model("ti2v-5b")
    backbone = WanBackbone.from_variant("ti2v-5b", model, codec=StandInCodec())
    latents, text = tiny_inputs(model)
    t = torch.full((BATCH,), 0.6)
    # as diffusers' WanPipeline builds them with expand_timesteps (mask of ones, patch 2x2)
    mask = torch.ones(latents.shape)
    timestep = (mask[0][0][:, ::2, ::2] * t[0] * 1000).flatten().unsqueeze(0).expand(BATCH, -1)
    assert backbone.expand_timesteps
    expected = stock(model, latents, timestep, text)
    torch.testing.assert_close(backbone.velocity(latents, t, text), expected, atol=1e-6, rtol=0)


@torch.no_grad()
def test_a_source_twin_with_same_positions_is_invisible():
    """Paper B.2 alignment, analytically: a source equal to the noisy latents, at the same
    positions and timestep, duplicates every key/value of self-attention, which leaves the
    softmax average unchanged; any other position scheme breaks the twinning."""
    model = tiny_model("t2v-a14b")
    latents, text = tiny_inputs(model)
    t = torch.tensor([0.4, 0.9])
    same = WanBackbone(model, codec=StandInCodec(), positions="same")
    offset = WanBackbone(model, codec=StandInCodec(), positions="offset")
    plain = same.velocity(latents, t, text)
    torch.testing.assert_close(same.velocity(latents, t, text, source=latents), plain, atol=1e-5, rtol=0)
    assert (offset.velocity(latents, t, text, source=latents) - plain).abs().max() > 1e-2


@torch.no_grad()
def test_a_source_changes_the_output_deterministically():
    model = tiny_model("t2v-a14b")
    backbone = WanBackbone(model, codec=StandInCodec())
    latents, text = tiny_inputs(model)
    source, _ = tiny_inputs(model, seed=7)
    t = torch.tensor([0.5, 0.5])
    edited = backbone.velocity(latents, t, text, source=source)
    assert edited.shape == latents.shape
    assert (edited - backbone.velocity(latents, t, text)).abs().max() > 1e-2
    assert torch.equal(edited, backbone.velocity(latents, t, text, source=source))
    backbone.positions = "offset"
    assert (backbone.velocity(latents, t, text, source=source) - edited).abs().max() > 1e-2


@torch.no_grad()
def test_per_token_mode_gives_source_tokens_timestep_zero():
    model = tiny_model("ti2v-5b")
    backbone = WanBackbone(model, codec=StandInCodec(), expand_timesteps=True)
    latents, text = tiny_inputs(model)
    seen = []
    hook = model.condition_embedder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[0], kwargs["timestep_seq_len"])), with_kwargs=True
    )
    t = torch.tensor([0.25, 0.75])
    edited = backbone.velocity(latents, t, text, source=latents)
    hook.remove()
    tokens = FRAMES * (HEIGHT // 2) * (WIDTH // 2)
    timestep, seq_len = seen[0]
    per_token = timestep.unflatten(0, (BATCH, seq_len))
    assert seq_len == 2 * tokens
    assert torch.equal(per_token[:, :tokens], (t * 1000)[:, None].expand(-1, tokens))
    assert torch.equal(per_token[:, tokens:], torch.zeros(BATCH, tokens))
    # a clean twin differs from its noisy original by timestep only, so it now shows
    assert (edited - backbone.velocity(latents, t, text)).abs().max() > 1e-3


@torch.no_grad()
def test_experts_switch_at_the_boundary():
    high, low = tiny_model("t2v-a14b", seed=0), tiny_model("t2v-a14b", seed=1)
    backbone = WanBackbone(high, codec=StandInCodec(), transformer_2=low)
    latents, text = tiny_inputs(high)
    source, _ = tiny_inputs(high, seed=3)
    assert backbone.boundary_ratio == 0.875
    assert set(backbone.transformers) == {"transformer", "transformer_2"}
    assert backbone.expert_for(0.875) == "transformer" and backbone.expert_for(0.87) == "transformer_2"
    for time, expert in ((0.9, high), (0.5, low)):
        t = torch.full((BATCH,), time)
        alone = WanBackbone(expert, codec=StandInCodec()).velocity(latents, t, text, source=source)
        torch.testing.assert_close(backbone.velocity(latents, t, text, source=source), alone, atol=1e-6, rtol=0)


@torch.no_grad()
def test_a_mixed_batch_is_split_between_experts():
    high, low = tiny_model("t2v-a14b", seed=0), tiny_model("t2v-a14b", seed=1)
    backbone = WanBackbone(high, codec=StandInCodec(), transformer_2=low)
    latents, text = tiny_inputs(high, batch=4)
    source, _ = tiny_inputs(high, batch=4, seed=3)
    # experts' samples interleave so that putting them back needs the inverse permutation
    t = torch.tensor([0.5, 0.95, 0.9, 0.2])
    mixed = backbone.velocity(latents, t, text, source=source)
    for i, expert in enumerate((low, high, high, low)):
        alone = WanBackbone(expert, codec=StandInCodec())
        one = alone.velocity(latents[i : i + 1], t[i : i + 1], text.select(slice(i, i + 1)), source[i : i + 1])
        torch.testing.assert_close(mixed[i : i + 1], one, atol=1e-5, rtol=0)


def test_gradients_reach_the_blocks_through_source_tokens_with_checkpointing():
    model = tiny_model("ti2v-5b")
    model.enable_gradient_checkpointing()
    backbone = WanBackbone(model, codec=StandInCodec(), expand_timesteps=True)
    latents, text = tiny_inputs(model)
    source = latents.clone().requires_grad_(True)
    backbone.velocity(latents, torch.tensor([0.3, 0.6]), text, source=source).square().mean().backward()
    assert model.blocks[0].attn1.to_q.weight.grad.abs().sum() > 0
    assert source.grad.abs().sum() > 0


def pixel_backbone():
    return WanBackbone(tiny_model(), codec=StandInCodec(spatial_factor=16, temporal_factor=4))


def test_check_pixels_names_the_nearest_frame_counts():
    with pytest.raises(ValueError, match=r"got 10 frames; Wan needs 4k\+1 frames: use 9 or 13"):
        pixel_backbone().check_pixels((1, 3, 10, 64, 64))


def test_check_pixels_names_the_nearest_sizes():
    with pytest.raises(ValueError, match=r"height 500.*divisible by 32: use 480 or 512.*width 830.*use 800 or 832"):
        pixel_backbone().check_pixels((1, 3, 9, 500, 830))


def test_check_pixels_accepts_valid_video_and_single_images():
    pixel_backbone().check_pixels((2, 3, 13, 320, 576))
    pixel_backbone().check_pixels((2, 3, 480, 832))


def lora_module_names(model, backbone):
    targets = tuple(backbone.lora_target_modules())
    return [name for name, _ in model.named_modules() if name.endswith(targets)]


def test_lora_targets_map_to_native_names_and_back():
    model = tiny_model("t2v-a14b")
    names = lora_module_names(model, WanBackbone(model, codec=StandInCodec()))
    assert len(names) == model.config.num_layers * 10
    assert all(from_native_key(to_native_key(name)) == name for name in names)
    native = {to_native_key(name) for name in names}
    expected = {"blocks.0.self_attn.q", "blocks.1.self_attn.o", "blocks.0.cross_attn.k", "blocks.1.ffn.0", "blocks.0.ffn.2"}
    assert expected <= native


def test_native_names_convert_back_with_diffusers_own_loader():
    model = tiny_model("t2v-a14b")
    names = lora_module_names(model, WanBackbone(model, codec=StandInCodec()))
    native_file = {}
    for name in names:
        key = f"diffusion_model.{to_native_key(name)}"
        native_file[f"{key}.lora_A.weight"] = torch.zeros(2, 4)
        native_file[f"{key}.lora_B.weight"] = torch.zeros(4, 2)
    converted = _convert_non_diffusers_wan_lora_to_diffusers(native_file)
    expected = {f"transformer.{name}.lora_{ab}.weight" for name in names for ab in "AB"}
    assert set(converted) == expected


def test_lora_file_keys_are_native_with_the_comfyui_prefix():
    backbone = WanBackbone(tiny_model("t2v-a14b"), codec=StandInCodec())
    assert backbone.lora_file_key("blocks.1.attn1.to_out.0", "transformer") == "diffusion_model.blocks.1.self_attn.o"
    assert backbone.lora_module_name("diffusion_model.blocks.0.ffn.0") == "blocks.0.ffn.net.0.proj"
    with pytest.raises(ValueError, match="diffusion_model"):
        backbone.lora_module_name("transformer.blocks.0.attn1.to_q")


def test_unknown_module_names_raise():
    with pytest.raises(ValueError, match="blocks.0.norm1"):
        to_native_key("blocks.0.norm1")
    with pytest.raises(ValueError, match="head.modulation"):
        from_native_key("head.modulation")
    assert to_native_key("proj_out") == "head.head"
    assert from_native_key("blocks.3.cross_attn.v") == "blocks.3.attn2.to_v"


def test_wan_scheduler_uses_our_flow_convention():
    """Wan's UniPC (flow_prediction) integrates v = eps - x from t=1 (noise) exactly onto x."""
    backbone = WanBackbone.from_variant("ti2v-5b", tiny_model(), codec=StandInCodec())
    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(6)
    x, eps = torch.randn(2, 1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    assert scheduler.sigmas[0] > 0.999 and scheduler.sigmas[-1] == 0
    y = eps
    for timestep in scheduler.timesteps:
        y = scheduler.step(eps - x, timestep, y, return_dict=False)[0]
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant, steps", [("t2v-a14b", 85), ("ti2v-5b", 201)])
def test_an_edit_of_many_steps_integrates_where_the_shift_repeats_whole_timesteps(variant, steps):
    """At A14B's shift 12 from 85 steps (5B's 5 from 201) the first whole-number timesteps repeat (999, 999): UniPC
    then counted one step ahead and its last step failed on a bare assert; diffusers' Wan pipeline sets the begin index."""
    from byg_core.sample import integrate

    models = {"transformer_2": tiny_model(variant, seed=1)} if variant == "t2v-a14b" else {}
    backbone = WanBackbone.from_variant(variant, tiny_model(variant), codec=StandInCodec(), **models)
    x, eps = torch.randn(2, 1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    scheduler = backbone.schedule(steps, x.shape)
    assert scheduler.timesteps[0] == scheduler.timesteps[1]  # the case itself
    y = integrate(scheduler, lambda y, t: eps - x, eps).latents
    torch.testing.assert_close(y, x, atol=1e-4, rtol=0)


def test_a14b_variant_sets_boundary_shift_and_expert_ranges():
    high, low = tiny_model("t2v-a14b", seed=0), tiny_model("t2v-a14b", seed=1)
    backbone = WanBackbone.from_variant("t2v-a14b", high, transformer_2=low, codec=StandInCodec())
    assert (backbone.boundary_ratio, backbone.flow_shift, backbone.expand_timesteps) == (0.875, 12.0, False)
    # an edit's steps by default: Wan2.2's own sampler's (paper B.2), 40 on A14B and 50 on TI2V-5B; FLUX's 20 (B.1)
    assert backbone.edit_steps == 40
    assert WanBackbone.from_variant("ti2v-5b", tiny_model(), codec=StandInCodec()).edit_steps == 50
    assert backbone.expert_range("transformer") == (0.875, 1.0)
    assert backbone.expert_range("transformer_2") == (0.0, 0.875)
    assert WanBackbone(high, codec=StandInCodec()).expert_range("transformer") == (0.0, 1.0)
    with pytest.raises(ValueError, match="transformer_2"):
        WanBackbone.from_variant("t2v-a14b", high, codec=StandInCodec())


def test_real_configs_have_the_published_sizes():
    """Built on the meta device (no memory): TI2V-5B has 5.0B parameters, each A14B expert 14.3B."""
    sizes = {}
    for variant, config in WAN22_CONFIGS.items():
        with torch.device("meta"):
            sizes[variant] = sum(p.numel() for p in WanTransformer3DModel(**config).parameters())
    assert round(sizes["ti2v-5b"] / 1e9, 1) == 5.0 and round(sizes["t2v-a14b"] / 1e9, 1) == 14.3
    assert WAN22_VARIANTS["t2v-a14b"].two_experts and not WAN22_VARIANTS["ti2v-5b"].two_experts
