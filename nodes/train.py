"""CycleTrainer: trains a ByG LoRA from a model, a dataset and an objective, inside ComfyUI."""

from __future__ import annotations

import dataclasses

from . import host
from . import inputs as I
from .values import DATASET, LORA, MODEL, OBJECTIVE, BygLora


class CycleTrainer:
    DESCRIPTION = (
        "Trains an editing LoRA without paired data (Bootstrap Your Generator). Shows progress and preview edits, "
        "stops cleanly on Cancel (the checkpoint is kept: queue again with resume on), and saves the LoRA into "
        "the loras folder. Checkpoints live in <output>/byg/<save_name>/."
    )
    CATEGORY = "ByG/train"
    RETURN_TYPES = (LORA, "IMAGE")
    RETURN_NAMES = ("lora", "loss_curve")
    OUTPUT_TOOLTIPS = ("The trained LoRA (also saved as loras/<save_name>.safetensors).", "Every loss term against the step.")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": I.socket(MODEL, "Base model to train on (without a LoRA)."),
                "dataset": I.socket(DATASET, "Unpaired edit tuples (BYGDataset)."),
                "objective": I.socket(OBJECTIVE, "Loss weights and ablation switches (DirectionalPriorLoss)."),
                "steps": I.integer(1000, 1, 1_000_000, "Total training steps (a resumed run counts the steps already done)."),
                "learning_rate": I.number(3e-4, 1e-7, 1.0, 1e-5, "AdamW learning rate (paper: 3e-4 images, 1e-4 video)."),
                "rank": I.integer(64, 1, 1024, "LoRA rank (paper: 64). A resumed run must use the checkpoint's rank."),
                "batch_size": I.integer(8, 1, 1024, "Edit tuples per step (paper: 8)."),
                "seed": I.seed("Seed of the LoRA init and of every random draw; a resumed run must use the same seed."),
                "save_name": I.text("byg_lora", "LoRA file name in the loras folder, without .safetensors."),
                "resume": I.flag(False, "Continue from <output>/byg/<save_name>/checkpoint.safetensors instead of starting fresh."),
                "warmup_identity_steps": I.integer(200, 0, 1_000_000, "First steps train the identity loss only (paper: 200)."),
                "preview_every": I.integer(100, 0, 1_000_000, "Steps between preview edits under the node (0: none)."),
                "ema_decay": I.number(0.99, 0.0, 1.0, 0.001, "Decay of the EMA editor that bootstraps the targets; "
                                      "short runs want less (0.95 for a few hundred steps)."),
            }
        }

    @host.outside_inference_mode(grad=True)
    def train(self, model, dataset, objective, steps, learning_rate, rank, batch_size, seed, save_name, resume,
              warmup_identity_steps, preview_every, ema_decay):
        from byg_core.config import TrainConfig
        from byg_core.data import cache
        from byg_core.lora_io import read_lora
        from byg_core.train import Callbacks, Trainer

        name = _check_save_name(save_name)
        if model.lora is not None:
            raise ValueError(
                f"CycleTrainer trains a new LoRA on the base model, but this model carries LoRA {model.lora.name!r}: "
                "connect the model loader's output directly"
            )
        values = {
            "model": model.name, "data": str(dataset.dataset.root), "output_dir": str(host.output_dir() / "byg" / name),
            "save_name": name, "resolution": list(dataset.size) if dataset.size else None, "steps": steps,
            "batch_size": batch_size, "lr": learning_rate, "rank": rank, "seed": seed,
            "objective": dataclasses.asdict(objective), "warmup_identity_steps": warmup_identity_steps,
            "preview_every": preview_every, "ema_decay": ema_decay,
        }
        # a video model trains with the paper's video options (B.2) unless a widget sets them
        build = TrainConfig.for_video if model.family == "wan" else TrainConfig.from_dict
        config = build(values, "CycleTrainer")
        progress = host.Progress(steps)
        callbacks = Callbacks(
            on_step=lambda step, _: progress.update(step),
            should_stop=progress.should_stop,
            on_preview=lambda step, pixels: progress.update(step, _preview(pixels)),
        )
        try:
            trainer = Trainer(config, model.backbone, cache(dataset.dataset, model.backbone, dataset.size), callbacks)
        except ValueError as error:
            raise ValueError(f"CycleTrainer: {error}") from error
        if resume:
            _resume(trainer, name)
        result = trainer.run()
        installed = host.install_loras(result.lora_paths)
        progress.raise_if_interrupted()
        lora = BygLora(name, model.family, tuple(read_lora(path, model.backbone) for path in installed))
        return (lora, _loss_curve(result.history))


def _resume(trainer, name: str) -> None:
    try:
        trainer.resume()
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(
            f"CycleTrainer: cannot resume: {error}\nIn this node: set the widgets back to the checkpoint's values, "
            f"or turn resume off / pick another save_name than {name!r} to start a new run."
        ) from error


def _check_save_name(save_name: str) -> str:
    name = save_name.strip().removesuffix(".safetensors")
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"CycleTrainer: save_name must be a plain file name like 'byg_lora', got {save_name!r}")
    return name


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
