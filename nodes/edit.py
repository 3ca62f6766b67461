"""BootstrapSampler and BYGVideoEdit: edit an IMAGE batch or a video (IMAGE frames) by instruction."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch

from . import host
from . import inputs as I
from .values import MODEL

DEFAULT_CFG = -1.0  # the cfg widget's "the model's own"

# how a node user fixes each dimension a model refuses (byg_core's PixelShapeError.dimensions)
FIX = {
    "height": "resize it with a stock ImageScale node",
    "width": "resize it with a stock ImageScale node",
    "frames": "pick that many frames with a stock ImageFromBatch node (batch_index, length), or give a video "
              "of that many frames (ImageScale changes sizes, never the frame count)",
}


@contextmanager
def guidance_of(backbone, guidance: float, cfg: float = DEFAULT_CFG):
    """For this run only (the backbone is shared): FLUX.1-dev's distilled ``guidance`` (the widget's tooltip: models
    without that input ignore it), and ``cfg``, every expert's classifier-free guidance (-1: the model's own)."""
    from byg_core.sample import distilled_guidance_of, guide_scales_of

    with distilled_guidance_of(backbone, guidance if hasattr(backbone, "guidance") else None), \
            guide_scales_of(backbone, None if cfg == DEFAULT_CFG else cfg):
        yield


def run_edit(node: str, model, pixels: torch.Tensor, instruction: str, steps: int, seed: int, guidance: float,
             keep_states: bool = False, cfg: float = DEFAULT_CFG):
    """Encode, edit with the model's LoRA state, decode: (edited pixels, decoded y_t states or None)."""
    if not instruction.strip():
        raise ValueError(f"{node}: write an edit instruction, e.g. \"change the circle's colour to green\"")
    backbone = model.backbone
    steps = steps or backbone.edit_steps  # 0: the model's own
    guided = ExitStack()  # the guidance of this run, refused before anything is encoded
    try:
        guided.enter_context(guidance_of(backbone, guidance, cfg))
    except ValueError as error:
        raise ValueError(f"{node}: the cfg widget: {error}") from error
    with guided:
        return _encode_edit_decode(node, model, pixels, instruction, steps, seed, keep_states)


def _encode_edit_decode(node: str, model, pixels: torch.Tensor, instruction: str, steps: int, seed: int,
                        keep_states: bool):
    from byg_core.backbones.base import PixelShapeError
    from byg_core.sample import edit

    backbone = model.backbone
    try:
        backbone.check_pixels(tuple(pixels.shape))
    except PixelShapeError as error:
        fixes = dict.fromkeys(FIX[d] for d in sorted(error.dimensions))  # one line per fix, in a stable order
        raise ValueError(f"{node}: {error}.\nTo fix: " + "; ".join(fixes) + ".") from error
    except ValueError as error:  # not pixels of this model's kind at all (a video for an image model, say)
        raise ValueError(f"{node}: {error}") from error
    try:
        c = backbone.encode_text([instruction.strip()])
    except ValueError as error:
        raise ValueError(f"{node}: the instruction cannot be read by this model: {error}") from error
    x = backbone.encode_pixels(pixels)
    backbone.encode_text([backbone.negative_prompt])  # cached for a guided edit (Wan2.2's cfg)
    host.free_host_models(backbone)  # the host's CLIP and VAE leave the GPU to the transformer until the decode
    adapters = model.prepare()
    progress = host.Progress(steps)

    def on_step(i: int) -> None:
        progress.update(i)
        progress.raise_if_interrupted()  # Cancel stops the edit at this step, as the host's own samplers stop

    result = edit(backbone, adapters, x, c, steps=steps, seed=seed, keep_states=keep_states, on_step=on_step)
    edited = backbone.decode_latents(result.latents)
    states = backbone.decode_latents(torch.cat(result.states)) if keep_states else None
    return edited, states


def _common_inputs(what: str) -> dict:
    return {
        "instruction": I.text("", f"What to change in the {what}, e.g. \"change the circle's colour to green\".", multiline=True),
        "steps": I.integer(0, 0, 1000, "ODE steps of the edit. 0: the model's own sampler's, as byg edit without "
                           "--steps (the paper: 20 on FLUX.1-dev images; its video edits follow Wan2.2's own sampler: "
                           "50 on TI2V-5B, 40 on A14B)."),
        "seed": I.seed("Seed of the starting noise."),
        "guidance": I.number(3.5, 0.0, 100.0, 0.1, "FLUX.1-dev distilled guidance; models without a guidance input "
                             "ignore it (Wan2.2 guides by the cfg widget below)."),
    }


def _optional_inputs() -> dict:
    # optional, so prompts and workflows saved before it existed still run (at the model's own guidance)
    return {"cfg": I.number(DEFAULT_CFG, DEFAULT_CFG, 100.0, 0.1, (
        "Classifier-free guidance against the model's negative prompt at every step. -1: the model's own sampler's "
        "(Wan2.2 TI2V-5B 5.0; A14B 4.0 on the high-noise expert, 3.0 on the low-noise one; FLUX.1-dev none, its "
        "guidance is the widget above). 1: none, half the compute."))}


class BootstrapSampler:
    DESCRIPTION = "Edits every image of an IMAGE batch by one instruction with a ByG-trained model."
    CATEGORY = "ByG/edit"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("image", "states")
    OUTPUT_TOOLTIPS = (
        "The edited images, same size as the input.",
        "With return_states on: the decoded intermediate states y_t of the rollout, step by step (steps x batch "
        "images, noisiest first); off: the edited images again.",
    )
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "model": I.socket(MODEL, "A model carrying a ByG LoRA (BYGLoRALoader)."),
            "image": I.socket("IMAGE", "Images to edit; their size must suit the model (the error says which sizes do)."),
        }
        required |= _common_inputs("image")
        required["return_states"] = I.flag(False, "Also output the intermediate states y_t of the rollout.")
        return {"required": required, "optional": _optional_inputs()}

    @host.outside_inference_mode(grad=False)
    def sample(self, model, image, instruction, steps, seed, guidance, return_states, cfg=DEFAULT_CFG):
        pixels = host.image_to_pixels(image)
        edited, states = run_edit("BootstrapSampler", model, pixels, instruction, steps, seed, guidance, return_states,
                                  cfg)
        image_out = host.pixels_to_image(edited)
        return (image_out, host.pixels_to_image(states) if return_states else image_out)


class BYGVideoEdit:
    DESCRIPTION = "Edits a video, given as IMAGE frames, by one instruction with a ByG-trained Wan2.2 model."
    CATEGORY = "ByG/edit"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The edited frames, as many and as large as the input's.",)
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "model": I.socket(MODEL, "A Wan2.2 video model carrying a ByG LoRA."),
            "frames": I.socket("IMAGE", "The video's frames in order (Wan takes 4k+1 frames)."),
        }
        return {"required": required | _common_inputs("video"), "optional": _optional_inputs()}

    @host.outside_inference_mode(grad=False)
    def edit(self, model, frames, instruction, steps, seed, guidance, cfg=DEFAULT_CFG):
        if model.family != "wan":
            raise ValueError(
                f"BYGVideoEdit needs a Wan2.2 video model; the loaded model {model.name!r} is {model.family}, "
                "an image model: edit its frames with BootstrapSampler, or load a Wan2.2 model"
            )
        video = host.frames_to_video(frames)
        edited, _ = run_edit("BYGVideoEdit", model, video, instruction, steps, seed, guidance, cfg=cfg)
        return (host.video_to_frames(edited),)
