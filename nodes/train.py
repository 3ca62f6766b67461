"""CycleTrainer: trains a ByG LoRA from a model, a dataset and an objective, inside ComfyUI."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

from . import host
from . import inputs as I
from .values import DATASET, LORA, MODEL, OBJECTIVE, BygLora

AUTO = "auto"
DEFAULT = -1  # a preset-backed widget at -1 takes the preset's value
# widget -> TrainConfig field, for the widgets whose -1 means "the preset's value"
PRESET_WIDGETS = {
    "steps": "steps", "learning_rate": "lr", "rank": "rank", "batch_size": "batch_size",
    "warmup_identity_steps": "warmup_identity_steps", "ema_decay": "ema_decay",
}
# TrainConfig field -> what a node user changes to make a resumed run match its checkpoint
RESUME_WIDGETS = {"model": "the model loader's 'model'", "rank": "'rank'", "seed": "'seed'", "batch_size": "'batch_size'",
                  "data": "BYGDataset's 'folder'", "resolution": "BYGDataset's 'width' and 'height'",
                  "frames": "BYGDataset's 'frames'", "frame_stride": "BYGDataset's 'frame_stride'",
                  "objective": "DirectionalPriorLoss's widgets", "method": "'preset'", "use_ema": "'preset'",
                  "ema_decay": "'ema_decay' (or 'preset', where it is -1)",
                  "warmup_identity_steps": "'warmup_identity_steps' (or 'preset', where it is -1)",
                  **{field: "'preset'" for field in ("identity_prob", "timesteps", "logit_mean", "logit_std", "shift")}}


def _presets():
    from byg_core.config import PRESETS, TrainConfig

    defaults = TrainConfig().to_dict()
    return {name: defaults | values for name, values in PRESETS.items()}


def _preset_tip(widget: str, what: str) -> str:
    """The widget's tooltip, listing each preset's value, so it never disagrees with byg_core's presets."""
    field = PRESET_WIDGETS[widget]
    values = ", ".join(f"{name} {preset[field]:g}" for name, preset in _presets().items())
    return f"{what} -1: the preset's value ({values})."


class CycleTrainer:
    DESCRIPTION = (
        "Trains an editing LoRA without paired data (Bootstrap Your Generator). Shows progress, preview edits and "
        "the loss curve; stops cleanly on Cancel (the checkpoint is kept and the LoRA so far is saved as "
        "loras/<save_name>_step<N>.safetensors: queue again with resume on to continue), and saves the finished "
        "LoRA as loras/<save_name>.safetensors. The run lives in <output>/byg/<save_name>/."
    )
    CATEGORY = "ByG/train"
    RETURN_TYPES = (LORA, "IMAGE")
    RETURN_NAMES = ("lora", "loss_curve")
    OUTPUT_TOOLTIPS = ("The trained LoRA (also saved as loras/<save_name>.safetensors).", "Every loss term against the step.")
    FUNCTION = "train"
    OUTPUT_NODE = True  # a graph that only trains is a complete prompt; the loss curve shows under the node

    @classmethod
    def INPUT_TYPES(cls):
        from byg_core.config import LR_SCHEDULERS, PRESETS, TrainConfig

        d = TrainConfig()
        return {
            "required": {
                "model": I.socket(MODEL, "Base model to train on (without a LoRA)."),
                "dataset": I.socket(DATASET, "Unpaired edit tuples (BYGDataset)."),
                "objective": I.socket(OBJECTIVE, "Loss weights and ablation switches (DirectionalPriorLoss)."),
                "preset": I.choice([AUTO, *PRESETS], "Training values the -1 widgets take, and the options without a "
                                   "widget (timesteps, EMA, identity steps). auto: the loaded model's — toy for the toy "
                                   "base, flux = the paper's image values (B.1), wan = its video values (B.2: "
                                   "logit-normal t with shift 12, no EMA, 10% identity steps)."),
                "steps": I.integer(DEFAULT, DEFAULT, 1_000_000, _preset_tip(
                    "steps", "Total training steps; a resumed run counts the steps already done (the paper trains "
                    "30k and sees editing after ~1k).")),
                "learning_rate": I.number(DEFAULT, DEFAULT, 1.0, 1e-6, _preset_tip(
                    "learning_rate", "AdamW learning rate (paper: 3e-4 images, 1e-4 video).")),
                "rank": I.integer(DEFAULT, DEFAULT, 1024, _preset_tip(
                    "rank", "LoRA rank (paper: 64); a resumed run must keep its checkpoint's rank.")),
                "batch_size": I.integer(DEFAULT, DEFAULT, 1024, _preset_tip(
                    "batch_size", "Edit tuples per step (paper: 8); a resumed run must keep it.")),
                "seed": I.seed("Seed of the LoRA init and of every random draw; a resumed run must use the same seed. "
                               "Keep 'control after generate' on fixed: another seed is another run."),
                "save_name": I.text("byg_lora", "Name of the run (<output>/byg/<save_name>/) and of its LoRA "
                                    "(loras/<save_name>.safetensors). A new run never overwrites an old one: with "
                                    "resume off, a save_name that already names a run or a LoRA is refused (the "
                                    "same run, finished and asked for again with every widget as it was, is "
                                    "returned as it is)."),
                "resume": I.flag(False, "On: continue the run <save_name> from its checkpoint (after a Cancel, or with "
                                 "more steps). Off: start a new run, under a save_name no run or LoRA has yet."),
                "warmup_identity_steps": I.integer(DEFAULT, DEFAULT, 1_000_000, _preset_tip(
                    "warmup_identity_steps", "First steps train the identity loss only (paper: 200).")),
                "preview_every": I.integer(50, 0, 1_000_000, "Steps between preview edits under the node (0: none)."),
                "ema_decay": I.number(DEFAULT, DEFAULT, 1.0, 0.0001, _preset_tip(
                    "ema_decay", "Decay of the EMA editor that bootstraps the targets (the paper gives none; "
                    "short runs want less).")),
            },
            # optional, so prompts and workflows saved before these widgets existed still run (constant lr, as then)
            "optional": {
                "lr_scheduler": I.choice(list(LR_SCHEDULERS), "The learning rate over the run (the paper gives one lr: "
                                         "constant). linear / cosine: a decay to 0 at the last step; a resumed run "
                                         "with more steps decays over the new total.", default=d.lr_scheduler),
                "lr_warmup_steps": I.integer(d.lr_warmup_steps, 0, 1_000_000, "First steps raise the learning rate "
                                             "linearly from 0 (0: none)."),
            },
        }

    @host.outside_inference_mode(grad=True)
    def train(self, model, dataset, objective, preset, steps, learning_rate, rank, batch_size, seed, save_name, resume,
              warmup_identity_steps, preview_every, ema_decay, **schedule):
        from byg_core.data import cache, data_fingerprint
        from byg_core.memory import estimate, gpu_bytes
        from byg_core.train import Callbacks, Diverged, Trainer, check_resumable, same_finished_run, warmup_only

        name = _save_name(save_name)
        if model.lora is not None:
            raise ValueError(
                f"CycleTrainer trains a new LoRA on the base model, but this model carries LoRA {model.lora.name!r}: "
                "connect the model loader's output directly"
            )
        _check_dataset_size(model, dataset)
        widgets = dict(steps=steps, learning_rate=learning_rate, rank=rank, batch_size=batch_size,
                       warmup_identity_steps=warmup_identity_steps, ema_decay=ema_decay)
        config = _config(model, dataset, objective, preset, name, seed, preview_every, widgets, schedule)
        # this very run, finished (ComfyUI runs the node again when anything upstream changed, or after a restart):
        # returned as it is, nothing loaded or encoded; any other run under the name is refused
        if not resume:
            data = data_fingerprint(dataset.dataset.records)
            done = same_finished_run(config, data)
            if done is not None and _loras_are_the_runs(name, config.output_dir, model.backbone):
                return _result(name, model, done)
            _refuse_to_overwrite(config, model.backbone, data)
        else:
            with _resume_refusals(name):
                check_resumable(config)  # before minutes of encoding the dataset
        progress = host.Progress(config.steps)
        callbacks = Callbacks(
            on_step=lambda step, _: progress.update(step),
            should_stop=progress.should_stop,
            on_preview=lambda step, pixels: progress.update(step, _preview(pixels)),
        )
        try:
            data = cache(dataset.dataset, model.backbone, dataset.size, dataset.frames, dataset.frame_stride)
            host.free_host_models(model.backbone)  # every prompt and source is encoded: the host's CLIP and VAE leave the GPU
            trainer = Trainer(config, model.backbone, data, callbacks)
        except ValueError as error:
            raise ValueError(f"CycleTrainer: {error}") from error
        log = logging.getLogger("comfyui-byg")
        figures = estimate(trainer)
        log.info("CycleTrainer %r: %s", name, figures.describe())  # the server's log
        if warning := figures.warning(gpu_bytes(host.torch_device())):
            log.warning("CycleTrainer %r: %s", name, warning)
        if warning := warmup_only(config):
            log.warning("CycleTrainer %r: %s", name, warning)
        if resume:
            with _resume_refusals(name):
                trainer.resume()
        try:
            result = trainer.run()
        except Diverged as error:
            resume_it = "; turn 'resume' on" if error.kept is not None else ""
            raise ValueError(f"CycleTrainer: {error} (lr: the learning_rate widget{resume_it})") from error
        host.install_loras(result.set_aside)  # a longer run resumed under this name keeps the earlier LoRA as _step<K>
        installed = host.install_loras(result.lora_paths)  # a cancelled run's LoRA so far too
        progress.raise_if_interrupted()
        return _result(name, model, result, installed)


def _result(name: str, model, result, installed=None):
    """The node's outputs for a run's result: its LoRA (installed in the loras folder unless ``installed`` says
    where it is), and the loss curve."""
    from byg_core.lora_io import read_lora

    installed = installed or host.install_loras(result.lora_paths)
    lora = BygLora(name, model.family, tuple(read_lora(path, model.backbone) for path in installed))
    curve = _loss_curve(result.history)
    return {"ui": host.ui_images(curve, f"byg_loss_{name}"), "result": (lora, curve)}


def _check_dataset_size(model, dataset) -> None:
    """BYGDataset's width and height (they step by 8; FLUX.1 takes multiples of 16, TI2V-5B of 32) against the
    model, by widget and before any source is encoded: not as a fault of the first file, which the node resizes."""
    from byg_core.backbones.base import PixelShapeError

    if dataset.size:
        height, width = dataset.size
        try:
            model.backbone.check_pixels((1, 3, height, width))
        except PixelShapeError as error:
            raise ValueError(f"CycleTrainer: BYGDataset's width and height ({width} x {height}): {error}; set them "
                             "to a size this model takes") from None


def _config(model, dataset, objective, preset, name, seed, preview_every, widgets, schedule):
    """The node's TrainConfig: the preset, then every widget not at -1, then the optional schedule inputs the prompt
    has (``schedule``; one it lacks keeps TrainConfig's default)."""
    from byg_core.config import TrainConfig
    from byg_core.loading import training_preset

    values = {
        "model": model.name, "data": str(dataset.dataset.root), "output_dir": str(host.output_dir() / "byg" / name),
        "save_name": name, "resolution": list(dataset.size) if dataset.size else None, "frames": dataset.frames,
        "frame_stride": dataset.frame_stride, "seed": seed,
        "objective": dataclasses.asdict(objective), "preview_every": preview_every,
    }
    values |= {PRESET_WIDGETS[k]: v for k, v in widgets.items() if v != DEFAULT} | schedule
    chosen = training_preset(model.name, model.family) if preset == AUTO else preset
    return TrainConfig.for_preset(chosen, values, "CycleTrainer")


def _refuse_to_overwrite(config, backbone, data: str) -> None:
    """A new run never replaces an earlier run's checkpoint or a LoRA of the same name (resume continues one); the
    refusal says which widgets differ from that run's, or that its dataset (fingerprint ``data``) changed, and why a
    seed may have changed by itself."""
    from byg_core.lora_io import expert_paths
    from byg_core.safefiles import read_metadata
    from byg_core.train import CHECKPOINT, existing_run, run_changes, stopped_loras

    name, output_dir = config.save_name, config.output_dir
    done = existing_run(output_dir)
    if done is not None:
        changes = run_changes(config)
        made = "; ".join(f"made with {key}={was!r} where this prompt has {key}={now!r}" for key, was, now in changes[:3])
        if not changes and (read_metadata(Path(output_dir) / CHECKPOINT) or {}).get("byg.data", data) != data:
            made = "made on the dataset as it was then: a line or a file of it changed since"
        seed = ("" if "seed" not in [key for key, _, _ in changes] else " The seed changed: a seed widget whose "
                "'control after generate' is randomize or increment changes it on every queue; set it to fixed.")
        raise ValueError(
            f"CycleTrainer: save_name {name!r} already names a run ({output_dir}, {done}"
            f"{'; ' + made if made else ''}); nothing was overwritten. Turn 'resume' on to continue that run, or "
            f"change 'save_name' to start a new one.{seed}"
        )
    taken = [p for p in expert_paths(host.loras_dir() / f"{name}.safetensors", list(backbone.transformers)).values()
             if p.exists()] + stopped_loras(host.loras_dir(), name)  # a stopped run's, which a fresh one might reach
    if taken:
        raise ValueError(
            f"CycleTrainer: the loras folder already holds {', '.join(p.name for p in taken)}; nothing was "
            "overwritten. Change 'save_name' to start a new run."
        )


def _loras_are_the_runs(name: str, output_dir: str, backbone) -> bool:
    """Whether the loras folder holds this run's own LoRA files under ``name``, or none (never another's)."""
    import filecmp

    from byg_core.lora_io import expert_paths

    experts = list(backbone.transformers)
    ours = expert_paths(Path(output_dir) / f"{name}.safetensors", experts)
    theirs = expert_paths(host.loras_dir() / f"{name}.safetensors", experts)
    return all(not theirs[e].exists() or filecmp.cmp(ours[e], theirs[e], shallow=False) for e in experts)


@contextlib.contextmanager
def _resume_refusals(name: str):
    """A resume refused (the checkpoint's check before the dataset is encoded, or its loading) in the widgets' words."""
    from byg_core.train import ResumeMismatch

    try:
        yield
    except ResumeMismatch as error:
        raise ValueError(
            f"CycleTrainer: cannot resume: {error}.\nSet {RESUME_WIDGETS.get(error.key, error.key)} back to "
            f"{error.saved!r} to continue run {name!r}, or turn 'resume' off and change 'save_name' to start a new run."
        ) from error
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(
            f"CycleTrainer: cannot resume: {error}.\nTurn 'resume' off to start a new run (under another 'save_name' "
            f"where {name!r} is taken), or set 'save_name' to the run you want to continue."
        ) from error


def _save_name(save_name: str) -> str:
    """The widget as the LoRA's name (TrainConfig.validate refuses one that is not a plain file name)."""
    return save_name.strip().removesuffix(".safetensors")


def _loss_curve(history):
    from byg_core.plots import loss_curve

    return loss_curve(history).unsqueeze(0)


def _preview(pixels):
    """A grid of preview edits as a PIL image for the progress bar (video: its first frames)."""
    from PIL import Image
    from byg_core.plots import image_grid

    if pixels.ndim == 5:  # (N, 3, F, H, W): one row per video
        rows = [list(video.unbind(1))[:8] for video in pixels.cpu()]
    else:
        rows = [list(pixels.cpu())]
    grid = image_grid(rows, scale=max(1, 256 // max(pixels.shape[-2:])))
    return Image.fromarray((grid.numpy() * 255).round().astype("uint8"))
