"""Wan2.2 from the files users have (tiny stand-ins written in the real layouts): each transformer file loads
through the code path real files take to the model it was written from, the full-size configs have the real
parameter counts and key layout, UMT5 encodes prompts as WanPipeline does, and wrong files are refused by name."""

import pytest
import torch
from safetensors.torch import save_file

from byg_core.checkpoints import COMFY_PREFIX, identify, read_state_dict, wan_to_diffusers
from byg_core.loading import WAN_MODELS, check_expert_pair, load_umt5, load_umt5_tokenizer, load_wan_transformer
from helpers import (diffusers_to_wan, diffusers_to_bfl, scaled_fp8, tiny_spiece, tiny_umt5, tiny_wan_transformer,
                     write_umt5_file)

PROMPT = "change the circle's colour to green"


def plain(module) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def outputs(model, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    channels = model.config.in_channels
    latents = torch.randn(1, channels, 2, 4, 4, generator=generator)
    text = torch.randn(1, 5, model.config.text_dim, generator=generator)
    with torch.no_grad():
        return model(latents, torch.tensor([500.0]), text, return_dict=False)[0]


@pytest.mark.parametrize("model,variant", [("wan2.2-ti2v-5b", "ti2v-5b"), ("wan2.2-t2v-a14b", "t2v-a14b")])
@pytest.mark.parametrize("layout", ["native", "comfy-prefix", "fp16", "fp8-scaled", "diffusers-keys"])
def test_a_transformer_file_loads_to_the_model_it_was_written_from(model, variant, layout, tmp_path):
    source = tiny_wan_transformer(variant, seed=3)
    state = plain(source) if layout == "diffusers-keys" else diffusers_to_wan(plain(source))
    if layout == "comfy-prefix":
        state = {COMFY_PREFIX + k: v for k, v in state.items()}
    if layout == "fp16":
        state = {k: v.half() for k, v in state.items()}
    if layout == "fp8-scaled":
        state = scaled_fp8(state)
    save_file(state, tmp_path / "model.safetensors")
    loaded = load_wan_transformer(tmp_path / "model.safetensors", model, config=dict(source.config))
    expected = source if layout in ("native", "comfy-prefix", "diffusers-keys") else None
    if expected is None:  # a lossy layout: the reference is the source with the file's rounding
        expected = tiny_wan_transformer(variant, seed=3)
        expected.load_state_dict({k: v.to(torch.float32) for k, v in wan_to_diffusers(
            read_state_dict(tmp_path / "model.safetensors", "t")).items()})
        assert not torch.equal(outputs(expected), outputs(source))  # the rounding is real, so the check below is not vacuous
    torch.testing.assert_close(outputs(loaded), outputs(expected), rtol=0, atol=0)


def test_the_test_layout_is_the_one_diffusers_converter_reads():
    """Our writer (from Wan's model code) and diffusers' single-file converter agree key for key, both ways."""
    state = plain(tiny_wan_transformer("ti2v-5b"))
    native = diffusers_to_wan(state)
    assert "head.head.weight" in native and "blocks.0.self_attn.q.weight" in native and "blocks.0.norm3.weight" in native
    back = wan_to_diffusers(native)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("model,billions", [("wan2.2-ti2v-5b", 5.00), ("wan2.2-t2v-a14b", 14.29)])
def test_full_size_configs_have_the_real_parameter_counts_and_every_real_key_maps(model, billions):
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from byg_core.loading import shipped_config

    with init_empty_weights():
        full = WanTransformer3DModel.from_config(shipped_config(model, "transformer"))
    assert round(sum(p.numel() for p in full.parameters()) / 1e9, 2) == billions
    state = full.state_dict()
    native = diffusers_to_wan(state)
    assert identify(native) == WAN_MODELS[model][1]
    assert wan_to_diffusers(native).keys() == state.keys()


def test_shipped_transformer_configs_are_the_variants_the_backbone_knows():
    from byg_core.backbones.wan import WAN22_CONFIGS
    from byg_core.loading import shipped_config

    for model, (variant, *_) in WAN_MODELS.items():
        shipped = shipped_config(model, "transformer")
        assert shipped == {k: list(v) if isinstance(v, tuple) else v for k, v in WAN22_CONFIGS[variant].items()}
    assert shipped_config("wan2.2-t2v-a14b", "transformer_2") == shipped_config("wan2.2-t2v-a14b", "transformer")


def test_a_file_of_another_model_is_refused_naming_the_file_and_the_fix(tmp_path):
    from byg_core.backbones.flux import FluxBackbone  # noqa: F401  (FLUX's keys come from its tiny model)
    from helpers import make_flux_backbone

    five_b = tmp_path / "wan2.2_ti2v_5B_fp16.safetensors"
    save_file(diffusers_to_wan(plain(tiny_wan_transformer("ti2v-5b"))), five_b)
    expert = tmp_path / "wan2.2_t2v_high_noise_14B_fp16.safetensors"
    save_file(diffusers_to_wan(plain(tiny_wan_transformer("t2v-a14b"))), expert)
    flux = tmp_path / "flux1-dev.safetensors"
    save_file(diffusers_to_bfl(plain(make_flux_backbone().transformers["transformer"])), flux)
    with pytest.raises(ValueError, match=rf"{five_b} is the Wan2.2 TI2V-5B .*load it as model 'wan2.2-ti2v-5b'"):
        load_wan_transformer(five_b, "wan2.2-t2v-a14b")
    with pytest.raises(ValueError, match=rf"{expert} is a Wan 14B .*load it as model 'wan2.2-t2v-a14b'"):
        load_wan_transformer(expert, "wan2.2-ti2v-5b")
    with pytest.raises(ValueError, match=rf"{flux} is a FLUX.1 diffusion model, not the Wan2.2 TI2V-5B.*"
                                         r"pick wan2.2_ti2v_5B_fp16.safetensors"):
        load_wan_transformer(flux, "wan2.2-ti2v-5b")


def test_the_a14b_pair_is_refused_when_twice_the_same_or_in_the_wrong_order(tmp_path):
    high, low = tmp_path / "wan2.2_t2v_high_noise_14B_fp16.safetensors", tmp_path / "wan2.2_t2v_low_noise_14B_fp16.safetensors"
    for path in (high, low):
        path.touch()
    check_expert_pair(high, low)  # the right order passes
    with pytest.raises(ValueError, match="wrong order.*low-noise.*swap them"):
        check_expert_pair(low, high)
    with pytest.raises(ValueError, match=f"same file {high}"):
        check_expert_pair(high, tmp_path / "." / high.name)
    with pytest.raises(ValueError, match="both the high-noise expert"):
        check_expert_pair(high, tmp_path / "copy_of_high_noise.safetensors")


def test_umt5_file_encodes_a_prompt_as_wan_pipeline_does(tmp_path):
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from byg_core.backbones.wan import WanTextEncoder

    umt5, spiece = tiny_umt5(seed=2), tiny_spiece()
    path = write_umt5_file(tmp_path / "umt5_xxl_fp16.safetensors", umt5, spiece)
    assert identify(read_state_dict(path, "t")) == "umt5"
    tokenizer = load_umt5_tokenizer(None, path)
    loaded = load_umt5(path, "wan2.2-ti2v-5b", umt5.config.to_dict())
    ours = WanTextEncoder(loaded, tokenizer)([PROMPT, "a red circle"])
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in umt5.state_dict().items())
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=loaded, vae=None, scheduler=UniPCMultistepScheduler())
    theirs = pipe._get_t5_prompt_embeds([PROMPT, "a red circle"], max_sequence_length=512)
    assert ours.tokens.shape == (2, 512, 16) and ours.pooled is None
    assert ours.tokens[0, :3].abs().sum() > 0 and ours.tokens[:, 20:].abs().sum() == 0  # zero past each prompt
    torch.testing.assert_close(ours.tokens, theirs, rtol=0, atol=0)


def test_the_tokenizer_is_comfyuis_sentencepiece_model_with_an_end_token(tmp_path):
    import sentencepiece

    spiece = tiny_spiece()
    path = write_umt5_file(tmp_path / "umt5.safetensors", tiny_umt5(), spiece)
    ids = load_umt5_tokenizer(None, path)([PROMPT], max_length=16)
    expected = sentencepiece.SentencePieceProcessor(model_proto=spiece).encode(PROMPT) + [1]
    assert ids["input_ids"][0].tolist() == expected + [0] * (16 - len(expected))
    assert ids["attention_mask"][0].tolist() == [1] * len(expected) + [0] * (16 - len(expected))
    bare = write_umt5_file(tmp_path / "bare.safetensors", tiny_umt5(), None)
    with pytest.raises(ValueError, match=f"no UMT5 tokenizer: {bare} carries none.*'tokenizer'"):
        load_umt5_tokenizer(None, bare)


class NoCodec:
    temporal_factor, spatial_factor = 4, 16


@pytest.mark.parametrize("model", sorted(WAN_MODELS))
def test_sampling_uses_the_schedule_and_timesteps_of_diffusers_wan_pipeline(model):
    """The editor's sampler, on the base model (no source), gives what WanPipeline gives from the same noise
    with the shipped scheduler config: same UniPC steps, same integer timesteps, same expert switch (A14B)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from byg_core.backbones.base import TextCond
    from byg_core.backbones.wan import WanBackbone
    from byg_core.loading import shipped_config
    from byg_core.sample import integrate

    variant = WAN_MODELS[model][0]
    experts = {"transformer": tiny_wan_transformer(variant, 1)}
    if variant == "t2v-a14b":
        experts["transformer_2"] = tiny_wan_transformer(variant, 2)
    backbone = WanBackbone.from_variant(variant, **experts, codec=NoCodec())
    scheduler = UniPCMultistepScheduler.from_config(shipped_config(model, "scheduler"))
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(backbone.make_scheduler().config) == public(scheduler.config)
    channels = experts["transformer"].config.in_channels
    eps = torch.randn(1, channels, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 512, 16, generator=torch.Generator().manual_seed(1))
    ours = integrate(backbone.schedule(6, eps.shape), lambda y, t: backbone.velocity(y, t, TextCond(text)), eps)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, **experts,
                       boundary_ratio=backbone.boundary_ratio, expand_timesteps=backbone.expand_timesteps)
    theirs = pipe(prompt_embeds=text, latents=eps.clone(), num_inference_steps=6, guidance_scale=1.0,
                  guidance_scale_2=1.0 if variant == "t2v-a14b" else None, height=32, width=32, num_frames=5,
                  output_type="latent").frames
    assert not torch.allclose(ours.latents, eps, atol=1e-2)
    torch.testing.assert_close(ours.latents, theirs, rtol=1e-5, atol=1e-5)
