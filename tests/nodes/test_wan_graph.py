"""Wan2.2 in a ComfyUI graph: the model files from diffusion_models, the host's UMT5 CLIP and Wan VAE (stand-ins
with ComfyUI's calling conventions over tiny Wan parts) feed training on .mp4 clips and a video edit, node by node
under the executor's inference mode."""

import json

import pytest
import torch

from byg_core.backbones.wan import SentencePieceTokenizer, WanTextEncoder
from byg_core.loading import shipped_config
from byg_core.wan_vae import WanVAECodec
from helpers import FAST_OBJECTIVE, WAN_HEADS, WAN_PARTS, tiny_wan_parts, tiny_wan_transformer, write_wan_files

PROMPT = "change the circle's colour to green"
ROW = {"src_caption": "a red circle on a blue background", "instruction": PROMPT,
       "tgt_caption": "a green circle on a blue background", "reverse_instruction": "change the circle's colour to red"}


class ComfyWanCLIP:
    """ComfyUI's CLIP of type wan: UMT5 states zero past the prompt, padded to 512 tokens, no pooled vector."""

    def __init__(self, encoder):
        self.encoder = encoder

    def tokenize(self, text):
        return {"umt5xxl": text}

    def encode_from_tokens(self, tokens, return_pooled=False):
        cond = self.encoder([tokens["umt5xxl"]])
        return (cond.tokens, None) if return_pooled else cond.tokens


class ComfyWanVAE:
    """ComfyUI's video VAE: encode(frames (F, H, W, C)) -> z (1, C, F', H', W'); decode(z) -> (B, F, H, W, C)."""

    def __init__(self, vae):
        self.vae, self.latent_channels = vae, vae.config.z_dim

    def spacial_compression_encode(self):
        return self.vae.config.scale_factor_spatial

    def encode(self, frames):
        return self.vae.encode(frames.movedim(-1, 0).unsqueeze(0) * 2 - 1).latent_dist.mode()

    def decode(self, z):
        return ((self.vae.decode(z).sample + 1) / 2).clamp(0, 1).movedim(1, -1)


@pytest.fixture(scope="module", params=sorted(WAN_PARTS))
def parts(request):
    variant = request.param
    parts = tiny_wan_parts(variant, seed=8)
    parts["transformer"] = tiny_wan_transformer(variant, 8, **WAN_HEADS)  # a file without a config: Wan's heads
    if variant == "t2v-a14b":
        parts["transformer_2"] = tiny_wan_transformer(variant, 9, **WAN_HEADS)
    return variant, parts


@pytest.fixture
def comfy_wan(parts, host):
    variant, parts = parts
    files = write_wan_files(host.root / "models", variant, parts)
    names = []
    for part in ("transformer", "transformer_2"):
        if part in files:
            files[part].rename(host.root / "diffusion_models" / files[part].name)
            names.append(files[part].name)
    encoder = WanTextEncoder(parts["umt5"], SentencePieceTokenizer(parts["spiece"]))
    return variant, names, ComfyWanCLIP(encoder), ComfyWanVAE(parts["vae"]), encoder, parts


def test_the_hosts_clip_and_vae_give_what_the_files_give(submodule, comfy_wan):
    model = submodule("nodes.model")
    variant, _, clip, vae, encoder, parts = comfy_wan
    name = {"ti2v-5b": "wan2.2-ti2v-5b", "t2v-a14b": "wan2.2-t2v-a14b"}[variant]
    shipped = model.host_codec(name, vae)
    config = shipped_config(name, "vae")  # the real 48 / 16 channels' statistics, as the model takes them
    torch.testing.assert_close(shipped.shift, torch.tensor(config["latents_mean"]), rtol=0, atol=0)
    torch.testing.assert_close(shipped.scale, 1 / torch.tensor(config["latents_std"]))
    # the tiny VAE's own statistics stand in for the shipped ones
    shipped.shift = torch.tensor(parts["vae"].config.latents_mean)
    shipped.scale = 1 / torch.tensor(parts["vae"].config.latents_std)
    ours = WanVAECodec(parts["vae"])
    video = torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latents = ours.encode(video)
        torch.testing.assert_close(shipped.encode(video), latents, rtol=1e-5, atol=1e-5)  # per sample vs batched
        torch.testing.assert_close(shipped.decode(latents), ours.decode(latents), rtol=1e-5, atol=1e-5)
        image = video[:, :, 0]
        torch.testing.assert_close(shipped.encode(image), ours.encode(image), rtol=1e-5, atol=1e-5)
        a, b = submodule("nodes.host").HostCLIP(clip)([PROMPT, "a red circle"]), encoder([PROMPT, "a red circle"])
    torch.testing.assert_close(a.tokens, b.tokens, rtol=0, atol=0)
    assert a.pooled is None


def test_wan_graph_trains_on_mp4_clips_and_edits_a_video(run, nodes, comfy_wan, host):
    from byg_core.video_io import write_video

    variant, names, clip, vae, _, _ = comfy_wan
    model_name = {"ti2v-5b": "wan2.2-ti2v-5b", "t2v-a14b": "wan2.2-t2v-a14b"}[variant]
    assert set(names) <= set(nodes["BYGModelLoader"].INPUT_TYPES()["required"]["diffusion_model"][0])
    with pytest.raises(ValueError, match=r"pick 'diffusion_model_2' \(wan2.2_t2v_low_noise" if len(names) == 2
                       else r"connect 'vae' \(VAELoader: wan2.2_vae"):
        run("BYGModelLoader", model=model_name, diffusion_model=names[0], clip=clip)
    (model,) = run("BYGModelLoader", model=model_name, diffusion_model=names[0],
                   diffusion_model_2=names[-1] if len(names) == 2 else "(none)", weights="bf16", clip=clip, vae=vae)
    data = host.root / "input" / "clips"
    data.mkdir(parents=True)
    for i in range(2):
        write_video(data / f"clip{i}.mp4", torch.rand(3, 9, 32, 32, generator=torch.Generator().manual_seed(i)))
    (data / "edits.jsonl").write_text("".join(json.dumps({**ROW, "video": f"clip{i}.mp4"}) + "\n" for i in range(2)))
    with pytest.raises(ValueError, match=r"BYGDataset: widget 'frames': frames=8 is not 4k\+1.*use 5 or 9"):
        run("BYGDataset", folder="clips", strict=True, width=32, height=32, frames=8, frame_stride=1)
    with pytest.raises(ValueError, match=r"BYGDataset: bad lines.*\n.*edits.jsonl:1: .*clip0.mp4 has 9 frames at "
                                         r"stride 2; use frames=5"):  # the node's frames reach the validation
        run("BYGDataset", folder="clips", strict=True, width=32, height=32, frames=9, frame_stride=2)
    dataset, _ = run("BYGDataset", folder="clips", strict=True, width=32, height=32, frames=5, frame_stride=2)
    objective, _ = run("DirectionalPriorLoss", **FAST_OBJECTIVE)
    lora, _ = run("CycleTrainer", model=model, dataset=dataset, objective=objective, preset="auto", steps=2,
                  learning_rate=-1, rank=2, batch_size=2, seed=0, save_name="wan_test", resume=False,
                  warmup_identity_steps=1, preview_every=0, ema_decay=-1)
    config = lora.files[0].metadata["byg.config"]
    assert config["model"] == model_name and (config["lr"], config["use_ema"], config["shift"]) == (1e-4, False, 12.0)
    assert (config["frames"], config["frame_stride"]) == (5, 2)  # the clips it trained on, as the dataset node took them
    assert len(lora.files) == len(names)  # one LoRA file per expert
    if variant == "t2v-a14b":  # a pair renamed apart cannot be found whole: refused, not loaded as half a LoRA
        (host.root / "loras" / "wan_test_high_noise.safetensors").rename(host.root / "loras" / "renamed.safetensors")
        with pytest.raises(ValueError, match=r"widget 'lora_name' \(renamed.safetensors\): .*no LoRA for expert "
                                             r"'transformer_2'.*<name>_low_noise\), unrenamed"):
            run("BYGLoRALoader", model=model, lora_name="renamed.safetensors", strength=1.0)
    longer, _ = run("BYGDataset", folder="clips", strict=True, width=32, height=32, frames=9, frame_stride=1)
    with pytest.raises(ValueError, match=r"(?s)cannot resume: .*frames=5.*frames=9.*Set BYGDataset's 'frames' back to 5"):
        run("CycleTrainer", model=model, dataset=longer, objective=objective, preset="auto", steps=3, learning_rate=-1,
            rank=2, batch_size=2, seed=0, save_name="wan_test", resume=True, warmup_identity_steps=1, preview_every=0,
            ema_decay=-1)
    (edited_model,) = run("BYGLoRALoader", model=model, lora_name="(none)", strength=1.0, lora=lora)
    frames = torch.rand(5, 32, 32, 3)  # what stock GetVideoComponents gives: (frames, H, W, C)
    (edited,) = run("BYGVideoEdit", model=edited_model, frames=frames, instruction=PROMPT, steps=2, seed=0, guidance=0.0)
    assert edited.shape == frames.shape and not torch.equal(edited, frames)
