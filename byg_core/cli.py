"""``byg``: train and apply ByG editing LoRAs from the command line.

    byg demo --out DIR                 train a LoRA on the toy shapes world and show what it learnt
    byg train CONFIG.toml              train a LoRA from a TOML config (see examples/toy.toml)
    byg edit --lora F --image I ...    edit an image or a video with a trained LoRA
    byg bench --out DIR                measure ByG against baselines on the toy world (clean-edit rate first)
    byg bench combine --runs DIR...    several bench runs (training seeds) as one table, ablations read
    byg toy dataset --out DIR          write toy edit tuples as a dataset folder
    byg toy pretrain                   re-make the shipped toy base model (--base-size: a larger one)

Several GPUs: ``accelerate launch -m byg_core.cli train CONFIG.toml``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence, get_type_hints

import torch

from .backbones.base import PixelShapeError, default_device


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
        return key.strip(), value.strip()  # a bare word is a string ("data = /x": the path, not " /x")


def cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig, read_toml
    from .data import CachedEdits, EditDataset, encode_prompts, encode_sources
    from .loading import NEEDS_FILES, check_size_before_loading, load_backbone
    from .memory import check_weights_fit, estimate, gpu_bytes
    from .textcache import DiskTextCache, cache_key
    from .train import (Callbacks, ResumeMismatch, Trainer, check_launch, check_resumable, processes, warmup_only,
                        write_history)

    values = read_toml(args.config) if args.config else {}
    text_fields = [name for name, hint in get_type_hints(TrainConfig).items() if hint in (str, str | None)]
    for override in args.set or []:
        key, value = _parse_override(override)
        if (key in text_fields or key.startswith("model_files.")) and not isinstance(value, (str, list, dict)):
            value = override.partition("=")[2].strip()  # a folder named 2024 or 2024-06-01: text, as written
        table = values
        *parents, leaf = key.split(".")
        for parent in parents:
            table = table.setdefault(parent, {})
            if not isinstance(table, dict):
                raise ValueError(f"--set {key}: {parent} is a value, not a table like [objective] or [model_files]")
        table[leaf] = value
    cfg = TrainConfig.for_model(values, args.config or "--set")  # on the model's preset, as the node's widgets
    if not cfg.data:
        raise SystemExit("no dataset: set data = \"path/to/folder\" in the config or --set data=...")
    _refuse_to_overwrite_run(cfg, args.resume)  # before the model loads: a refusal costs nothing
    if args.resume:
        try:
            check_resumable(cfg)  # a checkpoint made with other settings, refused before minutes of loading
        except ResumeMismatch as error:
            raise ValueError(f"{error}; use the same {error.key} or another output_dir") from error
    if cfg.resolution:
        try:
            check_size_before_loading(cfg.model, *cfg.resolution, cfg.frames)
        except PixelShapeError as error:
            raise ValueError(f"{args.config or '--set'}: resolution = {cfg.resolution}: {error}; set resolution to a "
                             f"size {cfg.model} takes") from None
    launcher = check_launch(os.environ, cfg.mixed_precision)  # what the launcher asks that byg train does not do
    state = processes()  # under `accelerate launch`: each on its own GPU; the main one writes what they share
    if state.is_main_process:
        for warning in launcher:
            print(f"warning: {warning}", file=sys.stderr)
    if cfg.model in NEEDS_FILES:  # refused before a byte is read when the weights cannot fit the GPU
        check_weights_fit(cfg.model, cfg.model_files.get("storage"), cfg.model_files.get("dtype", "float32"), gpu_bytes())
    _refuse_bad_model_files(cfg.model, cfg.model_files, f"[model_files] in {args.config or 'the run'}, or "
                                "--set model_files.<key>=...")
    dataset = EditDataset.from_folder(cfg.data, frames=cfg.frames, stride=cfg.frame_stride)  # before the model loads
    stop = StopOnCtrlC(Path(cfg.output_dir) / STOP_FILE if state.is_main_process else None)
    stop.remove_stale()  # an earlier run's, now: one made while the model loads stops this run (no folder made before)
    backbone = load_backbone(cfg.model, **cfg.model_files)
    backbone.to(state.device, transformers=False)  # the prompts and sources encoded on this process's GPU
    # every process encodes the sources side by side; a disk text cache is written by the main process while the
    # others wait (processes(): a long wait allowed), then read by them
    latents = encode_sources(dataset, backbone, tuple(cfg.resolution) if cfg.resolution else None, cfg.frames,
                             cfg.frame_stride)
    with state.main_process_first() if cfg.text_cache_dir else contextlib.nullcontext():
        if cfg.text_cache_dir:
            backbone.use_text_cache(DiskTextCache(cfg.text_cache_dir, cache_key(cfg.model, cfg.model_files)))
        encode_prompts(dataset, backbone)
    data = CachedEdits(latents, list(dataset.records))
    backbone.release_text_encoder()  # every prompt is cached; T5-XXL alone holds ~9.5 GB
    progress = Progress(cfg.steps, every=cfg.log_every) if state.is_main_process else None
    trainer = Trainer(cfg, backbone, data, Callbacks(on_step=progress, should_stop=stop.requested))
    if state.is_main_process:
        figures = estimate(trainer)
        print(figures.describe(), file=sys.stderr)
        if warning := figures.warning(gpu_bytes()):
            print(f"warning: {warning}", file=sys.stderr)
        if state.num_processes > 1:  # torchrun kills its workers 30 s after a Ctrl-C, before a Wan step ends
            print(f"to stop after a step with the checkpoint and LoRA written: touch {stop.stop_file}", file=sys.stderr)
        if warning := warmup_only(cfg):
            print(f"warning: {warning}", file=sys.stderr)
    if args.resume:  # its settings were checked before the model loaded (check_resumable)
        step = trainer.resume()
        if state.is_main_process:
            print(f"resumed at step {step}", file=sys.stderr)
    with stop:
        result = trainer.run()
    if state.is_main_process and result.checkpoint is None:  # Ctrl-C before the first step
        print("stopped before the first step: nothing was written", file=sys.stderr)
        return 130
    if state.is_main_process:  # the checkpoint's history and files; another process's losses are its own batches'
        write_history(result.history, Path(cfg.output_dir) / "losses.jsonl")
        for path in result.lora_paths:
            print(f"LoRA: {path}")
        print(f"checkpoint: {result.checkpoint} (step {result.steps_done})")
        if result.stopped_early:
            print(f"stopped at step {result.steps_done} of {cfg.steps}: continue with --resume", file=sys.stderr)
    return 130 if result.stopped_early else 0


STOP_FILE = "STOP"


class StopOnCtrlC:
    """While training: Ctrl-C, or a file ``STOP`` made in the run's folder (``stop_file``, watched by the main process
    alone), stops after the step it falls in, with the checkpoint and a ``_step<N>`` LoRA written (as ComfyUI's Cancel
    does); a second Ctrl-C stops at once. The file is the way on several GPUs, where torchrun kills its workers 30 s
    after a Ctrl-C, before a Wan step ends; it is removed once honoured, and a stale one before the model loads
    (``remove_stale``)."""

    def __init__(self, stop_file: Path | None = None) -> None:
        self.seen, self.previous, self.stop_file = False, None, stop_file

    def requested(self) -> bool:
        if not self.seen and self.stop_file is not None and self.stop_file.exists():
            self.seen = True
            print(f"\nstopping after this step: {self.stop_file} was made (the checkpoint and LoRA are written)",
                  file=sys.stderr)
        return self.seen

    def __enter__(self) -> "StopOnCtrlC":
        import signal

        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        signal.signal(signal.SIGINT, self.previous)
        self._remove_stop_file("")  # honoured (or made after the last step): a --resume must not stop at once

    def remove_stale(self) -> None:
        """Before the model loads: an earlier run's file is removed (said), and the run's folder made, so the file
        can be made there from then on."""
        self._remove_stop_file("an earlier run's")
        if self.stop_file is not None:
            self.stop_file.parent.mkdir(parents=True, exist_ok=True)

    def _remove_stop_file(self, whose: str) -> None:
        if self.stop_file is not None and self.stop_file.exists():
            self.stop_file.unlink(missing_ok=True)
            if whose:
                print(f"removed {whose} {self.stop_file}: this run stops when it is made again", file=sys.stderr)

    def _handle(self, signum, frame) -> None:
        if self.seen:
            raise KeyboardInterrupt
        self.seen = True
        print("\nstopping after this step (the checkpoint and LoRA are written); Ctrl-C again stops at once",
              file=sys.stderr)


def load_pixels(
    path: str | Path, frames: int | None = None, stride: int = 1, size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, float]:
    """An image (1, 3, H, W), or a video file or folder of frames (1, 3, F, H, W), and its frame rate.

    A video's clip follows ``video_io.sample_frames``; a folder of frames or an image has no rate of
    its own and gets ``video_io.DEFAULT_FPS``. ``size=(H, W)`` centre-crops and resizes as training does.
    """
    from .data import VIDEO_SUFFIXES, load_media
    from .video_io import DEFAULT_FPS, read_video

    path = Path(path)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        video, fps = read_video(path, frames, stride, size)
        return video.unsqueeze(0), fps
    return load_media(path, size, frames=frames, stride=stride).unsqueeze(0), DEFAULT_FPS


def cmd_edit(args: argparse.Namespace) -> int:
    from .data import is_video
    from .lora_io import load_lora
    from .loading import check_size_before_loading, load_backbone
    from .sample import distilled_guidance_of, edit, guide_scales_of
    from .video_io import save_pixels

    check_ranges(positive=[("--steps", args.steps), ("--frames", args.frames), ("--stride", args.stride),
                           ("--fps", args.fps)])
    check_device(args.device)
    _check_edit_paths(args)
    model, files = _edit_model(args)
    _check_edit_values(args, model)
    size = tuple(args.size) if args.size else None
    try:
        if is_video(Path(args.image)):  # its size from its first frame, before the clip is decoded at full size
            check_size_before_loading(model, *load_pixels(args.image, 1, 1, size)[0].shape[-2:])
        pixels, fps = load_pixels(args.image, args.frames, args.stride, size)  # a file's faults before the model loads
        if pixels.ndim == 5:
            _check_edit_clip(args, pixels.shape[2])
            fps = args.fps or fps
            print(clip_report(Path(args.image), pixels.shape[2], args.stride, fps))
        frames = pixels.shape[2] if pixels.ndim == 5 else None
        check_size_before_loading(model, pixels.shape[-2], pixels.shape[-1], frames)  # not after minutes of loading
        _refuse_bad_model_files(model, files, "--model-file, or the files the LoRA was trained with")
        backbone = load_backbone(model, **files).to(args.device, transformers=False)  # the text encoder and VAE first
        backbone.check_pixels(pixels.shape)
    except PixelShapeError as error:
        raise ValueError(f"--image {args.image}: {error}; pass --size H W to centre-crop and resize it to a size the "
                         "model takes (training's rule)") from None
    x = backbone.encode_pixels(pixels)
    backbone.encode_text([args.instruction, backbone.negative_prompt])  # cached (the second for Wan2.2's cfg)
    # T5-XXL (9 GB in bf16) leaves the GPU before the transformer comes: on 24 GB, FLUX.1-dev in fp8 fits beside
    # the VAE, not beside both (as training releases it once the prompts are cached)
    backbone.release_text_encoder()
    backbone.to(args.device)
    c = backbone.encode_text([args.instruction])  # from the cache, on the transformer's device now
    adapters = load_lora(args.lora, backbone, strength=args.strength)
    guided = contextlib.ExitStack()
    with _flag_error("--cfg", args.cfg):  # the guidance's refusal alone, not the edit's errors
        guided.enter_context(guide_scales_of(backbone, args.cfg))
    with _flag_error("--guidance", None if args.guidance is None else [args.guidance]):
        guided.enter_context(distilled_guidance_of(backbone, args.guidance))
    with guided:
        result = edit(backbone, adapters, x, c, steps=args.steps or backbone.edit_steps, seed=args.seed)
    print(save_pixels(backbone.decode_latents(result.latents), args.out, fps))
    return 0


def _check_edit_values(args: argparse.Namespace, model: str) -> None:
    """Before the model loads: the instruction, --cfg against the model's experts, --guidance, --strength, --seed."""
    from .loading import check_distilled_guidance_before_loading, check_guidance_before_loading

    args.instruction = args.instruction.strip()  # as the nodes take it
    if not args.instruction:
        raise ValueError("--instruction is blank: write the edit, e.g. \"change the circle's colour to green\"")
    if args.cfg is not None:
        with _flag_error("--cfg", args.cfg):
            check_guidance_before_loading(model, args.cfg)
    if args.guidance is not None:
        if not 0 <= args.guidance < math.inf:
            raise ValueError(f"--guidance must be a finite number >= 0, got {args.guidance}")
        with _flag_error("--guidance", [args.guidance]):
            check_distilled_guidance_before_loading(model)
    if not math.isfinite(args.strength):
        raise ValueError(f"--strength must be a finite number, got {args.strength}")
    if not 0 <= args.seed < 2**64:
        raise ValueError(f"--seed must be in [0, {2**64}), got {args.seed}")


def _flag_error(flag: str, values: Sequence[float] | None):
    """A value's refusal, said with the flag and the values given."""
    from .config import said_in

    return said_in(f"{flag} {' '.join(map(str, values or []))}")


def _check_edit_clip(args: argparse.Namespace, frames: int) -> None:
    """A video edit of fewer than 5 frames (a --stride past the clip) is refused, as a dataset's clip is, unless
    --frames asked for it: it would write a one-frame video."""
    from .data import MIN_CLIP_FRAMES

    if args.frames is None and frames < MIN_CLIP_FRAMES:
        raise ValueError(f"--image {args.image} gives a clip of {frames} frame{'s' * (frames > 1)} at --stride "
                         f"{args.stride}; a video edit takes at least {MIN_CLIP_FRAMES} (4k+1): lower --stride, or "
                         "edit a still image")


def clip_report(path: Path, frames: int, stride: int, fps: float) -> str:
    """What of a video is edited: its first frames at the stride, and that its sound is not carried over."""
    from .video_io import has_audio

    taken = f"frames 1 to {(frames - 1) * stride + 1}" + (f", one in {stride}," if stride > 1 else "")
    sound = "; its audio is not carried over" if path.is_file() and has_audio(path) else ""
    return f"editing {frames} frames of {path} ({taken} at {fps:g} fps; --frames and --stride pick others){sound}"


def _check_edit_paths(args: argparse.Namespace) -> None:
    """Before any model loads: refuse an existing --out, an --out unlike the source, video options on an image."""
    from .data import IMAGE_SUFFIXES, is_video
    from .video_io import WRITE_SUFFIXES, check_frame_count

    source, out = Path(args.image), Path(args.out)
    if not source.exists():
        raise FileNotFoundError(f"--image {source} does not exist")
    if out.resolve() == source.resolve():
        raise ValueError(f"--out {out} is the source itself: the edit would replace the frames it reads; pick another --out")
    if not args.overwrite:
        refuse_to_overwrite([out], "Pick another --out")
    frames_out = is_video(source) and not out.suffix  # a folder of PNG frames, else one file
    if out.exists() and out.is_dir() != frames_out:  # --overwrite cannot make one into the other
        raise ValueError(f"--out {out} is a {'folder' if out.is_dir() else 'file'}, and this edit writes "
                         f"{'a folder of PNG frames' if frames_out else 'a file'} there: pick another --out")
    if is_video(source) and out.suffix.lower() in IMAGE_SUFFIXES:
        raise ValueError(
            f"--image {source} is a video but --out {out} names an image: give a video file "
            f"({' '.join(WRITE_SUFFIXES)}) or a folder for PNG frames"
        )
    if is_video(source) and out.suffix and out.suffix.lower() not in WRITE_SUFFIXES:
        raise ValueError(f"--out {out}: a video is written as {' '.join(WRITE_SUFFIXES)}, or as PNG frames into a "
                         "folder named without a suffix")
    if args.size and (len(args.size) != 2 or min(args.size) < 1):
        raise ValueError(f"--size takes a height and a width in pixels, e.g. --size 480 832; got {args.size}")
    if not is_video(source) and out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"--image {source} is an image but --out {out} names no image file: give a .png")
    if not is_video(source) and (args.frames is not None or args.stride != 1 or args.fps is not None):
        raise ValueError(f"--frames, --stride and --fps are a video's, but --image {source} is an image")
    if args.frames is not None:
        check_frame_count(args.frames, "--frames")


def _edit_model(args: argparse.Namespace) -> tuple[str, dict]:
    """The base model to edit with: the model the LoRA was trained on (--model, where given, must name it); its
    files: the LoRA's (as trained) with --model-file's on top."""
    from .data import is_video
    from .loading import NEEDS_FILES
    from .lora_io import EXPERT_SUFFIX, check_one_file_per_expert, refuse_checkpoint
    from .safefiles import meta_json, read_metadata

    named, metadatas = [], []  # refused before any model loads: a checkpoint for a LoRA, half an A14B pair
    for path in map(Path, args.lora):
        metadata = read_metadata(path) if path.is_file() else None
        if metadata is None:
            raise FileNotFoundError(f"--lora {path} is not a readable safetensors file" if path.is_file() else
                                    f"--lora {path} does not exist")
        refuse_checkpoint(path, metadata)
        named.append((path, meta_json(metadata, "byg.expert", path)))
        metadatas.append(metadata)
    if any(expert == "transformer_2" or path.stem.endswith(tuple(f"_{s}" for s in EXPERT_SUFFIX.values()))
           for path, expert in named):
        check_one_file_per_expert(named, list(EXPERT_SUFFIX))  # a two-expert Wan's pair
    # a file without a family is named when it loads
    family = meta_json(metadatas[0], "byg.family", args.lora[0]) if "byg.family" in metadatas[0] else None
    if family not in (None, "wan") and is_video(Path(args.image)):  # before the model loads, not after
        raise ValueError(f"--image {args.image} is a video, and --lora {args.lora[0]} is a {family} LoRA, which edits "
                         "images: give a Wan2.2 LoRA to edit a video, or a still image")
    config = meta_json(metadatas[0], "byg.config", args.lora[0])
    trained_on = config.get("model", "toy")
    if args.model and args.model != trained_on:  # its shapes are that model's: refused before either loads
        raise ValueError(f"--lora {args.lora[0]} was trained on model {trained_on!r}, not --model {args.model!r}: "
                         f"drop --model (the LoRA's own model is used), or give a LoRA trained on {args.model}")
    model = trained_on
    given = dict(_parse_model_file(text) for text in args.model_file or [])
    files = {**config.get("model_files", {}), **given}
    if model in NEEDS_FILES and not files:
        raise SystemExit(
            f"{args.lora[0]} names no files for its model {model} (a LoRA trained in ComfyUI): "
            "name them as a training TOML's [model_files] does, e.g. --model-file transformer=flux1-dev.safetensors "
            "--model-file vae=ae.safetensors ..., or --model-file folder=<a local diffusers folder>"
        )
    return model, files


def _refuse_to_overwrite_run(cfg, resume: bool) -> None:
    """A fresh run never replaces a run's checkpoint, nor its finished LoRA where the checkpoint was deleted."""
    from .train import existing_lora, existing_run, stopped_loras

    if Path(cfg.output_dir).exists() and not Path(cfg.output_dir).is_dir():
        raise SystemExit(f"output_dir {cfg.output_dir} is a file; set output_dir to a folder (--set output_dir=...)")
    if resume:
        return
    done = existing_run(cfg.output_dir)
    if done is not None:
        raise SystemExit(
            f"{cfg.output_dir} already holds a run ({done}); nothing was overwritten. "
            "Continue it with --resume, or set another output_dir (--set output_dir=...) to start a new run."
        )
    finished = existing_lora(cfg.output_dir, cfg.save_name) + stopped_loras(cfg.output_dir, cfg.save_name)
    if finished:
        raise SystemExit(
            f"{cfg.output_dir} already holds the LoRA {', '.join(p.name for p in finished)} (its checkpoint is gone, "
            "so it cannot be continued); nothing was overwritten. Set another output_dir or save_name "
            "(--set save_name=...) to start a new run."
        )


def _refuse_bad_model_files(model: str, files: dict, given_by: str) -> None:
    """Before the model loads: every file it names is there, and each single file is of its part's kind
    (``given_by``: where the user set them)."""
    from .loading import missing_model_files, wrong_kind_files

    missing = missing_model_files(model, files)
    if missing:
        raise FileNotFoundError("; ".join(f"model file {key} = {path} does not exist" for key, path in missing)
                                + f" ({given_by}): fix the path")
    wrong = wrong_kind_files(model, files)
    if wrong:
        raise ValueError("; ".join(wrong) + f" ({given_by}): give each part its own file")


def _parse_model_file(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise SystemExit(f"--model-file expects key=value (a [model_files] field, e.g. vae=ae.safetensors), got {text!r}")
    return key.strip(), value.strip()


def cmd_demo(args: argparse.Namespace) -> int:
    from .toy.bench import run_demo

    check_ranges(positive=[("--steps", args.steps)])
    out = Path(args.out)
    if not args.overwrite:  # what run_demo writes
        refuse_to_overwrite([out / "metrics.json", out / "byg_toy_lora.safetensors", out / "run"],
                            "Pick another --out (`bash scripts/demo.sh DIR` passes DIR)")
    run_demo(out, steps=args.steps, seed=args.seed)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.kind == "speed":
        from .speed import run_speed

        check_ranges(positive=[("--size", args.size), ("--width", args.width), ("--frames", args.frames),
                               ("--cache-k", args.cache_k), ("--batch", args.batch), ("--rank", args.rank),
                               ("--repeats", args.repeats)])
        check_device(args.device)
        if not args.overwrite:
            refuse_to_overwrite([Path(args.out) / "speed.json"], "Pick another --out")
        with matmul_precision(args.matmul_precision):
            run_speed(args.model, args.size, args.batch, args.device, args.repeats, args.rank, args.storage,
                      Path(args.out), args.width, args.frames, args.cache_k)
        return 0
    if args.kind == "combine":
        from .toy.summary import combine_runs

        if not args.overwrite:  # a summary read, quoted or edited since is never replaced unasked
            refuse_to_overwrite([Path(args.out) / "summary.md", Path(args.out) / "summary.json"], "Pick another --out")
        combine_runs(args.runs or [], Path(args.out), args.against or [])
        return 0
    if args.runs or args.against:
        raise ValueError("--runs and --against are for `byg bench combine`, which reads finished runs; a quality bench "
                         "runs its own")
    from .config import LR_SCHEDULERS
    from .toy.bench import DEMO_SETTINGS, SMOKE_SETTINGS, run_bench
    from .toy.model import base_weights

    check_device(args.device)
    check_ranges(positive=[("--steps", args.steps), ("--lr", args.lr), ("--batch-size", args.batch_size),
                           ("--n-train", args.n_train), ("--edit-steps", args.edit_steps),
                           ("--loraplus-lr-ratio", args.loraplus_lr_ratio), ("--adam-beta2", args.adam_beta2),
                           *[("--baseline-guidance", w) for w in args.baseline_guidance or ()],
                           ("--prior-guidance", args.prior_guidance)],
                 shares=[("--adam-beta2", args.adam_beta2)])
    if args.lr_scheduler is not None and args.lr_scheduler not in LR_SCHEDULERS:
        raise ValueError(f"--lr-scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {args.lr_scheduler!r}")
    base = Path(args.base or base_weights(args.base_size))
    if not base.is_file():
        raise FileNotFoundError(f"{base}: no such toy base; make it with `byg toy pretrain --base-size {args.base_size}`")
    methods = args.methods.split(",") if args.methods else None
    out = Path(args.out)
    if not args.overwrite:  # what run_bench writes: its report and each method's run (LoRA, checkpoint)
        refuse_to_overwrite([out / "results.json", out / "runs"],
                            "Pick another --out (one per training seed: `byg bench combine` reads them together)")
    with matmul_precision(args.matmul_precision):
        run_bench(out, suite=args.suite, steps=args.steps, seed=args.seed, device=args.device,
                  base=base, methods=methods, lr=args.lr, lr_scheduler=args.lr_scheduler, batch_size=args.batch_size,
                  edit_steps=args.edit_steps, loraplus_lr_ratio=args.loraplus_lr_ratio, n_train=args.n_train,
                  lora_targets=args.lora_targets, adam_beta2=args.adam_beta2, baseline_guidance=args.baseline_guidance,
                  prior_guidance=args.prior_guidance, prior_guidance_terms=args.prior_guidance_terms,
                  eval_seed=args.eval_seed,
                  settings=SMOKE_SETTINGS if args.smoke else DEMO_SETTINGS if args.budget == "demo" else None)
    return 0


@contextlib.contextmanager
def matmul_precision(precision: str):
    """torch's float32 matmul precision within the block ("high": TF32 on a GPU that has it; results.json records
    it), as it was after."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def cmd_toy_pretrain(args: argparse.Namespace) -> int:
    from .toy.model import PRETRAIN_LR, PRETRAIN_STEPS, SHIPPED_PRETRAIN_STEPS, base_weights, pretrain

    from .toy.world import check_training_seed

    check_device(args.device)
    check_training_seed(args.seed, "--seed")  # the base's pretraining scenes are Random(--seed)'s
    # Checked before anything is built: --steps -3 had written an untrained base, --batch-size 0 failed in torch.stack
    check_ranges(positive=[("--steps", args.steps), ("--batch-size", args.batch_size), ("--lr", args.lr),
                           ("--t-shift", args.t_shift), ("--distill-guidance", args.distill_guidance),
                           ("--adam-beta2", args.adam_beta2)],
                 shares=[("--p-uncond", args.p_uncond), ("--adam-beta2", args.adam_beta2)])
    out = Path(args.out or base_weights(args.base_size))
    steps = args.steps or (PRETRAIN_STEPS if args.init else SHIPPED_PRETRAIN_STEPS.get(args.base_size, PRETRAIN_STEPS))
    if args.init and Path(args.init).resolve() == out.resolve():
        raise ValueError(f"--init {args.init} and --out are the same file; write the continued base elsewhere (--out)")
    if not args.overwrite:
        refuse_to_overwrite([out], "Write the new base elsewhere with --out FILE")
    lr = PRETRAIN_LR if args.lr is None else args.lr
    report = pretrain(steps=steps, seed=args.seed, batch_size=args.batch_size, lr=lr, out_path=out,
                      size=args.base_size, device=args.device, init=args.init, t_mean=args.t_mean,
                      t_shift=args.t_shift, p_uncond=args.p_uncond, distill_guidance=args.distill_guidance,
                      adam_beta2=args.adam_beta2, progress=Progress(steps, "pretrain", 50))
    print(report)
    return 0


def refuse_to_overwrite(outputs: Iterable[Path], instead: str) -> None:
    """Before a command runs: outputs that already exist (finished work, or a stopped run's) are never replaced
    unless the user passes --overwrite; ``instead`` says what to do."""
    found = [str(path) for path in outputs if Path(path).exists()]
    if found:
        raise SystemExit(f"{', '.join(found)} already exist{'s' if len(found) == 1 else ''}; nothing was overwritten. "
                         f"{instead}, or pass --overwrite to replace {'it' if len(found) == 1 else 'them'}.")


def check_ranges(positive: Iterable[tuple[str, float | None]] = (),
                 not_negative: Iterable[tuple[str, float | None]] = (),
                 shares: Iterable[tuple[str, float | None]] = ()) -> None:
    """Before a command runs: each (flag, value) must be > 0 (``positive``), >= 0 (``not_negative``, where 0 means
    "not" or "the default") or a share in [0, 1) (``shares``); None is a flag not given. The error names the flag."""
    for pairs, ok, needs in ((positive, lambda v: v > 0, "> 0"), (not_negative, lambda v: v >= 0, ">= 0"),
                             (shares, lambda v: 0 <= v < 1, "in [0, 1)")):
        for flag, value in pairs:
            if value is not None and not ok(value):
                raise ValueError(f"{flag} must be {needs}, got {value}")


def check_device(device: str) -> None:
    """Before a command runs: a GPU asked for must be there (the error names the flag)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}, but torch sees no GPU here; use --device cpu")


def _add_base_size(parser: argparse.ArgumentParser, help: str) -> None:
    from .toy.model import BASE_SIZES

    sizes = ", ".join(f"{name} {width} wide x {blocks} + {blocks} blocks" for name, (width, blocks) in BASE_SIZES.items())
    parser.add_argument("--base-size", choices=list(BASE_SIZES), default="small", help=f"{help} ({sizes})")


def cmd_toy_dataset(args: argparse.Namespace) -> int:
    from .toy.dataset import write_toy_dataset
    from .toy.world import check_training_seed

    check_ranges(positive=[("--n", args.n)])
    check_training_seed(args.seed, "--seed")
    print(write_toy_dataset(args.out, n=args.n, seed=args.seed, overwrite=args.overwrite,
                            instead="Pick another --out, or pass --overwrite to write into it"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .objective import PRIOR_GUIDANCE_TERMS

    parser = argparse.ArgumentParser(prog="byg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a ByG LoRA from a TOML config")
    train.add_argument("config", nargs="?", help="TOML file with TrainConfig fields ([objective] table for losses)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. --set steps=500")
    train.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint.safetensors")
    train.set_defaults(run=cmd_train)

    edit = sub.add_parser("edit", help="edit an image or a video with a trained LoRA")
    edit.add_argument("--lora", nargs="+", required=True, help="LoRA file(s); two for a two-expert Wan model")
    edit.add_argument("--image", "--video", dest="image", required=True,
                      help="source image, video file or folder of frames (videos: Wan models)")
    edit.add_argument("--instruction", required=True, help='e.g. "change the circle\'s colour to green"')
    edit.add_argument("--out", required=True,
                      help="the edited PNG; for a video source a video file (.mp4 .mov .mkv .m4v .webm, H.264 or "
                           "VP9 at the source's frame rate) or else a folder of PNG frames")
    edit.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    edit.add_argument("--device", default=default_device(), help="cuda or cpu (default: cuda when there is one)")
    edit.add_argument("--frames", type=int, default=None,
                      help="video sources: frames to edit, 4k+1 (default: the longest 4k+1 count, at most 81)")
    edit.add_argument("--stride", type=int, default=1, help="video sources: take every Nth frame from the first")
    edit.add_argument("--fps", type=float, default=None,
                      help="video sources: the edited video's frame rate (default: a file's own divided by --stride; "
                           "a folder of frames, which has none: 16)")
    edit.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                      help="centre-crop and resize the source to H x W px, as training's resolution does (default: "
                           "its own size, which the model must divide: Wan2.2 TI2V-5B by 32, A14B and FLUX by 16)")
    edit.add_argument("--model", default=None,
                      help="base model: the one the LoRA was trained on (its metadata's, the default; another is "
                           "refused), with the files it was trained on unless --model-file says otherwise")
    edit.add_argument("--model-file", action="append", metavar="KEY=VALUE",
                      help="the base model's files as a training TOML's [model_files] names them, e.g. "
                           "transformer=flux1-dev.safetensors; over the LoRA's own (needed for a LoRA trained in "
                           "ComfyUI, which records none)")
    edit.add_argument("--steps", type=int, default=None, help="ODE steps (default: the model's own: 20 on FLUX.1-dev, as the paper "
                      "(B.1); Wan2.2's sampler's on video (B.2), 50 on TI2V-5B and 40 on A14B)")
    edit.add_argument("--cfg", type=float, nargs="+", default=None, metavar="W",
                      help="classifier-free guidance against the model's negative prompt: one scale, or one per expert "
                           "(A14B: high-noise, low-noise); 1: none (default: the model's own sampler's, Wan2.2 "
                           "TI2V-5B 5 and A14B 4 / 3; FLUX.1-dev takes none)")
    edit.add_argument("--guidance", type=float, default=None, metavar="W",
                      help="FLUX.1-dev's distilled guidance, its guidance input (default: 3.5, as it trains; the "
                           "nodes' guidance widget); Wan2.2 has none (--cfg)")
    edit.add_argument("--seed", type=int, default=0)
    edit.add_argument("--strength", type=float, default=1.0, help="LoRA strength (0 = base model)")
    edit.set_defaults(run=cmd_edit)

    demo = sub.add_parser("demo", help="train and evaluate a ByG LoRA on the toy shapes world (CPU, minutes)")
    demo.add_argument("--out", default="out/demo")
    demo.add_argument("--steps", type=int, default=None,
                      help="training steps, identity warm-up included (default: the demo's own)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true", help="replace a demo already in --out")
    demo.set_defaults(run=cmd_demo)

    bench = sub.add_parser("bench", help="ByG vs supervised, SDEdit, FlowEdit and identity on the toy world; "
                                         "'byg bench speed': what a ByG step costs against a supervised one; "
                                         "'byg bench combine --runs DIR...': finished runs' training seeds as one table")
    bench.add_argument("kind", nargs="?", choices=["quality", "speed", "combine"], default="quality")
    bench.add_argument("--out", default="out/bench")
    bench.add_argument("--runs", nargs="+", default=None, metavar="DIR",
                       help="combine: `byg bench --out` folders that differ in --seed alone (the zero-shot baselines' "
                            "one run counts for every seed); writes OUT/summary.md and OUT/summary.json")
    bench.add_argument("--against", nargs="+", default=None, metavar="DIR",
                       help="combine: runs of another setting (base, lr, length...) on the same held-out set; each "
                            "method of both is compared with them tuple by tuple (--runs minus --against)")
    bench.add_argument("--model", default="toy", help="speed: toy, flux-<width> (e.g. flux-256), flux1-dev (GPU), "
                       "wan-<width> (e.g. wan-256), wan2.2-ti2v-5b or wan2.2-a14b-expert (GPU)")
    bench.add_argument("--size", type=int, default=512, help="speed: image side in px, the height when --width is given")
    bench.add_argument("--width", type=int, default=None, help="speed: width in px (default: --size)")
    bench.add_argument("--frames", type=int, default=17, help="speed: video frames, 4k+1 (Wan models)")
    bench.add_argument("--cache-k", type=int, default=4, help="speed: rollout reuse K of the cached ByG step")
    bench.add_argument("--batch", type=int, default=8, help="speed: tuples per step")
    bench.add_argument("--rank", type=int, default=16, help="speed: LoRA rank")
    bench.add_argument("--storage", choices=["bf16", "fp8"], default="bf16", help="speed: FLUX weight storage")
    bench.add_argument("--repeats", type=int, default=3, help="speed: timed steps per method, interleaved")
    bench.add_argument("--device", default=default_device(),
                       help="cuda or cpu (default: cuda when there is one)")
    bench.add_argument("--matmul-precision", choices=["highest", "high"], default="highest",
                       help="torch's float32 matmul precision: high lets a GPU use its TF32 tensor cores (faster; "
                            "figures not bit-equal to fp32 ones; results.json and speed.json record it)")
    bench.add_argument("--suite", choices=["main", "ablations", "cache"], default="main",
                       help="main: ByG, the supervised reference, baselines; ablations: + the paper's Table 4; cache: ByG "
                            "with the rollout cache at K = 2, 4, 8, at equal steps and at the exact run's wall time")
    bench.add_argument("--budget", choices=["bench", "demo"], default="bench",
                       help="bench: 1200 steps at batch 32, 576 held-out tuples; demo: the demo's 750 steps at batch 8, "
                            "432 held-out tuples")
    bench.add_argument("--steps", type=int, default=None,
                       help="training steps per method, ByG's identity warm-up included (default: the bench's own)")
    bench.add_argument("--seed", type=int, default=0, help="training seed (the held-out tuples stay the same)")
    bench.add_argument("--eval-seed", type=int, default=None,
                       help="draw of the held-out tuples (default: 0, the set every recorded figure and every setting "
                            "was chosen on; another seed gives an untouched set to confirm a figure on); "
                            "results.json records it")
    bench.add_argument("--batch-size", type=int, default=None,
                       help="tuples per training step of every trained method (default: the bench's 32; the speed "
                            "bench's is --batch); results.json records it")
    bench.add_argument("--n-train", type=int, default=None,
                       help="distinct training tuples every trained method draws its batches from (default: the "
                            "bench's 1024; the demo's too); results.json records it")
    bench.add_argument("--lora-targets", choices=["default", "all-linear"], default=None,  # toy.bench.LORA_TARGETS
                       help="the layers every trained method's LoRA wraps: the backbone's defaults (diffusers' Kontext "
                            "set), or every linear layer (default: the bench's default); results.json records it")
    bench.add_argument("--lr", type=float, default=None,
                       help="learning rate of every trained method (default: the bench's 3e-3); results.json records it")
    bench.add_argument("--lr-scheduler", default=None,  # checked in cmd_bench: config's import costs every command 3 s
                       help="its schedule: constant (the bench's) or a decay to 0 over the run, linear or cosine")
    bench.add_argument("--loraplus-lr-ratio", type=float, default=None,
                       help="LoRA+: the B matrices learn at this multiple of the lr, every trained method (default: "
                            "1, plain LoRA); results.json records it")
    bench.add_argument("--adam-beta2", type=float, default=None,
                       help="AdamW's second-moment decay, every trained method (default: 0.999, torch's); results.json "
                            "records it")
    bench.add_argument("--edit-steps", type=int, default=None,
                       help="sampler steps of every method's edits of the held-out tuples (default: the bench's 20); "
                            "results.json records it")
    bench.add_argument("--baseline-guidance", type=float, nargs=2, default=None, metavar=("SRC", "TGT"),
                       help="classifier-free guidance of the zero-shot baselines against the empty prompt: FlowEdit's "
                            "source and target velocities, SDEdit's target (default: 1 1, unguided; FlowEdit's paper "
                            "samples FLUX at 1.5 5.5); needs a base pretrained with --p-uncond, as the shipped medium "
                            "one; results.json records it")
    bench.add_argument("--prior-guidance", type=float, default=None, metavar="W",
                       help="classifier-free guidance of the frozen base's velocities in ByG's prior (section 4.2), "
                            "against the empty prompt (default: 1, unguided); needs a base pretrained with --p-uncond, "
                            "as the shipped medium one; results.json records it")
    bench.add_argument("--prior-guidance-terms", choices=PRIOR_GUIDANCE_TERMS, default=None,
                       help="which of the prior's base velocities --prior-guidance guides: all (default; v_src and "
                            "v_tgt in both terms, as the paper's distilled FLUX.1-dev) or anchor (only the MSE "
                            "anchor's v_tgt: the directional term keeps the unguided reference; not the paper's); "
                            "results.json records it")
    _add_base_size(bench, "the toy base: its default file (byg_core/toy/assets: small and medium ship; large is made "
                          "by `byg toy pretrain --base-size large`)")
    bench.add_argument("--base", default=None, help="a toy base file (overrides --base-size)")
    bench.add_argument("--methods", default=None,
                       help="comma-separated methods of the suite to run (default: all), e.g. identity,byg")
    bench.add_argument("--overwrite", action="store_true",
                       help="replace a bench (results.json, runs/), speed.json or a combine's summary already in --out")
    bench.add_argument("--smoke", action="store_true",
                       help="tiny settings: every code path in seconds, figures meaningless (for scripts' tests)")
    bench.set_defaults(run=cmd_bench)

    toy = sub.add_parser("toy", help="toy-world utilities")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True)
    pretrain = toy_sub.add_parser("pretrain", help="pretrain the toy text-to-image base model")
    from .toy.model import PRETRAIN_STEPS, SHIPPED_MEDIUM_CONTINUATION, SHIPPED_PRETRAIN_STEPS

    then = SHIPPED_MEDIUM_CONTINUATION
    pretrain.add_argument("--steps", type=int, default=None,
                          help=f"default: the shipped base's of --base-size (small {SHIPPED_PRETRAIN_STEPS['small']} "
                               f"steps, about 33-38 min on one core; medium {SHIPPED_PRETRAIN_STEPS['medium']}, about an "
                               f"hour, which the shipped medium base continues {then['steps']} steps with --p-uncond "
                               f"{then['p_uncond']:g} --lr {then['lr']:g}; large {PRETRAIN_STEPS}); with --init "
                               f"{PRETRAIN_STEPS}")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--batch-size", type=int, default=32)
    _add_base_size(pretrain, "the architecture")
    pretrain.add_argument("--device", default=default_device(),
                          help="cuda or cpu (default: cuda when there is one)")
    pretrain.add_argument("--out", default=None,
                          help="default: the size's file in byg_core/toy/assets (the shipped base for small and "
                               "medium: refused unless --overwrite)")
    pretrain.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    pretrain.add_argument("--lr", type=float, default=None,
                          help="peak learning rate, cosine decay to a tenth (default: the shipped base's)")
    pretrain.add_argument("--init", default=None,
                          help="continue training this toy base file (its architecture; --base-size is ignored)")
    pretrain.add_argument("--t-mean", type=float, default=0.0,
                          help="mean of the logit-normal t (> 0: noisier t more often)")
    pretrain.add_argument("--t-shift", type=float, default=1.0, help="resolution shift of t (> 1: noisier t)")
    pretrain.add_argument("--p-uncond", type=float, default=0.0,
                          help="share of captions dropped to the empty prompt (classifier-free guidance needs > 0)")
    pretrain.add_argument("--distill-guidance", type=float, default=1.0, metavar="W",
                          help="guidance distillation: train a copy of --init (a base pretrained with --p-uncond) "
                               "to draw unguided what it draws at classifier-free guidance W")
    pretrain.add_argument("--adam-beta2", type=float, default=0.999,
                          help="AdamW's second-moment decay (default: 0.999, torch's and every shipped base's)")
    pretrain.set_defaults(run=cmd_toy_pretrain)
    dataset = toy_sub.add_parser("dataset", help="write toy edit tuples as a dataset folder (PNG + edits.jsonl)")
    dataset.add_argument("--out", default="out/toy_data")
    dataset.add_argument("--n", type=int, default=256, help="number of tuples")
    dataset.add_argument("--seed", type=int, default=0)
    dataset.add_argument("--overwrite", action="store_true",
                         help="write into an --out folder that holds other files (a repeated run of the same "
                              "dataset needs no flag: it is left as it is)")
    dataset.set_defaults(run=cmd_toy_dataset)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as error:  # OSError: a missing file, a full disk (safefiles names the file)
        print(f"byg: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
