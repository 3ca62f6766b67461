"""Wan2.2 from the files users have (tiny stand-ins written in the real layouts): each transformer file loads
through the code path real files take to the model it was written from, the full-size configs have the real
parameter counts and key layout, UMT5 encodes prompts as WanPipeline does, and wrong files are refused by name."""

import math

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


def test_a_folder_of_another_layout_model_or_with_weights_missing_is_refused_naming_it(tmp_path):
    """Folders had none of a single file's checks: Wan-AI's own repo folders (config "WanModel", Wan's key names)
    and a folder short of a weight "loaded" with those weights left on the meta device (no data), to fail later
    in a way that named nothing; a TI2V-5B folder loaded as A14B."""
    import json

    from safetensors.torch import load_file

    folder = tmp_path / "Wan2.2-TI2V-5B-Diffusers" / "transformer"
    tiny_wan_transformer("ti2v-5b").save_pretrained(folder)
    assert load_wan_transformer(folder.parent, "wan2.2-ti2v-5b").config.in_channels == 48
    with pytest.raises(ValueError, match=r"Wan2.2-TI2V-5B-Diffusers/transformer is .*TI2V-5B.*load it as model "
                                         r"'wan2.2-ti2v-5b'"):
        load_wan_transformer(folder.parent, "wan2.2-t2v-a14b")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"_class_name": "WanModel"}))
    with pytest.raises(ValueError, match=r"config.json names WanModel, not WanTransformer3DModel"):
        load_wan_transformer(folder.parent, "wan2.2-ti2v-5b")
    (folder / "config.json").write_text(json.dumps(config))
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if k != "proj_out.weight"}, weights)
    with pytest.raises(ValueError, match=r"does not hold 1 of WanTransformer3DModel's weights \(proj_out.weight\)"):
        load_wan_transformer(folder.parent, "wan2.2-ti2v-5b")


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


def test_umt5_fp8_scaled_file_loads_its_dequantised_weights(tmp_path):
    """umt5_xxl_fp8_e4m3fn_scaled.safetensors: fp8 weights with scale_weight, dequantised on loading."""
    from safetensors.torch import load_file

    umt5 = tiny_umt5(seed=3)
    full = write_umt5_file(tmp_path / "umt5_xxl_fp16.safetensors", umt5, tiny_spiece())
    state = load_file(full)
    spiece = state.pop("spiece_model")
    save_file({**scaled_fp8(state), "spiece_model": spiece}, tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    loaded = load_umt5(tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan2.2-ti2v-5b", umt5.config.to_dict())
    weight = "encoder.block.0.layer.0.SelfAttention.q.weight"
    expected = read_state_dict(tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "t")[weight].float()
    assert torch.equal(loaded.state_dict()[weight], expected)
    assert 0 < (expected - umt5.state_dict()[weight]).abs().max() < 0.1 * umt5.state_dict()[weight].abs().max()


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


# --- the whole model from the files -----------------------------------------------------------------------------
VARIANT_OF = {model: spec[0] for model, spec in WAN_MODELS.items()}


def direct_backbone(variant, parts):
    """The same model assembled from the parts in memory, as the files should load it."""
    from byg_core.backbones.wan import SentencePieceTokenizer, WanBackbone, WanTextEncoder
    from byg_core.wan_vae import WanVAECodec

    experts = {k: parts[k] for k in ("transformer", "transformer_2") if k in parts}
    text = WanTextEncoder(parts["umt5"], SentencePieceTokenizer(parts["spiece"]))
    return WanBackbone.from_variant(variant, **experts, codec=WanVAECodec(parts["vae"]), text_encoder=text)


@pytest.mark.parametrize("model", sorted(WAN_MODELS))
def test_the_model_from_comfyui_files_is_the_model_built_directly(model, tmp_path, no_network):
    from byg_core.loading import load_backbone
    from helpers import tiny_wan_parts, wan_configs, write_wan_files

    variant = VARIANT_OF[model]
    parts = tiny_wan_parts(variant, seed=4)
    files = write_wan_files(tmp_path, variant, parts)
    loaded = load_backbone(model, **files, configs=wan_configs(parts))
    direct = direct_backbone(variant, parts)
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, c = loaded.encode_pixels(video), loaded.encode_text([PROMPT])
        torch.testing.assert_close(x, direct.encode_pixels(video), rtol=0, atol=0)
        torch.testing.assert_close(c.tokens, direct.encode_text([PROMPT]).tokens, rtol=0, atol=0)
        y = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        for t in (0.95, 0.3):  # both experts of A14B
            torch.testing.assert_close(loaded.velocity(y, torch.tensor([t]), c, source=x),
                                       direct.velocity(y, torch.tensor([t]), c, source=x), rtol=0, atol=0)
        decoded = loaded.decode_latents(x)
    assert decoded.shape == video.shape
    assert list(loaded.transformers) == (["transformer", "transformer_2"] if variant == "t2v-a14b" else ["transformer"])


def test_an_a14b_pair_of_one_expert_twice_and_the_wrong_vae_are_refused(tmp_path):
    import shutil

    from byg_core.loading import load_backbone
    from helpers import tiny_wan_parts, wan_configs, write_wan_files

    parts = tiny_wan_parts("t2v-a14b", seed=5)
    files = write_wan_files(tmp_path, "t2v-a14b", parts)
    shutil.copy(files["transformer"], files["transformer_2"])  # the high-noise file under the low-noise name
    with pytest.raises(ValueError, match="hold the same weights: one expert was given twice"):
        load_backbone("wan2.2-t2v-a14b", **files, configs=wan_configs(parts))
    five_b = tiny_wan_parts("ti2v-5b", seed=5)
    other = write_wan_files(tmp_path / "5b", "ti2v-5b", five_b)
    with pytest.raises(ValueError, match=rf"TI2V-5B needs wan2.2_vae.safetensors .*{files['vae']} is the Wan2.1 VAE"):
        load_backbone("wan2.2-ti2v-5b", **{**other, "vae": files["vae"]}, configs=wan_configs(five_b))


def test_a_wan22_diffusers_folder_trains_on_mp4_clips_and_edits_an_mp4_from_the_cli(tmp_path, no_network):
    """A local Wan2.2-TI2V-5B-Diffusers folder (its transformer/, vae/, text_encoder/, tokenizer/) on the CLI:
    a dataset of .mp4 clips trains, and the LoRA edits an .mp4 into an .mp4, the model read from its metadata."""
    import json

    from byg_core import cli
    from byg_core.video_io import read_video, write_video
    from helpers import tiny_tokenizer, tiny_wan_parts

    parts = tiny_wan_parts("ti2v-5b", seed=6)
    folder = tmp_path / "Wan2.2-TI2V-5B-Diffusers"
    for name, module in (("transformer", parts["transformer"]), ("vae", parts["vae"]), ("text_encoder", parts["umt5"])):
        module.save_pretrained(folder / name)
    tiny_tokenizer("</s>", max_length=512).save_pretrained(folder / "tokenizer")
    data = tmp_path / "data"
    data.mkdir()
    row = {"src_caption": "a red circle on a blue background", "instruction": PROMPT,
           "tgt_caption": "a green circle on a blue background", "reverse_instruction": "change the circle's colour to red"}
    for i in range(2):
        write_video(data / f"clip{i}.mp4", torch.rand(3, 7, 32, 32, generator=torch.Generator().manual_seed(i)), fps=24)
    (data / "edits.jsonl").write_text("".join(json.dumps({**row, "video": f"clip{i}.mp4"}) + "\n" for i in range(2)))
    config = tmp_path / "wan.toml"
    config.write_text(f'model = "wan2.2-ti2v-5b"\ndata = "{data}"\noutput_dir = "{tmp_path / "run"}"\n'
                      'steps = 2\nbatch_size = 2\nrank = 4\nwarmup_identity_steps = 1\ncheckpoint_every = 0\n'
                      f'[model_files]\nfolder = "{folder}"\n[objective]\nrollout_steps = 2\n')
    assert cli.main(["train", str(config)]) == 0
    out = tmp_path / "edited.mp4"
    assert cli.main(["edit", "--lora", str(tmp_path / "run" / "byg_lora.safetensors"), "--video",
                     str(data / "clip0.mp4"), "--instruction", PROMPT, "--steps", "2", "--out", str(out)]) == 0
    video, fps = read_video(out)
    assert video.shape == (3, 5, 32, 32) and fps == 24  # 7 frames -> the longest 4k+1 run, 5


def test_a14b_that_cannot_fit_the_gpu_is_refused_before_loading(tmp_path, monkeypatch):
    """The memory check reads only the shipped configs: nothing named in model_files is opened."""
    from byg_core import cli, memory

    monkeypatch.setattr(memory, "gpu_bytes", lambda: 24 * 2**30)
    config = tmp_path / "a14b.toml"
    config.write_text(f'model = "wan2.2-t2v-a14b"\ndata = "{tmp_path}"\n[model_files]\ntransformer = "missing_high.safetensors"\n'
                      'transformer_2 = "missing_low.safetensors"\ndtype = "bfloat16"\nstorage = "float8_e4m3fn"\n')
    with pytest.raises(ValueError, match=r"wan2.2-t2v-a14b cannot train on this GPU: its transformer weights alone take "
                                         r"27.2 GiB as float8_e4m3fn \(the ByG rollout walks both A14B experts.*24.0 GiB"):
        cli.cmd_train(cli.build_parser().parse_args(["train", str(config)]))
    assert memory.check_weights_fit("wan2.2-t2v-a14b", "float8_e4m3fn", "bfloat16", 48 * 2**30) == 29_164_073_216
    assert memory.check_weights_fit("wan2.2-ti2v-5b", None, "bfloat16", 24 * 2**30) < 10.1 * 2**30  # 5B in bf16 fits 24 GB
    # the CLI's default dtype is float32: where bf16 would fit, that is the fix named first
    with pytest.raises(ValueError, match=r"as float32.*: load it in bfloat16 \(dtype = \"bfloat16\"\)"):
        memory.check_weights_fit("wan2.2-ti2v-5b", None, "float32", 16 * 2**30)
    # an estimate beyond the GPU's memory is named when training starts (the pre-load check counts weights only)
    figures = memory.MemoryEstimate(weights=30 * 2**30, lora=4 * 2**30, optimizer=6 * 2**30, activations=2**30)
    assert figures.warning(48 * 2**30) is None and figures.warning(None) is None
    assert "the memory estimate (~41.00 GiB) exceeds the GPU's 40.00 GiB" in figures.warning(40 * 2**30)


def test_without_a_config_the_sizes_are_read_from_the_file(tmp_path):
    """A host hands over only the file: the shipped config with the file's sizes (Wan's 128-wide heads kept)."""
    from byg_core.checkpoints import wan_config_from_weights
    from byg_core.loading import shipped_config
    from helpers import WAN_HEADS

    source = tiny_wan_transformer("ti2v-5b", seed=7, **WAN_HEADS)
    save_file(diffusers_to_wan(plain(source)), tmp_path / "wan2.2_ti2v_5B_fp16.safetensors")
    loaded = load_wan_transformer(tmp_path / "wan2.2_ti2v_5B_fp16.safetensors", "wan2.2-ti2v-5b")
    as_lists = lambda config: {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}  # noqa: E731
    assert as_lists(loaded.config) == as_lists(source.config)
    torch.testing.assert_close(outputs(loaded), outputs(source), rtol=0, atol=0)
    with torch.device("meta"):
        full = tiny_wan_transformer("ti2v-5b", **shipped_config("wan2.2-ti2v-5b", "transformer"))
    assert wan_config_from_weights(full.state_dict(), shipped_config("wan2.2-ti2v-5b", "transformer")) == \
        shipped_config("wan2.2-ti2v-5b", "transformer")


@pytest.mark.parametrize("name,model", [("wan22_ti2v_5b.toml", "wan2.2-ti2v-5b"), ("wan22_a14b.toml", "wan2.2-t2v-a14b")])
def test_the_wan_examples_have_the_papers_video_settings(name, model):
    import inspect
    from pathlib import Path

    from byg_core.config import TrainConfig
    from byg_core.loading import LOADERS, training_preset

    cfg = TrainConfig.from_toml(Path(__file__).resolve().parents[1] / "examples" / name)
    assert (cfg.model, cfg.lr, cfg.rank, cfg.identity_prob, cfg.use_ema, cfg.timesteps, cfg.shift) == \
        (model, 1e-4, 64, 0.1, False, "logit_normal", 12.0)  # B.2 and C.1
    assert cfg.resolution == [320, 576] and (cfg.frames - 1) % 4 == 0 and cfg.gradient_checkpointing
    assert set(cfg.model_files) <= set(inspect.signature(LOADERS[model]).parameters)
    assert ("transformer_2" in cfg.model_files) == (model == "wan2.2-t2v-a14b")
    # CycleTrainer's widgets at -1 take the model's preset: the same B.2 values, its 750 steps included
    preset = TrainConfig.for_preset(training_preset(model, "wan"))
    fields = ("steps", "lr", "identity_prob", "use_ema", "timesteps", "shift", "gradient_checkpointing")
    assert {f: getattr(preset, f) for f in fields} == {f: getattr(cfg, f) for f in fields}


def test_a14b_stores_each_expert_in_fp8_before_reading_the_next(tmp_path, monkeypatch):
    """Host RAM: both 14B experts at bf16 are 57 GB; the first is in fp8 before the second file is read."""
    from byg_core import loading
    from helpers import tiny_wan_parts, wan_configs, write_wan_files

    parts = tiny_wan_parts("t2v-a14b", seed=6)
    files = write_wan_files(tmp_path, "t2v-a14b", parts)
    read, seen = loading.load_wan_transformer, []

    def spy(path, model, part, *args, **kwargs):
        seen.append(sorted({str(p.dtype) for m in spied for n, p in m.named_parameters() if n.startswith("blocks.")}))
        spied.append(read(path, model, part, *args, **kwargs))
        return spied[-1]

    spied = []
    monkeypatch.setattr(loading, "load_wan_transformer", spy)
    backbone = loading.load_backbone("wan2.2-t2v-a14b", **files, configs=wan_configs(parts), dtype="bfloat16",
                                     storage="float8_e4m3fn")
    assert seen[0] == [] and "torch.float8_e4m3fn" in seen[1]  # the first expert's linears are fp8 at the second read
    assert {str(p.dtype) for p in backbone.transformers["transformer_2"].blocks.parameters()} >= {"torch.float8_e4m3fn"}
    # the fit check's count, from the config alone, is what the loaded expert holds (its fp32-kept tables included)
    from diffusers import WanTransformer3DModel
    from byg_core.memory import stored_bytes

    expert = backbone.transformers["transformer"]
    held = sum(p.numel() * p.element_size() for p in expert.parameters())
    assert stored_bytes(WanTransformer3DModel.from_config(expert.config), True, "float8_e4m3fn", "bfloat16") == held


@pytest.mark.parametrize("model,storage", [("wan2.2-ti2v-5b", None), ("wan2.2-t2v-a14b", "float8_e4m3fn")])
def test_a_bf16_model_edits_and_trains_without_autocast_as_the_nodes_load_it_on_a_gpu(model, storage, tmp_path):
    """The nodes load Wan in bfloat16 on CUDA and train without autocast; Wan keeps its modulation tables in fp32,
    so the compute dtype is not its first parameter's: latents stay fp32 (as WanPipeline keeps them), each expert
    gets its input cast to bf16 (the same velocity as from bf16 input), and an edit and a training step run."""
    from byg_core.adapters import Adapters, LoraSpec
    from byg_core.config import TrainConfig
    from byg_core.data import EditDataset, cache
    from byg_core.loading import load_backbone
    from byg_core.sample import edit
    from byg_core.toy.video import write_video_dataset
    from byg_core.train import Trainer
    from helpers import tiny_wan_parts, wan_configs, write_wan_files

    variant = VARIANT_OF[model]
    parts = tiny_wan_parts(variant, seed=4)
    files = write_wan_files(tmp_path / "files", variant, parts)
    backbone = load_backbone(model, **files, configs=wan_configs(parts), dtype="bfloat16", storage=storage)
    assert backbone.dtype == torch.bfloat16 and backbone.latent_dtype == torch.float32
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0))
    x, c = backbone.encode_pixels(video), backbone.encode_text([PROMPT])
    assert x.dtype == torch.float32
    y, t = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)), torch.tensor([0.95])
    with torch.no_grad():
        v = backbone.velocity(y, t, c, source=x)
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, backbone.velocity(y.bfloat16(), t, c, source=x.bfloat16()).float(), rtol=0, atol=0)
    adapters = Adapters(backbone, LoraSpec(4, 4.0, tuple(backbone.lora_target_modules())), seed=0)
    out = edit(backbone, adapters, x, c, steps=2).latents
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    write_video_dataset(tmp_path / "data", 2, seed=0, frames=5, size=32)
    data = cache(EditDataset.from_folder(tmp_path / "data"), backbone)
    cfg = TrainConfig.for_preset("wan", dict(output_dir=str(tmp_path / "run"), steps=1, batch_size=1, rank=4,
                                             warmup_identity_steps=0, checkpoint_every=0, mixed_precision="no"))
    cfg.objective.rollout_steps = 2
    trainer = Trainer(cfg, backbone, data)
    losses = trainer.train_step()
    assert losses.kind == "byg" and all(map(math.isfinite, losses.as_floats().values()))
    assert torch.isfinite(trainer.preview(count=1, steps=2)).all()


def test_a_size_the_model_cannot_take_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    """`byg train`'s resolution and `byg edit`'s source are checked against the shipped configs' rule: a 1080p
    frame is refused at once, naming the sizes to use, not after minutes of loading the weights."""
    import json

    from PIL import Image
    from safetensors.torch import save_file

    from byg_core import cli, loading
    from byg_core.toy.dataset import write_toy_dataset

    monkeypatch.setattr(loading, "load_backbone", lambda *args, **kwargs: pytest.fail("the weights were loaded"))
    data = write_toy_dataset(tmp_path / "data", n=2, seed=0)
    config = tmp_path / "wan.toml"
    config.write_text(f'model = "wan2.2-ti2v-5b"\ndata = "{data}"\noutput_dir = "{tmp_path / "run"}"\n'
                      'resolution = [1080, 1920]\n[model_files]\nfolder = "Wan2.2-TI2V-5B-Diffusers"\n')
    assert cli.main(["train", str(config)]) == 2
    assert "wan.toml: resolution = [1080, 1920]: got height 1080; Wan needs a height divisible by 32: use 1056 or " \
           "1088; set resolution to a size wan2.2-ti2v-5b takes" in capsys.readouterr().err
    lora = tmp_path / "flux_lora.safetensors"
    save_file({"x": torch.zeros(1)}, str(lora), {"byg.config": json.dumps({"model": "flux1-dev", "model_files": {
        "folder": "FLUX.1-dev"}}), "byg.expert": json.dumps("transformer")})
    Image.new("RGB", (1920, 1080)).save(tmp_path / "frame.png")
    edit = ["edit", "--lora", str(lora), "--image", str(tmp_path / "frame.png"), "--instruction", PROMPT]
    assert cli.main([*edit, "--out", str(tmp_path / "edited.png")]) == 2
    assert "frame.png: image height 1080 px is not a multiple of 16 (VAE factor x 2x2 patches); resize or crop it " \
           "to 1072 or 1088 px; pass --size H W" in capsys.readouterr().err
