"""FLUX.1-dev in a ComfyUI graph: the model file from diffusion_models, the host's CLIP and VAE (stand-ins with
ComfyUI's calling conventions over tiny FLUX parts) feed training and editing end to end."""

import torch
import pytest

from byg_core.backbones.flux import FluxTextEncoder, FluxVAECodec
from helpers import FAST_OBJECTIVE, FLUX_HEADS, tiny_flux_parts, write_flux_files

PROMPT = "change the circle's colour to green"


class ComfyCLIP:
    """ComfyUI's CLIP: tokenize(text) -> tokens; encode_from_tokens(tokens, return_pooled=True) -> (cond, pooled)."""

    def __init__(self, encoder):
        self.encoder = encoder

    def tokenize(self, text):
        return {"t5xxl": text, "l": text}

    def encode_from_tokens(self, tokens, return_pooled=False):
        cond = self.encoder([tokens["t5xxl"]])
        return (cond.tokens, cond.pooled) if return_pooled else cond.tokens


class ComfyVAE:
    """ComfyUI's VAE: encode(IMAGE (B, H, W, C) in [0, 1]) -> the first stage's z; decode(z) -> IMAGE."""

    latent_channels = 16

    def __init__(self, vae):
        self.vae = vae

    def spacial_compression_encode(self):
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, image):
        return self.vae.encode(image.movedim(-1, 1) * 2 - 1).latent_dist.mode()

    def decode(self, z):
        return ((self.vae.decode(z).sample + 1) / 2).clamp(0, 1).movedim(1, -1)


@pytest.fixture(scope="module")
def parts():
    return tiny_flux_parts(seed=2, **FLUX_HEADS)


@pytest.fixture
def comfy_flux(parts, host):
    files = write_flux_files(host.root / "models", parts)
    files["transformer"].rename(host.root / "diffusion_models" / "flux1-dev.safetensors")
    encoder = FluxTextEncoder(parts["clip_l"], parts["tokenizer"], parts["t5"], parts["tokenizer_2"])
    return ComfyCLIP(encoder), ComfyVAE(parts["vae"]), encoder


def test_the_hosts_clip_and_vae_give_what_the_files_give(submodule, parts, comfy_flux):
    host = submodule("nodes.host")
    clip, vae, encoder = comfy_flux
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # the loader's codec (FLUX.1's shipped shift and scale; the tiny VAE's config carries the same two)
        theirs, ours = submodule("nodes.model").host_codec("flux1-dev", vae), FluxVAECodec(parts["vae"])
        torch.testing.assert_close(theirs.encode(pixels), ours.encode(pixels), rtol=0, atol=0)
        latents = ours.encode(pixels)
        torch.testing.assert_close(theirs.decode(latents), ours.decode(latents).clamp(0, 1), rtol=0, atol=1e-6)
        a, b = host.HostCLIP(clip)([PROMPT, "a red circle"]), encoder([PROMPT, "a red circle"])
    torch.testing.assert_close(a.tokens, b.tokens, rtol=0, atol=0)
    torch.testing.assert_close(a.pooled, b.pooled, rtol=0, atol=0)


def test_flux_graph_trains_and_edits_with_the_hosts_clip_and_vae(run, nodes, comfy_flux, host):
    from byg_core.toy.dataset import write_toy_dataset

    clip, vae, _ = comfy_flux
    assert "flux1-dev.safetensors" in nodes["BYGModelLoader"].INPUT_TYPES()["required"]["diffusion_model"][0]
    (model,) = run("BYGModelLoader", model="flux1-dev", diffusion_model="flux1-dev.safetensors", clip=clip, vae=vae)
    write_toy_dataset(host.root / "input" / "shapes", n=4, seed=0)
    dataset, _ = run("BYGDataset", folder="shapes", strict=True, width=16, height=16)
    objective, _ = run("DirectionalPriorLoss", **FAST_OBJECTIVE)
    lora, _ = run("CycleTrainer", model=model, dataset=dataset, objective=objective, preset="auto", steps=2,
                  learning_rate=-1, rank=2, batch_size=2, seed=0, save_name="flux_test", resume=False,
                  warmup_identity_steps=1, preview_every=0, ema_decay=-1)
    config = lora.files[0].metadata["byg.config"]
    assert config["model"] == "flux1-dev" and config["lr"] == 3e-4  # the paper's image values (B.1)
    assert config["gradient_checkpointing"]  # the preset's: no GPU holds FLUX.1-dev's activations without it
    assert (host.root / "loras" / "flux_test.safetensors").is_file()
    assert host.unloads == [0]  # the host's CLIP (T5) and VAE left the GPU once the dataset was encoded, before step 1
    host.updates, host.unloads = [], []
    (edited_model,) = run("BYGLoRALoader", model=model, lora_name="(none)", strength=1.0, lora=lora)
    image = torch.rand(1, 16, 16, 3)
    edited, _ = run("BootstrapSampler", model=edited_model, image=image, instruction=PROMPT, steps=2, seed=0,
                    guidance=3.5, return_states=False)
    assert host.unloads == [0]  # and after the edit's encoding, before its steps
    assert edited.shape == image.shape and not torch.equal(edited, image)
    host.updates, host.unloads = [], []
    _, direction = run("DirectionalPriorLoss", **FAST_OBJECTIVE, model=model, image=image, src_caption="a red circle",
                       tgt_caption=PROMPT, t=0.5, seed=0)
    assert host.unloads == [0] and direction.shape == image.shape  # the map's too, before the model's two passes


def test_loading_other_weights_lets_the_model_loaded_before_go(run, comfy_flux, submodule, monkeypatch):
    """One model of the user's files stays loaded: each change of the weights widget (or a CLIP the host loaded again)
    had kept every earlier transformer on the GPU, beyond the host's reach (FLUX fp8 twice: 24 GB)."""
    import gc
    import weakref

    monkeypatch.setattr(submodule("nodes.model"), "_SHARED", {})
    clip, vae, _ = comfy_flux

    def load(**weights):
        (model,) = run("BYGModelLoader", model="flux1-dev", diffusion_model="flux1-dev.safetensors", clip=clip, vae=vae,
                       **weights)
        return model.backbone

    first = load()
    assert load() is first  # two loaders of the same files share one copy
    earlier = weakref.ref(first)
    del first
    second = load(weights="fp8")
    gc.collect()
    assert earlier() is None and load(weights="fp8") is second


def test_a_vae_of_other_latent_channels_is_refused_naming_the_one_to_connect(submodule, comfy_flux):
    """An SD VAE (4 channels) or FLUX.2's (32) had been taken, to fail mid-training in a matrix product."""
    _, vae, _ = comfy_flux
    other = type("SDVAE", (type(vae),), {"latent_channels": 4})(vae.vae)
    with pytest.raises(ValueError, match=r"flux1-dev takes a VAE of 16 latent channels; the connected one has 4: "
                                         r"connect VAELoader: ae.safetensors"):
        submodule("nodes.model").host_codec("flux1-dev", other)


def test_bfls_sft_files_are_listed_as_models(nodes, host):
    """BFL's own release names FLUX.1-dev's file flux1-dev.sft (safetensors); ComfyUI lists it, and so do we."""
    for name in ("flux1-dev.sft", "notes.txt"):
        (host.root / "diffusion_models" / name).write_bytes(b"")
    listed = nodes["BYGModelLoader"].INPUT_TYPES()["required"]["diffusion_model"][0]
    assert "flux1-dev.sft" in listed and "notes.txt" not in listed


def test_flux_without_its_files_says_what_to_connect(run):
    with pytest.raises(ValueError, match=r"flux1-dev is loaded from your files: pick 'diffusion_model' \(flux1-dev"
                                         r".*; connect 'clip' \(DualCLIPLoader.*connect 'vae' \(VAELoader: ae"):
        run("BYGModelLoader", model="flux1-dev", diffusion_model="(none)")
