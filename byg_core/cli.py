"""``byg``: train and apply ByG editing LoRAs from the command line.

    byg demo --out DIR                 train a LoRA on the toy shapes world and show what it learnt
    byg train CONFIG.toml              train a LoRA from a TOML config (see examples/toy.toml)
    byg edit --lora F --image I ...    edit an image with a trained LoRA
    byg bench --out DIR                measure ByG against baselines on the toy world
    byg toy dataset --out DIR          write toy edit tuples as a dataset folder
    byg toy pretrain                   re-make the shipped toy base model

Several GPUs: ``accelerate launch -m byg_core.cli train CONFIG.toml``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image


class Progress:
    """A one-line progress bar on stderr: step, rate and the latest loss terms."""

    def __init__(self, total: int, label: str = "train", every: int = 1) -> None:
        self.total, self.label, self.every = total, label, max(1, every)
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def __call__(self, step: int, terms: dict[str, float]) -> None:
        if step % self.every and step != self.total:
            return
        rate = step / max(time.perf_counter() - self.start, 1e-9)
        width = 24
        done = int(width * step / max(self.total, 1))
        shown = " ".join(f"{k}={v:.3f}" for k, v in terms.items() if k not in ("step", "identity_step"))
        line = f"{self.label} [{'#' * done}{'.' * (width - done)}] {step}/{self.total} {rate:.2f} it/s {shown}"
        print(("\r" if self.tty else "") + line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
        if self.tty and step == self.total:
            print(file=sys.stderr)


def _parse_override(text: str) -> tuple[str, object]:
    import tomllib

    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--set expects key=value, got {text!r}")
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value  # a bare word is a string


def cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .data import EditDataset, cache
    from .loading import load_backbone
    from .memory import estimate
    from .textcache import DiskTextCache
    from .train import Callbacks, ResumeMismatch, Trainer, existing_run, write_history

    import tomllib

    values = tomllib.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else {}
    for key, value in map(_parse_override, args.set or []):
        table = values
        *parents, leaf = key.split(".")
        for parent in parents:
            table = table.setdefault(parent, {})
        table[leaf] = value
    cfg = TrainConfig.from_dict(values, args.config or "--set")
    if not cfg.data:
        raise SystemExit("no dataset: set data = \"path/to/folder\" in the config or --set data=...")
    backbone = load_backbone(cfg.model, **cfg.model_files)
    dataset = EditDataset.from_folder(cfg.data)
    if cfg.text_cache_dir:
        backbone.use_text_cache(DiskTextCache(cfg.text_cache_dir, cfg.model))
    data = cache(dataset, backbone, tuple(cfg.resolution) if cfg.resolution else None)
    backbone.release_text_encoder()  # every prompt is cached; T5-XXL alone holds ~9.5 GB
    trainer = Trainer(cfg, backbone, data, Callbacks(on_step=Progress(cfg.steps, every=cfg.log_every)))
    print(estimate(trainer).describe(), file=sys.stderr)
    done = existing_run(cfg.output_dir)
    if done is not None and not args.resume:
        raise SystemExit(
            f"{cfg.output_dir} already holds a run (checkpoint at step {done}); nothing was overwritten. "
            "Continue it with --resume, or set another output_dir (--set output_dir=...) to start a new run."
        )
    if args.resume:
        try:
            print(f"resumed at step {trainer.resume()}", file=sys.stderr)
        except ResumeMismatch as error:
            raise ValueError(f"{error}; use the same {error.key} or another output_dir") from error
    result = trainer.run()
    write_history(result.history, Path(cfg.output_dir) / "losses.jsonl")
    for path in result.lora_paths:
        print(f"LoRA: {path}")
    print(f"checkpoint: {result.checkpoint} (step {result.steps_done})")
    return 0


def load_pixels(path: str) -> torch.Tensor:
    """An image (1, 3, H, W) or a folder of video frames (1, 3, F, H, W)."""
    from .data import load_media

    return load_media(Path(path)).unsqueeze(0)


def save_pixels(pixels: torch.Tensor, path: str | Path) -> Path:
    """(1, 3, H, W) in [0, 1] -> PNG; a video (1, 3, F, H, W) -> a folder of PNG frames."""
    path = Path(path)
    if pixels.ndim == 5:
        for i, frame in enumerate(pixels.unbind(2)):
            save_pixels(frame, path / f"{i:05d}.png")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (pixels[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


def cmd_edit(args: argparse.Namespace) -> int:
    from .lora_io import load_lora
    from .loading import load_backbone
    from .sample import edit

    model, files = _edit_model(args)
    backbone = load_backbone(model, **files)
    adapters = load_lora(args.lora, backbone, strength=args.strength)
    x = backbone.encode_pixels(load_pixels(args.image))
    c = backbone.encode_text([args.instruction])
    result = edit(backbone, adapters, x, c, steps=args.steps, seed=args.seed)
    print(save_pixels(backbone.decode_latents(result.latents), args.out))
    return 0


def _edit_model(args: argparse.Namespace) -> tuple[str, dict]:
    """The base model to edit with: --model, else the model (and its files) the LoRA was trained on."""
    from .safefiles import load_checked, meta_json

    if args.model:
        return args.model, {}
    _, metadata = load_checked(args.lora[0], "LoRA file")
    config = meta_json(metadata, "byg.config", args.lora[0])
    return config.get("model", "toy"), config.get("model_files", {})


def cmd_demo(args: argparse.Namespace) -> int:
    from .toy.bench import run_demo

    run_demo(Path(args.out), steps=args.steps, seed=args.seed)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.kind == "speed":
        from .speed import run_speed

        run_speed(args.model, args.size, args.batch, args.device, args.repeats, args.rank, args.storage, Path(args.out))
        return 0
    from .toy.bench import run_bench

    run_bench(Path(args.out), suite=args.suite, steps=args.steps, seed=args.seed)
    return 0


def cmd_toy_pretrain(args: argparse.Namespace) -> int:
    from .toy.model import DEFAULT_TOY_WEIGHTS, PRETRAIN_STEPS, pretrain

    out = Path(args.out or DEFAULT_TOY_WEIGHTS)
    steps = args.steps or PRETRAIN_STEPS
    report = pretrain(steps=steps, seed=args.seed, out_path=out, progress=Progress(steps, "pretrain", 50))
    print(report)
    return 0


def cmd_toy_dataset(args: argparse.Namespace) -> int:
    from .toy.dataset import write_toy_dataset

    print(write_toy_dataset(args.out, n=args.n, seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a ByG LoRA from a TOML config")
    train.add_argument("config", nargs="?", help="TOML file with TrainConfig fields ([objective] table for losses)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. --set steps=500")
    train.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint.safetensors")
    train.set_defaults(run=cmd_train)

    edit = sub.add_parser("edit", help="edit an image with a trained LoRA")
    edit.add_argument("--lora", nargs="+", required=True, help="LoRA file(s); two for a two-expert Wan model")
    edit.add_argument("--image", required=True, help="source image, or a folder of video frames (Wan models)")
    edit.add_argument("--instruction", required=True, help='e.g. "change the circle\'s colour to green"')
    edit.add_argument("--out", required=True, help="the edited PNG (a folder of frames for a video)")
    edit.add_argument("--model", default=None,
                      help="base model (default: the model and files the LoRA was trained on, from its metadata)")
    edit.add_argument("--steps", type=int, default=20, help="ODE steps (paper: 20)")
    edit.add_argument("--seed", type=int, default=0)
    edit.add_argument("--strength", type=float, default=1.0, help="LoRA strength (0 = base model)")
    edit.set_defaults(run=cmd_edit)

    demo = sub.add_parser("demo", help="train and evaluate a ByG LoRA on the toy shapes world (CPU, minutes)")
    demo.add_argument("--out", default="out/demo")
    demo.add_argument("--steps", type=int, default=None,
                      help="training steps, identity warm-up included (default: the demo's own)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=cmd_demo)

    bench = sub.add_parser("bench", help="ByG vs supervised, SDEdit, FlowEdit and identity on the toy world; "
                                         "'byg bench speed': what a ByG step costs against a supervised one")
    bench.add_argument("kind", nargs="?", choices=["quality", "speed"], default="quality")
    bench.add_argument("--out", default="out/bench")
    bench.add_argument("--model", default="toy", help="speed: toy, flux-<width> (e.g. flux-256) or flux1-dev (GPU)")
    bench.add_argument("--size", type=int, default=512, help="speed: image side in px (FLUX models)")
    bench.add_argument("--batch", type=int, default=8, help="speed: tuples per step")
    bench.add_argument("--rank", type=int, default=16, help="speed: LoRA rank")
    bench.add_argument("--storage", choices=["bf16", "fp8"], default="bf16", help="speed: FLUX weight storage")
    bench.add_argument("--repeats", type=int, default=3, help="speed: timed steps per method, interleaved")
    bench.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    bench.add_argument("--suite", choices=["main", "ablations"], default="main")
    bench.add_argument("--steps", type=int, default=None,
                       help="training steps per method, ByG's identity warm-up included (default: the bench's own)")
    bench.add_argument("--seed", type=int, default=0)
    bench.set_defaults(run=cmd_bench)

    toy = sub.add_parser("toy", help="toy-world utilities")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True)
    pretrain = toy_sub.add_parser("pretrain", help="pretrain the toy text-to-image base model")
    pretrain.add_argument("--steps", type=int, default=None,
                          help="default: the shipped base's step count (about 33 min on one core)")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--out", default=None, help="default: the shipped byg_core/toy/assets file")
    pretrain.set_defaults(run=cmd_toy_pretrain)
    dataset = toy_sub.add_parser("dataset", help="write toy edit tuples as a dataset folder (PNG + edits.jsonl)")
    dataset.add_argument("--out", default="out/toy_data")
    dataset.add_argument("--n", type=int, default=256, help="number of tuples")
    dataset.add_argument("--seed", type=int, default=0)
    dataset.set_defaults(run=cmd_toy_dataset)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"byg: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
