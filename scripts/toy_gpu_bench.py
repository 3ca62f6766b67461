"""Pretrain a larger toy base on one GPU and run the whole toy bench on it (issue 17, part 2).

    .venv/bin/python scripts/toy_gpu_bench.py [--out out/gpu_bench] [--base-size large] [--pretrain-steps N]
        [--pretrain-batch B] [--distill-steps N] [--seeds 0 1 2] [--jobs J] [--steps N] [--batch-size B]
        [--edit-steps N] [--n-train N] [--lora-targets T] [--lr LR] [--lr-scheduler cosine] [--reference-lr LR]
        [--reference-lr-scheduler S] [--reference-steps N [N ...]] [--reference-edit-steps N] [--reference-n-train N]
        [--reference-lora-targets T] [--prior-guidance W] [--prior-guidance-terms all|anchor]
        [--device cuda] [--time-limit SECONDS] [--overwrite]
    .venv/bin/python scripts/toy_gpu_bench.py --tiny --out /tmp/gpu_bench_tiny   # every step, < 1 min on a CPU
    bash scripts/device_toy_gpu_bench.sh run [FLAGS]   # on the device tool's GPU machine (that script says how)

It runs from a checkout as it is (the pack need not be installed: the GPU machine's python3 has not got it).
Pretraining and distillation print their step, seconds and loss ten times each, so the log shows the device's speed
even if the run is stopped; with --time-limit the base's pretraining stops by 0.4 of it and the distillation by 0.5
(PRETRAIN_SHARE, DISTILL_SHARE), the base saved as trained so far ("N of M steps ... stopped by the time limit" in the
log and planned_steps in summary.json: its learning rate not decayed, so the next run's --pretrain-steps should be
about N), so the bench jobs always keep half the time and a summary is written.

What it does, in order, printing the wall time of each phase (sized for about 8 minutes on one H100/H200;
not yet run on one, so the first run's timings are what to size the next by; the distillation, the three
runs on the distilled base, the three of ByG with the guided prior and the six of the reference at its own schedule
are about two fifths of it by estimate, and --distill-steps 0, --prior-guidance 1 and --reference-lr 0 leave them
out):

1. pretrains the toy base of --base-size (``byg toy pretrain``'s ``model.pretrain``, 10% of captions dropped:
   --p-uncond) on --device into OUT/toy_base_<size>.safetensors and prints its sample accuracy
   (``model.evaluate_base``: the base draws captions of fresh scenes and the drawings are read back; shape kind,
   both colours, all three), unguided and with classifier-free guidance --guidance (on the CPU the small base,
   continued 5000 steps with 10% dropped captions, read shape kinds right 0.81 unguided, 0.94-0.95 at guidance
   4-8, 0.953 at 6: docs/toy_bench.md); then, unless --distill-steps 0, distils it at --guidance (``byg toy
   pretrain --distill-guidance``: a copy regresses the base's guided velocity) into
   OUT/toy_base_<size>_distilled.safetensors and prints that base's samples' accuracy unguided (the small base
   distilled at 6 on the CPU: 0.951, as its teacher guided);
2. runs the ablation suite on that base with the bench's settings (``BENCH_SETTINGS``: 1200 steps at batch
   32, 576 balanced held-out tuples x 3 noise seeds) for each training seed: one ``byg bench`` process per
   trained method (ByG, the supervised reference, the six Table-4 rows) and seed, --jobs at a time on the one
   device (the toy model is far too small to fill a GPU, so separate processes overlap), and the zero-shot
   baselines (identity, SDEdit, FlowEdit) once: they train nothing and the held-out set is the same for every
   training seed; SDEdit and FlowEdit once more at classifier-free guidance, --baseline-guidance (source 1.5,
   target 5.5: FlowEdit's paper's FLUX setting; the base has an unconditional velocity from its dropped captions);
   ByG once more per training seed with its prior's base velocities guided at --prior-guidance (``byg bench
   --prior-guidance``; 4 by default, the velocities --prior-guidance-terms names: all by default, as the paper's
   distilled FLUX.1-dev; 1: not run): on the CPU the medium base's ByG at 4 made 0.631 clean edits over two seeds
   against 0.370 unguided, and lost its shape-kind edits (docs/toy_bench.md);
   the supervised reference on the distilled base for each training seed (on the CPU the
   small base's distilled copy lowered the reference's clean edits, 0.556 -> 0.391 at seed 0); and, unless
   --reference-lr 0, the supervised reference on the base at its own best schedule for each training seed
   (--reference-lr 1e-2 decayed by --reference-lr-scheduler cosine: on the CPU +0.074 clean over three seeds on the
   small base, +0.068 over two seeds on the medium, to 0.81, where it lowers ByG; the issue's >= 0.9 is asked of the reference;
   on the medium base it passes it at three times the samples, --steps 3600: 0.908 over three seeds; --batch-size
   96 gives those samples in the bench's 1200 steps: with --reference-lr 2e-2, 0.887 on the medium base over three
   seeds, 0.910 edited in 3 steps);
   by default at two lengths, --reference-steps: the suite's steps (OUT/tuned/) and three times them
   (OUT/tuned_<N>/; both started first, the longest first), so one run says whether the base's reference
   passes 0.9 at the bench's budget and at three times its samples; and its edits in 3 sampler steps
   (--reference-edit-steps; 0: the suite's 20), chosen on a validation draw on the CPU, where they made the
   medium base's reference's edits cleaner at every length (+0.047 clean at the bench's budget over three seeds,
   to 0.856; 0.924 at 3600 steps over three); and from 38400 distinct training tuples (--reference-n-train; the
   bench's 1024 are seen 37 times each in its 1200 x 32 samples: on the CPU a distinct tuple per sample gave the
   medium base's reference +0.022 clean over three seeds, to 0.866); and with its LoRA on every linear layer
   (--reference-lora-targets all-linear; on the CPU +0.020 clean over three seeds on those tuples, to 0.886);
3. prints and writes OUT/summary.md and OUT/summary.json: per method, each rate's mean over the training
   seeds with a 95% Wilson interval over the held-out tuples and the seeds' range, each method's change
   against ByG paired over the same tuples with its interval, then each ablation's change beside the paper's
   Table-4 direction. Every run's own results.json, results.md and
   grid.png are under OUT/baselines/ and OUT/seed<S>/<method>/, its log beside them (log.txt). The summary is
   ``byg bench combine``'s (``byg_core.toy.summary``): runs made elsewhere are read the same way. The
   reference on the distilled base is summarised apart (OUT/distilled/seed<S>/supervised; ``distilled`` in
   summary.json): runs on two bases are not averaged together; so are the guided baselines (OUT/guided/baselines,
   ``guided_baselines``), and the reference at its own schedule
   (OUT/tuned/seed<S>/supervised, ``tuned_reference``; at other lengths OUT/tuned_<N>/seed<S>/supervised,
   ``tuned_reference["methods_at_steps"]["<N>"]``). Each is also paired tuple by tuple (``byg bench combine
   --against``): the distilled base's reference against the suite's reference on the base
   (``distilled_against_base``), ByG with the guided prior against the suite's ByG (OUT/prior_guided/seed<S>/byg,
   ``prior_guided``: its ``methods`` and ``against_byg``), and the reference at each longer length against it at the
   suite's steps (``tuned_reference["changes_at_steps"]["<N>"]``).

--time-limit SECONDS bounds the whole run's wall time (the device tool stops a command at 10 minutes and lends 15
minutes in all): past it no phase (the distillation) or bench job starts, and the jobs still running are stopped.
The jobs start in this order: the reference at its own schedule (the longest first), the baselines, the suite
seed by seed, ByG with the guided prior, the reference on the distilled base; so what a limit cuts is the last of
these. The summary is written either way: it covers the jobs that finished and lists the others (``unfinished`` in
summary.json, each job's status and wall time under ``jobs``); the exit status is 1 when a job failed or did not
finish (a failed job's last log lines are printed as it ends; the others go on).

--tiny runs the same steps with a few pretraining steps, ``byg bench --smoke`` and three trained methods on
two seeds: a check that the script works, its figures mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

# run from a checkout as it is, as on the GPU machine (its image's python3, the pack not installed): the pack from
# here, for this process and every bench process it starts (run_jobs)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from byg_core.cli import check_device, check_ranges, matmul_precision, refuse_to_overwrite  # noqa: E402
from byg_core.config import LR_SCHEDULERS  # noqa: E402
from byg_core.objective import PRIOR_GUIDANCE_TERMS  # noqa: E402
from byg_core.safefiles import atomic_path, write_text_atomic  # noqa: E402
from byg_core.toy.bench import (BASELINES, BENCH_SETTINGS, GUIDED_BASELINES, LORA_TARGETS, SMOKE_SETTINGS,  # noqa: E402
                                 ToySettings, guidance_asks, suite_methods)
from byg_core.toy.model import BASE_SIZES, build_toy_backbone, evaluate_base, pretrain  # noqa: E402
from byg_core.toy.world import check_training_seed  # noqa: E402
from byg_core.toy.summary import against, against_table, collect, family_table, summarise, summary_text, table  # noqa: E402

TINY_METHODS = ("byg", "supervised", "no_cycle")
REFERENCE_LORAPLUS = 1.0  # LoRA+ 4 lifted the small base's reference, not the medium's (docs/toy_bench.md)
# a distinct tuple for every sample of the bench's 1200 x 32: +0.022 clean for the medium base's reference over three
# seeds against the bench's 1024 (docs/toy_bench.md)
REFERENCE_N_TRAIN = 38400
REFERENCE_LORA_TARGETS = "all-linear"  # on the CPU: +0.020 clean edits for the medium base's reference, three seeds
REFERENCE_ADAM_BETA2 = 0.95  # on the CPU, on top of every linear layer: 0.914 clean edits (+0.028), three seeds
# With --time-limit, the base's pretraining stops by this share of it and its distillation by the next: a device of
# unknown speed still leaves the bench jobs half the time and the log its timings (a base stopped early is undecayed)
PRETRAIN_SHARE, DISTILL_SHARE = 0.4, 0.5
DONE, FAILED, STOPPED, NOT_STARTED = "done", "failed", "stopped at the time limit", "not started: past the time limit"
PENDING, SKIPPED = "running or waiting (an interim summary)", "not run: the time limit skipped the distillation"
PART_BYTES = 15 * 2**20  # the device tool brings back files of up to 16 MiB, eight in all
RUN_FILES = ("results.json", "results.md", "log.txt", "grid.png")  # what results.tgz keeps of a run (no LoRAs)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("out/gpu_bench"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--base-size", choices=list(BASE_SIZES), default="large")
    p.add_argument("--pretrain-steps", type=int, default=4000)
    p.add_argument("--pretrain-batch", type=int, default=128)
    p.add_argument("--base-eval", type=int, default=288, help="captions the base draws for its sample accuracy")
    p.add_argument("--p-uncond", type=float, default=0.1,
                   help="captions dropped in pretraining, so the base can also be read with guidance")
    p.add_argument("--guidance", type=float, default=6.0,
                   help="classifier-free guidance scale of the second sample-accuracy reading (1: none)")
    p.add_argument("--baseline-guidance", type=float, nargs=2, default=[1.5, 5.5], metavar=("SRC", "TGT"),
                   help="SDEdit and FlowEdit also run at this classifier-free guidance, summarised apart (1 1: not; "
                        "FlowEdit's paper's FLUX setting by default; needs --p-uncond > 0)")
    p.add_argument("--prior-guidance", type=float, default=4.0, metavar="W",
                   help="ByG also runs with its prior's base velocities at this classifier-free guidance, summarised "
                        "apart and paired against the suite's ByG (1: not; on the CPU 4 lifted the medium base's ByG "
                        "from 0.370 clean edits to 0.631; needs --p-uncond > 0)")
    p.add_argument("--prior-guidance-terms", choices=PRIOR_GUIDANCE_TERMS, default="all",
                   help="which of the prior's velocities --prior-guidance guides (byg bench --prior-guidance-terms)")
    p.add_argument("--distill-steps", type=int, default=2000,
                   help="guidance-distillation steps at --guidance after pretraining (0: none)")
    p.add_argument("--distill-lr", type=float, default=5e-4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--jobs", type=int, default=14, help="bench processes at a time")
    p.add_argument("--steps", type=int, default=None, help="training steps per method (default: the bench's)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="tuples per training step of every trained method (default: the bench's 32)")
    p.add_argument("--n-train", type=int, default=None,
                   help="distinct training tuples of every trained method (default: the bench's 1024)")
    p.add_argument("--lora-targets", choices=LORA_TARGETS, default=None,
                   help="the layers every trained method's LoRA wraps (default: the bench's, the backbone's defaults)")
    p.add_argument("--edit-steps", type=int, default=None,
                   help="sampler steps of every method's held-out edits (default: the bench's 20)")
    p.add_argument("--lr", type=float, default=None, help="learning rate of every trained method (default: the bench's)")
    p.add_argument("--lr-scheduler", choices=LR_SCHEDULERS, default=None,
                   help="its schedule (default: the bench's constant one)")
    p.add_argument("--reference-lr", type=float, default=1e-2,
                   help="the supervised reference also runs at this learning rate, summarised apart (0: not)")
    p.add_argument("--reference-lr-scheduler", choices=LR_SCHEDULERS, default="cosine",
                   help="and this schedule (the reference's best at the bench's budget on the CPU)")
    p.add_argument("--loraplus-lr-ratio", type=float, default=None,
                   help="LoRA+ for every trained method: the B matrices at this multiple of the lr (default: the bench's "
                        "1, plain LoRA)")
    p.add_argument("--reference-loraplus-lr-ratio", type=float, default=REFERENCE_LORAPLUS,
                   help="and the reference at its own schedule this one (1: plain LoRA)")
    p.add_argument("--reference-n-train", type=int, default=REFERENCE_N_TRAIN,
                   help="and its distinct training tuples (on the CPU a fresh tuple per sample lifted the medium "
                        "base's reference)")
    p.add_argument("--reference-lora-targets", choices=LORA_TARGETS, default=REFERENCE_LORA_TARGETS,
                   help="and the layers its LoRA wraps (on the CPU every linear layer lifted the medium base's "
                        "reference)")
    p.add_argument("--reference-adam-beta2", type=float, default=REFERENCE_ADAM_BETA2,
                   help="and AdamW's second-moment decay (on the CPU 0.95 lifted the medium base's reference past 0.9 at "
                        "the bench's budget, against torch's 0.999)")
    p.add_argument("--reference-edit-steps", type=int, default=3,
                   help="and its edits' sampler steps (0: the suite's; on the CPU 3 steps, chosen on a validation draw, "
                        "made the medium base's reference's edits cleaner than the bench's 20)")
    p.add_argument("--reference-steps", type=int, nargs="+", default=None,
                   help="and these training lengths (default: the suite's steps and three times them; on the CPU the "
                        "medium base's reference passed 0.9 at three times the bench's)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="wall time for the whole run: past it no phase or bench job starts and running jobs are "
                        "stopped; the summary covers the jobs that finished and names the rest (default: none)")
    p.add_argument("--results-dir", type=Path, default=None,
                   help="a folder that gets, as the run goes, what a lent machine must bring back: the base in 15 MiB "
                        "parts (cat them together) once pretrained, and after every job summary.md, summary.json and "
                        "results.tgz (each finished run's results.json, results.md, log.txt, grid.png)")
    p.add_argument("--matmul-precision", choices=["highest", "high"], default=None,
                   help="torch's float32 matmul precision for the pretraining and every bench process (default: high, "
                        "TF32, on cuda; highest elsewhere)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the base, the benches and the summary an earlier run left in --out")
    p.add_argument("--tiny", action="store_true", help="a check that every step runs (< 1 min on a CPU)")
    args = p.parse_args(argv)
    # Checked here, before the base's pretraining, not by the first bench job minutes later.
    try:
        check_ranges(positive=[("--pretrain-steps", args.pretrain_steps), ("--pretrain-batch", args.pretrain_batch),
                               ("--base-eval", args.base_eval), ("--jobs", args.jobs), ("--steps", args.steps),
                               ("--batch-size", args.batch_size), ("--n-train", args.n_train),
                               ("--reference-n-train", args.reference_n_train),
                               ("--edit-steps", args.edit_steps), ("--lr", args.lr),
                               ("--guidance", args.guidance), ("--distill-lr", args.distill_lr),
                               ("--time-limit", args.time_limit), ("--loraplus-lr-ratio", args.loraplus_lr_ratio),
                               ("--prior-guidance", args.prior_guidance),
                               ("--reference-loraplus-lr-ratio", args.reference_loraplus_lr_ratio),
                               ("--reference-adam-beta2", args.reference_adam_beta2),
                               *(("--reference-steps", steps) for steps in args.reference_steps or []),
                               *(("--baseline-guidance", w) for w in args.baseline_guidance)],
                     not_negative=[("--distill-steps", args.distill_steps), ("--reference-lr", args.reference_lr),
                                   ("--reference-edit-steps", args.reference_edit_steps),
                                   *(("--seeds", seed) for seed in args.seeds)],
                     shares=[("--p-uncond", args.p_uncond), ("--reference-adam-beta2", args.reference_adam_beta2)])
        check_device(args.device)
        for seed in args.seeds:  # the bench's own refusal, before the base's pretraining
            check_training_seed(seed, "--seeds")
        asked = guidance(args)
        guided = guidance_asks(asked, suite_methods(asked, "ablations"))
        if guided and not args.p_uncond:
            raise ValueError(f"{' and '.join(ask for ask, _ in guided)} need{'s' if len(guided) == 1 else ''} a base "
                             "with an unconditional velocity, but --p-uncond is 0: pass "
                             + " and ".join(leave for _, leave in guided))
        # the objective's own check ("anchor" at 1 guides nothing), here before the base's pretraining
        asked.objective().validate()
    except ValueError as error:
        p.error(str(error))
    if args.tiny:
        args.base_size, args.pretrain_steps, args.pretrain_batch, args.base_eval = "medium", 3, 4, 6
        args.distill_steps = min(args.distill_steps, 2)
        args.seeds, args.jobs = [0, 1], 2
        args.reference_n_train = min(args.reference_n_train, 32)
    settings = SMOKE_SETTINGS if args.tiny else BENCH_SETTINGS
    args.matmul_precision = args.matmul_precision or ("high" if args.device.startswith("cuda") else "highest")
    args.suite_steps = args.steps or settings.steps
    args.reference_edit_steps = args.reference_edit_steps or args.edit_steps or settings.edit_steps
    args.reference_steps = (list(dict.fromkeys(args.reference_steps or [args.suite_steps, 3 * args.suite_steps]))
                            if args.reference_lr else [])
    return args


def sample_accuracy(args: argparse.Namespace, path: Path, guidance: float) -> dict:
    """The base of ``path`` draws captions of fresh scenes at ``guidance``; the drawings read back."""
    backbone = build_toy_backbone(path)
    backbone.transformer.to(args.device)
    return evaluate_base(backbone, n=args.base_eval, seed=1, steps=2 if args.tiny else 20, guidance=guidance)


def base_files(args: argparse.Namespace) -> tuple[Path, Path]:
    """Where the base and its guidance-distilled copy are written."""
    return (args.out / f"toy_base_{args.base_size}.safetensors",
            args.out / f"toy_base_{args.base_size}_distilled.safetensors")


def progress_printer(name: str, steps: int):
    """Prints a pretraining's step, seconds and loss ten times over its ``steps``: the log shows the device's speed
    even if the run is stopped before its summary."""
    start, every = time.perf_counter(), max(1, steps // 10)

    def progress(step: int, terms: dict) -> None:
        if step % every == 0 or step == steps:
            print(f"{name} {step}/{steps}: {time.perf_counter() - start:.0f} s, loss {terms['loss_avg']:.4f}", flush=True)

    return progress


def make_base(args: argparse.Namespace, start: float) -> dict:
    """Pretrain the base, its sample accuracy unguided and guided; then its guidance-distilled copy's, unguided.
    With a time limit (counted from ``start``), pretraining stops by PRETRAIN_SHARE of it, the distillation by
    DISTILL_SHARE (and starts only before that)."""
    path, distilled = base_files(args)
    stop_at = {share: None if args.time_limit is None else start + share * args.time_limit
               for share in (PRETRAIN_SHARE, DISTILL_SHARE)}
    report = pretrain(steps=args.pretrain_steps, batch_size=args.pretrain_batch, out_path=path,
                      size=args.base_size, device=args.device, p_uncond=args.p_uncond,
                      progress=progress_printer("pretrain", args.pretrain_steps), stop_at=stop_at[PRETRAIN_SHARE])
    if args.results_dir:  # before anything else can fail: the base is what the run is for
        print(f"base in parts: {', '.join(p.name for p in export_parts(path, args.results_dir))}", flush=True)
    accuracy = {g: sample_accuracy(args, path, g) for g in dict.fromkeys([1.0, args.guidance])}
    base = {"pretrain": report, "sample_accuracy": accuracy[1.0],
            "sample_accuracy_guided": {"guidance": args.guidance, **accuracy[args.guidance]}}
    if args.distill_steps and (stop_at[DISTILL_SHARE] is None or time.perf_counter() < stop_at[DISTILL_SHARE]):
        base["distilled"] = {
            "path": str(distilled),
            "pretrain": pretrain(steps=args.distill_steps, batch_size=args.pretrain_batch, lr=args.distill_lr,
                                 out_path=distilled, device=args.device, init=path, distill_guidance=args.guidance,
                                 progress=progress_printer("distill", args.distill_steps),
                                 stop_at=stop_at[DISTILL_SHARE]),
            "sample_accuracy": sample_accuracy(args, distilled, 1.0)}
    return base


def export_parts(path: Path, folder: Path) -> list[Path]:
    """``path`` as PART_BYTES pieces in ``folder`` (<name>.part0, .part1, ...: ``cat <name>.part* > <name>`` joins
    them), each written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    data, parts = path.read_bytes(), []
    for index, offset in enumerate(range(0, len(data), PART_BYTES)):
        with atomic_path(folder / f"{path.name}.part{index}") as partial:
            partial.write_bytes(data[offset:offset + PART_BYTES])
        parts.append(folder / f"{path.name}.part{index}")
    return parts


def export_runs(args: argparse.Namespace, folders: list[Path]) -> None:
    """results.tgz into --results-dir: each finished run's RUN_FILES, named as under --out."""
    with atomic_path(args.results_dir / "results.tgz") as partial:
        with tarfile.open(partial, "w:gz") as archive:
            for folder in folders:
                for name in RUN_FILES:
                    if (folder / name).is_file():
                        archive.add(folder / name, arcname=str((folder / name).relative_to(args.out)))


def guidance(args: argparse.Namespace) -> ToySettings:
    """The bench's settings with the guidance flags: their ``guides_baselines`` and ``guides_prior`` say whether the
    baselines and ByG also run guided (--baseline-guidance other than 1 1, --prior-guidance other than 1)."""
    src, tgt = args.baseline_guidance
    return dataclasses.replace(BENCH_SETTINGS, baseline_src_guidance=src, baseline_tgt_guidance=tgt,
                               prior_guidance=args.prior_guidance, prior_guidance_terms=args.prior_guidance_terms)


def tuned_part(args: argparse.Namespace, steps: int) -> str:
    """The folder of the reference at its own schedule and ``steps`` steps: tuned at the suite's steps."""
    return "tuned" if steps == args.suite_steps else f"tuned_{steps}"


def bench_jobs(args: argparse.Namespace, base: Path) -> dict[str, tuple[list[str], Path]]:
    """name -> (command, output folder), in the order they start: the supervised reference at its own schedule once
    per length and training seed (the longest first), the baselines once (and guided once), each trained method once per training
    seed, ByG with the guided prior once per training seed, then the reference on the distilled base once per training
    seed."""
    trained = TINY_METHODS if args.tiny else [m for m in suite_methods(BENCH_SETTINGS, "ablations") if m not in BASELINES]

    def bench(on: Path, lr: float | None = args.lr, lr_scheduler: str | None = args.lr_scheduler,
              steps: int | None = args.steps, edit_steps: int | None = args.edit_steps,
              loraplus: float | None = args.loraplus_lr_ratio, n_train: int | None = args.n_train,
              lora_targets: str | None = args.lora_targets, adam_beta2: float | None = None) -> list[str]:
        return [sys.executable, "-m", "byg_core.cli", "bench", "--suite", "ablations", "--device", args.device,
                "--matmul-precision", args.matmul_precision, "--base", str(on), *(["--smoke"] if args.tiny else []),
                *(["--steps", str(steps)] if steps else []),
                *(["--batch-size", str(args.batch_size)] if args.batch_size else []),
                *(["--n-train", str(n_train)] if n_train else []),
                *(["--lora-targets", lora_targets] if lora_targets else []),
                *(["--edit-steps", str(edit_steps)] if edit_steps else []),
                *(["--lr", str(lr)] if lr is not None else []),
                *(["--lr-scheduler", lr_scheduler] if lr_scheduler else []),
                *(["--loraplus-lr-ratio", str(loraplus)] if loraplus else []),
                *(["--adam-beta2", str(adam_beta2)] if adam_beta2 else []),
                *(["--overwrite"] if args.overwrite else [])]

    def tuned(steps: int) -> dict[str, tuple[list[str], Path]]:
        command = bench(base, args.reference_lr, args.reference_lr_scheduler, steps, args.reference_edit_steps,
                        args.reference_loraplus_lr_ratio, args.reference_n_train, args.reference_lora_targets,
                        args.reference_adam_beta2)
        part = tuned_part(args, steps)
        return {f"{part}/seed{seed}/supervised": ([*command, "--methods", "supervised", "--seed", str(seed)],
                                                 args.out / part / f"seed{seed}" / "supervised") for seed in args.seeds}

    # the reference at its own schedule first (the issue's >= 0.9 is asked of it), the longest of them first: with a
    # time limit, what starts first is what finishes
    jobs = {name: job for steps in sorted(args.reference_steps, reverse=True) for name, job in tuned(steps).items()}
    common, asked = bench(base), guidance(args)
    jobs["baselines"] = ([*common, "--methods", ",".join(BASELINES)], args.out / "baselines")
    if asked.guides_baselines:
        jobs["guided/baselines"] = ([*common, "--methods", ",".join(GUIDED_BASELINES), "--baseline-guidance",
                                     *map(str, args.baseline_guidance)], args.out / "guided" / "baselines")
    for seed in args.seeds:
        for method in trained:
            folder = args.out / f"seed{seed}" / method
            jobs[f"seed{seed}/{method}"] = ([*common, "--methods", method, "--seed", str(seed)], folder)
    if asked.guides_prior:
        for seed in args.seeds:
            jobs[f"prior_guided/seed{seed}/byg"] = (
                [*common, "--methods", "byg", "--seed", str(seed), "--prior-guidance", str(args.prior_guidance),
                 "--prior-guidance-terms", args.prior_guidance_terms], args.out / "prior_guided" / f"seed{seed}" / "byg")
    if args.distill_steps:
        distilled = bench(base_files(args)[1])
        for seed in args.seeds:
            jobs[f"distilled/seed{seed}/supervised"] = ([*distilled, "--methods", "supervised", "--seed", str(seed)],
                                                        args.out / "distilled" / f"seed{seed}" / "supervised")
    return jobs


def run_job(command: list[str], folder: Path, env: dict, deadline: float | None = None) -> dict:
    """One bench process, its output in ``folder``/log.txt: stopped at ``deadline`` (``time.perf_counter()``), not
    started past it. Its status (DONE, FAILED, STOPPED, NOT_STARTED) and wall time; a failure's last log lines."""
    if deadline is not None and time.perf_counter() >= deadline:
        return {"status": NOT_STARTED, "seconds": 0.0}
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        process = subprocess.Popen([*command, "--out", str(folder)], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            code = process.wait(None if deadline is None else max(0.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            return {"status": STOPPED, "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    if code:
        tail = (folder / "log.txt").read_text().splitlines()[-20:]
        return {"status": FAILED, "seconds": seconds, "error": f"{' '.join(command)} failed ({code}):\n" + "\n".join(tail)}
    return {"status": DONE, "seconds": seconds}


def run_jobs(jobs: dict[str, tuple[list[str], Path]], parallel: int, deadline: float | None = None,
             on_done=None) -> dict[str, dict]:
    """Every job, ``parallel`` at a time in their order, until ``deadline``; each one's ``run_job`` record, also
    handed to ``on_done(name, record)`` as it ends. A failed job is printed as it ends and the others go on."""
    # one CPU thread each: the processes share the machine's cores; the pack from this checkout
    env = os.environ | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // parallel)),
                        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}

    def job(name: str, command: list[str], folder: Path) -> dict:
        record = run_job(command, folder, env, deadline)
        if record["status"] == FAILED:
            print(f"{name}: {record['error']}", flush=True)
        if on_done is not None:
            on_done(name, record)
        return record

    with ThreadPoolExecutor(parallel) as pool:
        futures = {name: pool.submit(job, name, command, folder) for name, (command, folder) in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def summarise_done(folders: list[Path]) -> dict:
    """``byg bench combine``'s summary of the finished runs among ``folders``; empty when none finished."""
    return summarise(collect(folders)[0]) if folders else {}


def paired_done(folders: list[Path], against_folders: list[Path]) -> dict:
    """``byg bench combine --against``'s changes from the finished runs of ``against_folders`` to those of
    ``folders`` (the supervised reference on two bases, or at two lengths); empty when either side has none."""
    return against(collect(folders), collect(against_folders)) if folders and against_folders else {}


def stopped(report: dict) -> str:
    """A pretraining's steps, and whether the time limit stopped it early."""
    planned = report.get("planned_steps")
    return (f"{report['steps']} of {planned} steps (stopped by the time limit, its learning rate not decayed)" if planned
            else f"{report['steps']} steps")


def main(argv=None) -> int:
    """0 when every job finished; 1 when one failed or the time limit left some unfinished (the summary, written
    either way, covers the finished ones and names the others)."""
    args = parse_args(argv)
    base = base_files(args)[0]
    jobs = bench_jobs(args, base)
    if not args.overwrite:  # before the base's pretraining, not when the first bench would refuse its folder
        refuse_to_overwrite([args.out / "summary.json", *base_files(args), *(folder for _, folder in jobs.values())],
                            "Pick another --out")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    deadline = None if args.time_limit is None else start + args.time_limit
    with matmul_precision(args.matmul_precision):  # TF32 on cuda by default: the pretraining's matmuls too
        base_report = make_base(args, start)
    if "distilled" not in base_report:  # its jobs would fail on a base that was never made
        skipped = [name for name in jobs if name.startswith("distilled/")]
        jobs = {name: job for name, job in jobs.items() if name not in skipped}
    else:
        skipped = []
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the bench processes share the GPU: this one keeps no cached pretraining memory
    accuracy, guided = base_report["sample_accuracy"], base_report["sample_accuracy_guided"]
    print(f"base {args.base_size} ({base_report['pretrain']['parameters']} parameters, {stopped(base_report['pretrain'])} at "
          f"batch {args.pretrain_batch}, {base_report['pretrain']['seconds']:.0f} s; "
          f"{time.perf_counter() - start:.0f} s with its readings): its samples read back right "
          + ", ".join(f"{k} {accuracy[k]:.3f} ({guided[k]:.3f} at guidance {args.guidance:g})"
                      for k in ("shape", "shape_color", "bg_color", "all"))
          + f" ({accuracy['n']} captions)", flush=True)
    if "distilled" in base_report:
        drawn = base_report["distilled"]["sample_accuracy"]
        print(f"distilled at guidance {args.guidance:g} ({stopped(base_report['distilled']['pretrain'])}, "
              f"{base_report['distilled']['pretrain']['seconds']:.0f} s): its samples read back right "
              "unguided " + ", ".join(f"{k} {drawn[k]:.3f}" for k in ("shape", "shape_color", "bg_color", "all")),
              flush=True)
    bench_start = time.perf_counter()
    records: dict[str, dict] = {name: {"status": SKIPPED, "seconds": 0.0} for name in skipped}
    lock = threading.Lock()

    def interim(name: str, record: dict) -> None:
        """Each job's end rewrites the summary (and --results-dir's copy): a run cut short still returns figures."""
        with lock:
            records[name] = record
            try:
                write_summary(args, jobs, records, base_report, start, bench_start)
            except Exception as error:  # an interim summary's fault must not stop the run: the last one says it
                print(f"interim summary after {name} not written: {error!r}", flush=True)

    records |= run_jobs(jobs, args.jobs, deadline, on_done=interim)
    text, unfinished = write_summary(args, jobs, records, base_report, start, bench_start)
    print(text + f"wrote {args.out / 'summary.md'}, {args.out / 'summary.json'}"
          + (f"; {args.results_dir} holds them, results.tgz and the base's parts" if args.results_dir else ""))
    return 1 if unfinished else 0


def write_summary(args: argparse.Namespace, jobs: dict, records: dict[str, dict], base_report: dict, start: float,
                  bench_start: float) -> tuple[str, dict]:
    """summary.md and summary.json of the jobs finished so far (the others listed with their status, PENDING while
    they run or wait), copied with results.tgz into --results-dir; the summary's text and the unfinished jobs."""
    base = base_files(args)[0]
    records = {name: records.get(name, {"status": PENDING, "seconds": 0.0}) for name in [*jobs, *records]}
    done = {name: folder for name, (_, folder) in jobs.items() if records[name]["status"] == DONE}
    unfinished = {name: record["status"] for name, record in records.items() if record["status"] != DONE}
    parts = ("distilled", "guided", "prior_guided", *(tuned_part(args, steps) for steps in args.reference_steps))
    apart = {part: [folder for name, folder in done.items() if name.startswith(f"{part}/")] for part in parts}
    suite = {name: folder for name, folder in done.items() if name.split("/")[0] not in parts}  # not summarised apart
    summary = summarise_done(list(suite.values()))
    distilled, guided_methods = summarise_done(apart["distilled"]), summarise_done(apart["guided"])
    tuned = {steps: summarise_done(apart[tuned_part(args, steps)]) for steps in args.reference_steps}

    def suite_runs(method: str) -> list[Path]:
        """The finished suite runs of ``method``."""
        return [folder for name, folder in suite.items() if name.endswith(f"/{method}")]

    # paired over the same held-out tuples: the distilled base's reference against the base's (the suite's settings),
    # ByG with the guided prior against the suite's ByG, and the reference at its own schedule at each longer length
    # against it at the suite's steps
    distilled_change = paired_done(apart["distilled"], suite_runs("supervised"))
    prior_guided = summarise_done(apart["prior_guided"])
    prior_change = paired_done(apart["prior_guided"], suite_runs("byg"))
    at_suite = apart.get(tuned_part(args, args.suite_steps), [])
    tuned_change = {steps: paired_done(apart[tuned_part(args, steps)], at_suite)
                    for steps in args.reference_steps if steps != args.suite_steps}
    finished = {name: records[name]["seconds"] for name in done}
    text = (f"Toy bench on the {args.base_size} base, training seeds {args.seeds}, device {args.device}:\n\n"
            + (summary_text(summary) if summary else "(no run of the suite finished)")
            + ("\n\nThe zero-shot baselines at classifier-free guidance source {:g}, target {:g}:\n\n".format(
                *args.baseline_guidance) + table(guided_methods) if guided_methods else "")
            + (f"\n\nByG with its prior guided at {args.prior_guidance:g} ({args.prior_guidance_terms} of its base "
               "velocities):\n\n" + table(prior_guided) + "\n\n" + family_table(prior_guided) if prior_guided else "")
            + ("\n\nIts change from ByG with the prior unguided (the suite's runs), paired over the same held-out "
               "tuples:\n\n" + against_table(prior_change) if prior_change else "")
            + (f"\n\nThe supervised reference on the base distilled at guidance {args.guidance:g}:\n\n"
               + table(distilled) if distilled else "")
            + ("\n\nIts change from the reference on the base (the suite's runs), paired over the same held-out tuples:"
               "\n\n" + against_table(distilled_change) if distilled_change else "")
            + "".join(f"\n\nThe supervised reference at lr {args.reference_lr:g}, {args.reference_lr_scheduler}, "
                      f"LoRA+ ratio {args.reference_loraplus_lr_ratio:g}, {args.reference_n_train} training tuples, "
                      f"LoRA on {args.reference_lora_targets} layers, AdamW beta2 {args.reference_adam_beta2:g}, "
                      f"{steps} steps, edits in {args.reference_edit_steps} sampler steps:\n\n" + table(methods)
                      + "\n\n" + family_table(methods)
                      + (f"\n\nIts change from {args.suite_steps} steps, paired over the same held-out tuples:\n\n"
                         + against_table(tuned_change[steps]) if tuned_change.get(steps) else "")
                      for steps, methods in tuned.items() if methods)
            + (f"\n\n{len(unfinished)} of {len(records)} bench jobs did not finish (the tables leave them out):\n\n"
               + "\n".join(f"- {name}: {status}" for name, status in unfinished.items()) if unfinished else "")
            + f"\n\nbench {time.perf_counter() - bench_start:.0f} s ({len(jobs)} processes, {args.jobs} at a time"
            + f", float32 matmuls at {args.matmul_precision} precision"
            + (f", time limit {args.time_limit:g} s" if args.time_limit is not None else "") + "); "
            + (f"slowest finished job {max(finished, key=finished.get)} {max(finished.values()):.0f} s; "
               if finished else "")
            + f"total {time.perf_counter() - start:.0f} s\n")
    summary_json = json.dumps(
        {"base": {"path": str(base), **base_report}, "methods": summary, "distilled": distilled,
         "distilled_against_base": distilled_change,
         "guided_baselines": {"guidance": list(args.baseline_guidance), "methods": guided_methods},
         "prior_guided": {"guidance": args.prior_guidance, "terms": args.prior_guidance_terms, "methods": prior_guided,
                          "against_byg": prior_change},
         "tuned_reference": {} if not args.reference_steps else {
             "lr": args.reference_lr, "lr_scheduler": args.reference_lr_scheduler,
             "loraplus_lr_ratio": args.reference_loraplus_lr_ratio, "n_train": args.reference_n_train,
             "lora_targets": args.reference_lora_targets, "adam_beta2": args.reference_adam_beta2,
             "edit_steps": args.reference_edit_steps,
             "methods": tuned.get(args.suite_steps, {}),
             "methods_at_steps": {str(steps): m for steps, m in tuned.items() if steps != args.suite_steps},
             "changes_at_steps": {str(steps): c for steps, c in tuned_change.items() if c}},
         "jobs": records, "unfinished": unfinished, "time_limit": args.time_limit,
         "matmul_precision": args.matmul_precision,
         "settings": "smoke" if args.tiny else "bench", "total_seconds": time.perf_counter() - start}, indent=2)
    for folder in filter(None, (args.out, args.results_dir)):  # --results-dir: what a lent machine brings back
        write_text_atomic(folder / "summary.md", text)
        write_text_atomic(folder / "summary.json", summary_json)
    if args.results_dir:
        export_runs(args, list(done.values()))
    return text, unfinished


if __name__ == "__main__":
    sys.exit(main())
