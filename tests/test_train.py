"""The trainer: loss goes down on a fixed batch, resume is exact, bad configs are refused."""

import dataclasses
import functools
import re
from pathlib import Path

import pytest
import torch

from byg_core.adapters import EMA, STUDENT
from byg_core.config import TrainConfig
from byg_core.data import CachedEdits, EditRecord
from byg_core.objective import ObjectiveConfig, byg_step
from byg_core.lora_io import read_lora
from byg_core.safefiles import load_checked
from byg_core.train import Callbacks, Diverged, Trainer, check_resumable, existing_run
from helpers import make_flux_backbone

RECORDS = [
    EditRecord(Path("a.png"), "a red circle on a blue background", "change the circle's colour to green",
               "a green circle on a blue background", "change the circle's colour to red"),
    EditRecord(Path("b.png"), "a green square on a red background", "change the background colour to blue",
               "a green square on a blue background", "change the background colour to red"),
]


def tiny_data(n=2):
    g = torch.Generator().manual_seed(3)
    return CachedEdits(torch.rand(n, 3, 8, 8, generator=g) * 2 - 1, RECORDS[:n])


def config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), steps=6, batch_size=2, rank=4, lr=1e-2, warmup_identity_steps=1,
                  checkpoint_every=0, seed=5)
    values.update(overrides)
    cfg = TrainConfig.from_dict({k: v for k, v in values.items() if k != "objective"})
    if "objective" in overrides:
        cfg.objective = overrides["objective"]
    return cfg


def lora_state(trainer):
    return {k: v.clone() for k, v in trainer.adapters.state_dict(STUDENT).items()}


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path):
    full = Trainer(config(tmp_path / "full"), make_flux_backbone(), tiny_data())
    full.run()
    stops = iter([False, False, False, True])  # stop after 3 steps
    first = Trainer(config(tmp_path / "split"), make_flux_backbone(), tiny_data(),
                    Callbacks(should_stop=lambda: next(stops)))
    result = first.run()
    assert result.stopped_early and result.steps_done == 3
    second = Trainer(config(tmp_path / "split"), make_flux_backbone(), tiny_data())
    assert second.resume() == 3
    second.run()
    for key, value in lora_state(full).items():
        assert torch.equal(value, second.adapters.state_dict(STUDENT)[key]), key
    assert torch.equal(
        torch.cat([p.flatten() for p in full.adapters.parameters(EMA)]),
        torch.cat([p.flatten() for p in second.adapters.parameters(EMA)]),
    )
    assert [h["loss"] for h in full.history] == [h["loss"] for h in second.history]


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_the_learning_rate_follows_its_schedule_and_a_resumed_run_keeps_it(tmp_path, schedule):
    """Each step's lr is diffusers' schedule (warm-up, then decay to 0 at `steps`), and a run stopped and resumed
    ends bit-for-bit as the run that never stopped, its lr included."""
    import math
    lrs = []
    full = Trainer(config(tmp_path / "full", lr_scheduler=schedule, lr_warmup_steps=2), make_flux_backbone(),
                   tiny_data(), Callbacks(on_step=lambda step, record: lrs.append(full.optimizer.param_groups[0]["lr"])))
    full.run()
    # after step k the next step's lr: warm-up k/2 for k < 2, then the decay over the 4 steps left
    decay = [(6 - k) / 4 if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * (k - 2) / 4)) for k in range(2, 7)]
    assert lrs == pytest.approx([1e-2 * f for f in [0.5, *decay]])
    stops = iter([False, False, False, True])
    Trainer(config(tmp_path / "split", lr_scheduler=schedule, lr_warmup_steps=2), make_flux_backbone(), tiny_data(),
            Callbacks(should_stop=lambda: next(stops))).run()
    second = Trainer(config(tmp_path / "split", lr_scheduler=schedule, lr_warmup_steps=2), make_flux_backbone(),
                     tiny_data())
    assert second.resume() == 3 and second.optimizer.param_groups[0]["lr"] == pytest.approx(lrs[2])
    second.run()
    for key, value in lora_state(full).items():
        assert torch.equal(value, second.adapters.state_dict(STUDENT)[key]), key


def test_adam_beta2_is_adamws_second_moment_decay(tmp_path):
    """The trainer's AdamW takes adam_beta2; over a few steps it changes the LoRA (the first step, a sign step, not)."""
    pairs = CachedEdits(tiny_data().x, tiny_data().records, y=tiny_data().x.flip(-1))

    def trained(beta2, steps):
        trainer = Trainer(config(tmp_path / f"b{beta2}_{steps}", steps=steps, warmup_identity_steps=0,
                                 method="supervised", adam_beta2=beta2), make_flux_backbone(), pairs)
        assert [g["betas"] for g in trainer.optimizer.param_groups] == [(0.9, beta2)]
        trainer.run()
        return lora_state(trainer)

    one, one_low = trained(0.999, 1), trained(0.5, 1)
    assert all(torch.allclose(one[k], one_low[k], atol=1e-7) for k in one)
    three, three_low = trained(0.999, 3), trained(0.5, 3)
    assert any(not torch.allclose(three[k], three_low[k], atol=1e-7) for k in three)
    # a resumed run takes its own beta2 and weight decay, as it takes its own lr, not the checkpoint's
    resumed = Trainer(config(tmp_path / "b0.999_3", steps=4, warmup_identity_steps=0, method="supervised",
                             adam_beta2=0.5, weight_decay=0.0), make_flux_backbone(), pairs)
    assert resumed.resume() == 3
    assert [(g["betas"], g["weight_decay"]) for g in resumed.optimizer.param_groups] == [((0.9, 0.5), 0.0)]


def test_loraplus_moves_the_b_matrices_at_its_ratio_of_the_lr_and_resumes_exactly(tmp_path):
    """LoRA+: the first step's update of B (zero at the start, so AdamW's first step is lr x the gradient's sign) is
    the ratio times plain LoRA's, A's the same; its schedule scales both groups; and a stopped run resumes exactly."""
    data = tiny_data()
    pairs = CachedEdits(data.x, data.records, y=data.x.flip(-1))

    def first_step(ratio):
        trainer = Trainer(config(tmp_path / f"one{ratio}", steps=1, warmup_identity_steps=0, method="supervised",
                                 loraplus_lr_ratio=ratio), make_flux_backbone(), pairs)
        before = [p.detach().clone() for p in trainer.adapters.parameters(STUDENT)]
        trainer.run()
        return [(after.detach() - start) for start, after in zip(before, trainer.adapters.parameters(STUDENT))]

    plain, plus = first_step(1.0), first_step(4.0)
    assert any(d.abs().sum() > 0 for d in plain[1::2])  # B moved
    for a_plain, a_plus in zip(plain[0::2], plus[0::2]):
        assert torch.allclose(a_plus, a_plain)
    for b_plain, b_plus in zip(plain[1::2], plus[1::2]):
        assert torch.allclose(b_plus, 4 * b_plain, rtol=1e-4, atol=1e-9)

    cfg = dict(lr_scheduler="cosine", loraplus_lr_ratio=4.0)
    lrs = []
    full = Trainer(config(tmp_path / "full", **cfg), make_flux_backbone(), tiny_data(),
                   Callbacks(on_step=lambda step, record: lrs.append([g["lr"] for g in full.optimizer.param_groups])))
    full.run()
    assert all(b == pytest.approx(4 * a) for a, b in lrs) and lrs[0][0] < 1e-2
    stops = iter([False, False, False, True])
    Trainer(config(tmp_path / "split", **cfg), make_flux_backbone(), tiny_data(),
            Callbacks(should_stop=lambda: next(stops))).run()
    second = Trainer(config(tmp_path / "split", **cfg), make_flux_backbone(), tiny_data())
    assert second.resume() == 3 and [g["lr"] for g in second.optimizer.param_groups] == pytest.approx(lrs[2])
    second.run()
    for key, value in lora_state(full).items():
        assert torch.equal(value, second.adapters.state_dict(STUDENT)[key]), key
    # a checkpoint of one ratio's groups is not taken by a run of the other kind, and nothing changes
    plain_run = Trainer(config(tmp_path / "split", lr_scheduler="cosine"), make_flux_backbone(), tiny_data())
    with pytest.raises(ValueError, match="holds 2 optimizer groups, this run has 1: resume it with the loraplus_lr_ratio"):
        plain_run.resume()
    assert plain_run.step == 0
    with pytest.raises(ValueError, match="loraplus_lr_ratio must be > 0, got 0"):
        config(tmp_path, loraplus_lr_ratio=0).validate()


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_stopped_run_writes_its_lora_under_its_own_name_and_step(tmp_path, schedule):
    """A partial LoRA never takes the finished LoRA's name, and its config is the run that makes exactly it."""
    backbone = make_flux_backbone()
    stops = iter([False, False, True])
    partial = Trainer(config(tmp_path / "split", lr_scheduler=schedule), backbone, tiny_data(),
                      Callbacks(should_stop=lambda: next(stops))).run()
    assert [p.name for p in partial.lora_paths] == ["byg_lora_step2.safetensors"]
    assert not (tmp_path / "split" / "byg_lora.safetensors").exists()
    assert existing_run(tmp_path / "split") == "checkpoint at step 2" and existing_run(tmp_path / "nothing") is None
    stopped = read_lora(partial.lora_paths[0], backbone)
    saved = stopped.metadata["byg.config"]
    assert saved["steps"] == 2 and saved["lr_decay_steps"] == 6  # the schedule of the run it was stopped in

    fresh = Trainer(TrainConfig.from_dict(saved | {"output_dir": str(tmp_path / "two")}), make_flux_backbone(),
                    tiny_data()).run()
    assert [p.name for p in fresh.lora_paths] == ["byg_lora.safetensors"]
    again = read_lora(fresh.lora_paths[0], backbone)
    assert again.tensors.keys() == stopped.tensors.keys()
    for key, value in again.tensors.items():
        assert torch.equal(value, stopped.tensors[key]), key


def test_a_run_stopped_before_its_first_step_writes_nothing(tmp_path):
    """A Cancel while the dataset is encoded: no step-0 checkpoint or untrained LoRA to refuse the next run on."""
    result = Trainer(config(tmp_path / "run"), make_flux_backbone(), tiny_data(),
                     Callbacks(should_stop=lambda: True)).run()
    assert result.stopped_early and result.steps_done == 0 and result.lora_paths == [] and result.checkpoint is None
    assert not (tmp_path / "run").exists() and existing_run(tmp_path / "run") is None
    stops = iter([False, False, True])
    Trainer(config(tmp_path / "run"), make_flux_backbone(), tiny_data(), Callbacks(should_stop=lambda: next(stops))).run()
    files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    resumed = Trainer(config(tmp_path / "run"), make_flux_backbone(), tiny_data(), Callbacks(should_stop=lambda: True))
    assert resumed.resume() == 2
    result = resumed.run()  # stopped again before a step: the step-2 files stay as they were, and are its result
    assert [p.name for p in result.lora_paths] == ["byg_lora_step2.safetensors"] and result.steps_done == 2
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == files


def test_a_diverged_run_stops_keeping_its_last_finite_checkpoint_and_writes_no_lora(tmp_path):
    """At an lr far too high the weights go nan within a few steps: had been written over the last good checkpoint,
    and the nan LoRA shipped as finished."""
    cfg = config(tmp_path, steps=8, lr=1e4, grad_clip=0.0, checkpoint_every=1, log_every=1)
    with pytest.raises(Diverged, match=r"not finite .* after step (\d+).*checkpoint of step (\d+) .*lower lr "
                                       r"\(now 10000.0\), or grad_clip above 0") as raised:
        Trainer(cfg, make_flux_backbone(), tiny_data()).run()
    diverged, kept = map(int, re.search(r"after step (\d+).*checkpoint of step (\d+)", str(raised.value)).groups())
    assert 1 < diverged < 8 and kept == raised.value.kept == diverged - 1
    tensors, raw = load_checked(tmp_path / "checkpoint.safetensors", "checkpoint")
    assert raw["byg.step"] == str(kept) and all(torch.isfinite(v).all() for v in tensors.values())
    assert not list(tmp_path.glob("byg_lora*"))


def test_the_last_checkpoint_is_written_once(tmp_path, monkeypatch):
    trainer = Trainer(config(tmp_path, steps=4, checkpoint_every=2), make_flux_backbone(), tiny_data())
    saved, save = [], trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", lambda: saved.append(trainer.step) or save())
    trainer.run()
    assert saved == [2, 4]


def test_a_resume_past_the_runs_steps_is_refused(tmp_path):
    stops = iter([False, False, False, False, True])
    Trainer(config(tmp_path), make_flux_backbone(), tiny_data(), Callbacks(should_stop=lambda: next(stops))).run()
    with pytest.raises(ValueError, match=r"at step 4, past this run's steps = 2: set steps to 4 or more"):
        check_resumable(config(tmp_path, steps=2))
    with pytest.raises(ValueError, match="past this run's steps"):
        Trainer(config(tmp_path, steps=2), make_flux_backbone(), tiny_data()).resume()


def test_training_on_a_fixed_tiny_batch_lowers_the_loss(tmp_path):
    cfg = config(tmp_path, steps=30, warmup_identity_steps=0, identity_prob=0.0, lr=1e-2, rank=8, seed=1)
    cfg.objective.rollout_steps = 4
    trainer = Trainer(cfg, make_flux_backbone(), tiny_data())
    batch = trainer.data.batch(trainer.backbone, [0, 1])
    t, eps = torch.tensor([0.3, 0.7]), torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(9))

    def probe():
        return byg_step(trainer.G, batch, t, eps, cfg.objective).as_floats()

    before = probe()
    trainer.run()
    after = probe()
    assert after["loss"] < 0.85 * before["loss"]
    assert after["prior_fwd"] < 0.6 * before["prior_fwd"]  # the edit direction is learnt first


def test_warmup_steps_are_identity_only_then_random(tmp_path):
    trainer = Trainer(config(tmp_path, steps=4, warmup_identity_steps=2, identity_prob=0.0), make_flux_backbone(),
                      tiny_data())
    history = trainer.run().history
    assert [h["identity_step"] for h in history] == [1.0, 1.0, 0.0, 0.0]
    assert "cycle" not in history[0] and "cycle" in history[2]


def test_supervised_training_takes_its_warmup_identity_steps_too(tmp_path):
    """A config's identity warm-up is honoured whichever method trains; the rest are Eq. 1 steps on true pairs."""
    data = tiny_data()
    data = CachedEdits(data.x, data.records, y=data.x.flip(-1))
    cfg = config(tmp_path, steps=4, warmup_identity_steps=2, identity_prob=0.0, method="supervised")
    history = Trainer(cfg, make_flux_backbone(), data).run().history
    assert [h["identity_step"] for h in history] == [1.0, 1.0, 0.0, 0.0]
    assert "identity" in history[0] and "edit" not in history[0]
    assert "edit" in history[2] and "cycle" not in history[2]


def test_switching_off_random_identity_steps_stops_them(tmp_path):
    cfg = config(tmp_path, warmup_identity_steps=0, identity_prob=1.0)
    trainer = Trainer(cfg, make_flux_backbone(), tiny_data())
    assert trainer.is_identity_step(0.5)
    cfg.objective.identity_steps = False
    assert not trainer.is_identity_step(0.5)


def test_missing_or_corrupt_checkpoint_is_reported_and_changes_nothing(tmp_path):
    trainer = Trainer(config(tmp_path), make_flux_backbone(), tiny_data())
    before = lora_state(trainer)
    with pytest.raises(FileNotFoundError, match="checkpoint .* does not exist"):
        trainer.resume()
    (tmp_path / "checkpoint.safetensors").write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        trainer.resume()
    assert trainer.step == 0
    assert all(torch.equal(v, trainer.adapters.state_dict(STUDENT)[k]) for k, v in before.items())


def test_an_unreadable_checkpoint_or_one_of_other_shapes_is_named_as_such(tmp_path):
    """A fresh run's refusal called an unreadable checkpoint "a run (checkpoint at step -1)"; a resume onto a model
    of other shapes (other weights under the same model name) named no checkpoint."""
    from diffusers import FluxTransformer2DModel
    from byg_core.backbones.flux import FluxBackbone
    from helpers import TINY_FLUX, ToyCodec, ToyTextEncoder

    broken = tmp_path / "broken" / "checkpoint.safetensors"
    broken.parent.mkdir()
    broken.write_bytes(b"\x00 cut short")
    assert existing_run(broken.parent) == f"checkpoint {broken}, which cannot be read (it may be truncated)"
    Trainer(config(tmp_path / "run", steps=1), make_flux_backbone(), tiny_data()).run()
    assert existing_run(tmp_path / "run") == "checkpoint at step 1"
    torch.manual_seed(0)
    wider = FluxBackbone(FluxTransformer2DModel(**(TINY_FLUX | {"num_attention_heads": 4})),
                         ToyTextEncoder(strict=False), ToyCodec())
    with pytest.raises(ValueError, match=rf"checkpoint {tmp_path / 'run' / 'checkpoint.safetensors'} does not fit "
                                         r"this model: LoRA tensor .* has shape"):
        Trainer(config(tmp_path / "run", steps=2), wider, tiny_data()).resume()


def test_checkpoint_from_another_rank_is_refused(tmp_path):
    Trainer(config(tmp_path, steps=1), make_flux_backbone(), tiny_data()).run()
    other = Trainer(config(tmp_path, steps=2, rank=2), make_flux_backbone(), tiny_data())
    with pytest.raises(ValueError, match="rank=4"):
        other.resume()


@pytest.mark.parametrize(
    "field, value, message",
    [("steps", -1, "steps must be >= 1"), ("timesteps", "cosine", "timesteps must be one of"),
     ("lr", 0.0, "lr must be > 0"), ("identity_prob", 2.0, "identity_prob"), ("steps", "ten", "'steps' must be int"),
     ("stepz", 3, r"unknown field\(s\) \['stepz'\]"), ("lr_scheduler", "step", "lr_scheduler must be one of"),
     ("lr_decay_steps", "ten", "'lr_decay_steps' must be int \\(or left out\\)"), ("lr_warmup_steps", -2, "lr_warmup_steps must be >= 0"),
     ("target_modules", "all-linear", "'target_modules' must be a list of str"),  # else split into letters
     ("target_modules", [], "target_modules must be a list"),
     ("adam_beta2", 1.0, r"adam_beta2 must be in \(0, 1\), got 1.0"),
     ("ema_decay", 1.0, r"ema_decay 1 never moves the EMA editor"),  # a widget at step 0.001 rounds 0.9999 to 1
     # nan and inf passed every "< 0" test: the run failed after loading, blaming the lr, or with torch's words
     ("lr", float("nan"), r"lr must be a finite number, got nan"), ("shift", float("inf"), "shift must be a finite"),
     ("weight_decay", float("nan"), "weight_decay must be a finite"), ("lora_alpha", float("nan"), "lora_alpha must"),
     ("objective", {"lambda_prior": float("inf")}, r"lambda_prior must be a finite number, got inf"),
     ("objective", {"prior_guidance": float("inf")}, "prior_guidance must be a finite number"),
     ("seed", 2**40, r"seed must be in \[0, 4294967295\] \(the nodes' range\), got 1099511627776"),
     # accepted, and then: a LoRA named lora.safetensors.safetensors, a name Windows cannot write at the run's end,
     # a loss that is always 0, the checkpoint and LoRA written into the current folder
     ("save_name", "lora.safetensors", r"save_name is the LoRA's name without \.safetensors: 'lora'"),
     ("save_name", "a:b", r"save_name 'a:b' holds ':', which Windows does not allow in a file name"),
     ("save_name", " lora ", r"save_name ' lora ' begins or ends with a space"),
     ("objective", {"lambda_cycle": 0.0, "lambda_prior": 0.0, "lambda_id": 0.0},
      r"lambda_cycle, lambda_prior and lambda_id are all 0: ByG's steps train nothing"),
     ("log_every", 0, r"log_every must be >= 1, got 0"), ("output_dir", "", r"output_dir must name a folder"),
     ("text_cache_dir", " ", r"text_cache_dir must name a folder, or be left out \(no disk cache\)")],
)
def test_bad_config_values_are_refused_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({field: value})


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_decay_that_ends_before_the_run_or_its_warm_up_is_refused(schedule):
    """diffusers' cosine rises again past its num_training_steps: lr_decay_steps 10 of 20 steps went back to the full
    lr at step 20 (with 5 warm-up steps and 3 decay steps the lr flipped between full and 0 every step)."""
    with pytest.raises(ValueError, match=r"lr_decay_steps 10 ends before the run's 20 steps: the lr would be 0 \(or, "
                                         r"cosine, rise again\) for the rest; set lr_decay_steps >= steps"):
        TrainConfig.from_dict({"lr_scheduler": schedule, "steps": 20, "lr_decay_steps": 10})
    with pytest.raises(ValueError, match=r"lr_warmup_steps 5 must end before the decay does \(lr_decay_steps, or "
                                         r"steps where it is left out: 3\)"):
        TrainConfig.from_dict({"lr_scheduler": schedule, "steps": 3, "lr_warmup_steps": 5})
    TrainConfig.from_dict({"lr_scheduler": schedule, "steps": 2, "lr_decay_steps": 6})  # a stopped run's config
    TrainConfig.from_dict({"lr_scheduler": "constant", "steps": 20, "lr_decay_steps": 10, "lr_warmup_steps": 30})


def refused_toml(toml, text: str, message: str) -> None:
    """``text`` written as the TOML ``toml`` is refused with an error matching ``message``."""
    toml.write_text(text)
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_toml(toml)


def test_a_training_tomls_model_files_and_expert_are_checked_when_it_is_read(tmp_path, monkeypatch):
    """A misspelled model, [model_files] key or expert surfaced after the dataset scan and minutes of loading, naming
    no file (a list where a path goes: a traceback); a top-level key written below [model_files] was swallowed into
    it ("no dataset"); '~' was never expanded (output_dir "~/x" made a folder named '~' in the current one)."""
    toml = tmp_path / "run.toml"
    refused = functools.partial(refused_toml, toml)
    at = re.escape(str(toml))
    refused('model = "flux-dev"\n', rf"^{at}: unknown model 'flux-dev' \(did you mean 'flux1-dev'\?\); known models:")
    refused('model = "flux1-dev"\n[model_files]\ntransfomer = "a.safetensors"\n',
            rf"^{at} \[model_files\]: 'transfomer' is not one of flux1-dev's files or options \(did you mean "
            r"'transformer'\?\); it takes folder, transformer, vae,")
    refused('model = "flux1-dev"\n[model_files]\ntransformer = ["a.safetensors"]\n',
            r"\[model_files\]: transformer must be a path \(text\), got \['a.safetensors'\]")
    refused('model = "flux1-dev"\n[model_files]\ndtype = "bf16"\n', r"\[model_files\]: dtype must be one of .*got 'bf16'")
    refused('model = "flux1-dev"\n[model_files]\nstorage = "fp8"\n', r"\[model_files\]: storage must be one of")
    refused('model = "flux1-dev"\n[model_files]\nfolder = "F"\ndata = "d"\n',
            r"\[model_files\]: 'data' is a top-level setting, not a model file: write it above the first \[table\]")
    refused('model = "wan2.2-ti2v-5b"\nexpert = "transformer_2"\n',
            rf"^{at}: expert must be 'auto' or one of wan2.2-ti2v-5b's experts \['transformer'\], got 'transformer_2'")
    toml.write_text('model = "wan2.2-t2v-a14b"\nexpert = "low_noise"\n')  # the LoRA files' name for it
    assert TrainConfig.from_toml(toml).expert == "transformer_2"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    toml.write_text('model = "flux1-dev"\ndata = "~/data"\noutput_dir = "~/runs/x"\ntext_cache_dir = "~/cache"\n'
                    '[model_files]\nfolder = "~/FLUX.1-dev"\ndtype = "bfloat16"\n')
    cfg = TrainConfig.from_toml(toml)
    home = tmp_path / "home"
    assert (cfg.data, cfg.output_dir, cfg.text_cache_dir) == (str(home / "data"), str(home / "runs/x"),
                                                              str(home / "cache"))
    assert cfg.model_files == {"folder": str(home / "FLUX.1-dev"), "dtype": "bfloat16"}


def test_toml_mistakes_a_windows_user_makes_are_said_with_the_fix(tmp_path):
    """A Windows path in double quotes was "Unescaped '\\'" with no hint, or, where the backslash began an escape
    ("C:\\new"), a path with a newline in it, "not found"; a folder given as the config read "[Errno 21]"; a setting
    written below [objective] was "unknown" there."""
    toml = tmp_path / "run.toml"
    refused = functools.partial(refused_toml, toml)
    refused('data = "C:\\data"\n', r"not valid TOML: Unescaped .*write a Windows path in single quotes "
                                    r"\('C:\\data'\) or with / \(C:/data\)")
    # \U begins a unicode escape: "Invalid hex value"
    refused('data = "C:\\Users\\me\\data"\n', r"not valid TOML: .*write a Windows path in single quotes")
    refused('data = "C:\\new\\temp"\n', r"run.toml: data holds a control character \('\\n'\): a backslash in double "
                                       r"quotes began an escape \(\\n, \\t\); write the path in single quotes or with /")
    with pytest.raises(ValueError, match=r"config file .* is a folder: give the training \.toml file"):
        TrainConfig.from_toml(tmp_path)
    refused('[objective]\nalpha = 0.5\nsteps = 3\n',
            r"\[objective\]: 'steps' is a top-level setting: write it above the first \[table\]")


def test_config_loads_from_toml_with_an_objective_table(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('steps = 12\nlr = 1e-4\n[objective]\nalpha = 0.5\ncycle = false\n')
    cfg = TrainConfig.from_toml(path)
    assert (cfg.steps, cfg.lr, cfg.objective.alpha, cfg.objective.cycle) == (12, 1e-4, 0.5, False)
    path.write_text('[objective]\nalpha = -1\n')
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: alpha must be >= 0"):
        TrainConfig.from_toml(path)
    path.write_text('[objective]\nprior_guidance_terms = "both"\n')
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: prior_guidance_terms must be one of all, anchor"):
        TrainConfig.from_toml(path)


def test_a_toml_guided_prior_trains_on_the_empty_prompt_and_changes_the_prior_alone(tmp_path):
    path = tmp_path / "run.toml"
    history = {}
    for w, terms in ((1.0, "all"), (3.0, "all"), (3.0, "anchor")):
        path.write_text(f'output_dir = "{(tmp_path / f"{w}{terms}").as_posix()}"\nsteps = 3\nbatch_size = 2\n'
                        f'rank = 4\nwarmup_identity_steps = 0\nidentity_prob = 0.0\ncheckpoint_every = 0\nseed = 5\n'
                        f'[objective]\nrollout_steps = 2\nprior_guidance = {w}\nprior_guidance_terms = "{terms}"\n')
        cfg = TrainConfig.from_toml(path)
        assert (cfg.objective.prior_guidance, cfg.objective.prior_guidance_terms) == (w, terms)
        history[w, terms] = Trainer(cfg, make_flux_backbone(), tiny_data()).run().history
    # the first step: the same weights, batch and noise; only the prior's base velocities differ
    first = {key: h[0] for key, h in history.items()}
    for guided in ((3.0, "all"), (3.0, "anchor")):
        assert first[guided]["cycle"] == pytest.approx(first[1.0, "all"]["cycle"], rel=1e-5)
        assert abs(first[guided]["prior_fwd"] - first[1.0, "all"]["prior_fwd"]) > 1e-4
    assert abs(first[3.0, "anchor"]["prior_fwd"] - first[3.0, "all"]["prior_fwd"]) > 1e-4


def test_gradient_checkpointing_changes_no_gradient_and_keeps_lora_ones(tmp_path, monkeypatch):
    """Non-reentrant checkpointing: same LoRA weights after training as without it, blocks really recomputed."""
    import torch.utils.checkpoint

    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    plain = Trainer(config(tmp_path / "plain", steps=3), make_flux_backbone(), tiny_data())
    plain.run()
    assert not calls
    checkpointed = Trainer(config(tmp_path / "ckpt", steps=3, gradient_checkpointing=True), make_flux_backbone(),
                           tiny_data())
    checkpointed.run()
    assert calls and set(calls) == {False}
    for key, value in lora_state(plain).items():
        torch.testing.assert_close(checkpointed.adapters.state_dict(STUDENT)[key], value, rtol=1e-5, atol=1e-6)
    assert any(v.abs().sum() > 0 for k, v in lora_state(checkpointed).items() if "lora_B" in k)  # LoRA trained


def test_the_memory_estimate_counts_weights_lora_and_optimizer_exactly(tmp_path):
    from byg_core.adapters import EMA
    from byg_core.memory import ACTIVATION_WIDTHS, estimate

    trainer = Trainer(config(tmp_path), make_flux_backbone(), tiny_data())
    student = sum(p.numel() for p in trainer.adapters.parameters(STUDENT))
    ema = sum(p.numel() for p in trainer.adapters.parameters(EMA))
    base = sum(p.numel() for p in trainer.backbone.transformer.parameters()) - student - ema
    figures = estimate(trainer)
    assert (figures.weights, figures.lora, figures.optimizer) == (4 * base, 4 * (student + ema), 12 * student)
    checkpointed = estimate(Trainer(config(tmp_path / "c", gradient_checkpointing=True), make_flux_backbone(),
                                    tiny_data()))
    assert figures.activations == ACTIVATION_WIDTHS * checkpointed.activations > 0
    assert figures.describe().startswith("memory estimate: weights ")
    # one pass's graph at a time (byg_step's staged backward), as a supervised step; two without gradient routing
    supervised = estimate(Trainer(config(tmp_path / "s", method="supervised"), make_flux_backbone(), tiny_data()))
    unrouted = estimate(Trainer(config(tmp_path / "r", objective=ObjectiveConfig(gradient_routing=False)),
                                make_flux_backbone(), tiny_data()))
    assert figures.activations == supervised.activations == unrouted.activations / 2
    # a model loaded in bf16 (ComfyUI's on a GPU) computes in bf16 without mixed precision: half fp32's activations
    half = make_flux_backbone().to(torch.bfloat16)
    assert 2 * estimate(Trainer(config(tmp_path / "h"), half, tiny_data())).activations == figures.activations


def test_loss_floats_are_read_from_the_device_every_log_every_steps_not_each_step(tmp_path, monkeypatch):
    """The same history as reading each step, in one device read per log_every steps (no host sync per step)."""
    reads = []
    real_flush = Trainer._flush

    def counting_flush(self):
        if self._pending:  # a flush with steps pending reads the device once
            reads.append(len(self._pending))
        return real_flush(self)

    each = Trainer(config(tmp_path / "each", log_every=1), make_flux_backbone(), tiny_data())
    each.run()
    seen = []
    grouped = Trainer(config(tmp_path / "grouped", log_every=4), make_flux_backbone(), tiny_data(),
                      Callbacks(on_step=lambda step, record: seen.append(dict(record))))
    monkeypatch.setattr(Trainer, "_flush", counting_flush)
    grouped.run()
    assert grouped.history == each.history and len(grouped.history) == 6
    assert reads == [4, 2]  # steps 1-4, then 5-6
    assert [r for r in seen if len(r) > 1] == [each.history[3], each.history[5]] and seen[0] == {"step": 1}


def test_an_accelerator_that_rescales_losses_is_refused(tmp_path):
    """byg_step carries the reverse pass's gradient into the forward pass's backward as a tensor: a backward that
    divides each loss by accumulation steps would scale that part twice, so such an accelerator is refused."""
    from accelerate import Accelerator

    with pytest.raises(ValueError, match="gradient accumulation"):
        Trainer(config(tmp_path), make_flux_backbone(), tiny_data(),
                accelerator=Accelerator(cpu=True, gradient_accumulation_steps=2))


def test_each_training_step_moves_the_ema_toward_the_new_student(tmp_path):  # Algorithm 1, last line
    trainer = Trainer(config(tmp_path, steps=1, warmup_identity_steps=0, identity_prob=0.0, ema_decay=0.9),
                      make_flux_backbone(), tiny_data())
    before = [p.detach().clone() for p in trainer.adapters.parameters(EMA)]
    trainer.train_step()
    for old, student, ema in zip(before, trainer.adapters.parameters(STUDENT), trainer.adapters.parameters(EMA)):
        torch.testing.assert_close(ema, 0.9 * old + 0.1 * student.detach())
    assert any(not torch.equal(old, ema) for old, ema in zip(before, trainer.adapters.parameters(EMA)))


def test_the_video_trainer_bootstraps_from_the_student_on_shift_12_logit_normal_t(tmp_path):  # paper B.2, C.1
    from byg_core.timesteps import shift_time

    cfg = TrainConfig.for_video(dict(output_dir=str(tmp_path), steps=1, batch_size=2, rank=4, checkpoint_every=0))
    trainer = Trainer(cfg, make_flux_backbone(), tiny_data())
    assert trainer.G.use_ema is False
    t = trainer._timesteps(20000, torch.Generator().manual_seed(0))
    # logit-normal's median 0.5 and 10% quantile sigmoid(-1.2816), each shifted by 12 (uniform's would be 0.571)
    for q, plain in ((0.5, 0.5), (0.1, torch.sigmoid(torch.tensor(-1.2816)).item())):
        assert abs(float(t.quantile(q)) - float(shift_time(torch.tensor(plain), 12.0))) < 0.01


def test_training_previews_are_the_edits_made_after_training(tmp_path):
    """The previews during training are what `byg edit` and the edit nodes give: their 20 steps and the seed."""
    from byg_core.sample import EDIT_STEPS, edit

    trainer = Trainer(config(tmp_path, steps=1, seed=3), make_flux_backbone(), tiny_data())
    trainer.run()
    batch = trainer.data.batch(trainer.backbone, [0, 1])
    after = edit(trainer.backbone, trainer.adapters, batch.x, batch.c, steps=EDIT_STEPS, seed=3, role=EMA)
    assert EDIT_STEPS == 20
    torch.testing.assert_close(trainer.preview(), trainer.backbone.decode_latents(after.latents), rtol=0, atol=0)


@pytest.mark.parametrize("changed, named", [
    (dict(data="other_edits"), "data='other_edits'"), (dict(resolution=[16, 16]), "resolution=[16, 16]"),
    (dict(use_ema=False), "use_ema=False"), (dict(method="supervised"), "method='supervised'"),
    # how t is drawn, the identity steps and the EMA's decay are how it learns too (the node's ema_decay widget)
    (dict(ema_decay=0.5), "ema_decay=0.5"), (dict(identity_prob=0.5), "identity_prob=0.5"),
    (dict(warmup_identity_steps=7), "warmup_identity_steps=7"), (dict(shift=3.0), "shift=3.0"),
    (dict(timesteps="logit_normal"), "timesteps='logit_normal'"), (dict(logit_std=2.0), "logit_std=2.0"),
])
def test_a_run_resumed_on_other_data_or_another_objective_is_refused(tmp_path, changed, named):
    """Resume is exact: a checkpoint goes on only with what it learnt from and how (its length and lr may change)."""
    Trainer(config(tmp_path, steps=1), make_flux_backbone(), tiny_data()).run()
    other = Trainer(config(tmp_path, steps=2, **changed), make_flux_backbone(), tiny_data())
    with pytest.raises(ValueError, match=rf"this run has {re.escape(named)}"):
        other.resume()
    cfg = config(tmp_path, steps=2)
    cfg.objective = dataclasses.replace(cfg.objective, lambda_prior=5.0)
    with pytest.raises(ValueError, match="this run has objective="):
        Trainer(cfg, make_flux_backbone(), tiny_data()).resume()


def test_a_run_resumed_on_a_dataset_edited_since_says_so(tmp_path):
    """The same folder with a caption changed (or a line dropped, a picture replaced) is other data: the resumed run
    is not the run that never stopped, and says so (a fixed caption is the user's to make: warned, not refused)."""
    import warnings

    Trainer(config(tmp_path, steps=1), make_flux_backbone(), tiny_data()).run()
    edited = tiny_data()
    edited.records[1] = dataclasses.replace(edited.records[1], tgt_caption="a blue circle on a blue background")
    with pytest.warns(UserWarning, match=r"was made on the dataset as it was before: a line or a file of .* changed"):
        assert Trainer(config(tmp_path, steps=2), make_flux_backbone(), edited).resume() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Trainer(config(tmp_path, steps=2), make_flux_backbone(), tiny_data()).resume() == 1
    assert Trainer(config(tmp_path, steps=2, lr=5e-3), make_flux_backbone(), tiny_data()).resume() == 1
    Trainer(config(tmp_path / "d", steps=1, data="edits"), make_flux_backbone(), tiny_data()).run()
    assert Trainer(config(tmp_path / "d", steps=2, data="./edits/"), make_flux_backbone(), tiny_data()).resume() == 1


def test_a_longer_resume_killed_after_its_last_checkpoint_still_writes_its_lora_and_keeps_the_earlier(tmp_path):
    """Killed between the last step's checkpoint and the LoRA (a crash in the last preview, a second Ctrl-C), then
    resumed: the LoRA at the name is the earlier run's, so it is set aside and this run's is written."""
    from byg_core.lora_io import lora_steps

    Trainer(config(tmp_path, steps=2, checkpoint_every=1), make_flux_backbone(), tiny_data()).run()
    finished = (tmp_path / "byg_lora.safetensors").read_bytes()

    def killed_at_4(step, pixels):
        if step == 4:
            raise KeyboardInterrupt

    longer = Trainer(config(tmp_path, steps=4, checkpoint_every=1, preview_every=4), make_flux_backbone(), tiny_data(),
                     Callbacks(on_preview=killed_at_4))
    longer.resume()
    with pytest.raises(KeyboardInterrupt):
        longer.run()
    again = Trainer(config(tmp_path, steps=4, checkpoint_every=1), make_flux_backbone(), tiny_data())
    assert again.resume() == 4
    result = again.run()
    assert [lora_steps(p) for p in result.lora_paths] == [4]  # had handed back the 2-step LoRA as the finished one
    assert (tmp_path / "byg_lora_step2.safetensors").read_bytes() == finished
    checkpoint = (tmp_path / "checkpoint.safetensors").read_bytes()
    finished_again = Trainer(config(tmp_path, steps=4, lr=0.5), make_flux_backbone(), tiny_data())
    assert finished_again.resume() == 4
    finished_again.run()  # trains nothing: the checkpoint keeps the config it was trained with
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == checkpoint


def test_a_run_resumed_on_another_number_of_processes_says_so(tmp_path):
    """An 8-GPU run resumed on 4 halves each step's batch (batch_size is per process): warned, as a changed dataset
    is (a machine may have lost a GPU), where it was silent."""
    import json
    import warnings

    from safetensors.torch import load_file, save_file

    from byg_core.safefiles import read_metadata

    Trainer(config(tmp_path, steps=1), make_flux_backbone(), tiny_data()).run()
    path = tmp_path / "checkpoint.safetensors"
    metadata = read_metadata(path)
    assert json.loads(metadata["byg.processes"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Trainer(config(tmp_path, steps=2), make_flux_backbone(), tiny_data()).resume() == 1
    older = {k: v for k, v in metadata.items() if k != "byg.processes"}  # a checkpoint from before the count
    save_file(load_file(path), path, metadata=older)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # taken at its word (an 8-GPU run resumed on its 8 GPUs was told "1")
        assert Trainer(config(tmp_path, steps=2), make_flux_backbone(), tiny_data()).resume() == 1
    save_file(load_file(path), path, metadata=metadata | {"byg.processes": "8"})
    with pytest.warns(UserWarning, match=r"made on 8 process\(es\), this run has 1: each step now averages 1 x "
                                         r"batch_size = 2 samples \(it was 16\)"):
        assert Trainer(config(tmp_path, steps=2), make_flux_backbone(), tiny_data()).resume() == 1


def test_the_processes_wait_for_each_other_longer_than_nccls_ten_minutes(monkeypatch):
    """While the main process encodes every prompt into the disk text cache the others wait at a barrier: NCCL's
    default 10 minutes would end them before step 1 on a large dataset."""
    from datetime import timedelta

    from byg_core import train

    seen = {}
    monkeypatch.setattr(train, "PartialState", lambda **kwargs: seen.update(kwargs))
    train.processes()
    assert seen["timeout"] >= timedelta(hours=1)


def test_the_loss_weights_bind_byg_alone():
    """The supervised reference trains on Eq. 1 and reads no ByG weight: all three at 0 had been refused for it too."""
    zero = {"lambda_cycle": 0.0, "lambda_prior": 0.0, "lambda_id": 0.0}
    assert TrainConfig.from_dict({"method": "supervised", "objective": zero}).method == "supervised"


def test_a_run_whose_every_step_copies_its_source_is_said_so():
    """identity_prob 1 made every step after the warm-up an identity step without a word (the warm-up-only run was
    said)."""
    from byg_core.train import warmup_only

    assert warmup_only(TrainConfig(steps=10, warmup_identity_steps=2)) is None
    assert "all 10 steps are identity warm-up steps" in warmup_only(TrainConfig(steps=10, warmup_identity_steps=10))
    said = warmup_only(TrainConfig(steps=10, warmup_identity_steps=2, identity_prob=1.0))
    assert said == ("identity_prob = 1: every step is an identity step, the LoRA learns to copy its source, no edit; "
                    "lower identity_prob (B.1: 0.15)")
    off = TrainConfig.from_dict({"steps": 10, "warmup_identity_steps": 2, "identity_prob": 1.0,
                                 "objective": {"identity_steps": False}})
    assert warmup_only(off) is None  # the ablation without identity steps takes none
