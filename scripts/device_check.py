#!/usr/bin/env python3
"""Device check for FLUX.1-dev on one GPU (issue 14): full-size FLUX.1-dev from the shipped config with random
weights (no weights are downloaded), random cached text and latents, and per size and weight storage:
supervised step time, ByG step time, their ratio, a 20-step edit, and peak memory.

    python scripts/device_check.py                       # 512 and 1024 px, bf16 and fp8 storage, on CUDA
    python scripts/device_check.py --tiny --device cpu   # the same code on a tiny config (what the tests run)

Prints one line per configuration and, with --out DIR, writes DIR/device_check.json. Meant to finish in under
8 minutes on one H100/H200-class GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from byg_core.adapters import EMA, Adapters, LoraSpec  # noqa: E402
from byg_core.backbones.base import TextCond  # noqa: E402
from byg_core.backbones.flux import FluxBackbone  # noqa: E402
from byg_core.config import TrainConfig  # noqa: E402
from byg_core.data import CachedEdits, EditRecord  # noqa: E402
from byg_core.loading import shipped_config, store_in_fp8  # noqa: E402
from byg_core.sample import edit  # noqa: E402
from byg_core.train import Trainer  # noqa: E402

TINY = dict(num_layers=1, num_single_layers=1, attention_head_dim=128, num_attention_heads=1, joint_attention_dim=64,
            pooled_projection_dim=32)
PROMPTS = ("change the car's colour to red", "change the car's colour to blue")


class RandomText:
    """Stands for T5 + CLIP: a fixed random conditioning per prompt, of FLUX.1's shapes."""

    def __init__(self, tokens: int, width: int, pooled: int, device, dtype) -> None:
        self.shape, self.device, self.dtype = (tokens, width, pooled), device, dtype

    def __call__(self, prompts):
        tokens, width, pooled = self.shape
        conds = []
        for prompt in prompts:
            g = torch.Generator().manual_seed(sum(map(ord, prompt)))
            conds.append(TextCond(torch.randn(1, tokens, width, generator=g).to(self.device, self.dtype),
                                  torch.randn(1, pooled, generator=g).to(self.device, self.dtype)))
        return TextCond.cat(conds)


class LatentsOnly:
    """No VAE: the check trains on latents directly (a VAE's cost is outside the step)."""

    spatial_factor, temporal_factor = 8, 1

    def encode(self, pixels):
        return pixels

    def decode(self, latents):
        return latents


def build(tiny: bool, device: str, storage: str) -> FluxBackbone:
    config = {k: v for k, v in shipped_config("flux1-dev", "transformer").items() if not k.startswith("_")}
    config |= TINY if tiny else {}
    from diffusers import FluxTransformer2DModel

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # random weights made on the device: a 12B model inits in seconds there
        model = FluxTransformer2DModel(**config).to(dtype).requires_grad_(False)
    if storage == "fp8":
        store_in_fp8(model, "float8_e4m3fn", dtype)
    text = RandomText(64 if tiny else 512, config["joint_attention_dim"], config["pooled_projection_dim"], device, dtype)
    return FluxBackbone(model, text, LatentsOnly(), guidance=3.5,
                        scheduler_config=shipped_config("flux1-dev", "scheduler"))


def seconds_per_step(trainer: Trainer, steps: int, device: str) -> tuple[float, float | None]:
    trainer.train_step()  # warm-up: kernels, allocator
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    if device == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return (time.perf_counter() - start) / steps, peak


def check(size: int, storage: str, args) -> dict:
    backbone = build(args.tiny, args.device, storage)
    latent = size // 8
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, latent, latent, generator=g).to(args.device, backbone.dtype)
    records = [EditRecord(Path(f"{i}.png"), "a car", PROMPTS[i], "a red car", PROMPTS[1 - i]) for i in range(2)]
    data = CachedEdits(x=x, records=records, y=x.flip(-1))
    row = {"size": size, "storage": storage}
    for method in ("supervised", "byg"):
        cfg = TrainConfig(model="flux1-dev", output_dir=str(args.out / "runs" / f"{size}_{storage}_{method}"),
                          method=method, steps=10**6, batch_size=1, rank=args.rank, warmup_identity_steps=0,
                          identity_prob=0.0, gradient_checkpointing=True, checkpoint_every=0,
                          mixed_precision="bf16" if args.device == "cuda" else "no")
        trainer = Trainer(cfg, backbone, data)
        row[f"{method}_s"], row[f"{method}_peak_gib"] = seconds_per_step(trainer, args.steps, args.device)
        del trainer
    row["ratio"] = row["byg_s"] / row["supervised_s"]
    adapters = Adapters(backbone, LoraSpec(args.rank, float(args.rank), tuple(backbone.lora_target_modules())))
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    edit(backbone, adapters, x[:1], backbone.encode_text([PROMPTS[0]]), steps=20, role=EMA)
    if args.device == "cuda":
        torch.cuda.synchronize()
    row["edit_20_steps_s"] = time.perf_counter() - start
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="image sides in px (default 512 1024)")
    parser.add_argument("--storage", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny FLUX config (CPU tests)")
    parser.add_argument("--out", type=Path, default=Path("out/device_check"))
    args = parser.parse_args(argv)
    sizes = args.sizes or ([64] if args.tiny else [512, 1024])
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}), "
          f"FLUX.1-dev {'tiny' if args.tiny else 'full size'}, random weights, batch 1, rank {args.rank}, "
          "gradient checkpointing on")
    rows = []
    for size in sizes:
        for storage in args.storage:
            row = check(size, storage, args)
            rows.append(row)
            peak = "" if row["byg_peak_gib"] is None else (f"; peak supervised {row['supervised_peak_gib']:.1f} GiB, "
                                                            f"ByG {row['byg_peak_gib']:.1f} GiB")
            print(f"{size}px {storage}: supervised {row['supervised_s']:.3f} s/step, ByG {row['byg_s']:.3f} s/step, "
                  f"ratio {row['ratio']:.2f}x; edit 20 steps {row['edit_20_steps_s']:.2f} s{peak}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device_check.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
