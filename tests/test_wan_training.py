"""ByG training and editing on the Wan2.2 backbone (toy videos, tiny random transformers).

A14B's two experts: gradients reach only the student LoRA of the expert the step's t falls
on; a chosen expert keeps t in its range; each expert gets its own LoRA file with native
Wan keys that loads back to identical outputs. Bad videos are refused through the dataset.
"""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from byg_core import cli
from byg_core.adapters import EMA, STUDENT, Adapters, Generators, LoraSpec
from byg_core.config import VIDEO_PRESET, TrainConfig
from byg_core.data import EditDataset, cache
from byg_core.lora_io import load_lora, save_lora
from byg_core.objective import ObjectiveConfig, byg_step
from byg_core.sample import edit
from byg_core.toy.video import build_toy_wan_backbone, write_video_dataset
from byg_core.train import Trainer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "toy_video.toml"
VARIANTS = {"ti2v-5b": ["transformer"], "t2v-a14b": ["transformer", "transformer_2"]}


def toy_videos(root, backbone, n=2, **kwargs):
    write_video_dataset(root, n, seed=0, **kwargs)
    return cache(EditDataset.from_folder(root), backbone)


def video_config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "run"), steps=3, batch_size=2, rank=4, lr=1e-2,
                  warmup_identity_steps=0, identity_prob=0.0, checkpoint_every=0, seed=2)
    cfg = TrainConfig.for_video({**values, **overrides})
    cfg.objective.rollout_steps = 2
    return cfg


def grad_size(params):
    return sum(0.0 if p.grad is None else float(p.grad.abs().sum()) for p in params)


@pytest.mark.parametrize(
    "t, expert, other", [(0.93, "transformer", "transformer_2"), (0.5, "transformer_2", "transformer")]
)
def test_gradients_reach_only_the_student_lora_of_the_expert_in_use(tmp_path, t, expert, other):
    backbone = build_toy_wan_backbone("t2v-a14b")
    data = toy_videos(tmp_path, backbone)
    adapters = Adapters(backbone, LoraSpec(4, 4.0, tuple(backbone.lora_target_modules())))
    G = Generators(backbone, adapters, use_ema=True)
    batch = data.batch(backbone, [0, 1])
    eps = torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(1))
    losses = byg_step(G, batch, torch.full((2,), t), eps, ObjectiveConfig(rollout_steps=4))
    assert backbone.expert_for(float(losses.t[0])) == expert  # the snapped t stays on its side
    losses.total.backward()
    assert grad_size(adapters.parameters(STUDENT, expert)) > 0
    assert grad_size(adapters.parameters(STUDENT, other)) == 0
    assert grad_size(adapters.parameters(EMA)) == 0
    frozen = [p for m in backbone.transformers.values() for n, p in m.named_parameters() if "lora_" not in n]
    assert all(p.grad is None for p in frozen)


def test_a_chosen_expert_keeps_t_in_its_range_and_trains_alone(tmp_path):
    backbone = build_toy_wan_backbone("t2v-a14b")
    trainer = Trainer(video_config(tmp_path, expert="transformer"), backbone, toy_videos(tmp_path / "data", backbone))
    t = trainer._timesteps(256, torch.Generator().manual_seed(0))
    assert t.min() >= 0.875 and t.max() <= 1
    low_before = [p.clone() for p in trainer.adapters.parameters(STUDENT, "transformer_2")]
    high_before = [p.clone() for p in trainer.adapters.parameters(STUDENT, "transformer")]
    trainer.run()
    assert all(torch.equal(a, b) for a, b in zip(low_before, trainer.adapters.parameters(STUDENT, "transformer_2")))
    assert not all(torch.equal(a, b) for a, b in zip(high_before, trainer.adapters.parameters(STUDENT, "transformer")))


def test_the_memory_estimate_counts_what_a_wan_step_holds(tmp_path):
    """Only the chosen expert's LoRA has gradients and AdamW state; Wan attends to the text by cross-attention, so
    its text tokens are not in the blocks' sequence."""
    from byg_core.memory import estimate, tokens_per_sample

    backbone = build_toy_wan_backbone("t2v-a14b")
    data = toy_videos(tmp_path / "data", backbone)
    both, one = (estimate(Trainer(video_config(tmp_path / e, expert=e), backbone, data)) for e in ("auto", "transformer"))
    trainer = Trainer(video_config(tmp_path / "x", expert="transformer"), backbone, data)
    high = sum(p.numel() * p.element_size() for p in trainer.adapters.parameters(STUDENT, "transformer"))
    assert one.optimizer == 3 * high < both.optimizer
    x = data.x[:1]
    assert tokens_per_sample(trainer) == 2 * (x[0].numel() // x.shape[1]) // 4  # noisy and source patches, no text


def test_the_low_noise_expert_is_never_given_a_high_noise_t(tmp_path):
    backbone = build_toy_wan_backbone("t2v-a14b")
    trainer = Trainer(video_config(tmp_path, expert="transformer_2"), backbone, toy_videos(tmp_path / "data", backbone))
    high_before = [p.clone() for p in trainer.adapters.parameters(STUDENT, "transformer")]
    trainer.cfg.steps = 6  # logit-normal with shift 12 puts most t near the top of the range
    trainer.run()
    assert all(torch.equal(a, b) for a, b in zip(high_before, trainer.adapters.parameters(STUDENT, "transformer")))


def native_keys(path):
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_trainer_run_writes_native_lora_files_that_load_back_identically(tmp_path, variant):
    backbone = build_toy_wan_backbone(variant)
    trainer = Trainer(video_config(tmp_path), backbone, toy_videos(tmp_path / "data", backbone))
    with torch.no_grad():  # every expert's LoRA acts (three steps at shift 12 may never draw the low-noise t)
        for param in trainer.adapters.parameters(STUDENT, matrices="B"):
            param.normal_(0, 0.1, generator=torch.Generator().manual_seed(5))
    result = trainer.run()
    assert result.steps_done == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    names = {"transformer": "byg_lora", "transformer_2": "byg_lora_low_noise"}
    if variant == "t2v-a14b":
        names["transformer"] = "byg_lora_high_noise"
    assert [p.name for p in result.lora_paths] == [f"{names[e]}.safetensors" for e in VARIANTS[variant]]
    for path in result.lora_paths:
        keys = native_keys(path)
        assert all(k.startswith("diffusion_model.blocks.") for k in keys)
        for expected in ("0.self_attn.q.lora_A.weight", "1.self_attn.o.lora_B.weight", "0.cross_attn.k.lora_A.weight",
                         "1.ffn.0.lora_B.weight", "0.ffn.2.alpha"):
            assert f"diffusion_model.blocks.{expected}" in keys

    batch = trainer.data.batch(backbone, [0, 1])
    y = torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0.95, 0.3])  # one sample on each A14B expert
    with trainer.adapters.use(STUDENT):  # use_ema = false: the student is what was saved
        trained = backbone.velocity(y, t, batch.c, source=batch.x)
    fresh = build_toy_wan_backbone(variant)
    loaded = load_lora(result.lora_paths, fresh)
    with loaded.use(EMA):
        assert torch.equal(fresh.velocity(y, t, fresh.encode_text([r.instruction for r in trainer.data.records[:2]]),
                                          source=batch.x), trained)
    with loaded.use("base"):  # each sample, so each expert's LoRA
        assert ((fresh.velocity(y, t, batch.c, source=batch.x) - trained).flatten(1).abs().amax(1) > 1e-4).all()


def test_video_edit_runs_unipc_through_both_experts(tmp_path):
    backbone = build_toy_wan_backbone("t2v-a14b")
    data = toy_videos(tmp_path, backbone, n=1)
    adapters = Adapters(backbone, LoraSpec(4, 4.0, tuple(backbone.lora_target_modules())))
    calls = {name: 0 for name in backbone.transformers}
    for name, model in backbone.transformers.items():
        model.patch_embedding.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    batch = data.batch(backbone, [0])
    result = edit(backbone, adapters, batch.x, batch.c, steps=6, keep_states=True)
    pixels = backbone.decode_latents(result.latents)
    assert pixels.shape == (1, 3, 5, 16, 16)
    assert type(backbone.make_scheduler()).__name__ == "UniPCMultistepScheduler"
    # 6 steps at Wan2.2's A14B shift 12: t = 1, 0.98, 0.96, 0.92 sit above the 0.875 boundary (2 patchify calls each,
    # latents and source, twice: the instruction's and the negative prompt's, as Wan2.2's sampler guides)
    high = sum(t >= 0.875 for t in result.t)
    assert high == 4 and calls == {"transformer": 4 * high, "transformer_2": 4 * (6 - high)}


def test_an_edit_guides_each_expert_at_wan22s_own_scale_against_the_negative_prompt(tmp_path):
    """Paper B.2 edits video with Wan2.2's default configuration: classifier-free guidance every step against the
    negative prompt, A14B's high-noise expert at 4 and its low-noise one at 3 (TI2V-5B: 5); cfg 1 is none."""
    from byg_core.sample import guide_scales_of, initial_noise, integrate

    backbone = build_toy_wan_backbone("t2v-a14b")
    assert backbone.guide_scales == {"transformer": 4.0, "transformer_2": 3.0}
    assert build_toy_wan_backbone("ti2v-5b").guide_scales == {"transformer": 5.0}
    batch = toy_videos(tmp_path, backbone, n=1).batch(backbone, [0])
    adapters = Adapters(backbone, LoraSpec(4, 4.0, tuple(backbone.lora_target_modules())), seed=1)
    x, c, u = batch.x, batch.c, backbone.encode_text([backbone.negative_prompt])

    def by_hand(scale):
        def velocity(y, t):
            v_c, v_u = backbone.velocity(y, t, c, source=x), backbone.velocity(y, t, u, source=x)
            return v_u + scale(float(t[0])) * (v_c - v_u)
        with adapters.use(EMA):
            return integrate(backbone.schedule(4, x.shape), velocity, initial_noise(x.shape, 0, x.device, x.dtype)).latents

    wan22 = by_hand(lambda t: 4.0 if t >= 0.875 else 3.0)
    torch.testing.assert_close(edit(backbone, adapters, x, c, steps=4).latents, wan22, rtol=0, atol=1e-6)
    with guide_scales_of(backbone, 1.0):
        unguided = edit(backbone, adapters, x, c, steps=4).latents
    torch.testing.assert_close(unguided, by_hand(lambda t: 1.0), rtol=0, atol=1e-6)
    assert (unguided - wan22).abs().max() > 1e-3 and backbone.guide_scales["transformer"] == 4.0  # put back
    with guide_scales_of(backbone, [2.0, 1.0]):
        torch.testing.assert_close(edit(backbone, adapters, x, c, steps=4).latents,
                                   by_hand(lambda t: 2.0 if t >= 0.875 else 1.0), rtol=0, atol=1e-6)
    with guide_scales_of(backbone, [3.5]):  # `byg edit --cfg 3.5`: one value, every expert
        assert backbone.guide_scales == {"transformer": 3.5, "transformer_2": 3.5}
    with pytest.raises(ValueError, match=r"cfg takes one scale >= 0, or one per expert \(2\)"):
        with guide_scales_of(backbone, [2.0, 1.0, 1.0]):
            pass


def test_bad_videos_are_refused_through_the_dataset_with_file_line_and_nearest_values(tmp_path):
    backbone = build_toy_wan_backbone("ti2v-5b")
    assert toy_videos(tmp_path / "frames", backbone, frames=6).x.shape[2] == 2  # the clip is frames 0-4: 2 latent frames
    short = r"00000 \(edits.jsonl line 1\): .*00000 has 6 frames at stride 2; use frames=1 or a longer video"
    with pytest.raises(ValueError, match=short):
        cache(EditDataset.from_folder(tmp_path / "frames"), backbone, frames=5, stride=2)
    with pytest.raises(ValueError, match=r"line 1\): got height 18; Wan needs a height divisible by 4: use 16 or 20"):
        toy_videos(tmp_path / "size", backbone, size=18)
    folder = tmp_path / "file"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(b"\x00")
    fields = '"src_caption": "a", "instruction": "b", "tgt_caption": "c", "reverse_instruction": "d"'
    (folder / "edits.jsonl").write_text('{"video": "clip.mp4", ' + fields + "}\n")
    with pytest.raises(ValueError, match=r"edits.jsonl:1: cannot decode .*clip.mp4"):
        EditDataset.from_folder(folder)


def test_example_config_has_the_papers_video_options():
    cfg = TrainConfig.from_toml(EXAMPLE)
    assert {k: getattr(cfg, k) for k in VIDEO_PRESET} == VIDEO_PRESET
    assert cfg.model == "toy-wan-5b" and cfg.objective.rollout_steps == 10


def test_cli_trains_the_two_expert_toy_model_from_the_example(tmp_path, capsys, monkeypatch):
    write_video_dataset(tmp_path / "data", 2, seed=0)
    overrides = [f"data={tmp_path / 'data'}", f"output_dir={tmp_path / 'run'}", "model=toy-wan-a14b", "steps=2",
                 "rank=4", "warmup_identity_steps=1", "objective.rollout_steps=2", "log_every=1"]
    assert cli.main(["train", str(EXAMPLE), *sum((["--set", o] for o in overrides), [])]) == 0
    printed = capsys.readouterr().out
    assert "byg_toy_video_high_noise.safetensors" in printed and "byg_toy_video_low_noise.safetensors" in printed
    assert (tmp_path / "run" / "losses.jsonl").read_text().count("\n") == 2
    # half the pair, or the checkpoint, given to byg edit: refused before any model loads
    import byg_core.loading

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(byg_core.loading, "load_backbone", no_load)
    video = next(p for p in (tmp_path / "data").iterdir() if p.is_dir())
    edit = ["edit", "--image", str(video), "--out", str(tmp_path / "edited"), "--instruction", "x", "--lora"]
    assert cli.main([*edit, str(tmp_path / "run" / "byg_toy_video_high_noise.safetensors")]) == 2
    assert "hold no LoRA for expert 'transformer_2'" in capsys.readouterr().err
    assert cli.main([*edit, str(tmp_path / "run" / "checkpoint.safetensors")]) == 2
    assert "is a training checkpoint, not a LoRA" in capsys.readouterr().err


def test_either_file_of_an_expert_pair_names_both(tmp_path):
    from byg_core.lora_io import sibling_paths

    backbone = build_toy_wan_backbone("t2v-a14b")
    adapters = Adapters(backbone, LoraSpec(4, 4.0, tuple(backbone.lora_target_modules())))
    high, low = save_lora(tmp_path / "pair.safetensors", backbone, adapters)
    experts = list(backbone.transformers)
    assert sibling_paths(high, experts) == [high, low] == sibling_paths(low, experts)
    single = build_toy_wan_backbone("ti2v-5b")
    assert sibling_paths(high, list(single.transformers)) == [high]


def test_one_file_of_an_expert_pair_or_one_file_twice_is_refused_not_loaded_as_half_a_lora(tmp_path):
    backbone = build_toy_wan_backbone("t2v-a14b")
    adapters = Adapters(backbone, LoraSpec(4, 4.0, tuple(backbone.lora_target_modules())))
    high, low = save_lora(tmp_path / "pair.safetensors", backbone, adapters)
    with pytest.raises(ValueError, match=r"pair_high_noise.safetensors hold no LoRA for expert 'transformer_2'.*"
                                         r"<name>_high_noise and <name>_low_noise"):
        load_lora([high], build_toy_wan_backbone("t2v-a14b"))
    with pytest.raises(ValueError, match=r"each holds expert 'transformer'; give one file per expert"):
        load_lora([high, high], build_toy_wan_backbone("t2v-a14b"))
    assert set(load_lora([low, high], build_toy_wan_backbone("t2v-a14b")).state_dict(EMA)) == set(adapters.state_dict(EMA))


def test_a_pair_is_one_lora_spec_and_may_join_two_single_expert_trainings(tmp_path):
    """Halves of pairs of another rank were told to load 'onto a model without a LoRA' (the model carried none); two
    runs that each trained one expert (TrainConfig.expert) make a pair, as trainers of Wan2.2 experts do."""
    backbone = build_toy_wan_backbone("t2v-a14b")
    targets = tuple(backbone.lora_target_modules())
    high, _ = save_lora(tmp_path / "a.safetensors", backbone, Adapters(backbone, LoraSpec(4, 4.0, targets)),
                        config={"model": "toy-wan-a14b", "expert": "transformer"})
    _, low = save_lora(tmp_path / "b.safetensors", backbone, Adapters(backbone, LoraSpec(4, 4.0, targets)),
                       config={"model": "toy-wan-a14b", "expert": "transformer_2"})
    load_lora([high, low], build_toy_wan_backbone("t2v-a14b"))
    _, low = save_lora(tmp_path / "c.safetensors", backbone, Adapters(backbone, LoraSpec(8, 8.0, targets)),
                       config={"model": "toy-wan-a14b"})
    with pytest.raises(ValueError, match=r"a_high_noise.safetensors and .*c_low_noise.safetensors do not make one LoRA "
                                         r"\(rank 4 against 8; alpha 4.0 against 8.0\): give both files one training"):
        load_lora([high, low], build_toy_wan_backbone("t2v-a14b"))
    _, low = save_lora(tmp_path / "d.safetensors", backbone, Adapters(backbone, LoraSpec(4, 4.0, targets[:1])),
                       config={"model": "toy-wan-a14b"})
    with pytest.raises(ValueError, match=r"do not make one LoRA \(target_modules "):
        load_lora([high, low], build_toy_wan_backbone("t2v-a14b"))
