"""The toy-world benchmark and demo: does ByG learn edits without a single pair?

Every method edits the same held-out tuples, and the edits are scored against ground
truth (``metrics.evaluate_edit``): ByG; a supervised editor trained with Eq. 1 on the
*true pairs* (the reference that has what ByG does without); SDEdit and FlowEdit on the
frozen base (zero-shot); and doing nothing (identity). ``suite="ablations"`` adds the
rows of the paper's Table 4. Colour combinations in ``UNSEEN_COMBOS`` never appear in
training tuples and are reported separately.

The held-out set is balanced (``world.held_out_tuples``: as many tuples of each edit family
on seen and on unseen colour pairs), fixed whatever the training seed, and edited with
several noise seeds. The headline is the clean-edit rate; every rate carries its 95% Wilson
interval over the held-out tuples (the schema is in docs/toy_bench.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..adapters import EMA, STUDENT, Adapters, LoraSpec, all_linear_targets
from ..backbones.base import default_device
from ..backbones.flux import FluxBackbone
from ..config import PRESETS, TrainConfig
from ..data import CachedEdits, EditRecord
from ..lora_io import save_lora
from ..objective import ObjectiveConfig
from ..plots import image_grid, loss_curve, save_png
from ..safefiles import write_text_atomic
from ..sample import edit, flowedit, sdedit
from ..train import Callbacks, Trainer, accelerator_for, write_history
from .metrics import CLEAN_EDIT_RULE, RATE_KEYS, aggregate_seeds, evaluate_edit
from .model import DEFAULT_TOY_WEIGHTS, build_toy_backbone, has_unconditional, pretrain_record
from .world import FAMILIES, EditTuple, check_training_seed, held_out_tuples, render_batch, sample_tuples

METRIC_KEYS = ("clean_edit", "edit_success", "preservation", "pixel_error")
BASELINES = ("identity", "sdedit", "flowedit")
GUIDED_BASELINES = ("sdedit", "flowedit")  # the baselines ToySettings.baseline_*_guidance changes
CACHE_REUSE = (2, 4, 8)  # the rollout reuse K the cache suite compares with K = 1 (the exact algorithm)
LORA_TARGETS = ("default", "all-linear")  # ToySettings.lora_targets: the backbone's defaults, or every linear layer
SAME_TIME_AS = "same_time_as"  # a cache-suite override: train for the wall time another method's training took
ABLATIONS = {  # paper Table 4: row name -> the switch it turns off
    "no_gradient_routing": "gradient_routing",
    "no_cycle": "cycle",
    "no_directional": "directional",
    "no_bootstrapping": "bootstrap",
    "no_regularization": "regularization",
    "no_identity_steps": "identity_steps",
}


@dataclass
class ToySettings:
    """Paper defaults (B.1) scaled to a 16 px world and a 2-core CPU."""

    steps: int = 1200  # warm-up included
    batch_size: int = 8  # paper B.1
    rank: int = 16
    lr: float = 3e-3  # the paper's 3e-4 is for a 12B model and 30k steps; the toy LoRA is tiny and runs short
    lr_scheduler: str = "constant"  # the paper gives one lr; "cosine" decays it to 0 over the run (TrainConfig)
    loraplus_lr_ratio: float = 1.0  # LoRA+: the B matrices at this multiple of lr (TrainConfig; 1: plain LoRA)
    adam_beta2: float = 0.999  # AdamW's second-moment decay (TrainConfig)
    # "default": the backbone's LoRA targets (diffusers' Kontext set); "all-linear": every linear layer (+0.020 clean
    # edits for the medium base's reference at lr 1e-2 cosine, three seeds; docs/toy_bench.md)
    lora_targets: str = "default"
    # paper: 200 of 30k steps. 600 identity steps (90 s here) make the editor a copier: it then reproduces
    # 0.88 of held-out sources given the reverse instruction; after 50 it could not
    warmup_identity_steps: int = 600
    identity_prob: float = 0.15
    ema_decay: float = 0.95  # a time constant of 20 steps: 0.99 left the EMA editor behind in 600-step runs
    rollout_steps: int = 10
    # paper B.1: 0.2. At 0.2 ByG's cycle and prior terms wore away the copying learnt in the warm-up (identity
    # loss 0.025 -> 0.11 within 100 ByG steps; preservation 0.05); 1.0 kept 0.18, 3.0 kept 0.32 (600 ByG steps,
    # 48 + 48 held-out tuples; the 1200-step bench measured 0.21: docs/toy_bench.md)
    lambda_id: float = 3.0
    # t' = s t / (1 + (s - 1) t): noisier t more often, as the paper's video training (B.2, s = 12; its images draw
    # t ~ U(0, 1), Algorithm 1). At the bench's budget s = 4 doubled the clean edits of both editors (supervised
    # 0.30 -> 0.55, ByG 0.14 -> 0.32 on 96 + 96 held-out tuples; s = 8 the same, s = 0.5 and logit-normal mean -0.8
    # worse: docs/toy_bench.md)
    shift: float = PRESETS["toy"]["shift"]  # one value for the bench, the demo and the "toy" preset
    edit_steps: int = 20
    # classifier-free guidance of the zero-shot baselines against the empty prompt (sample.guided_velocity): FlowEdit's
    # source and target velocities, SDEdit's target. 1, 1: unguided, the only choice on a base pretrained without
    # dropped captions (the small one); FlowEdit's paper samples FLUX at source 1.5, target 5.5
    baseline_src_guidance: float = 1.0
    baseline_tgt_guidance: float = 1.0
    # classifier-free guidance of the base's velocities in ByG's prior (ObjectiveConfig.prior_guidance); 1: unguided
    prior_guidance: float = 1.0
    # which of the prior's velocities it guides (ObjectiveConfig.prior_guidance_terms): all, or the anchor's alone
    prior_guidance_terms: str = "all"
    n_train: int = 1024
    n_eval: int = 96  # held-out tuples per split (seen, unseen colour pairs), as many of each edit family
    seed: int = 0  # training: tuples, LoRA init, batches
    eval_seed: int = 0  # the held-out tuples: the same set whatever the training seed
    noise_seeds: tuple[int, ...] = (0, 1, 2)  # every held-out tuple is edited from each seed's noise

    def train_config(self, out: Path, **overrides) -> TrainConfig:
        values = dict(
            model="toy", output_dir=str(out), steps=self.steps, batch_size=self.batch_size, rank=self.rank,
            lr=self.lr, lr_scheduler=self.lr_scheduler, loraplus_lr_ratio=self.loraplus_lr_ratio,
            adam_beta2=self.adam_beta2, warmup_identity_steps=self.warmup_identity_steps,
            identity_prob=self.identity_prob,
            ema_decay=self.ema_decay, shift=self.shift, seed=self.seed, checkpoint_every=0,
            objective=self.objective(),
        )
        return TrainConfig(**(values | overrides)).validate()

    def validate(self) -> "ToySettings":
        """Refuse bad settings before any method runs (the baselines come first and write results.json): the
        trained methods' TrainConfig, the held-out set and the sampler, each error naming its setting."""
        self.train_config(Path("toy"))
        for name in ("edit_steps", "n_train", "n_eval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("baseline_src_guidance", "baseline_tgt_guidance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        check_n_eval(self.n_eval)
        check_training_seed(self.seed, "seed")  # the training tuples are sample_tuples(n_train, seed)
        if self.lora_targets not in LORA_TARGETS:
            raise ValueError(f"lora_targets must be one of {', '.join(LORA_TARGETS)}, got {self.lora_targets!r}")
        if not self.noise_seeds:
            raise ValueError("noise_seeds must name at least one seed")
        return self

    @property
    def guides_baselines(self) -> bool:
        """Whether the baselines run guided (``baseline_src_guidance`` / ``_tgt_guidance`` other than 1, 1)."""
        return (self.baseline_src_guidance, self.baseline_tgt_guidance) != (1.0, 1.0)

    @property
    def guides_prior(self) -> bool:
        """Whether ByG's prior runs guided (``prior_guidance`` other than 1)."""
        return self.objective().guides_prior

    def objective(self, **switches: bool) -> ObjectiveConfig:
        """The objective at these settings; ``switches`` turn off components (the ablations)."""
        return ObjectiveConfig(rollout_steps=self.rollout_steps, lambda_id=self.lambda_id,
                               prior_guidance=self.prior_guidance, prior_guidance_terms=self.prior_guidance_terms,
                               **switches)


@dataclass
class MethodResult:
    metrics: dict
    seconds: float
    edited: torch.Tensor = field(repr=False)  # (seeds, N, 3, H, W) pixels of the eval tuples
    history: list = field(default_factory=list, repr=False)
    train_seconds: float = 0.0  # the training part of ``seconds`` (0 for the untrained baselines)


def cached_tuples(backbone: FluxBackbone, tuples: list[EditTuple]) -> CachedEdits:
    """Tuples in model space, kept on the CPU as ``data.cache`` keeps a dataset's; the true targets ``y`` ride
    along for the supervised reference only."""
    records = [EditRecord(Path(f"toy/{i}"), **t.record()) for i, t in enumerate(tuples)]
    x = backbone.encode_pixels(render_batch([t.source for t in tuples])).cpu()
    y = backbone.encode_pixels(render_batch([t.target for t in tuples])).cpu()
    return CachedEdits(x=x, records=records, y=y)


def check_n_eval(n: int) -> None:
    if n % len(FAMILIES):
        raise ValueError(f"n_eval={n} must be a multiple of {len(FAMILIES)}: as many tuples of each edit family")


def eval_split(n: int, seed: int) -> list[EditTuple]:
    """Held-out tuples: n of seen colour combinations and n touching UNSEEN_COMBOS, balanced over families."""
    check_n_eval(n)
    return held_out_tuples(n // len(FAMILIES), seed)


def score(tuples: list[EditTuple], edited: torch.Tensor) -> dict:
    """``metrics.aggregate_seeds`` of pixels (seeds, N, 3, H, W), or of one seed's (N, 3, H, W)."""
    sources = render_batch([t.source for t in tuples])
    by_seed = edited if edited.ndim == 5 else edited[None]
    return aggregate_seeds([[evaluate_edit(s, e, t) for s, e, t in zip(sources, seed, tuples)] for seed in by_seed])


def _chunks(n: int, size: int = 64):
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def edit_with(backbone: FluxBackbone, data: CachedEdits, method: Callable) -> torch.Tensor:
    """Run ``method(batch) -> latents`` over the data in chunks; decoded pixels."""
    out = []
    for index in _chunks(len(data)):
        out.append(backbone.decode_latents(method(data.batch(backbone, index))).cpu())
    return torch.cat(out)


def edit_seeds(backbone: FluxBackbone, data: CachedEdits, method: Callable, seeds) -> torch.Tensor:
    """Pixels (seeds, N, 3, H, W): ``method(batch, seed) -> latents`` over the data, once per noise seed."""
    return torch.stack([edit_with(backbone, data, lambda b: method(b, seed)) for seed in seeds])


def edit_held_out(backbone: FluxBackbone, adapters: Adapters, data: CachedEdits, settings: ToySettings,
                  role: str = EMA) -> torch.Tensor:
    """An editor's pixels (seeds, N, 3, H, W) for ``data``: ``settings.edit_steps`` steps from each noise seed."""
    return edit_seeds(backbone, data, lambda b, seed: edit(
        backbone, adapters, b.x, b.c, steps=settings.edit_steps, seed=seed, role=role).latents, settings.noise_seeds)


def train_and_edit(backbone, train_data, eval_data, cfg: TrainConfig, settings: ToySettings, progress=None,
                   seconds: float | None = None):
    """Train (for at most ``seconds`` of wall time when given), then edit the held-out tuples."""
    accelerator = accelerator_for(backbone.device, cfg.mixed_precision)
    start = time.perf_counter()
    out_of_time = None if seconds is None else (lambda: time.perf_counter() - start >= seconds)
    trainer = Trainer(cfg, backbone, train_data, Callbacks(on_step=progress, should_stop=out_of_time),
                      accelerator=accelerator)
    history = trainer.run().history
    trainer.train_seconds = time.perf_counter() - start
    edited = edit_held_out(backbone, trainer.adapters, eval_data, settings, EMA if cfg.use_ema else STUDENT)
    return trainer, edited, history


def load_base(base: str | Path | None = None, device: str | None = None) -> FluxBackbone:
    """The toy base from ``base`` (default: the shipped file), its transformer on ``device``."""
    backbone = build_toy_backbone(base or DEFAULT_TOY_WEIGHTS)
    backbone.transformer.to(device or default_device())
    return backbone


def file_sha256(path: str | Path) -> str:
    """A file's SHA-256: which base a run used, whatever its name (the GPU script names its bases as shipped)."""

    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def environment(device: torch.device) -> dict:
    """Where a run's figures came from. One machine reproduces a run bit for bit; another CPU (MKL picks its code
    path by CPU) or GPU changes the last bits, and ByG's rollouts carry that into figures up to the seeds' spread."""
    processor = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        processor = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                          if line.startswith("model name")), processor)
    return {"torch": torch.__version__, "cpu": processor, "threads": torch.get_num_threads(),
            **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}),
            "float32_matmul_precision": torch.get_float32_matmul_precision(), "code": code_revision()}


def code_revision(folder: Path = Path(__file__).resolve().parents[2]) -> dict:
    """The code a run's figures came from: the pack's version and, where the pack is a git checkout of its own, its
    commit and whether tracked files differ from it (None where it is not, or git is not installed)."""
    import subprocess

    from .. import __version__

    def git(*command: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *command], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")  # the pack's own checkout, not one it was copied into (ComfyUI's)
    commit = git("rev-parse", "HEAD") if top and Path(top).resolve() == folder.resolve() else None
    changes = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"version": __version__, "commit": commit, "modified": None if changes is None else bool(changes)}


def suite_methods(settings: ToySettings, suite: str, names: Sequence[str] | None = None) -> list[str]:
    """The methods ``suite`` runs, in order; ``names`` picks some of them (a GPU script runs them in parallel)."""
    methods = [*BASELINES, *_trained_methods(settings, suite)]
    unknown = sorted(set(names or ()) - set(methods))
    if unknown:
        raise ValueError(f"--methods {', '.join(unknown)}: not in the {suite!r} suite ({', '.join(methods)})")
    return [m for m in methods if names is None or m in names]


def run_methods(
    out: Path, settings: ToySettings, suite: str, log: Callable[[str], None],
    backbone: FluxBackbone | None = None, names: Sequence[str] | None = None,
) -> tuple[dict[str, MethodResult], list[EditTuple]]:
    """The methods of ``suite`` (or those ``names`` picks) on the held-out tuples; the results and those tuples."""
    backbone = backbone or load_base()
    chosen = suite_methods(settings, suite, names)
    train_tuples = sample_tuples(settings.n_train, settings.seed)
    eval_tuples = eval_split(settings.n_eval, settings.eval_seed)
    train_data, eval_data = cached_tuples(backbone, train_tuples), cached_tuples(backbone, eval_tuples)
    results: dict[str, MethodResult] = {}

    def timed(name: str, fn: Callable[[], tuple[torch.Tensor, list]]) -> None:
        if name not in chosen:
            return
        start = time.perf_counter()
        edited, history, *train_seconds = fn()
        results[name] = MethodResult(score(eval_tuples, edited), time.perf_counter() - start, edited, history,
                                     *train_seconds)
        log(f"{name}: {headline(results[name].metrics)} ({results[name].seconds:.0f} s)")
        write_report(out, results, settings, eval_tuples, {"suite": suite, "complete": False})

    def trained(name: str, **overrides):
        def fn():
            reference = overrides.pop(SAME_TIME_AS, None)  # train for the wall time that method's training took
            seconds = results[reference].train_seconds if reference in results else None
            if seconds is not None:
                overrides["steps"] = 4 * settings.steps  # the clock, not the step count, ends the run
            if settings.lora_targets == "all-linear":
                overrides.setdefault("target_modules", list(all_linear_targets(backbone)))
            cfg = settings.train_config(out / "runs" / name, **overrides)
            trainer, edited, history = train_and_edit(backbone, train_data, eval_data, cfg, settings, seconds=seconds)
            return edited, history, trainer.train_seconds
        return fn

    base, seeds = Adapters(backbone, _spec(backbone, settings)), settings.noise_seeds
    sources = render_batch([t.source for t in eval_tuples])
    src_w, tgt_w = settings.baseline_src_guidance, settings.baseline_tgt_guidance
    uncond = backbone.encode_text([""]) if settings.guides_baselines else None
    timed("identity", lambda: (sources.expand(len(seeds), *sources.shape), []))  # the same output for every seed
    timed("sdedit", lambda: (edit_seeds(backbone, eval_data, lambda b, seed: sdedit(
        backbone, base, b.x, b.p_tgt, strength=0.6, steps=settings.edit_steps, seed=seed, guidance=tgt_w,
        uncond=uncond), seeds), []))
    timed("flowedit", lambda: (edit_seeds(backbone, eval_data, lambda b, seed: flowedit(
        backbone, base, b.x, b.p_src, b.p_tgt, steps=settings.edit_steps, seed=seed, src_guidance=src_w,
        tgt_guidance=tgt_w, uncond=uncond), seeds), []))
    for name, overrides in _trained_methods(settings, suite).items():
        timed(name, trained(name, **overrides))
    return results, eval_tuples


def _spec(backbone: FluxBackbone, settings: ToySettings) -> LoraSpec:
    return LoraSpec(settings.rank, float(settings.rank), tuple(backbone.lora_target_modules()))


def _trained_methods(settings: ToySettings, suite: str) -> dict[str, dict]:
    # the reference is Eq. 1 on true pairs alone; ByG's identity warm-up did not raise its preservation (docs/toy_bench.md)
    methods = {"byg": {}, "supervised": {"method": "supervised", "warmup_identity_steps": 0, "identity_prob": 0.0}}
    if suite == "ablations":
        for name, switch in ABLATIONS.items():
            methods[name] = {"objective": settings.objective(**{switch: False})}
    if suite == "cache":  # issue 16's rollout cache: K at ByG's step count, and K for the exact run's wall time
        methods = {"byg": {}, **{f"byg_reuse{k}": {"rollout_reuse": k} for k in CACHE_REUSE},
                   **{f"byg_reuse{k}_same_time": {"rollout_reuse": k, SAME_TIME_AS: "byg"} for k in CACHE_REUSE[1:]}}
    return methods


def _rate(part: dict, key: str) -> str:
    """'0.123 [0.100, 0.150]': a rate and its 95% interval."""
    low, high = part[f"{key}_ci"]
    return f"{part[key]:.3f} [{low:.3f}, {high:.3f}]"


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


def headline(metrics: dict) -> str:
    """The clean-edit rate first, then the lenient criteria, each with its 95% interval."""
    m = metrics["all"]
    return (f"clean edit {_rate(m, 'clean_edit')}, edit success {_rate(m, 'edit_success')}, "
            f"preservation {_rate(m, 'preservation')}, pixel error {m['pixel_error']:.3f} ({m['n']} held-out "
            f"tuples x {m['n_seeds']} noise seeds; clean edit by seed {_spread(m['clean_edit_by_seed'])})")


def _rates(part: dict) -> str:
    return " / ".join(f"{part[k]:.2f}" for k in RATE_KEYS)


def markdown_table(results: dict[str, MethodResult]) -> str:
    head = ("| method | clean edit [95% CI] | edit success [95% CI] | preservation [95% CI] | pixel error | "
            "seen: clean / success / pres. | unseen: clean / success / pres. | time (s) |")
    lines = [head, "|" + "---|" * 8]
    for name, r in results.items():
        m, split = r.metrics["all"], r.metrics["by_split"]
        cells = [_rates(split[s]) if s in split else "-" for s in ("seen", "unseen")]
        lines.append(f"| {name} | {_rate(m, 'clean_edit')} | {_rate(m, 'edit_success')} | {_rate(m, 'preservation')} | "
                     f"{m['pixel_error']:.3f} | {cells[0]} | {cells[1]} | {r.seconds:.0f} |")
    return "\n".join(lines)


def family_table(results: dict[str, MethodResult]) -> str:
    """Clean edit / edit success / preservation of each edit family."""
    lines = ["| method | " + " | ".join(FAMILIES) + " |", "|" + "---|" * (len(FAMILIES) + 1)]
    for name, r in results.items():
        by_family = r.metrics["by_family"]
        lines.append(f"| {name} | " + " | ".join(_rates(by_family[f]) if f in by_family else "-" for f in FAMILIES) + " |")
    return "\n".join(lines)


def seeds_table(results: dict[str, MethodResult]) -> str:
    """Each rate under each noise seed alone: the spread the sampling noise makes."""
    lines = ["| method | " + " | ".join(f"{k} by noise seed" for k in RATE_KEYS) + " |", "|" + "---|" * 4]
    for name, r in results.items():
        m = r.metrics["all"]
        lines.append(f"| {name} | " + " | ".join(" / ".join(f"{v:.3f}" for v in m[f"{k}_by_seed"]) for k in RATE_KEYS) + " |")
    return "\n".join(lines)


def preservation_criteria(metrics: dict) -> dict:
    """The share of edits keeping each criterion preservation ANDs (metrics.evaluate_edit), overall."""
    return {k[len("kept_"):]: v for k, v in metrics["all"].items() if k.startswith("kept_")}


def criteria_table(results: dict[str, MethodResult]) -> str:
    """Which preservation criterion each method fails: the share of edits that keep it."""
    names = list(preservation_criteria(next(iter(results.values())).metrics))
    lines = ["| method | " + " | ".join(f"kept {n}" for n in names) + " |", "|" + "---|" * (len(names) + 1)]
    for method, r in results.items():
        kept = preservation_criteria(r.metrics)
        lines.append(f"| {method} | " + " | ".join(f"{kept[n]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def report_markdown(results: dict[str, MethodResult], settings: ToySettings) -> str:
    """results.md: the rates with their intervals, by family, by noise seed, then the preservation criteria; and the
    baselines' guidance when they ran guided, and the ByG prior's."""
    guided = guided_baseline_methods(list(results)) if settings.guides_baselines else []
    prior = prior_methods(list(results)) if settings.guides_prior else []
    return (markdown_table(results)
            + (f"\n\n{' and '.join(guided)} at classifier-free guidance source {settings.baseline_src_guidance:g}, "
               f"target {settings.baseline_tgt_guidance:g} (SDEdit: the target's)." if guided else "")
            + (f"\n\n{', '.join(prior)}: the prior's base velocities at classifier-free guidance "
               f"{settings.prior_guidance:g}" + (" (the MSE anchor's v_tgt alone; the directional term's unguided)"
                                                 if settings.prior_guidance_terms == "anchor" else "") + "."
               if prior else "")
            + "\n\nBy edit family (clean edit / edit success / preservation):\n\n" + family_table(results)
            + "\n\nBy noise seed:\n\n" + seeds_table(results)
            + "\n\nPreservation criteria (share of edits keeping each):\n\n" + criteria_table(results) + "\n")


def method_report(metrics: dict) -> dict:
    """One method's figures for results.json / metrics.json (schema: docs/toy_bench.md)."""
    overall = {k: v for k, v in metrics["all"].items() if not k.startswith("kept_")}
    return {**overall, "preservation_criteria": preservation_criteria(metrics),
            "by_family": metrics["by_family"], "by_split": metrics["by_split"], "per_tuple": metrics["per_tuple"]}


def held_out_info(settings: ToySettings, tuples: list[EditTuple]) -> dict:
    """What a run was scored on: its held-out draw (and the tuples themselves, hashed in order: ``per_tuple`` lists
    are paired by position, and a draw's sampler once changed under the same seed), the noise seeds and the rule."""
    digest = hashlib.sha256(json.dumps([dataclasses.asdict(t) for t in tuples], sort_keys=True).encode()).hexdigest()
    return {"tuples": len(tuples), "per_family_and_split": len(tuples) // (2 * len(FAMILIES)),
            "eval_seed": settings.eval_seed, "noise_seeds": list(settings.noise_seeds),
            "interval": "95% Wilson over the held-out tuples, each tuple's noise seeds averaged first",
            "clean_edit_rule": CLEAN_EDIT_RULE, "tuples_sha256": digest}


def write_report(out: Path, results: dict[str, MethodResult], settings: ToySettings, tuples, extra: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    methods = {name: method_report(r.metrics) | {"seconds": r.seconds, "train_seconds": r.train_seconds,
                                                  "steps_done": len(r.history)} for name, r in results.items()}
    report = {"methods": methods, "held_out": held_out_info(settings, tuples),
              "settings": dataclasses.asdict(settings), **extra}
    write_text_atomic(out / "results.json", json.dumps(report, indent=2))
    write_text_atomic(out / "results.md", report_markdown(results, settings))
    picks = list(range(0, len(tuples), max(1, len(tuples) // 8)))[:8]
    truth = render_batch([tuples[i].target for i in picks])
    sources = render_batch([tuples[i].source for i in picks])
    rows = [[sources[j]] + [r.edited[0][i] for r in results.values()] + [truth[j]] for j, i in enumerate(picks)]
    save_png(image_grid(rows, ["source", *results, "truth"]), out / "grid.png")


# Batch 32, not the paper's 8: the paper trains 30k steps at batch 8, the bench 1200, so each step carries 4x
# the samples. At batch 8 the supervised reference preserved 0.30 after 1200 steps (rank 64: 0.30, logit-normal
# t: 0.23); at batch 32 0.49 (48 + 48 held-out tuples): the toy editors are limited by the samples they see.
# 288 held-out tuples per split, 96 per family and split: a rate near 0.5 is known within +-0.041 (576 tuples).
BENCH_SETTINGS = ToySettings(batch_size=32, n_eval=288)
# Every code path in seconds (`byg bench --smoke`, the GPU script's --tiny); its figures mean nothing.
SMOKE_SETTINGS = ToySettings(steps=2, batch_size=4, n_train=16, n_eval=3, edit_steps=2, warmup_identity_steps=1,
                             rollout_steps=2, noise_seeds=(0, 1))


def with_steps(settings: ToySettings, steps: int | None, seed: int) -> ToySettings:
    """``settings`` for a run of ``steps`` steps (None: its own); the warm-up takes at most half of them."""
    steps = steps or settings.steps
    warmup = min(settings.warmup_identity_steps, steps // 2)
    return dataclasses.replace(settings, steps=steps, warmup_identity_steps=warmup, seed=seed)


def guided_baseline_methods(methods: Sequence[str]) -> list[str]:
    """Those of ``methods`` that ``ToySettings.baseline_*_guidance`` changes, in ``GUIDED_BASELINES``' order."""
    return [m for m in GUIDED_BASELINES if m in methods]


def prior_methods(methods: Sequence[str]) -> list[str]:
    """Those of ``methods`` that train with ByG's prior (ByG, its ablations, its cached variants): the ones
    ``ToySettings.prior_guidance`` changes."""
    return [m for m in methods if m != "supervised" and m not in BASELINES]


def guidance_asks(settings: ToySettings, methods: Sequence[str]) -> list[tuple[str, str]]:
    """What of ``settings`` asks the base for its unconditional velocity when ``methods`` run: (the flag as given, the
    same flag unguided) for the zero-shot baselines' guidance, then the prior's."""
    asks = []
    if settings.guides_baselines and guided_baseline_methods(methods):
        asks.append((f"--baseline-guidance {settings.baseline_src_guidance:g} {settings.baseline_tgt_guidance:g}",
                     "--baseline-guidance 1 1"))
    if settings.guides_prior and prior_methods(methods):
        asks.append((f"--prior-guidance {settings.prior_guidance:g}", "--prior-guidance 1"))
    return asks


def check_guidance(settings: ToySettings, base: str | Path, methods: Sequence[str]) -> None:
    """Guided baselines and a guided prior need the unconditional velocity, which only a base pretrained with dropped
    captions has."""
    asks = guidance_asks(settings, methods)
    if asks and not has_unconditional(pretrain_record(base)):
        raise ValueError(
            f"{' and '.join(ask for ask, _ in asks)}: the base {base} was pretrained without dropped captions, so it "
            f"has no unconditional velocity to guide against; pass {' and '.join(leave for _, leave in asks)}, or "
            "bench a base pretrained with --p-uncond (the shipped medium one: --base-size medium)"
        )


def run_bench(out: Path, suite: str = "main", steps: int | None = None, seed: int = 0, device: str | None = None,
              base: str | Path | None = None, methods: Sequence[str] | None = None,
              settings: ToySettings | None = None, lr: float | None = None, lr_scheduler: str | None = None,
              batch_size: int | None = None, edit_steps: int | None = None,
              loraplus_lr_ratio: float | None = None, n_train: int | None = None,
              lora_targets: str | None = None, adam_beta2: float | None = None,
              baseline_guidance: tuple[float, float] | None = None, prior_guidance: float | None = None,
              prior_guidance_terms: str | None = None, eval_seed: int | None = None) -> dict:
    """``byg bench``: the methods on the same held-out tuples; writes results.json/.md and grid.png.

    ``device`` (default: the GPU when there is one) and ``base`` (a toy base file, default the shipped one)
    say where and with what; ``methods`` picks some of the suite's methods; ``settings`` replaces BENCH_SETTINGS;
    ``lr``, ``lr_scheduler``, ``loraplus_lr_ratio``, ``adam_beta2``, ``batch_size``, ``n_train`` and ``lora_targets``
    replace its learning rate, its schedule, its LoRA+ ratio, AdamW's second-moment decay, its tuples per step, its
    distinct training tuples and the layers its LoRA wraps for every trained method;
    ``edit_steps`` every method's sampler steps on the held-out tuples; ``baseline_guidance`` (source, target) the
    zero-shot baselines' classifier-free guidance and ``prior_guidance`` that of ByG's prior (each a base pretrained
    with dropped captions only), ``prior_guidance_terms`` which of the prior's velocities that guides; ``eval_seed``
    the draw of the held-out tuples.
    """
    settings = with_steps(settings or BENCH_SETTINGS, steps, seed)
    settings = dataclasses.replace(settings, lr=settings.lr if lr is None else lr,
                                   lr_scheduler=lr_scheduler or settings.lr_scheduler,
                                   loraplus_lr_ratio=loraplus_lr_ratio or settings.loraplus_lr_ratio,
                                   adam_beta2=adam_beta2 or settings.adam_beta2,
                                   batch_size=batch_size or settings.batch_size, n_train=n_train or settings.n_train,
                                   lora_targets=lora_targets or settings.lora_targets,
                                   edit_steps=edit_steps or settings.edit_steps,
                                   prior_guidance=prior_guidance or settings.prior_guidance,
                                   prior_guidance_terms=prior_guidance_terms or settings.prior_guidance_terms,
                                   eval_seed=settings.eval_seed if eval_seed is None else eval_seed)
    if baseline_guidance is not None:
        settings = dataclasses.replace(settings, baseline_src_guidance=baseline_guidance[0],
                                       baseline_tgt_guidance=baseline_guidance[1])
    settings.validate()
    check_guidance(settings, base or DEFAULT_TOY_WEIGHTS, suite_methods(settings, suite, methods))
    start = time.perf_counter()
    backbone = load_base(base, device)
    results, tuples = run_methods(out, settings, suite, print, backbone, methods)
    write_report(out, results, settings, tuples, {
        "suite": suite, "complete": True, "total_seconds": time.perf_counter() - start,
        "base": str(base or DEFAULT_TOY_WEIGHTS), "base_sha256": file_sha256(base or DEFAULT_TOY_WEIGHTS),
        "device": str(backbone.device),
        "environment": environment(backbone.device)})
    print(report_markdown(results, settings), end="")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'grid.png'}")
    return json.loads((out / "results.json").read_text())


# 300 cheap identity steps, 450 ByG steps; 216 held-out tuples per split (72 per family and split, 432 in all):
# a rate near 0.5 is known within +-0.047, the edits of 3 noise seeds take about a minute on 2 cores
DEMO_SETTINGS = ToySettings(steps=750, warmup_identity_steps=300, n_eval=216)


def demo_text(settings: ToySettings, metrics: dict, untrained: dict) -> str:
    """The demo's printout: each rate with its interval and spread over noise seeds, then by family."""
    m, u = metrics["all"], untrained["all"]
    lines = [f"ByG after {settings.steps} steps ({settings.warmup_identity_steps} identity warm-up), {m['n']} held-out "
             f"tuples ({m['n'] // (2 * len(FAMILIES))} per edit family x seen/unseen colour pairs) x {m['n_seeds']} "
             "noise seeds; rate [95% Wilson interval] (by noise seed), untrained editor for reference:"]
    for key in RATE_KEYS:
        lines.append(f"  {key:<13} {_rate(m, key)} ({_spread(m[f'{key}_by_seed'])})   untrained {_rate(u, key)}")
    lines.append("  by family (clean edit / edit success / preservation): " + ", ".join(
        f"{name} {_rates(part)}" for name, part in metrics["by_family"].items()))
    return "\n".join(lines)


def run_demo(out: Path, steps: int | None = None, seed: int = 0) -> dict:
    """``byg demo``: train ByG on the toy world, save the LoRA, a before/after grid, a loss plot, metrics."""
    from ..cli import Progress

    settings = with_steps(DEMO_SETTINGS, steps, seed).validate()
    start = time.perf_counter()
    backbone = load_base()
    train_data = cached_tuples(backbone, sample_tuples(settings.n_train, settings.seed))
    tuples = eval_split(settings.n_eval, settings.eval_seed)
    eval_data = cached_tuples(backbone, tuples)
    cfg = settings.train_config(out / "run")
    untrained = score(tuples, edit_held_out(backbone, Adapters(backbone, _spec(backbone, settings)), eval_data, settings))
    trainer, edited, history = train_and_edit(
        backbone, train_data, eval_data, cfg, settings, Progress(settings.steps, "byg demo", every=10))
    metrics = score(tuples, edited)
    out.mkdir(parents=True, exist_ok=True)
    lora = save_lora(out / "byg_toy_lora.safetensors", backbone, trainer.adapters, config=cfg.to_dict())
    write_history(history, out / "losses.jsonl")
    save_png(loss_curve(history), out / "loss.png")
    picks = list(range(0, len(tuples), max(1, len(tuples) // 8)))[:8]  # every family and split
    sources = render_batch([tuples[i].source for i in picks])
    truth = render_batch([tuples[i].target for i in picks])
    save_png(image_grid([[s, edited[0][i], t] for s, i, t in zip(sources, picks, truth)],
                        ["source", "ByG edit", "truth"]), out / "grid.png")
    report = {
        "byg": method_report(metrics), "untrained": method_report(untrained), "held_out": held_out_info(settings, tuples),
        "steps": settings.steps, "seconds": time.perf_counter() - start, "lora": [str(p) for p in lora],
        "environment": environment(backbone.device),
        "instructions": [tuples[i].instruction for i in picks],
    }
    write_text_atomic(out / "metrics.json", json.dumps(report, indent=2))
    print(demo_text(settings, metrics, untrained))
    print(f"wrote {out}/byg_toy_lora.safetensors, grid.png, loss.png, metrics.json in {report['seconds']:.0f} s")
    return report
