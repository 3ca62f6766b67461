"""BYGLoRALoader: a ByG LoRA (from the loras folder or a CycleTrainer) onto a model, with strength."""

from __future__ import annotations

from . import host
from . import inputs as I
from .values import LORA, MODEL, BygLora

NONE = "(none)"  # lora_name when the LoRA comes in through the lora socket


class BYGLoRALoader:
    DESCRIPTION = (
        "Puts a ByG LoRA on a model: a file from the loras folder, or the LoRA a CycleTrainer just trained "
        "(the socket wins when connected). The file must be trained for this model family and size."
    )
    CATEGORY = "ByG/model"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model carrying the LoRA (the base weights are shared, not copied).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": I.socket(MODEL, "Model to put the LoRA on (one without a LoRA)."),
                "lora_name": I.choice([NONE, *host.lora_names()], "LoRA file in ComfyUI's loras folder; (none) when the lora socket is connected."),
                "strength": I.number(1.0, -10.0, 10.0, 0.01, "Scale of the LoRA's change: 1 is the trained edit, 0 the base model."),
            },
            "optional": {"lora": I.socket(LORA, "A LoRA from CycleTrainer; overrides lora_name.")},
        }

    @classmethod
    def IS_CHANGED(cls, lora_name, **_):
        """Read the file again when it (or the other file of its A14B pair) changes on disk: ComfyUI otherwise keeps the
        node's output by its widgets alone, and a run resumed for more steps rewrites loras/<save_name>.safetensors."""
        from byg_core.lora_io import EXPERT_SUFFIX, sibling_paths

        try:
            paths = sibling_paths(host.lora_path(lora_name), list(EXPERT_SUFFIX)) if lora_name != NONE else []
        except FileNotFoundError:
            return ""  # load names it
        return repr([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths])

    @host.outside_inference_mode(grad=False)
    def load(self, model, lora_name, strength, lora=None):
        if lora is None:
            lora = self._read(model, lora_name)
        try:
            carried = model.with_lora(lora, strength)
        except ValueError as error:  # a model that carries a LoRA already, a strength it cannot take
            raise ValueError(f"BYGLoRALoader: {error}") from error
        try:
            carried.prepare()  # a file that does not fit this model fails here, at its loader
        except ValueError as error:
            raise ValueError(
                f"BYGLoRALoader: {error}\nLoRA {lora.name!r} (rank {lora.rank}) was not trained on model {model.name!r}: "
                "pick a LoRA trained on this model, or train one with CycleTrainer."
            ) from error
        return (carried,)

    @staticmethod
    def _read(model, lora_name) -> BygLora:
        from byg_core.lora_io import (check_one_file_per_expert, check_one_training, check_trained_on, read_lora,
                                      sibling_paths)

        if lora_name == NONE:
            raise ValueError("BYGLoRALoader: pick a lora_name or connect a LoRA to the lora input")
        try:
            # picking either file of a Wan2.2 A14B pair loads both experts' LoRAs
            experts = list(model.backbone.transformers)
            files = tuple(read_lora(p, model.backbone) for p in sibling_paths(host.lora_path(lora_name), experts))
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(f"BYGLoRALoader: {error}. Pick a LoRA trained on a {model.family} model.") from error
        try:
            check_trained_on(list(files), model.name)
        except ValueError as error:
            raise ValueError(f"BYGLoRALoader: widget 'lora_name' ({lora_name}): {error}; pick a LoRA trained on "
                             f"{model.name}") from error
        try:
            check_one_training(list(files))
            check_one_file_per_expert([(f.path, f.expert) for f in files], list(model.backbone.transformers))
        except ValueError as error:
            raise ValueError(f"BYGLoRALoader: widget 'lora_name' ({lora_name}): {error}, unrenamed, in the loras folder") from error
        return BygLora(lora_name, files[0].family, files)
