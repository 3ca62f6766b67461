"""FLUX.1-dev assembled from the files users have (tiny stand-ins written in the real layouts): the VAE and text
encoders feed the transformer exactly what diffusers' FLUX pipelines feed it, and the whole backbone trains
and edits through the same code path real files take."""

import types

import pytest
import torch

from byg_core.backbones.flux import FluxTextEncoder, FluxVAECodec
from byg_core.loading import load_backbone, load_clip_l, load_flux_vae, load_t5_xxl
from helpers import TINY_FLUX, tiny_configs, tiny_flux_parts, write_flux_files

PROMPT = "change the circle's colour to green"
AXES = list(TINY_FLUX["axes_dims_rope"])


@pytest.fixture(scope="module")
def parts():
    return tiny_flux_parts(seed=1)


@pytest.fixture(scope="module")
def files(parts, tmp_path_factory):
    return write_flux_files(tmp_path_factory.mktemp("comfy_models"), parts)


def save_folder(parts, folder):
    for name, part in (("transformer", "transformer"), ("vae", "vae"), ("text_encoder", "clip_l"),
                       ("text_encoder_2", "t5"), ("tokenizer", "tokenizer"), ("tokenizer_2", "tokenizer_2")):
        parts[part].save_pretrained(folder / name)
    return folder


def flux_pipeline(parts, scheduler=None):
    """diffusers' FluxPipeline over the tiny parts: what the files must encode and sample as."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    return FluxPipeline(scheduler=scheduler or FlowMatchEulerDiscreteScheduler(), vae=parts["vae"], text_encoder=parts["clip_l"],
                        tokenizer=parts["tokenizer"], text_encoder_2=parts["t5"], tokenizer_2=parts["tokenizer_2"],
                        transformer=parts["transformer"])


def test_the_vae_file_loads_to_the_same_vae_and_encodes_as_flux_kontext_does(parts, files):
    from diffusers import FluxKontextPipeline

    vae = load_flux_vae(files["vae"], tiny_configs(parts)["vae"])
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    codec = FluxVAECodec(vae)
    with torch.no_grad():
        latents = codec.encode(pixels)
        theirs = FluxKontextPipeline._encode_vae_image(types.SimpleNamespace(vae=parts["vae"]), pixels * 2 - 1, None)
        decoded = codec.decode(latents)
        expected = (parts["vae"].decode(latents / 0.3611 + 0.1159).sample + 1) / 2
    assert latents.shape == (1, 16, 16, 16) and codec.spatial_factor == 2
    torch.testing.assert_close(latents, theirs, rtol=0, atol=0)
    torch.testing.assert_close(decoded, expected, rtol=0, atol=0)


def test_the_text_files_encode_as_flux_pipeline_encodes_a_prompt(parts, files):
    from byg_core.loading import load_flux_tokenizers

    configs = tiny_configs(parts)
    clip_tok, t5_tok = load_flux_tokenizers(files["tokenizers"])
    ours = FluxTextEncoder(load_clip_l(files["clip_l"], configs["clip_l"]), clip_tok,
                           load_t5_xxl(files["t5"], configs["t5"]), t5_tok)([PROMPT])
    pipe = flux_pipeline(parts)
    with torch.no_grad():
        tokens, pooled, _ = pipe.encode_prompt(PROMPT, PROMPT, max_sequence_length=512)
    assert ours.tokens.shape == (1, 512, 32) and ours.pooled.shape == (1, 32)
    torch.testing.assert_close(ours.tokens, tokens, rtol=0, atol=0)
    torch.testing.assert_close(ours.pooled, pooled, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_text_files_load_at_from_pretrained_precisions_without_a_random_model_first(parts, files, tmp_path, dtype,
                                                                                   monkeypatch):
    from transformers import T5EncoderModel

    built_on = []
    reset = torch.nn.Linear.reset_parameters
    monkeypatch.setattr(torch.nn.Linear, "reset_parameters",
                        lambda self: (built_on.append(self.weight.device.type), reset(self))[1])
    single = load_t5_xxl(files["t5"], tiny_configs(parts)["t5"], dtype)
    assert set(built_on) == {"meta"}  # a full-size T5-XXL built on the CPU first is 19 GB of random fp32
    parts["t5"].save_pretrained(tmp_path / "t5")
    folder = T5EncoderModel.from_pretrained(tmp_path / "t5", torch_dtype=dtype)
    want = {k: v.dtype for k, v in folder.state_dict().items()}
    assert {k: v.dtype for k, v in single.state_dict().items()} == want  # under fp16 T5's wo stays fp32, as it does there
    assert (want["encoder.block.0.layer.1.DenseReluDense.wo.weight"] == torch.float32) == (dtype == torch.float16)


def test_flux1_dev_from_single_files_trains_and_edits(parts, files, tmp_path):
    from byg_core.config import TrainConfig
    from byg_core.data import CachedEdits, EditRecord
    from byg_core.sample import edit
    from byg_core.train import Trainer

    backbone = load_backbone("flux1-dev", **{k: v for k, v in files.items()}, axes_dims_rope=AXES,
                             configs=tiny_configs(parts))
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = backbone.encode_pixels(pixels)
    records = [EditRecord(f"{i}.png", "a red circle", PROMPT, "a green circle", "change the circle's colour to red")
               for i in range(2)]
    config = TrainConfig(model="flux1-dev", output_dir=str(tmp_path), steps=2, batch_size=2, rank=2,
                         warmup_identity_steps=1, checkpoint_every=0)
    config.objective.rollout_steps = 2
    trainer = Trainer(config, backbone, CachedEdits(x, records))
    before = {k: v.clone() for k, v in trainer.adapters.state_dict("student").items()}
    result = trainer.run()
    assert result.steps_done == 2 and result.lora_paths[0].is_file()
    assert any(not torch.equal(before[k], v) for k, v in trainer.adapters.state_dict("student").items())
    edited = edit(backbone, trainer.adapters, x, backbone.encode_text([PROMPT] * 2), steps=2).latents
    assert backbone.decode_latents(edited).shape == pixels.shape


def test_flux1_dev_from_a_diffusers_folder(parts, tmp_path):
    backbone = load_backbone("flux1-dev", folder=save_folder(parts, tmp_path / "FLUX.1-dev"))
    cond = backbone.encode_text([PROMPT])
    # every part is the saved one: the text as FluxPipeline encodes it, the VAE's latents, the transformer's weights
    pipe = flux_pipeline(parts)
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens, pooled, _ = pipe.encode_prompt(PROMPT, PROMPT, max_sequence_length=512)
        torch.testing.assert_close(backbone.encode_pixels(pixels), FluxVAECodec(parts["vae"]).encode(pixels),
                                   rtol=0, atol=0)
    assert cond.tokens.shape == (1, 512, 32)
    torch.testing.assert_close(cond.tokens, tokens, rtol=0, atol=0)
    torch.testing.assert_close(cond.pooled, pooled, rtol=0, atol=0)
    saved = parts["transformer"].state_dict()
    loaded = backbone.transformer.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_missing_files_and_tokenizers_say_what_to_give(parts, files, tmp_path):
    with pytest.raises(ValueError, match="flux1-dev needs 'vae' .* or 'folder'"):
        load_backbone("flux1-dev", transformer=files["transformer"], axes_dims_rope=AXES)
    with pytest.raises(FileNotFoundError, match=r"holds no FLUX.1 tokenizers: name as 'tokenizers' a FLUX.1-dev diffusers "
                                                r"folder \(tokenizer/ and tokenizer_2/\); or a ComfyUI folder"):
        load_backbone("flux1-dev", **(files | {"tokenizers": tmp_path}), axes_dims_rope=AXES, configs=tiny_configs(parts))
    with pytest.raises(ValueError, match=r"ae.safetensors is the FLUX.1 VAE .*, not the CLIP-L text encoder"):
        load_clip_l(files["vae"])


def test_comfyuis_newer_quantized_layout_is_refused_by_name_not_read_unscaled(parts, tmp_path):
    """A T5 file in ComfyUI's newer fp8 layout (<layer>.weight as fp8 codes of W / s, <layer>.weight_scale,
    <layer>.comfy_quant) had loaded its codes as the weights (448 where 0.24), the scales dropped in silence."""
    import json

    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in parts["t5"].state_dict().items()}
    state.pop("encoder.embed_tokens.weight")
    key = "encoder.block.0.layer.0.SelfAttention.q.weight"
    scale = state[key].abs().max() / 448
    state[key] = (state[key] / scale).to(torch.float8_e4m3fn)
    state[key.replace(".weight", ".weight_scale")] = scale.float().reshape(())
    state[key.replace(".weight", ".comfy_quant")] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                                 dtype=torch.uint8)
    save_file(state, tmp_path / "t5xxl_fp8_mixed.safetensors")
    with pytest.raises(ValueError, match=r"t5xxl_fp8_mixed.safetensors is in ComfyUI's newer quantized layout "
                                         r"\(encoder.block.0.layer.0.SelfAttention.q.comfy_quant\).*give its fp16"):
        load_t5_xxl(tmp_path / "t5xxl_fp8_mixed.safetensors", parts["t5"].config.to_dict(), torch.float32)


def test_comfyuis_own_tokenizers_serve_a_user_with_comfyuis_files_only(parts, files, tmp_path):
    """A ComfyUI user has no diffusers folder; ComfyUI ships both tokenizers (its CLIP one says 8192 tokens)."""
    comfy = tmp_path / "ComfyUI"
    parts["tokenizer"].save_pretrained(comfy / "comfy" / "sd1_tokenizer")
    config = comfy / "comfy" / "sd1_tokenizer" / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"model_max_length": 77', '"model_max_length": 8192'))
    assert '"model_max_length": 8192' in config.read_text()
    parts["tokenizer_2"].save_pretrained(comfy / "comfy" / "text_encoders" / "t5_tokenizer")
    options = dict(axes_dims_rope=AXES, configs=tiny_configs(parts))
    from_comfy = load_backbone("flux1-dev", **(files | {"tokenizers": comfy}), **options).encode_text([PROMPT])
    from_diffusers = load_backbone("flux1-dev", **files, **options).encode_text([PROMPT])
    torch.testing.assert_close(from_comfy.tokens, from_diffusers.tokens, rtol=0, atol=0)
    torch.testing.assert_close(from_comfy.pooled, from_diffusers.pooled, rtol=0, atol=0)


def test_assembling_flux_never_opens_a_socket(parts, files, tmp_path, no_network):
    load_backbone("flux1-dev", **files, axes_dims_rope=AXES, configs=tiny_configs(parts)).encode_text([PROMPT])
    load_backbone("flux1-dev", folder=save_folder(parts, tmp_path / "FLUX.1-dev")).encode_text([PROMPT])


@pytest.mark.parametrize("size, steps", [(64, 20), (128, 28)])
def test_the_editor_samples_on_flux_pipelines_schedule(parts, files, size, steps):
    """FLUX.1-dev's resolution-dependent shift: the sigmas FluxPipeline steps through for this size and steps."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from byg_core.loading import shipped_config

    backbone = load_backbone("flux1-dev", **files, axes_dims_rope=AXES, configs=tiny_configs(parts))
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(shipped_config("flux1-dev", "scheduler"))
    pipe = flux_pipeline(parts, scheduler)
    seen = []
    pipe(PROMPT, height=size, width=size, num_inference_steps=steps, output_type="latent", max_sequence_length=16,
         callback_on_step_end=lambda p, i, t, kw: seen.append(p.scheduler.sigmas.clone()) or {})
    latent_shape = (1, 16, size // backbone.codec.spatial_factor, size // backbone.codec.spatial_factor)
    ours = backbone.schedule(steps, latent_shape).sigmas
    torch.testing.assert_close(ours, seen[0], rtol=0, atol=0)
    assert float(ours[1]) > 1 - 1 / steps  # shifted toward noise, unlike the plain linear grid


def test_byg_trains_and_edits_flux_from_the_command_line(parts, tmp_path, capsys, monkeypatch):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from byg_core import cli
    from byg_core.toy.dataset import write_toy_dataset

    folder = save_folder(parts, tmp_path / "FLUX.1-dev")
    data = write_toy_dataset(tmp_path / "data", n=4, seed=0)
    config = tmp_path / "flux_tiny.toml"
    config.write_text(f'model = "flux1-dev"\ndata = "{data}"\noutput_dir = "{tmp_path / "run"}"\nsave_name = "tiny"\n'
                      'steps = 2\nbatch_size = 2\nrank = 2\nwarmup_identity_steps = 1\ncheckpoint_every = 0\n'
                      f'[model_files]\nfolder = "{folder}"\n[objective]\nrollout_steps = 2\n')
    assert cli.main(["train", str(config)]) == 0
    lora = tmp_path / "run" / "tiny.safetensors"
    out = tmp_path / "edited.png"
    from byg_core.backbones.base import EditBackbone

    moves, move = [], EditBackbone.to  # what is on the device when the transformer goes there
    monkeypatch.setattr(EditBackbone, "to", lambda self, device, transformers=True: (
        moves.append((transformers, self.text_encoder is None)), move(self, device, transformers))[1])
    from byg_core import sample

    given, edit = [], sample.edit  # the instruction the edit gets is taken on the transformer's device, after it moved
    monkeypatch.setattr(sample, "edit", lambda backbone, adapters, x, c, **kw: (
        given.append(len(moves)), edit(backbone, adapters, x, c, **kw))[1])
    encode = EditBackbone.encode_text
    monkeypatch.setattr(EditBackbone, "encode_text", lambda self, prompts: (
        moves.append(("encoded", PROMPT in prompts)), encode(self, prompts))[1])
    assert cli.main(["edit", "--lora", str(lora), "--image", str(data / "00000.png"), "--instruction", PROMPT,
                     "--out", str(out), "--steps", "2"]) == 0  # the model and its files come from the LoRA
    assert out.is_file()
    # T5-XXL has encoded the instruction and is released before the transformer goes to the GPU (24 GB: not both)
    assert [m for m in moves if m != ("encoded", False)] == [(False, False), ("encoded", True), (True, True),
                                                              ("encoded", True)]
    assert given == [len(moves)]  # (on a GPU the first encoding's tensors sit on the CPU with the transformer)
    monkeypatch.setattr(EditBackbone, "to", move)
    monkeypatch.setattr(EditBackbone, "encode_text", encode)
    monkeypatch.setattr(sample, "edit", edit)
    # a LoRA trained in ComfyUI records its model but no files: refused until --model-file names them
    with safe_open(str(lora), "pt") as f:
        metadata = f.metadata()
    config = json.loads(metadata["byg.config"])
    del config["model_files"]
    from_comfy = tmp_path / "from_comfy.safetensors"
    save_file(load_file(str(lora)), str(from_comfy), {**metadata, "byg.config": json.dumps(config)})
    edit = ["edit", "--lora", str(from_comfy), "--image", str(data / "00000.png"), "--instruction", PROMPT, "--steps", "2"]
    with pytest.raises(SystemExit, match=r"from_comfy.safetensors names no files for its model flux1-dev .*--model-file"):
        cli.main([*edit, "--out", str(tmp_path / "refused.png")])
    assert cli.main([*edit, "--out", str(tmp_path / "given.png"), "--model-file", f"folder={folder}"]) == 0
    assert (tmp_path / "given.png").read_bytes() == out.read_bytes()


def test_the_flux_example_has_the_papers_settings():
    from pathlib import Path
    from byg_core.config import TrainConfig

    cfg = TrainConfig.from_toml(Path(__file__).resolve().parents[1] / "examples" / "flux.toml")
    assert (cfg.model, cfg.lr, cfg.rank, cfg.batch_size, cfg.warmup_identity_steps, cfg.identity_prob) == \
        ("flux1-dev", 3e-4, 64, 8, 200, 0.15)
    assert (cfg.objective.lambda_id, cfg.objective.rollout_steps) == (0.2, 10)
    assert (cfg.timesteps, cfg.shift) == ("uniform", 1.0)  # t ~ U(0, 1), Algorithm 1
    assert set(cfg.model_files) == {"transformer", "vae", "clip_l", "t5", "tokenizers", "dtype", "storage"}
    assert cfg.gradient_checkpointing and cfg.text_cache_dir


def test_a_wrong_model_file_option_names_the_options():
    with pytest.raises(ValueError, match=r"model 'flux1-dev' takes \[.*'transformer'.*\], not \['unet'\]"):
        load_backbone("flux1-dev", unet="x.safetensors")


@pytest.mark.parametrize("variant, named", [
    (dict(guidance_embeds=False), r"without a guidance embedder \(FLUX.1-schnell\)"),
    (dict(in_channels=384, out_channels=64), r"taking 384 input channels for 64 out \(FLUX.1 Fill, Depth or Canny\)"),
])
def test_other_flux1_models_are_refused_not_trained_as_dev(variant, named, tmp_path):
    from helpers import FLUX_HEADS, diffusers_to_bfl
    from safetensors.torch import save_file
    from diffusers import FluxTransformer2DModel
    from byg_core.loading import load_flux_transformer

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**(TINY_FLUX | {"in_channels": 64} | FLUX_HEADS | variant))
    path = tmp_path / "flux1-other.safetensors"
    save_file(diffusers_to_bfl({k: v.contiguous() for k, v in model.state_dict().items()}), path)
    with pytest.raises(ValueError, match=rf"flux1-other.safetensors is a FLUX.1 model {named}: ByG trains on FLUX.1-dev"):
        load_flux_transformer(path)
    model.save_pretrained(tmp_path / "folder" / "transformer")
    with pytest.raises(ValueError, match=named):
        load_flux_transformer(tmp_path / "folder")


def test_fp8_storage_keeps_weights_in_fp8_and_trains_an_fp32_lora(parts, files):
    from byg_core.adapters import STUDENT, Adapters, LoraSpec

    options = dict(**files, axes_dims_rope=AXES, configs=tiny_configs(parts))
    full = load_backbone("flux1-dev", **options)
    stored = load_backbone("flux1-dev", **options, storage="float8_e4m3fn")
    block = stored.transformer.transformer_blocks[0]
    assert block.attn.to_q.weight.dtype == torch.float8_e4m3fn and block.ff.net[2].weight.dtype == torch.float8_e4m3fn
    assert stored.transformer.x_embedder.weight.dtype == torch.float32  # kept out of the cast
    # the fit check's count (built from a config, before loading) is what the loaded model holds
    from diffusers import FluxTransformer2DModel
    from byg_core.memory import stored_bytes, transformer_bytes

    held = sum(p.numel() * p.element_size() for p in stored.transformer.parameters())
    assert stored_bytes(FluxTransformer2DModel.from_config(stored.transformer.config), False, "float8_e4m3fn",
                        "float32") == held < sum(p.numel() * p.element_size() for p in full.transformer.parameters())
    assert transformer_bytes("flux1-dev", "float8_e4m3fn", "bfloat16") > 14 * 2**30  # was counted as 11.1 GiB
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = full.encode_text([PROMPT])
    t = torch.tensor([0.6])
    with torch.no_grad():
        v_full, v_fp8 = full.velocity(x, t, cond, source=x), stored.velocity(x, t, cond, source=x)
    relative = float((v_fp8 - v_full).norm() / v_full.norm())
    assert 0 < relative < 0.05, relative  # fp8 storage moves the velocity a little

    adapters = Adapters(stored, LoraSpec(2, 2.0, tuple(stored.lora_target_modules())))
    with adapters.use(STUDENT):
        stored.velocity(x, t, cond, source=x).square().mean().backward()
    lora = list(adapters.parameters(STUDENT))
    assert lora and all(p.dtype == torch.float32 for p in lora)
    assert all(p.grad is not None for p in lora) and any(float(p.grad.abs().sum()) > 0 for p in lora)
    assert block.attn.to_q.base_layer.weight.dtype == torch.float8_e4m3fn  # the base stays fp8 under the LoRA


def test_bf16_weights_train_an_fp32_lora_whose_small_updates_and_ema_are_kept(parts, files):
    """peft would give the adapters the base's bf16: AdamW steps and EMA moves below half a bf16 step were lost."""
    from byg_core.adapters import EMA, STUDENT, Adapters, LoraSpec

    stored = load_backbone("flux1-dev", **files, axes_dims_rope=AXES, configs=tiny_configs(parts), dtype="bfloat16")
    block = stored.transformer.transformer_blocks[0]
    assert block.attn.to_q.weight.dtype == torch.bfloat16
    adapters = Adapters(stored, LoraSpec(2, 2.0, tuple(stored.lora_target_modules())))
    assert all(p.dtype == torch.float32 for role in (STUDENT, EMA) for p in adapters.parameters(role))
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with adapters.use(STUDENT):
        v = stored.velocity(x, torch.tensor([0.6]), stored.encode_text([PROMPT]), source=x)
        v.float().square().mean().backward()
    assert v.dtype == torch.bfloat16 and block.attn.to_q.base_layer.weight.dtype == torch.bfloat16
    assert any(float(p.grad.abs().sum()) > 0 for p in adapters.parameters(STUDENT))
    with torch.no_grad():  # the EMA moves 1e-6 here; one bf16 step at 0.02 is 1.2e-4
        for p in adapters.parameters(STUDENT):
            p.fill_(0.0201)
        for p in adapters.parameters(EMA):
            p.fill_(0.02)
    adapters.ema_update(0.99)
    assert all(torch.allclose(p, torch.full_like(p, 0.020001), rtol=0, atol=1e-8) for p in adapters.parameters(EMA))


def test_the_backbone_moves_with_its_text_encoders_and_vae(parts, files):
    """``EditBackbone.to``: every torch part of FLUX.1 (the meta device stands in for a GPU); without the
    transformer, as ``byg train`` encodes a dataset before the trainer moves it."""
    backbone = load_backbone("flux1-dev", **files, axes_dims_rope=AXES, configs=tiny_configs(parts))
    encoders = [backbone.text_encoder.clip, backbone.text_encoder.t5, backbone.codec.vae]
    backbone.to("meta", transformers=False)
    assert all(p.device.type == "meta" for part in encoders for p in part.parameters())
    assert backbone.device.type == "cpu"
    assert backbone.to("meta") is backbone and backbone.device.type == "meta"
    assert all(p.device.type == "meta" for p in backbone.transformer.parameters())


def test_the_device_check_runs_on_a_tiny_config(tmp_path):
    """scripts/device_check.py (for a GPU; full-size FLUX.1-dev and Wan2.2 from the shipped configs) runs its code
    on CPU, on both suites."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "device_check.py"
    spec = importlib.util.spec_from_file_location("device_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = []  # the JSON after every row: a run the device tool stops at 600 s keeps the rows it finished
    real_write = module.write_text_atomic
    module.write_text_atomic = lambda path, text: written.append(len(json.loads(text))) or real_write(path, text)
    assert module.main(["--tiny", "--device", "cpu", "--repeats", "1", "--sizes", "32", "--rank", "2", "--storage", "fp8",
                        "--out", str(tmp_path / "out"), "--rows-out", str(tmp_path / "rows")]) == 0
    assert written == [1, 2] and [p.name for p in (tmp_path / "out").iterdir()] == ["device_check.json"]
    assert sorted(p.name for p in (tmp_path / "rows").iterdir()) == ["flux-128_32_fp8", "wan-128_fp8"]
    rows = json.loads((tmp_path / "out" / "device_check.json").read_text())
    assert [(r["model"], r["size"], r["storage"], r["frames"]) for r in rows] == [("flux-128", 32, "fp8", None),
                                                                                  ("wan-128", 64, "fp8", 5)]
    for row in rows:
        assert row["byg_s"] > row["supervised_s"] > 0 and row["edit_20_steps_s"] > 0
        assert row["flop_ratio"] > 3 and row["byg_peak_mib"] > 0 and row["cache_k"] == 4 and row["time_ratio_cache"] > 0


def test_a_folder_of_pickled_weights_is_refused_never_unpickled(parts, tmp_path, monkeypatch):
    def unpickle(*args, **kwargs):
        raise AssertionError("torch.load was called")

    parts["vae"].save_pretrained(tmp_path / "FLUX.1-dev" / "vae", safe_serialization=False)  # diffusion_pytorch_model.bin
    assert not list((tmp_path / "FLUX.1-dev" / "vae").glob("*.safetensors"))
    monkeypatch.setattr(torch, "load", unpickle)
    with pytest.raises(FileNotFoundError, match=r"FLUX.1-dev/vae holds no .safetensors weights for AutoencoderKL .*"
                                                r"nothing is unpickled"):
        load_flux_vae(tmp_path / "FLUX.1-dev")


@pytest.mark.parametrize("part, load", [("text_encoder", load_clip_l), ("text_encoder_2", load_t5_xxl)])
def test_a_text_encoder_folder_short_of_a_weight_is_refused_not_filled_at_random(parts, tmp_path, part, load):
    """transformers fills a weight its folder lacks with random numbers (a log line, no error): an encoder that
    loads "fine" and encodes every caption into noise the run then trains on."""
    from safetensors.torch import load_file, save_file

    folder = save_folder(parts, tmp_path / "FLUX.1-dev")
    torch.testing.assert_close(load(folder).state_dict(), parts["clip_l" if part == "text_encoder" else "t5"].state_dict(),
                               rtol=0, atol=0)  # the whole folder loads to the saved weights
    weights = folder / part / "model.safetensors"
    state = load_file(weights)
    dropped = sorted(k for k in state if k.endswith("layer_norm.weight") or k.endswith("final_layer_norm.weight"))[0]
    save_file({k: v for k, v in state.items() if k != dropped}, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{part} does not hold 1 of .*'s weights \({dropped}\)"):
        load(folder)


def test_a_flux2_file_and_one_shard_are_refused_by_name_not_with_a_bare_key_error(tmp_path):
    """FLUX.2's single files (BFL's or ComfyUI's keys) failed with "KeyError: 'double_blocks.0.img_attn.qkv.bias'",
    its diffusers-keyed file as "no model this pack knows"; one shard of a sharded checkpoint as either."""
    from diffusers import Flux2Transformer2DModel
    from safetensors.torch import save_file
    from byg_core.loading import load_flux_transformer

    bfl = ["double_blocks.0.img_attn.qkv.weight", "double_blocks.0.img_mlp.0.weight", "single_blocks.0.linear1.weight",
           "double_stream_modulation_img.lin.weight", "single_stream_modulation.lin.weight", "img_in.weight",
           "txt_in.weight", "time_in.in_layer.weight", "guidance_in.in_layer.weight", "final_layer.linear.weight"]
    torch.manual_seed(0)
    flux2 = Flux2Transformer2DModel(in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                    num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=16,
                                    axes_dims_rope=(4, 4, 4, 4))
    files = {"flux2-dev.safetensors": {key: torch.zeros(2, 2) for key in bfl},
             "flux2_dev_comfy.safetensors": {f"model.diffusion_model.{key}": torch.zeros(2, 2) for key in bfl},
             "flux2_diffusers.safetensors": {k: v.contiguous() for k, v in flux2.state_dict().items()}}
    for name, state in files.items():
        save_file(state, tmp_path / name)
        with pytest.raises(ValueError, match=rf"{name} is a FLUX.2 diffusion model \(this pack trains FLUX.1-dev\), "
                                             "not a FLUX.1 diffusion model; pick flux1-dev.safetensors"):
            load_flux_transformer(tmp_path / name)
    shard = tmp_path / "transformer" / "diffusion_pytorch_model-00001-of-00003.safetensors"
    shard.parent.mkdir()
    save_file({"transformer_blocks.0.attn.add_q_proj.weight": torch.zeros(2, 2),
               "single_transformer_blocks.0.proj_mlp.weight": torch.zeros(2, 2)}, shard)
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model-00001-of-00003.safetensors is one of 3 shards of "
                                         r"a model: give the folder that holds them all with their index \("):
        load_flux_transformer(shard)
    whole = tmp_path / "model-00001-of-00001.safetensors"  # one shard of one is the whole model
    save_file({"x": torch.zeros(1)}, whole)
    with pytest.raises(ValueError, match=r"is no model this pack knows"):
        load_flux_transformer(whole)


def test_the_vae_as_a_single_file_in_diffusers_keys_loads_as_ae_safetensors_does(parts, files, tmp_path):
    """The FLUX.1-dev repo's vae/diffusion_pytorch_model.safetensors, copied into ComfyUI's vae folder, was refused
    as "does not fit FLUX.1's VAE ... may be truncated": it is the VAE in diffusers' key names."""
    from safetensors.torch import save_file

    path = tmp_path / "flux_vae_diffusers.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in parts["vae"].state_dict().items()}, path)
    config = tiny_configs(parts)["vae"]
    ours, theirs = load_flux_vae(path, config), load_flux_vae(files["vae"], config)
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    cut = {k: v.detach().clone().contiguous() for k, v in parts["vae"].state_dict().items()
           if k != "decoder.conv_norm_out.bias"}
    save_file(cut, tmp_path / "cut.safetensors")  # short of a weight: had loaded with it left at its init
    with pytest.raises(ValueError, match=r"cut.safetensors does not fill FLUX.1's VAE: missing "
                                         r"\['decoder.conv_norm_out.bias'\], unexpected \[\]; the file may be truncated"):
        load_flux_vae(tmp_path / "cut.safetensors", config)


def test_a_part_given_another_parts_file_is_refused_from_its_header_before_anything_loads(parts, files, tmp_path,
                                                                                          monkeypatch, capsys):
    """A VAE or text encoder of the wrong kind was found when its turn came: FLUX.1's VAE after the 12B transformer,
    A14B's after both 14B experts (27 GiB in fp8). Each file's kind is now read from its header (keys and shapes)."""
    from safetensors.torch import save_file

    from byg_core import cli, loading

    monkeypatch.setattr(loading, "load_backbone", lambda *a, **k: pytest.fail("the model loaded"))
    data = tmp_path / "data"
    assert cli.main(["toy", "dataset", "--out", str(data), "--n", "2"]) == 0
    toml = tmp_path / "flux.toml"
    toml.write_text(f'model = "flux1-dev"\ndata = "{data}"\noutput_dir = "{tmp_path / "run"}"\n[model_files]\n'
                    f'transformer = "{files["transformer"]}"\nvae = "{files["clip_l"]}"\nclip_l = "{files["clip_l"]}"\n'
                    f't5 = "{files["t5"]}"\ntokenizers = "{files["tokenizers"]}"\n')
    assert cli.main(["train", str(toml)]) == 2
    assert (f"model file vae = {files['clip_l']} is the CLIP-L text encoder (for the text_encoders folder), not the "
            "FLUX.1 VAE (ae.safetensors, for the vae folder)") in capsys.readouterr().err
    # a Wan2.1 VAE for TI2V-5B (Wan2.2's 48-channel VAE): keys alone say which
    vae21 = tmp_path / "wan_2.1_vae.safetensors"
    save_file({"decoder.middle.0.residual.0.gamma": torch.zeros(1), "encoder.downsamples.0.residual.0.gamma":
               torch.zeros(1)}, vae21)
    (tmp_path / "wan.safetensors").write_bytes(b"")  # never opened: the VAE is refused first
    toml.write_text(f'model = "wan2.2-ti2v-5b"\ndata = "{data}"\noutput_dir = "{tmp_path / "run"}"\n[model_files]\n'
                    f'transformer = "{tmp_path / "wan.safetensors"}"\nvae = "{vae21}"\numt5 = "{vae21}"\n')
    assert cli.main(["train", str(toml)]) == 2
    assert f"model file vae = {vae21} is the Wan2.1 VAE" in capsys.readouterr().err
    # TI2V-5B's transformer given to A14B: the loader's own advice, now before loading
    ti2v = tmp_path / "wan2.2_ti2v_5B_fp16.safetensors"
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(1, 1), "patch_embedding.weight": torch.zeros(8, 48, 1, 2, 2)},
              ti2v)
    toml.write_text(f'model = "wan2.2-t2v-a14b"\ndata = "{data}"\noutput_dir = "{tmp_path / "run"}"\n[model_files]\n'
                    f'transformer = "{ti2v}"\ntransformer_2 = "{ti2v}"\nvae = "{vae21}"\numt5 = "{vae21}"\n')
    assert cli.main(["train", str(toml)]) == 2
    assert f"model file transformer = {ti2v} is the Wan2.2 TI2V-5B diffusion model (48 latent channels), not a Wan " \
           "14B text-to-video expert" in (err := capsys.readouterr().err) and "load it as model 'wan2.2-ti2v-5b'" in err
    # one shard of three: the shard's own refusal, not "no model this pack knows"
    shard = tmp_path / "diffusion_pytorch_model-00001-of-00003.safetensors"
    save_file({"transformer_blocks.0.attn.to_q.weight": torch.zeros(1, 1)}, shard)
    toml.write_text(f'model = "flux1-dev"\ndata = "{data}"\noutput_dir = "{tmp_path / "run"}"\n[model_files]\n'
                    f'transformer = "{shard}"\nvae = "{files["vae"]}"\nclip_l = "{files["clip_l"]}"\n'
                    f't5 = "{files["t5"]}"\ntokenizers = "{files["tokenizers"]}"\n')
    assert cli.main(["train", str(toml)]) == 2
    assert f"model file transformer = {shard} is one of 3 shards of a model" in capsys.readouterr().err
