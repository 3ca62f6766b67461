"""Probes behind docs/toy_bench.md's "fourth session" section (not part of CI; minutes to an hour each).
(.venv is what `bash scripts/test.sh` or `bash scripts/demo.sh` made.)

  .venv/bin/python scripts/toy_probes.py curve METHOD STEPS EVERY OUT [--seed S] [--n-eval N] [--base FILE]
      trains METHOD at the bench's settings (those of `byg bench --steps STEPS`; on the base FILE, the shipped
      one by default), scoring the EMA editor on
      the bench's held-out tuples every EVERY steps; METHOD is byg, supervised, supervised_warmup (the bench's identity warm-up and identity
      steps, then true pairs) or an ablation name (no_cycle, ...). Saves the LoRA under OUT.
      --cycle-split frozen_reverse: the cycle's reverse pass trains no weights (its losses reach the editor only
      through the routed forward prediction y_hat); detached_condition: the reverse pass is conditioned on
      sg(y~_0) (its losses train only the reverse pass). Which half of the cycle loss moves preservation?
  .venv/bin/python scripts/toy_probes.py copy LORA [LORA ...] [--n-eval N]
      does a trained editor still copy? It edits held-out sources by their *reverse* instruction (an edit
      already fulfilled) and counts the sources read back whole (all attributes, mask IoU >= 0.6).
  .venv/bin/python scripts/toy_probes.py variant NAME [--set KEY=JSON ...] [--objective KEY=JSON ...] [--n-train N]
          [--n-eval N] [--method supervised|byg] [--budget demo|bench]
      the supervised reference (or ByG) at the demo's budget (750 steps at batch 8; the bench's: 1200 at batch 32)
      with one change to its training (``TrainConfig`` fields: --set lr=1e-3, --set rank=64, --set steps=3000,
      --set batch_size=32, ...), to its objective (``ObjectiveConfig`` fields: --objective lambda_cycle=0.3) or
      to its training tuples (--n-train); scored on held-out tuples (--n-eval per split: 96 + 96 by default) from noise seed 0: clean
      edit, edit success, preservation, wrong pixels per image, clean edits by family. Saves the LoRA under
      /tmp/toy_probes/NAME. It always trains on training seed 0's tuples: --set seed=S changes the run's own
      seed (initialisation, batches, noise), not its tuples as `byg bench --seed S` does.
  .venv/bin/python scripts/toy_probes.py pixels LORA [LORA ...] [--edit-steps 1 20] [--n-eval N] [--reverse]
      where does an editor go wrong, pixel by pixel? Each LoRA edits held-out tuples (--n-eval per split, noise seed 0)
      and the pixels farther than CLEAN_PIXEL_DISTANCE from the true edited scene are counted, by family: per
      image, inside the 2 x 2 tokens that mix two colours (in the source or the truth) against the one-colour
      tokens, and the images within the clean edit's 12 wrong pixels. --reverse asks the reverse instruction and
      compares with the source instead (how exactly does it copy?).
  .venv/bin/python scripts/toy_probes.py base BASE [BASE ...] [--steps 10 20 50] [--n 512] [--guidance 1 2 3] [--sampler-shift 1 3]
      how well does a toy base draw the world? Each base draws N fresh scenes from their captions with each
      sampler step count (and classifier-free guidance scale: a base pretrained with --p-uncond) and the
      drawings are read back (``model.evaluate_base``): shape kind, both colours,
      all three, with 95% intervals (issue 17, part 2). Every base draws the same captions from the same noise, so
      each base after the first also gets its change in "all three right" paired caption by caption against the
      first's (``metrics.paired_change``): docs/toy_bench.md's paired base figures are `--n 1024`.
  .venv/bin/python scripts/toy_probes.py prior BASE [BASE ...] [--n 576] [--t 0.3 0.5 0.7] [--guidance 1 4]
          [--terms all|anchor]
      does a base's directional prior point at the edit? ``model.directional_prior_check`` of each base at each
      noise level t and classifier-free guidance (``ObjectiveConfig.prior_guidance``; a base pretrained with
      --p-uncond): how often the one-step prediction under the target caption reads the target, under the source
      caption the source, by family, and the cosine of their difference with the true edit; and by family how much
      more the prior (and its directional term alone) costs an editor that keeps the source than one that makes the
      true edit (> 0: the prior pulls toward the edit); --terms anchor guides only the MSE anchor's v_tgt
      (``ObjectiveConfig.prior_guidance_terms``).
  .venv/bin/python scripts/toy_probes.py score LORA [LORA ...] [--edit-steps 20] [--guidance 1 1.5 2] [--n-eval N]
          [--base FILE] [--eval-seed S] [--noise-seeds 0 1 2] [--out FILE]
      a trained editor under other sampling: each LoRA edits held-out tuples (from --noise-seeds, 0 by default) with each sampler step
      count and guidance against the reverse instruction, v_bar + w (v_c - v_bar), v_bar its velocity under c_bar
      (the identity steps teach it to copy the source there, so no instruction dropout is needed); scored like
      `variant`, with the clean edits' interval and their change paired against the first setting. --n-eval 288
      --noise-seeds 0 1 2 scores the bench's own held-out set, and a LoRA a `byg bench` run saved
      (OUT/runs/METHOD/byg_lora.safetensors) is then also paired against that run's own edits (its results.json);
      --eval-seed 100 scores a validation draw instead, to choose a setting on (its scenes' seeds are disjoint
      from the bench's set's and the training tuples').
  .venv/bin/python scripts/toy_probes.py ceiling [--n-eval N]
      can a clean edit be made at all? ``metrics.clean_edit_ceiling`` of each held-out shape-kind tuple (--n-eval
      per split: the bench's 288 + 288 by default): how often the best possible outline of the target kind is a
      clean edit, given that the 16 px source fits several geometries (best), and how often an outline drawn
      from the posterior is (sampled: what an editor that samples rather than picks the likeliest outline can
      expect); colour edits are determined (1.0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from byg_core import objective
from byg_core.adapters import EMA, Generators
from byg_core.lora_io import load_lora
from byg_core.sample import edit, initial_noise, integrate
from byg_core.toy import bench
from byg_core.toy.metrics import (
    PRESERVE_IOU, clean_edit_ceiling, mask_iou, paired_change, read_scene, right_pixels, wilson_interval)
from byg_core.toy.model import DEFAULT_TOY_WEIGHTS, build_toy_backbone, directional_prior_check, evaluate_base
from byg_core.toy.world import FAMILIES, render_batch, sample_tuples
from byg_core.train import Callbacks, Trainer


def _summary(metrics: dict) -> str:
    families = {f: tuple(round(v[k], 2) for k in ("clean_edit", "edit_success", "preservation"))
                for f, v in metrics["by_family"].items()}
    overall = {k: round(metrics["all"][k], 3) for k in bench.METRIC_KEYS}
    return f"{json.dumps(overall)} by family (clean, success, preservation): {families}"


def split_cycle(mode: str) -> None:
    """Patch the ByG step so that only one half of the cycle loss trains (probe only; see the module doc)."""
    if mode == "detached_condition":
        objective.route_gradients = lambda clean, one_step: clean.detach()
        return
    student_edit = Generators.edit

    class _Call(torch.nn.Module):  # lets torch.func.functional_call swap the LoRA weights for detached ones
        def __init__(self, inner, fn):
            super().__init__()
            self.inner, self.fn = inner, fn

        def forward(self):
            return self.fn()

    def edit(self, y_t, t, c, x):
        if not x.requires_grad:  # only the reverse pass's condition, the routed y_hyb, carries a gradient
            return student_edit(self, y_t, t, c, x)
        module = self.backbone.transformer
        frozen = {f"inner.{n}": p.detach() for n, p in module.named_parameters() if p.requires_grad}
        return torch.func.functional_call(_Call(module, lambda: student_edit(self, y_t, t, c, x)), frozen, ())

    Generators.edit = edit


def curve(args: argparse.Namespace) -> None:
    if args.cycle_split:
        split_cycle(args.cycle_split)
    settings = dataclasses.replace(bench.with_steps(bench.BENCH_SETTINGS, args.steps, args.seed), n_eval=args.n_eval)
    backbone = build_toy_backbone(args.base)
    train_data = bench.cached_tuples(backbone, sample_tuples(settings.n_train, 0))
    tuples = bench.eval_split(settings.n_eval, 0)  # the bench's held-out tuples, whatever the training seed
    eval_data = bench.cached_tuples(backbone, tuples)
    methods = {**bench._trained_methods(settings, "ablations"), "supervised_warmup": {"method": "supervised"},
               "identity": {"warmup_identity_steps": args.steps}}
    overrides = methods[args.method]
    cfg = settings.train_config(Path(args.out), **overrides)
    start, sums = time.perf_counter(), {}

    def on_step(step: int, record: dict) -> None:
        for k, v in record.items():
            if k != "step":
                sums.setdefault(k, []).append(v)
        if step % 100 == 0:
            print(step, {k: round(sum(v) / len(v), 4) for k, v in sums.items()},
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            sums.clear()
        if step % args.every == 0:
            edited = bench.edit_held_out(backbone, trainer.adapters, eval_data, settings)
            print("EVAL", step, _summary(bench.score(tuples, edited)), flush=True)

    trainer = Trainer(cfg, backbone, train_data, Callbacks(on_step=on_step))
    trainer.run()


def copy(args: argparse.Namespace) -> None:
    backbone = build_toy_backbone()
    tuples = bench.eval_split(args.n_eval, 0)
    data = bench.cached_tuples(backbone, tuples)
    sources = render_batch([t.source for t in tuples])
    for path in args.lora:
        adapters = load_lora([path], backbone)
        out = bench.edit_with(backbone, data, lambda b: edit(
            backbone, adapters, b.x, b.c_bar, steps=bench.BENCH_SETTINGS.edit_steps).latents)
        whole = []
        for source, image in zip(sources, out):
            a, r = read_scene(source), read_scene(image)
            same = (a.shape, a.shape_color, a.bg_color) == (r.shape, r.shape_color, r.bg_color)
            whole.append(same and mask_iou(a.mask, r.mask) >= PRESERVE_IOU)
        print(path, f"reproduces {sum(whole) / len(whole):.3f} of its sources,",
              f"pixel error {float((out - sources).abs().mean()):.3f}", flush=True)


def _assignments(items: list[str]) -> dict:
    return {key: json.loads(value) for key, _, value in (item.partition("=") for item in items)}


def variant(args: argparse.Namespace) -> None:
    budget = bench.BENCH_SETTINGS if args.budget == "bench" else bench.DEMO_SETTINGS
    settings = dataclasses.replace(budget, n_train=args.n_train or budget.n_train, noise_seeds=(0,))
    overrides = dict(bench._trained_methods(settings, "main")[args.method]) | _assignments(args.set)
    if args.objective:
        overrides["objective"] = dataclasses.replace(settings.objective(), **_assignments(args.objective))
    backbone = build_toy_backbone()
    train_data = bench.cached_tuples(backbone, sample_tuples(settings.n_train, 0))
    tuples = bench.eval_split(args.n_eval, 0)
    data = bench.cached_tuples(backbone, tuples)
    cfg = settings.train_config(Path("/tmp/toy_probes") / args.name, **overrides)
    trainer, edited, _ = bench.train_and_edit(backbone, train_data, data, cfg, settings)
    print(_report(f"{args.name} {args.method} at the {args.budget}'s budget {overrides} n_train {settings.n_train}",
                  tuples, edited[0]) + f" | {trainer.train_seconds:.0f} s of training", flush=True)  # noise seed 0 only


def _mixed_tokens(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W): whether each pixel's 2 x 2 token (the toy codec's packing) holds more than one colour."""
    high, low = F.max_pool2d(images, 2), -F.max_pool2d(-images, 2)
    return F.interpolate(((high - low).abs().sum(1) > 0.3).float()[:, None], scale_factor=2)[:, 0] > 0


def pixels(args: argparse.Namespace) -> None:
    backbone = build_toy_backbone()
    tuples = bench.eval_split(args.n_eval, 0)
    data = bench.cached_tuples(backbone, tuples)
    sources = render_batch([t.source for t in tuples])
    truth = sources if args.reverse else render_batch([t.target for t in tuples])
    mixed = _mixed_tokens(sources) | _mixed_tokens(truth)
    for path in args.lora:
        adapters = load_lora([path], backbone)
        for steps in args.edit_steps:
            out = bench.edit_with(backbone, data, lambda b: edit(
                backbone, adapters, b.x, b.c_bar if args.reverse else b.c, steps=steps, seed=0).latents)
            wrong = ~right_pixels(out, truth)
            print(f"{path} | {steps} edit steps | {'reverse instruction vs source' if args.reverse else 'vs truth'}")
            for family in (*FAMILIES, "all"):
                pick = torch.tensor([family in ("all", t.family) for t in tuples])
                w, m = wrong[pick], mixed[pick]
                per_image = w.flatten(1).sum(1).float()
                print(f"  {family}: wrong pixels per image {per_image.mean():.1f} (median {per_image.median():.0f}), "
                      f"{(w & m).flatten(1).sum(1).float().mean():.1f} of them in two-colour tokens "
                      f"({m.float().mean():.2f} of the pixels; wrong there {(w & m).sum() / m.sum():.2f}, in one-colour "
                      f"tokens {(w & ~m).sum() / (~m).sum():.3f}); images with <= 12 wrong {(per_image <= 12).float().mean():.3f}",
                      flush=True)


def base(args: argparse.Namespace) -> None:
    first: dict[tuple, tuple[str, list]] = {}  # each setting's first base and its outcomes, to pair the others with
    for path in args.base:
        backbone = build_toy_backbone(path)
        for setting in [(s, g, h) for s in args.steps for g in args.guidance for h in args.sampler_shift]:
            steps, guidance, shift = setting
            start = time.time()
            backbone.scheduler_shift = shift  # the sampler's t grid, t' = s t / (1 + (s - 1) t)
            report = evaluate_base(backbone, n=args.n, seed=1, steps=steps, guidance=guidance)
            keys = ("shape", "shape_color", "bg_color", "all")
            report.update({f"{k}_ci": wilson_interval(report[k], args.n) for k in keys})
            rates = ", ".join(f"{k} {bench._rate(report, k)}" for k in keys)
            first_path, first_outcomes = first.setdefault(setting, (path, report["outcomes"]))
            paired = ("" if first_path == path else
                      " | all vs {}: {:+.3f} [{:+.3f}, {:+.3f}] paired".format(
                          first_path, *paired_change(report["outcomes"], first_outcomes)))
            print(f"{path} | {steps} sampler steps | guidance {guidance} | sampler shift {shift} | n {args.n} | {rates}"
                  f"{paired} | {time.time() - start:.0f} s", flush=True)


def prior(args: argparse.Namespace) -> None:
    for path in args.base:
        backbone = build_toy_backbone(path)
        for t, guidance in [(t, g) for t in args.t for g in args.guidance]:
            r = directional_prior_check(backbone, n=args.n, t=t, guidance=guidance, terms=args.terms)
            families = {f: round(v["tgt_reads_target"], 2) for f, v in r["by_family"].items()}
            margins = {f: (round(v["prior_margin"], 3), round(v["directional_margin"], 3)) for f, v in r["by_family"].items()}
            print(f"{path} | t {t} | guidance {guidance} ({args.terms}) | n {args.n} | source reads {r['src_reads_source']:.3f} | "
                  f"target reads {r['tgt_reads_target']:.3f} {families} | cosine {r['cosine']:.3f} | "
                  f"prior margin, directional margin {margins}", flush=True)


def _report(name: str, tuples: list, out: torch.Tensor, report: dict | None = None) -> str:
    """Clean edit, edit success, preservation, wrong pixels per image and clean edits by family of pixels
    (N, 3, H, W) from one noise seed or (seeds, N, 3, H, W) from several (``report``: their ``bench.score``)."""
    report = report or bench.score(tuples, out)
    wrong = (~right_pixels(out, render_batch([t.target for t in tuples]))).flatten(-2).sum(-1).float()
    families = {f: round(v["clean_edit"], 2) for f, v in report["by_family"].items()}
    m = report["all"]
    return (f"{name}: clean {m['clean_edit']:.3f} success {m['edit_success']:.3f} preservation {m['preservation']:.3f} | "
            f"wrong pixels per image {wrong.mean():.1f} (median {wrong.median():.0f}) | clean by family {families}")


def _bench_outcomes(lora: str, tuples: list, args: argparse.Namespace) -> tuple[int, dict] | None:
    """Where ``lora`` is a `byg bench` run's (OUT/runs/METHOD/byg_lora.safetensors) and that run edited these very
    tuples from these noise seeds: its edit steps and each tuple's outcomes there (its results.json's per_tuple)."""
    path = Path(lora).parents[2] / "results.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    figures, held_out = report["methods"].get(Path(lora).parent.name), report["held_out"]
    if figures is None or (held_out["tuples"], held_out["eval_seed"], held_out["noise_seeds"]) != (
            len(tuples), args.eval_seed, args.noise_seeds):
        return None
    return report["settings"]["edit_steps"], figures["per_tuple"]


def score(args: argparse.Namespace) -> None:
    backbone = build_toy_backbone(args.base)
    tuples = bench.eval_split(args.n_eval, args.eval_seed)
    data = bench.cached_tuples(backbone, tuples)
    for path in args.lora:
        adapters = load_lora([path], backbone)
        bench_run = _bench_outcomes(path, tuples, args)
        first = None
        for steps, w in [(n, g) for n in args.edit_steps for g in args.guidance]:
            def method(b, seed):
                def velocity(y, t):
                    v_c = backbone.velocity(y, t, b.c, source=b.x)
                    if w == 1.0:
                        return v_c
                    return objective.classifier_free_guidance(v_c, backbone.velocity(y, t, b.c_bar, source=b.x), w)
                with adapters.use(EMA):
                    eps = initial_noise(b.x.shape, seed, b.x.device, b.x.dtype)
                    return integrate(backbone.schedule(steps, b.x.shape), velocity, eps).latents
            out = bench.edit_seeds(backbone, data, method, args.noise_seeds)
            report = bench.score(tuples, out)
            low, high = report["all"]["clean_edit_ci"]
            clean = report["per_tuple"]["clean_edit"]
            first = first or (steps, w, clean)
            change, lo, hi = paired_change(clean, first[2])
            print(_report(f"{path} {steps} steps, guidance {w:g} against c_bar", tuples, out, report)
                  + f" | clean [{low:.3f}, {high:.3f}], against {first[0]} steps at guidance {first[1]:g} paired "
                  f"{change:+.3f} [{lo:+.3f}, {hi:+.3f}] ({len(tuples)} tuples x noise seeds {args.noise_seeds})", flush=True)
            if bench_run:  # the same tuples and noise as the bench run that trained it: paired against its edits
                print("  against its bench run's edits in {} steps, paired: ".format(bench_run[0]) + ", ".join(
                    "{} {:+.3f} [{:+.3f}, {:+.3f}]".format(k, *paired_change(report["per_tuple"][k], bench_run[1][k]))
                    for k in ("clean_edit", "edit_success", "preservation")), flush=True)
            if args.out:  # each tuple's outcomes, to pair with a bench's results.json (its methods' per_tuple)
                with open(args.out, "a") as log:
                    log.write(json.dumps({"lora": str(path), "edit_steps": steps, "guidance": w, "eval_seed": args.eval_seed,
                                          "noise_seeds": args.noise_seeds, "per_tuple": report["per_tuple"]}) + "\n")


def ceiling(args: argparse.Namespace) -> None:
    start = time.time()
    tuples = bench.eval_split(args.n_eval, 0)
    kind = [clean_edit_ceiling(t) for t in tuples if t.family == "shape_kind"]
    share = len(kind) / len(tuples)
    for name, values in (("best", sorted(c.best for c in kind)), ("sampled", sorted(c.sampled for c in kind))):
        mean = sum(values) / len(values)
        print(f"{name}: {len(kind)} of {len(tuples)} held-out tuples are shape-kind edits, clean {mean:.3f} of the time "
              f"on average (lowest {values[0]:.2f}, {sum(c < 1 for c in values)} below 1); colour edits 1.000; the "
              f"held-out set's ceiling {1 - share + share * mean:.3f}", flush=True)
    print(f"{time.time() - start:.0f} s", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("curve")
    p.add_argument("method", choices=["byg", "supervised", "supervised_warmup", "identity", *bench.ABLATIONS])
    p.add_argument("steps", type=int)
    p.add_argument("every", type=int)
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-eval", type=int, default=48)
    p.add_argument("--cycle-split", choices=["frozen_reverse", "detached_condition"])
    p.add_argument("--base", default=DEFAULT_TOY_WEIGHTS, help="the toy base to train on (default: the shipped one)")
    p.set_defaults(run=curve)
    p = sub.add_parser("copy")
    p.add_argument("lora", nargs="+")
    p.add_argument("--n-eval", type=int, default=96)
    p.set_defaults(run=copy)
    p = sub.add_parser("variant")
    p.add_argument("name")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    p.add_argument("--objective", action="append", default=[], metavar="KEY=JSON")
    p.add_argument("--method", choices=["supervised", "byg"], default="supervised")
    p.add_argument("--budget", choices=["demo", "bench"], default="demo")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-eval", type=int, default=96)
    p.set_defaults(run=variant)
    p = sub.add_parser("pixels")
    p.add_argument("lora", nargs="+")
    p.add_argument("--edit-steps", type=int, nargs="+", default=[20])
    p.add_argument("--n-eval", type=int, default=96)
    p.add_argument("--reverse", action="store_true")
    p.set_defaults(run=pixels)
    p = sub.add_parser("base")
    p.add_argument("base", nargs="+")
    p.add_argument("--steps", type=int, nargs="+", default=[20])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0])
    p.add_argument("--sampler-shift", type=float, nargs="+", default=[1.0])
    p.set_defaults(run=base)
    p = sub.add_parser("prior")
    p.add_argument("base", nargs="+")
    p.add_argument("--n", type=int, default=576)
    p.add_argument("--t", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0])
    p.add_argument("--terms", choices=objective.PRIOR_GUIDANCE_TERMS, default="all",
                   help="which of the prior's velocities the guidance guides (ObjectiveConfig.prior_guidance_terms)")
    p.set_defaults(run=prior)
    p = sub.add_parser("score")
    p.add_argument("lora", nargs="+")
    p.add_argument("--edit-steps", type=int, nargs="+", default=[bench.BENCH_SETTINGS.edit_steps])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0])
    p.add_argument("--n-eval", type=int, default=96)
    p.add_argument("--base", default=DEFAULT_TOY_WEIGHTS, help="the toy base the LoRAs were trained on (default: the shipped one)")
    p.add_argument("--eval-seed", type=int, default=0,
                   help="the held-out draw: 0 is the bench's; 100 a validation draw to choose settings on")
    p.add_argument("--noise-seeds", type=int, nargs="+", default=[0], help="the bench edits from 0 1 2")
    p.add_argument("--out", default=None, help="append each setting's per-tuple outcomes to this JSON-lines file")
    p.set_defaults(run=score)
    p = sub.add_parser("ceiling")
    p.add_argument("--n-eval", type=int, default=bench.BENCH_SETTINGS.n_eval)
    p.set_defaults(run=ceiling)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
