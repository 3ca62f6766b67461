#!/usr/bin/env python3
"""Does stock ComfyUI apply this pack's LoRA files exactly, for every module a LoRA can target?

    python scripts/comfy_lora_check.py --comfy /path/to/ComfyUI

Run with ComfyUI's Python (this pack's requirements installed). For FLUX.1 and both Wan2.2 variants (the
A14B's two experts each), at the default targets and at every linear layer (``target_modules`` a user can set,
``byg bench --lora-targets all-linear``): a tiny ComfyUI model of the family gets random weights in ComfyUI's
own layout; the pack loads them as it loads a user's files (its converters to diffusers' modules), puts a random
LoRA on, and writes it with ``save_lora``; ComfyUI loads that file the way ``LoraLoaderModelOnly`` does
(``comfy.sd.load_lora_for_models``) and patches its model. The patched weights must equal the pack's merged
ones (W + alpha / rank * B A) in ComfyUI's layout, key by key — FLUX's fused q/k/v and single-block linear1
slices and its final AdaLN's (shift, scale) order included — and ComfyUI must leave no key of the file unloaded.
Nothing is downloaded; nothing in the ComfyUI checkout is changed. The smoke test (``comfy_smoke.py``) runs it.
Exit status: 0 exact, 1 a mismatch or an unloaded key, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # float32 sums in another order


class Unloaded(logging.Handler):
    """ComfyUI's "lora key not loaded: ..." warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.keys: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "not loaded" in message:
            self.keys.append(message)


def randomize(model) -> dict:
    """ComfyUI builds its layers without initialising them: give every weight a seeded random value."""
    import torch

    generator = torch.Generator().manual_seed(0)
    state = model.diffusion_model.state_dict()
    for value in state.values():
        value.copy_(torch.randn(value.shape, generator=generator) * 0.1)
    return {k: v.clone() for k, v in state.items()}


def comfy_flux(transformer):
    """A stock ComfyUI FLUX model of the pack transformer's size (BFL's layout, as flux1-dev.safetensors holds)."""
    import comfy.supported_models

    c = transformer.config
    unet_config = {"image_model": "flux", "in_channels": c.in_channels, "out_channels": c.out_channels or c.in_channels,
                   "vec_in_dim": c.pooled_projection_dim, "context_in_dim": c.joint_attention_dim,
                   "hidden_size": c.num_attention_heads * c.attention_head_dim, "mlp_ratio": 4.0,
                   "num_heads": c.num_attention_heads, "depth": c.num_layers, "depth_single_blocks": c.num_single_layers,
                   "axes_dim": list(c.axes_dims_rope), "theta": 10000, "patch_size": 1, "qkv_bias": True,
                   "guidance_embed": c.guidance_embeds}
    return comfy.supported_models.Flux(unet_config).get_model({})


def comfy_wan(transformer):
    """A stock ComfyUI Wan model of the pack transformer's size (Wan's own layout, as ComfyUI's files hold)."""
    import comfy.supported_models

    c = transformer.config
    unet_config = {"image_model": "wan2.1", "model_type": "t2v", "patch_size": tuple(c.patch_size),
                   "in_dim": c.in_channels, "out_dim": c.out_channels, "dim": c.num_attention_heads * c.attention_head_dim,
                   "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim, "text_dim": c.text_dim, "num_heads": c.num_attention_heads,
                   "num_layers": c.num_layers, "eps": c.eps}
    return comfy.supported_models.WAN21_T2V(unet_config).get_model({})


def check_family(name: str, backbone, to_comfy, to_diffusers, comfy_of_diffusers, targets, out: Path) -> list[str]:
    """Problems found for one backbone and one target set (empty: ComfyUI applied the LoRA exactly)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import torch
    from safetensors.torch import load_file

    from byg_core.adapters import EMA, Adapters, LoraSpec
    from byg_core.lora_io import expert_paths, save_lora

    models, native = {}, {}
    for expert, transformer in backbone.transformers.items():  # the pack loads ComfyUI's weights
        models[expert] = to_comfy(transformer)
        native[expert] = randomize(models[expert])
        transformer.load_state_dict(to_diffusers(dict(native[expert])), strict=True)
    plain = {e: {k: v.clone() for k, v in t.state_dict().items()} for e, t in backbone.transformers.items()}
    rank, alpha = 4, 8.0  # alpha != rank, so a file read without its .alpha would be off by 2x
    adapters = Adapters(backbone, LoraSpec(rank, alpha, tuple(targets)))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in adapters.layers().values():
            for part in (layer.lora_A[EMA], layer.lora_B[EMA]):
                part.weight.copy_(torch.randn(part.weight.shape, generator=generator) * 0.1)
    path = out / f"{name}.safetensors"
    save_lora(path, backbone, adapters)
    problems = []
    for expert, file in expert_paths(path, list(backbone.transformers)).items():
        merged = dict(plain[expert])
        for key, layer in adapters.layers(expert).items():  # the pack's LoRA: W + alpha / rank * B A
            module = key.split("/", 1)[1]
            delta = layer.lora_B[EMA].weight @ layer.lora_A[EMA].weight * (alpha / rank)
            merged[f"{module}.weight"] = merged[f"{module}.weight"] + delta.detach()
        back = comfy_of_diffusers(plain[expert], native[expert])
        if any(not torch.equal(back[k], v) for k, v in native[expert].items()) or set(back) != set(native[expert]):
            problems.append(f"{name}/{expert}: ComfyUI's layout of the pack's weights is not the weights it loaded")
        expected = comfy_of_diffusers(merged, native[expert])
        device = comfy.model_management.get_torch_device()
        patcher = comfy.model_patcher.ModelPatcher(models[expert], load_device=device, offload_device=device)
        unloaded = Unloaded()
        logging.getLogger().addHandler(unloaded)
        try:
            lora = load_file(file)
            patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0)
            patched.patch_model()
            got = {k: v.detach().float().cpu() for k, v in patched.model.diffusion_model.state_dict().items()}
            patched.unpatch_model()
        finally:
            logging.getLogger().removeHandler(unloaded)
        problems += [f"{name}/{expert}: {message}" for message in unloaded.keys]
        changed = sum(not torch.equal(got[k], native[expert][k]) for k in got)
        worst = max(((got[k] - expected[k]).abs().max().item(), k) for k in expected)
        if worst[0] > TOLERANCE:
            problems.append(f"{name}/{expert}: ComfyUI's patched {worst[1]} is off by {worst[0]:.2e}")
        layers = len(adapters.layers(expert))
        print(f"  {name}/{expert}: {layers} LoRA layers, {len(lora)} tensors in {file.name}; ComfyUI patched "
              f"{changed} weights, largest difference from the pack's merged weights {worst[0]:.1e}")
    return problems


def flux_case():
    from comfy.model_detection import convert_diffusers_mmdit

    from byg_core.checkpoints import bfl_to_diffusers
    from byg_core.toy.model import build_toy_backbone

    backbone = build_toy_backbone(weights=None)

    def comfy_of_diffusers(state, _native):  # ComfyUI's own diffusers -> BFL converter
        return convert_diffusers_mmdit({k: v.clone() for k, v in state.items()}, output_prefix="")  # writes in place

    return backbone, comfy_flux, bfl_to_diffusers, comfy_of_diffusers


def wan_case(variant: str):
    from byg_core.backbones.wan import to_native_key
    from byg_core.checkpoints import wan_to_diffusers
    from byg_core.toy.video import build_toy_wan_backbone

    backbone = build_toy_wan_backbone(variant)

    def comfy_of_diffusers(state, native):
        """Wan's linear layers are one native module each, named as the LoRA file names them (its other keys
        stay the native ones)."""
        out = dict(native)
        for key, value in state.items():
            module, _, leaf = key.rpartition(".")
            if leaf == "weight" and value.dim() == 2:
                out[f"{to_native_key(module)}.weight"] = value
        return out

    return backbone, comfy_wan, wan_to_diffusers, comfy_of_diffusers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfy", default=os.environ.get("BYG_COMFY_DIR"), help="a ComfyUI checkout")
    args = parser.parse_args(argv)
    if not args.comfy or not (Path(args.comfy) / "comfy" / "lora.py").is_file():
        print(f"comfy_lora_check: {args.comfy!r} is not a ComfyUI checkout (no comfy/lora.py)", file=sys.stderr)
        return 2
    sys.path[:0] = [str(Path(args.comfy).resolve()), str(PACK)]
    import comfy.cli_args
    import torch

    comfy.cli_args.args.cpu = True  # tiny models; ComfyUI would otherwise look for a GPU as it imports

    from byg_core.adapters import all_linear_targets

    torch.manual_seed(0)
    problems = []
    with tempfile.TemporaryDirectory(prefix="byg-lora-check-") as out:
        for family, case in (("flux", flux_case), ("wan-ti2v-5b", lambda: wan_case("ti2v-5b")),
                             ("wan-t2v-a14b", lambda: wan_case("t2v-a14b"))):
            for which in ("default", "all-linear"):
                backbone, to_comfy, to_diffusers, comfy_of_diffusers = case()
                targets = backbone.lora_target_modules() if which == "default" else all_linear_targets(backbone)
                problems += check_family(f"{family}-{which}", backbone, to_comfy, to_diffusers, comfy_of_diffusers,
                                         targets, Path(out))
    for problem in problems:
        print(f"FAIL {problem}")
    print(f"comfy_lora_check: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
