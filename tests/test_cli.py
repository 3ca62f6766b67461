"""`byg` as a user runs it: make a dataset, train, resume, edit an image and a video."""

import re
from pathlib import Path

import pytest
import torch

from byg_core import cli
from byg_core.data import load_image, load_media
from byg_core.loading import load_backbone
from byg_core.lora_io import load_lora, read_lora
from byg_core.sample import edit
from byg_core.toy.video import write_video_dataset
from byg_core.video_io import save_pixels

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def sets(*pairs):
    return sum((["--set", p] for p in pairs), [])


def test_toy_train_then_edit_writes_an_edited_png(tmp_path, capsys, monkeypatch):
    assert cli.main(["toy", "dataset", "--out", str(tmp_path / "data"), "--n", "4"]) == 0
    overrides = sets(f"data={tmp_path / 'data'}", f"output_dir={tmp_path / 'run'}", "steps=2", "rank=4",
                     "batch_size=2", "warmup_identity_steps=1", "objective.rollout_steps=2")
    assert cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides]) == 0
    lora = tmp_path / "run" / "byg_toy_lora.safetensors"
    assert lora.is_file() and "checkpoint" in capsys.readouterr().out
    finished = lora.read_bytes()
    with pytest.raises(SystemExit, match=r"already holds a run \(checkpoint at step 2\).*--resume"):
        cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides, "--set", "seed=1"])
    assert lora.read_bytes() == finished  # a repeated fresh run overwrote nothing
    # resuming the finished run with a setting changed trains nothing and rewrites nothing (its metadata stays true)
    assert cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides, "--set", "lr=0.5", "--resume"]) == 0
    assert lora.read_bytes() == finished
    assert cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides, "--set", "steps=3", "--resume"]) == 0
    assert "resumed at step 2" in capsys.readouterr().err
    from byg_core import loading

    with monkeypatch.context() as patched:  # a resume with another setting is refused before the model loads
        patched.setattr(loading, "load_backbone", lambda *args, **kwargs: pytest.fail("the model was loaded"))
        assert cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides, "--set", "shift=2.0", "--resume"]) == 2
        assert "was made with shift=4.0, this run has shift=2.0; use the same shift" in capsys.readouterr().err
        assert cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides, "--set", "steps=1", "--resume"]) == 2
        assert "at step 3, past this run's steps = 1" in capsys.readouterr().err  # would have "finished" a 3-step run
        assert cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides, "--set", f"output_dir={tmp_path / 'typo'}",
                         "--resume"]) == 2
        assert "nothing to resume" in capsys.readouterr().err and not (tmp_path / "typo").exists()
    edit_checkpoint = ["edit", "--lora", str(tmp_path / "run" / "checkpoint.safetensors"), "--image",
                       str(tmp_path / "data" / "00000.png"), "--out", str(tmp_path / "x.png"), "--instruction", "x"]
    assert cli.main(edit_checkpoint) == 2  # had said it "was not written by comfyui-byg"
    assert "checkpoint.safetensors is a training checkpoint, not a LoRA" in capsys.readouterr().err
    # the longer run takes the name; the 2-step LoRA is kept, renamed as a stopped run at step 2 names its LoRA
    assert (tmp_path / "run" / "byg_toy_lora_step2.safetensors").read_bytes() == finished
    assert lora.read_bytes() != finished and read_lora(lora, load_backbone("toy")).metadata["byg.config"]["steps"] == 3
    (tmp_path / "run" / "checkpoint.safetensors").unlink()  # deleted to save space: the LoRA is still finished work
    longer = lora.read_bytes()
    with pytest.raises(SystemExit, match=r"already holds the LoRA byg_toy_lora.safetensors, "
                                         r"byg_toy_lora_step2.safetensors \(its checkpoint is gone"):
        cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides])
    assert lora.read_bytes() == longer
    # a stopped run's LoRA alone is work too: a fresh run stopped at its step would have written over it
    lora.rename(tmp_path / "kept.safetensors")
    with pytest.raises(SystemExit, match=r"already holds the LoRA byg_toy_lora_step2.safetensors \(its checkpoint"):
        cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides])
    assert (tmp_path / "run" / "byg_toy_lora_step2.safetensors").read_bytes() == finished
    (tmp_path / "kept.safetensors").rename(lora)
    source = tmp_path / "data" / "00000.png"
    out = tmp_path / "edited.png"
    assert cli.main(["edit", "--lora", str(lora), "--image", str(source), "--out", str(out),
                     "--instruction", "change the background colour to red", "--steps", "3"]) == 0
    assert load_image(out).shape == load_image(source).shape
    assert not torch.equal(load_image(out), load_image(source))


def test_edit_a_video_folder_with_a_wan_lora(tmp_path, capsys, monkeypatch):
    write_video_dataset(tmp_path / "data", 2, seed=0)
    overrides = sets(f"data={tmp_path / 'data'}", f"output_dir={tmp_path / 'run'}", "steps=1", "rank=4",
                     "warmup_identity_steps=1", "objective.rollout_steps=2")
    assert cli.main(["train", str(EXAMPLES / "toy_video.toml"), *overrides]) == 0
    lora = tmp_path / "run" / "byg_toy_video.safetensors"
    video = next(p for p in (tmp_path / "data").iterdir() if p.is_dir())
    assert cli.main(["edit", "--model", "toy-wan-5b", "--lora", str(lora), "--image", str(video),
                     "--out", str(tmp_path / "edited"), "--instruction", "change the background colour to red",
                     "--steps", "2"]) == 0
    written = load_media(tmp_path / "edited")
    assert written.shape == load_media(video).shape
    frames = {p.name: p.read_bytes() for p in video.iterdir()}
    edit_args = ["edit", "--model", "toy-wan-5b", "--lora", str(lora), "--instruction", "x", "--steps", "2"]
    assert cli.main([*edit_args, "--image", str(video), "--out", str(video), "--overwrite"]) == 2  # had overwritten
    assert "is the source itself: the edit would replace the frames it reads" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in video.iterdir()} == frames
    # without --steps, the model's own sampler's count (Wan2.2 TI2V-5B: 50)
    from byg_core import sample

    steps, edit_with = [], sample.edit
    monkeypatch.setattr(sample, "edit", lambda *a, **k: steps.append(k["steps"]) or edit_with(*a, **{**k, "steps": 1}))
    assert cli.main(["edit", "--model", "toy-wan-5b", "--lora", str(lora), "--image", str(video), "--out",
                     str(tmp_path / "default_steps"), "--instruction", "change the background colour to red"]) == 0
    assert steps == [50]
    monkeypatch.undo()
    image = tmp_path / "still.png"
    save_pixels(torch.rand(1, 3, 16, 16), image)
    assert cli.main([*edit_args, "--image", str(image), "--out", str(tmp_path / "edited_still")]) == 2
    assert re.search(r"is an image but --out .*edited_still names no image file: give a .png", capsys.readouterr().err)
    # the frames the library's edit gives for that folder, in order, as 8-bit frames
    backbone = load_backbone("toy-wan-5b")
    result = edit(backbone, load_lora([lora], backbone), backbone.encode_pixels(load_media(video).unsqueeze(0)),
                  backbone.encode_text(["change the background colour to red"]), steps=2, seed=0)
    want = backbone.decode_latents(result.latents)[0]
    torch.testing.assert_close(written, want, rtol=0, atol=1 / 255 + 1e-6)
    assert not torch.equal(written, load_media(video))


def test_errors_are_one_line_and_name_the_problem(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = -3\n")
    assert cli.main(["train", str(bad)]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    bad.write_text('save_name = "../../elsewhere/x"\n')  # had written the LoRA outside output_dir
    assert cli.main(["train", str(bad)]) == 2
    assert "save_name must be a plain file name like 'byg_lora'" in capsys.readouterr().err
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SystemExit, match=r"output_dir .*taken is a file; set output_dir to a folder"):  # had failed at
        cli.main(["train", *sets(f"data={tmp_path}", f"output_dir={tmp_path / 'taken'}")])  # the first save


def test_a_toml_trains_on_its_models_preset_as_the_node_does(tmp_path, capsys):
    """A TOML naming a Wan2.2 model and its files, nothing else, trains with the paper's video values (B.2), as
    CycleTrainer's widgets at -1 do; what the TOML or --set names wins."""
    from byg_core.config import PRESETS, TrainConfig
    from byg_core.toy.dataset import write_toy_dataset

    toml = tmp_path / "wan.toml"
    toml.write_text(f'model = "wan2.2-ti2v-5b"\ndata = "{tmp_path}"\n[model_files]\nfolder = "Wan2.2-TI2V-5B"\n')
    config = TrainConfig.from_toml(toml)
    assert {k: getattr(config, k) for k in PRESETS["wan"]} == PRESETS["wan"]  # logit-normal t at shift 12, no EMA
    assert TrainConfig.for_model({"model": "wan2.2-ti2v-5b", "shift": 5.0}).shift == 5.0  # a value given wins
    # `byg train` reads it so: a one-step toy run records the toy preset's shift and EMA decay
    data = write_toy_dataset(tmp_path / "data", n=2, seed=0)
    assert cli.main(["train", *sets("model=toy", f"data={data}", f"output_dir={tmp_path / 'toy'}", "steps=1",
                                    "batch_size=2", "rank=2", "objective.rollout_steps=2")]) == 0
    recorded = read_lora(tmp_path / "toy" / "byg_lora.safetensors", load_backbone("toy")).metadata["byg.config"]
    assert (recorded["shift"], recorded["ema_decay"]) == (PRESETS["toy"]["shift"], PRESETS["toy"]["ema_decay"])
    # its one step is one of the preset's 200 identity warm-up steps: said, as its LoRA learns no edit
    assert "warning: all 1 steps are identity warm-up steps (warmup_identity_steps = 200)" in capsys.readouterr().err


@pytest.mark.parametrize("text, named", [
    (b"steps = 3\nrank = \n", r"bad.toml is not valid TOML: .*line 2"),  # had named no file
    ("steps = 3\ncaption = 'caf\u00e9'\n".encode("cp1252"), r"bad.toml is not UTF-8 text"),
    (b'lora_alpha = "8"\n', r"bad.toml: field 'lora_alpha' must be float \(or left out\), got '8'"),  # had raised TypeError
    (b"resolution = 512\n", r"field 'resolution' must be a list of int \(or left out\), got 512"),
    (b"objective = 1\n", r"'objective' must be a table \(\[objective\] in TOML"),
    (b"text_cache_dir = 5\n", r"field 'text_cache_dir' must be str \(or left out\), got 5"),
])
def test_a_config_file_error_names_the_file_and_field(tmp_path, capsys, text, named):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(text)
    assert cli.main(["train", str(bad)]) == 2
    assert re.search(named, capsys.readouterr().err)
    bad.write_bytes(b"\xef\xbb\xbfsteps = 0\n")  # a byte-order mark is read past: the value is what is refused
    assert cli.main(["train", str(bad)]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("command, named", [
    (["demo", "--steps", "-2"], "--steps must be > 0, got -2"),
    (["bench", "--smoke", "--steps", "-1"], "--steps must be > 0, got -1"),  # had run every baseline first
    (["bench", "speed", "--repeats", "0"], "--repeats must be > 0, got 0"),  # had failed after profiling in min()
    (["bench", "speed", "--size", "0"], "--size must be > 0, got 0"),
    (["toy", "dataset", "--n", "-5"], "--n must be > 0, got -5"),
    (["toy", "dataset", "--n", "0"], "--n must be > 0, got 0"),  # had written an empty dataset
    (["edit", "--lora", "x.safetensors", "--image", "x.png", "--instruction", "i", "--steps", "0"],
     "--steps must be > 0, got 0"),
    (["edit", "--lora", "x.safetensors", "--image", "x.png", "--instruction", "i", "--stride", "0"],
     "--stride must be > 0, got 0"),
])
def test_a_count_out_of_range_is_refused_with_its_flag_before_anything_runs(command, named, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)  # where each command's default --out would go
    assert cli.main([*command, "--out", str(tmp_path / "out")]) == 2
    assert named in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for command in ("demo", "train", "edit", "bench", "toy"):
        assert command in text


def test_ctrl_c_stops_training_after_its_step_with_the_checkpoint_and_lora_written(tmp_path, capsys, monkeypatch):
    import os
    import signal

    from byg_core.train import Trainer

    before = signal.getsignal(signal.SIGINT)  # Python's handler; ignored where a shell started the tests in the background
    assert cli.main(["toy", "dataset", "--out", str(tmp_path / "data"), "--n", "4"]) == 0
    overrides = sets(f"data={tmp_path / 'data'}", f"output_dir={tmp_path / 'run'}", "steps=4", "rank=4",
                     "batch_size=2", "warmup_identity_steps=1", "objective.rollout_steps=2")
    with monkeypatch.context() as patched:  # Ctrl-C while the data was encoded: nothing written, so no refusal below
        patched.setattr(Trainer, "_should_stop", lambda self: True)
        assert cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides]) == 130
    assert "stopped before the first step: nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()
    step = Trainer.train_step

    def interrupted_in_step_2(self):
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as the terminal sends it, in the middle of step 2
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_in_step_2)
    assert cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides]) == 130  # had been a KeyboardInterrupt traceback
    assert "stopped at step 2 of 4: continue with --resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "byg_toy_lora_step2.safetensors").is_file()
    assert not (tmp_path / "run" / "byg_toy_lora.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C is handled as before the run again
    monkeypatch.setattr(Trainer, "train_step", step)
    assert cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides, "--resume"]) == 0
    assert "resumed at step 2" in capsys.readouterr().err and (tmp_path / "run" / "byg_toy_lora.safetensors").is_file()


def test_a_stop_file_in_the_run_folder_stops_training_after_its_step_and_is_removed(tmp_path, capsys, monkeypatch):
    """On several GPUs torchrun kills its workers 30 s after a Ctrl-C, before a Wan step ends: `touch OUTPUT_DIR/STOP`
    stops the run as Ctrl-C does (checkpoint and LoRA written); the file is removed once honoured, so --resume goes
    on, and a stale one left from an earlier run is removed before training, not taken as a stop."""
    from byg_core.train import Trainer

    assert cli.main(["toy", "dataset", "--out", str(tmp_path / "data"), "--n", "4"]) == 0
    overrides = sets(f"data={tmp_path / 'data'}", f"output_dir={tmp_path / 'run'}", "steps=4", "rank=4",
                     "batch_size=2", "warmup_identity_steps=1", "objective.rollout_steps=2")
    stop = tmp_path / "run" / "STOP"
    step = Trainer.train_step

    def stop_file_made_in_step_2(self):
        if self.step == 1:
            stop.touch()
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", stop_file_made_in_step_2)
    assert cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides]) == 130
    err = capsys.readouterr().err
    assert f"{stop} was made" in err and "stopped at step 2 of 4: continue with --resume" in err
    assert (tmp_path / "run" / "byg_toy_lora_step2.safetensors").is_file() and not stop.exists()
    monkeypatch.setattr(Trainer, "train_step", step)
    stop.touch()  # made after the run had stopped: stale
    assert cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides, "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"removed an earlier run's {stop}" in err and "resumed at step 2" in err
    assert (tmp_path / "run" / "byg_toy_lora.safetensors").is_file() and not stop.exists()


@pytest.mark.parametrize("env, named", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "set up for DeepSpeed"), ({"ACCELERATE_USE_FSDP": "true"}, "set up for FSDP"),
    ({"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, "asks for 4 gradient accumulation steps"),
])
def test_launcher_settings_byg_train_does_not_use_are_refused_before_the_model_loads(tmp_path, capsys, monkeypatch,
                                                                                      env, named):
    """`accelerate launch --use_deepspeed` (or FSDP, or gradient accumulation) would have crashed at the first backward
    or been ignored, after minutes of loading and caching."""
    from byg_core import loading

    assert cli.main(["toy", "dataset", "--out", str(tmp_path / "data"), "--n", "4"]) == 0
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(loading, "load_backbone", lambda *a, **k: pytest.fail("the model loaded"))
    overrides = sets(f"data={tmp_path / 'data'}", f"output_dir={tmp_path / 'run'}", "steps=2")
    assert cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides]) == 2
    assert named in capsys.readouterr().err


def test_a_launchers_mixed_precision_other_than_the_configs_is_named(tmp_path, capsys, monkeypatch):
    """`accelerate config` said bf16, the TOML none: the TOML's is used, and the run says so (it was silent)."""
    from byg_core.train import check_launch

    assert check_launch({"ACCELERATE_MIXED_PRECISION": "no"}, "bf16") == []  # the launcher's default: the config's
    assert check_launch({"ACCELERATE_MIXED_PRECISION": "bf16"}, "bf16") == [] and check_launch({}, "no") == []
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert cli.main(["toy", "dataset", "--out", str(tmp_path / "data"), "--n", "4"]) == 0
    overrides = sets(f"data={tmp_path / 'data'}", f"output_dir={tmp_path / 'run'}", "steps=1", "rank=4",
                     "batch_size=2", "objective.rollout_steps=2")
    assert cli.main(["train", str(EXAMPLES / "toy.toml"), *overrides]) == 0
    assert ("warning: accelerate launch's mixed precision (bf16) is not used: the config's mixed_precision = 'no' is"
            in capsys.readouterr().err)


def _untrained_lora(path, model, named=None):
    """A LoRA file as training writes it for ``model`` (untrained: the edit is the base's), its config naming
    ``named`` (``model`` unless given: a stand-in for a real model's LoRA where nothing loads)."""
    from byg_core.adapters import Adapters, LoraSpec
    from byg_core.lora_io import save_lora

    backbone = load_backbone(model)
    adapters = Adapters(backbone, LoraSpec(2, 2.0, tuple(backbone.lora_target_modules())))
    return save_lora(path, backbone, adapters, config={"model": named or model})[0]


def test_video_edits_are_checked_before_the_model_loads_and_a_frame_folder_gets_its_fps(tmp_path, capsys, monkeypatch):
    """A video given with an image model's LoRA was refused only after the model loaded; a --stride past the clip
    wrote a one-frame video; a frame folder's edit was written at 16 fps with no way to say its rate; a video of a
    size the model cannot take was decoded whole, at full size, before the refusal."""
    from byg_core import loading

    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(9):
        save_pixels(torch.rand(1, 3, 32, 32), clip / f"{i:03d}.png")
    wan, image_lora = _untrained_lora(tmp_path / "wan.safetensors", "toy-wan-5b"), _untrained_lora(
        tmp_path / "img.safetensors", "toy")
    edit_args = ["edit", "--instruction", "change the background colour to red", "--steps", "1"]
    loaded = []
    real_load = loading.load_backbone
    monkeypatch.setattr(loading, "load_backbone", lambda *a, **k: loaded.append(a) or real_load(*a, **k))
    assert cli.main([*edit_args, "--lora", str(image_lora), "--image", str(clip), "--out", str(tmp_path / "a.mp4")]) == 2
    assert "is a video, and --lora" in capsys.readouterr().err and not loaded
    assert cli.main([*edit_args, "--lora", str(wan), "--image", str(clip), "--stride", "4",
                     "--out", str(tmp_path / "b.mp4")]) == 2
    assert "gives a clip of 1 frame at --stride 4; a video edit takes at least 5" in capsys.readouterr().err
    assert not loaded and not (tmp_path / "b.mp4").exists()
    assert cli.main([*edit_args, "--lora", str(wan), "--image", str(clip), "--fps", "24",
                     "--out", str(tmp_path / "c.mp4")]) == 0
    assert "at 24 fps" in capsys.readouterr().out
    import av

    with av.open(str(tmp_path / "c.mp4")) as video:
        assert video.streams.video[0].average_rate == 24 and video.streams.video[0].frames == 9
    odd = tmp_path / "odd"
    odd.mkdir()
    for i in range(9):
        save_pixels(torch.rand(1, 3, 40, 40), odd / f"{i:03d}.png")
    read = []
    real_read = cli.load_pixels
    monkeypatch.setattr(cli, "load_pixels", lambda *a, **k: read.append(a[1]) or real_read(*a, **k))
    loaded.clear()
    real_model = ["--model", "wan2.2-ti2v-5b", "--model-file", f"folder={tmp_path / 'Wan2.2-TI2V-5B'}"]
    assert cli.main([*edit_args, *real_model, "--lora", str(wan), "--image", str(odd), "--out", str(tmp_path / "d.mp4")]) == 2
    # a LoRA of another model: had failed after the model loaded, blaming a missing pair file or naming no file
    assert "was trained on model 'toy-wan-5b', not --model 'wan2.2-ti2v-5b'" in capsys.readouterr().err and not loaded
    wan = _untrained_lora(tmp_path / "wan_real.safetensors", "toy-wan-5b", named="wan2.2-ti2v-5b")
    assert cli.main([*edit_args, *real_model, "--lora", str(wan), "--image", str(odd), "--out", str(tmp_path / "d.mp4")]) == 2
    assert "pass --size H W" in capsys.readouterr().err and read == [1] and not loaded  # its first frame alone


def test_an_edits_values_are_refused_by_flag_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """--cfg, --strength, --seed and a blank --instruction were refused (or not at all) only after minutes of
    loading FLUX.1-dev or Wan2.2, in words that named no flag; --model-file kept a space after its '='."""
    from byg_core import loading

    image = tmp_path / "in.png"
    save_pixels(torch.rand(1, 3, 32, 32), image)
    flux = _untrained_lora(tmp_path / "flux.safetensors", "toy", named="flux1-dev")
    wan = _untrained_lora(tmp_path / "wan.safetensors", "toy-wan-5b", named="wan2.2-ti2v-5b")
    monkeypatch.setattr(loading, "load_backbone", lambda *a, **k: pytest.fail("the model loaded"))
    files = ["--model-file", f"folder={tmp_path / 'models'}"]

    def refused(lora, *more, instruction="make it red"):
        out = tmp_path / "out.png"
        assert cli.main(["edit", "--lora", str(lora), "--image", str(image), "--out", str(out), *files,
                         "--instruction", instruction, *more]) == 2
        assert not out.exists()
        return capsys.readouterr().err

    assert "--cfg 2.0: this flux model's edits take no classifier-free guidance" in refused(flux, "--cfg", "2")
    assert "--cfg 2.0 3.0: cfg takes one scale >= 0, or one per expert (1)" in refused(wan, "--cfg", "2", "3")
    assert "--cfg -1.0: cfg takes one scale >= 0" in refused(wan, "--cfg", "-1")
    assert "--strength must be a finite number, got nan" in refused(flux, "--strength", "nan")
    assert f"--seed must be in [0, {2**64}), got {2**70}" in refused(flux, "--seed", str(2**70))
    assert "--instruction is blank: write the edit" in refused(flux, instruction="  ")
    assert cli._parse_model_file("vae = /models/ae.safetensors") == ("vae", "/models/ae.safetensors")


def test_a_video_edits_frame_faults_name_the_flags_that_fix_them(tmp_path, capsys):
    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(5):
        save_pixels(torch.rand(1, 3, 32 if i else 48, 32), clip / f"{i:03d}.png")
    wan = _untrained_lora(tmp_path / "wan.safetensors", "toy-wan-5b")
    edit_args = ["edit", "--instruction", "turn the background red", "--lora", str(wan), "--image", str(clip),
                 "--out", str(tmp_path / "out.mp4")]
    assert cli.main([*edit_args, "--frames", "10"]) == 2
    assert "--frames=10 is not 4k+1 (Wan's frame rule): use 9 or 13" in capsys.readouterr().err
    assert cli.main(edit_args) == 2
    assert "differ in size [(32, 32), (48, 32)]; set a size to resize them alike (byg edit's --size H W" in \
        capsys.readouterr().err
    # an --out of the other kind, with --overwrite: had failed after the whole edit (a folder for a .png: a traceback)
    (tmp_path / "frames").write_text("notes")
    assert cli.main([*edit_args[:-1], str(tmp_path / "frames"), "--overwrite", "--size", "32", "32"]) == 2
    assert "--out " + str(tmp_path / "frames") + " is a file, and this edit writes a folder of PNG frames there" in \
        capsys.readouterr().err and (tmp_path / "frames").read_text() == "notes"
    (tmp_path / "still.png").mkdir()
    assert cli.main([*edit_args[:-3], str(clip / "001.png"), "--out", str(tmp_path / "still.png"), "--overwrite"]) == 2
    assert "still.png is a folder, and this edit writes a file there" in capsys.readouterr().err


def test_a_model_file_that_is_not_there_is_named_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """A typo in [model_files] or --model-file was found when its part's turn came: the VAE's after the 12B
    transformer had loaded, minutes in; the text encoders' after both."""
    from byg_core import loading

    image = tmp_path / "in.png"
    save_pixels(torch.rand(1, 3, 32, 32), image)
    (tmp_path / "flux1-dev.safetensors").write_bytes(b"")
    flux = _untrained_lora(tmp_path / "flux.safetensors", "toy", named="flux1-dev")
    monkeypatch.setattr(loading, "load_backbone", lambda *a, **k: pytest.fail("the model loaded"))
    files = ["--model-file", f"transformer={tmp_path / 'flux1-dev.safetensors'}", "--model-file",
             f"vae={tmp_path / 'ae.safetensor'}", "--model-file", "dtype=bfloat16"]
    assert cli.main(["edit", "--lora", str(flux), "--image", str(image), "--out", str(tmp_path / "out.png"),
                     "--instruction", "make it red", *files]) == 2
    assert f"model file vae = {tmp_path / 'ae.safetensor'} does not exist (--model-file, or the files the LoRA " \
           "was trained with)" in capsys.readouterr().err
    data = tmp_path / "data"
    assert cli.main(["toy", "dataset", "--out", str(data), "--n", "2"]) == 0
    toml = tmp_path / "flux.toml"
    toml.write_text(f'model = "flux1-dev"\ndata = "{data}"\noutput_dir = "{tmp_path / "run"}"\n[model_files]\n'
                    f'folder = "{tmp_path / "FLUX.1-dev"}"\n')
    assert cli.main(["train", str(toml)]) == 2
    assert f"model file folder = {tmp_path / 'FLUX.1-dev'} does not exist ([model_files] in {toml}" in \
        capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # a refused run had left its output_dir behind, empty
    toml.write_text(f'model = "toy"\ndata = "{tmp_path / "no_data"}"\noutput_dir = "{tmp_path / "run"}"\n')
    assert cli.main(["train", str(toml)]) == 2 and "edits.jsonl not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_only_the_guidance_refusal_is_said_as_a_cfg_fault(tmp_path, capsys, monkeypatch):
    import byg_core.sample

    assert cli.main(["toy", "dataset", "--out", str(tmp_path / "data"), "--n", "1"]) == 0
    lora = _untrained_lora(tmp_path / "toy.safetensors", "toy")
    monkeypatch.setattr(byg_core.sample, "edit", lambda *a, **k: (_ for _ in ()).throw(ValueError("the edit's own")))
    assert cli.main(["edit", "--lora", str(lora), "--image", str(tmp_path / "data" / "00000.png"), "--out",
                     str(tmp_path / "out.png"), "--instruction", "turn the background red"]) == 2
    assert capsys.readouterr().err == "byg: error: the edit's own\n"  # had said "--cfg : the edit's own"


def test_flux_edits_take_a_distilled_guidance_and_wan_edits_refuse_it(tmp_path, capsys, monkeypatch):
    """FLUX.1-dev's guidance input had no flag: `byg edit` edited at 3.5 alone, where the nodes' guidance widget
    sets it; a Wan2.2 model, which has none (its guidance is --cfg), refuses it, a real one before loading."""
    import byg_core.sample
    from byg_core import loading

    assert cli.main(["toy", "dataset", "--out", str(tmp_path / "data"), "--n", "1"]) == 0
    image = str(tmp_path / "data" / "00000.png")
    seen = []
    real_edit = byg_core.sample.edit
    monkeypatch.setattr(byg_core.sample, "edit", lambda backbone, *a, **k: seen.append(backbone.guidance) or
                        real_edit(backbone, *a, **k))
    flux = _untrained_lora(tmp_path / "toy.safetensors", "toy")
    args = ["edit", "--lora", str(flux), "--image", image, "--instruction", "turn the background red"]
    assert cli.main([*args, "--out", str(tmp_path / "a.png"), "--guidance", "5.5"]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "b.png")]) == 0
    assert seen == [5.5, 3.5], "--guidance sets FLUX's guidance input for the edit; without it, the model's own"
    for value in ("-1", "nan"):
        assert cli.main([*args, "--out", str(tmp_path / "c.png"), "--guidance", value]) == 2
        assert f"--guidance must be a finite number >= 0, got {float(value)}" in capsys.readouterr().err
    toy_wan = _untrained_lora(tmp_path / "toy_wan.safetensors", "toy-wan-5b")
    assert cli.main(["edit", "--lora", str(toy_wan), "--image", image, "--instruction", "turn the background red",
                     "--out", str(tmp_path / "d.png"), "--guidance", "4", "--size", "32", "32"]) == 2
    assert "--guidance 4.0: this wan model has no distilled guidance input (FLUX.1-dev's); its guidance is " \
           "classifier-free: --cfg" in capsys.readouterr().err and not (tmp_path / "d.png").exists()
    monkeypatch.setattr(loading, "load_backbone", lambda *a, **k: pytest.fail("the model loaded"))
    wan = _untrained_lora(tmp_path / "wan.safetensors", "toy-wan-5b", named="wan2.2-ti2v-5b")
    assert cli.main(["edit", "--lora", str(wan), "--image", image, "--instruction", "turn the background red",
                     "--out", str(tmp_path / "e.png"), "--guidance", "4", "--model-file",
                     f"folder={tmp_path / 'models'}"]) == 2
    assert "--guidance 4.0: this wan model has no distilled guidance input" in capsys.readouterr().err


def test_a_set_value_for_a_text_setting_stays_text(tmp_path, capsys, monkeypatch):
    """--set reads values as TOML: a folder named 2024 or 2024-06-01 became a number or a date and was refused as
    "field 'data' must be str, got 2024"."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *sets("model=toy", "data=2024-06-01", "output_dir=2024", "steps=2")]) == 2
    assert "2024-06-01/edits.jsonl not found" in capsys.readouterr().err
    assert cli.main(["train", *sets("model=flux1-dev", "data=d", "model_files.folder=2024")]) == 2
    assert "must be a path" not in (err := capsys.readouterr().err) and "model file folder = 2024 does not exist" in err
    assert cli.main(["train", *sets("model=toy", "data=d", "steps=two")]) == 2  # a number's field still checks
    assert "field 'steps' must be int, got 'two'" in capsys.readouterr().err
