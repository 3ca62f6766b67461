"""The ByG training loop (Algorithm 1) on ``accelerate``, with checkpoints that resume exactly.

Every random draw of step k comes from a generator seeded by (seed, k, process), so a run
stopped at step k and resumed is bit-for-bit the run that never stopped. Checkpoints hold
the student and EMA LoRA, the AdamW state, the step and the loss history, in one
safetensors file written atomically (no pickle anywhere).
"""

from __future__ import annotations

import glob
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.utils.checkpoint
from torch.profiler import record_function
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast
from diffusers.optimization import get_scheduler

from .adapters import EMA, STUDENT, Adapters, Generators, LoraSpec
from .bootstrap import RolloutCache, cached_rollout, snap_to_grid
from .backbones.base import EditBackbone
from .config import TrainConfig
from .data import CachedEdits, data_fingerprint
from .lora_io import EXPERT_SUFFIX, finished_lora, lora_steps, save_lora, set_aside
from .objective import StepLosses, byg_step, identity_step, supervised_step
from .safefiles import load_checked, meta_json, read_metadata, save_atomic, write_text_atomic
from .sample import EDIT_STEPS, edit
from .timesteps import TIMESTEP_SAMPLERS

CHECKPOINT = "checkpoint.safetensors"
# fields that must match between a checkpoint and the run resuming it: the model, the LoRA, and what it learns from
# and how, its t, identity steps and EMA included (a run may change its length, lr and cadences)
RESUME_KEYS = ("model", "rank", "lora_alpha", "target_modules", "seed", "batch_size", "data", "resolution", "frames",
               "frame_stride", "method", "use_ema", "ema_decay", "objective", "warmup_identity_steps", "identity_prob",
               "timesteps", "logit_mean", "logit_std", "shift", "expert")


class ResumeMismatch(ValueError):
    """A checkpoint made with another value of a field a resumed run must keep (``RESUME_KEYS``)."""

    def __init__(self, path: Path, key: str, saved, current) -> None:
        self.key, self.saved, self.current = key, saved, current
        super().__init__(f"checkpoint {path} was made with {key}={saved!r}, this run has {key}={current!r}")


@dataclass
class Callbacks:
    """Hooks for a host (CLI progress bar, ComfyUI's progress bar and interrupt, previews)."""

    on_step: Callable[[int, dict[str, float]], None] | None = None  # (step, loss terms)
    should_stop: Callable[[], bool] | None = None  # polled once per step
    on_preview: Callable[[int, torch.Tensor], None] | None = None  # (step, edited pixels)


@dataclass
class TrainResult:
    steps_done: int
    stopped_early: bool
    lora_paths: list[Path]
    checkpoint: Path | None  # None: stopped before its first step, nothing written
    history: list[dict[str, float]] = field(default_factory=list)
    set_aside: list[Path] = field(default_factory=list)  # an earlier finished LoRA of this name, renamed _step<K>


class Diverged(ValueError):
    """The student LoRA's weights became nan or inf (a learning rate too high for the model): nothing is written;
    ``kept`` is the step of the run's checkpoint left to resume (None: none)."""

    def __init__(self, message: str, kept: int | None) -> None:
        super().__init__(message)
        self.kept = kept


class Trainer:
    """Trains the student LoRA of ``backbone`` on cached edit tuples."""

    def __init__(
        self,
        config: TrainConfig,
        backbone: EditBackbone,
        data: CachedEdits,
        callbacks: Callbacks | None = None,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.cfg = config.validate()
        self.backbone = backbone
        self.data = data
        self.callbacks = callbacks or Callbacks()
        self.accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision, cpu=_no_accelerator())
        if self.accelerator.gradient_accumulation_steps != 1 or self.accelerator.scaler is not None:
            raise ValueError("the Trainer's accelerator must not rescale losses (no gradient accumulation, no fp16 "
                             "loss scaling): byg_step's staged backward carries a gradient from one backward call "
                             "into the next; use mixed_precision 'bf16' and a larger batch_size instead")
        for transformer in backbone.transformers.values():
            transformer.to(self.accelerator.device)
            if config.gradient_checkpointing:
                transformer.enable_gradient_checkpointing(_checkpoint_non_reentrant)
            elif getattr(transformer, "gradient_checkpointing", False):
                transformer.disable_gradient_checkpointing()  # a shared backbone keeps no earlier run's setting
        if config.expert not in ("auto", *backbone.transformers):
            raise ValueError(f"expert must be 'auto' or one of {list(backbone.transformers)}, got {config.expert!r}")
        targets = tuple(config.target_modules or backbone.lora_target_modules())
        self.adapters = Adapters(backbone, LoraSpec(config.rank, config.alpha, targets), seed=config.seed)
        if self.accelerator.num_processes > 1:  # every process starts from the main one's LoRA, whatever its GPU drew
            for p in self.adapters.parameters(STUDENT) + self.adapters.parameters(EMA):
                p.data.copy_(broadcast(p.data.contiguous(), from_process=0))
        self.G = Generators(backbone, self.adapters, use_ema=config.use_ema)
        self.optimizer = torch.optim.AdamW(  # one fused kernel for all LoRA tensors where the device has it
            self._param_groups(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, config.adam_beta2),
            fused=self.accelerator.device.type == "cuda",
        )
        self.lr_schedule = self._lr_schedule(last_step=0)
        self.sample_t = TIMESTEP_SAMPLERS[config.timesteps](
            shift=config.shift, mean=config.logit_mean, std=config.logit_std
        )
        self.rollouts = RolloutCache(config.rollout_reuse, config.rollout_max_age) if config.rollout_reuse > 1 else None
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._pending: list[tuple[int, str, dict[str, torch.Tensor]]] = []  # (step, kind, losses) not read yet
        self._saved_at: int | None = None  # the step of this run's last checkpoint
        self.output_dir = Path(config.output_dir)

    def _param_groups(self) -> list[dict]:
        """The student's LoRA matrices in one group at lr; with LoRA+ (loraplus_lr_ratio != 1) the B matrices in a
        second group at that multiple of it (Hayou et al. 2024)."""
        ratio, lr = self.cfg.loraplus_lr_ratio, self.cfg.lr
        if ratio == 1:
            return [{"params": self.adapters.parameters(STUDENT), "lr": lr}]
        return [{"params": self.adapters.parameters(STUDENT, matrices="A"), "lr": lr},
                {"params": self.adapters.parameters(STUDENT, matrices="B"), "lr": lr * ratio}]

    def _lr_schedule(self, last_step: int) -> torch.optim.lr_scheduler.LambdaLR:
        """The learning rate of each step (diffusers' schedules), set for the step after ``last_step``."""
        name = "constant_with_warmup" if self.cfg.lr_scheduler == "constant" and self.cfg.lr_warmup_steps else \
            self.cfg.lr_scheduler
        return get_scheduler(name, self.optimizer, num_warmup_steps=self.cfg.lr_warmup_steps,
                             num_training_steps=self.cfg.lr_decay_steps or self.cfg.steps, last_epoch=last_step - 1)

    # --- one step -------------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        seed = (self.cfg.seed * 1_000_003 + self.step) * 257 + self.accelerator.process_index
        return torch.Generator().manual_seed(seed)

    def _timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        t = self.sample_t(n, generator)
        if self.cfg.expert != "auto":
            low, high = self._expert_grid_range()
            t = snap_to_grid(low + t * (high - low), self.cfg.objective.rollout_steps)
        return t

    def _expert_grid_range(self) -> tuple[float, float]:
        """The t interval that snaps onto rollout-grid points k/n served by the chosen expert.

        Squeezing t into the expert's own range is not enough: the rollout snaps t to k/n,
        and e.g. t = 0.86 (low-noise expert) would snap to 0.9 (high-noise expert). The interval is the expert's steps'
        cells ((k-1)/n, k/n], so uniform t covers each of its k/n equally often, as on the whole grid.
        """
        n = self.cfg.objective.rollout_steps
        ks = [k for k in range(1, n + 1) if self.backbone.expert_for(k / n) == self.cfg.expert]
        if not ks:
            raise ValueError(f"no rollout step k/{n} falls on expert {self.cfg.expert!r}; raise rollout_steps")
        return (min(ks) - 1 + 1e-3) / n, max(ks) / n

    def is_identity_step(self, coin: float) -> bool:
        """Warm-up steps, then random identity steps with probability identity_prob (B.1)."""
        if self.step < self.cfg.warmup_identity_steps:
            return True
        return self.cfg.objective.identity_steps and coin < self.cfg.identity_prob

    def train_step(self) -> StepLosses:
        g = self._generator()
        index = torch.randint(len(self.data), (self.cfg.batch_size,), generator=g).tolist()
        batch = self.data.batch(self.backbone, index, uncond=self.cfg.objective.guides_prior)
        t = self._timesteps(self.cfg.batch_size, g).to(batch.x.device)
        eps = torch.randn(batch.x.shape, generator=g).to(batch.x)
        identity = self.is_identity_step(float(torch.rand((), generator=g)))
        with self.accelerator.autocast():
            if identity:  # the warm-up and random identity steps serve either method (B.1)
                losses = identity_step(self.G, batch, t, eps)
            elif self.cfg.method == "supervised":
                losses = supervised_step(self.G, batch, t, eps)
            else:
                rollout = None
                if self.rollouts is not None and self.cfg.objective.bootstrap:
                    with record_function("byg.rollout"):
                        rollout, eps = cached_rollout(self.G, self.rollouts, index, batch.x, batch.c, eps, t,
                                                      self.cfg.objective.rollout_steps, self.step)
                losses = byg_step(self.G, batch, t, eps, self.cfg.objective, backward=self.accelerator.backward,
                                  rollout=rollout)
        if not losses.backpropagated:
            with record_function("byg.backward"):
                self.accelerator.backward(losses.total)
        with record_function("byg.optimizer"):
            self._sync_and_clip()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.lr_schedule.step()
            if self.cfg.use_ema:
                self.adapters.ema_update(self.cfg.ema_decay)
        self.step += 1
        return losses

    def _sync_and_clip(self) -> None:
        """Average student gradients over processes (no DDP wrapper: one module plays three roles). A parameter
        one process left without a gradient (a two-expert Wan whose t there all fell on the other expert) counts
        as zero there, so each tensor is averaged with its own counterpart; one no process touched keeps none."""
        params = self.adapters.parameters(STUDENT)
        if self.accelerator.num_processes > 1:
            touched = torch.tensor([float(p.grad is not None) for p in params], device=self.accelerator.device)
            for p, anywhere in zip(params, self.accelerator.reduce(touched, reduction="sum").tolist()):
                if anywhere:
                    grad = torch.zeros_like(p) if p.grad is None else p.grad
                    p.grad = self.accelerator.reduce(grad, reduction="mean")
        params = [p for p in params if p.grad is not None]
        if self.cfg.grad_clip > 0 and params:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)

    # --- the loop -------------------------------------------------------------------
    def run(self) -> TrainResult:
        stopped, start = False, self.step
        while self.step < self.cfg.steps:
            if self._should_stop():
                stopped = True
                break
            losses = self.train_step()
            self._pending.append((self.step, losses.kind, {"loss": losses.total.detach(),
                                                           **{k: v.detach() for k, v in losses.terms.items()}}))
            # the loss floats are read from the device every log_every steps, not each step (a host sync each)
            due = self.step % max(self.cfg.log_every, 1) == 0 or self.step == self.cfg.steps
            record = self._flush() if due else {"step": self.step}
            if self.callbacks.on_step:
                self.callbacks.on_step(self.step, record)
            if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if self.cfg.preview_every and self.step % self.cfg.preview_every == 0 and self.callbacks.on_preview:
                self.callbacks.on_preview(self.step, self.preview())
        written = finished_lora(self._lora_path(), list(self.backbone.transformers))
        if self.step == start and (self.step == 0 or written and lora_steps(written[0]) == self.step):
            # nothing trained: stopped before its first step, a run writes nothing (an untrained LoRA would take its
            # name); a resumed run (finished, or stopped again) keeps its LoRA and checkpoint as they were
            checkpoint = self.checkpoint_path if self.checkpoint_path.is_file() else None
            return TrainResult(self.step, stopped, written, checkpoint, self.history)
        checkpoint = self.checkpoint_path if self._saved_at == self.step else self.save_checkpoint()
        aside = set_aside(self._lora_path(), list(self.backbone.transformers)) if self.accelerator.is_main_process else []
        return TrainResult(self.step, stopped, self.save_lora(), checkpoint, self.history, aside)

    def _should_stop(self) -> bool:
        """The host's stop (Cancel, Ctrl-C), on every process at the same step once any process sees it: one that
        stopped alone would leave the others waiting in the next gradient reduce."""
        stop = bool(self.callbacks.should_stop and self.callbacks.should_stop())
        if self.accelerator.num_processes > 1:
            anywhere = self.accelerator.reduce(torch.tensor([float(stop)], device=self.accelerator.device), reduction="sum")
            stop = bool(anywhere.item() > 0)
        return stop

    def _flush(self) -> dict[str, float]:
        """Move the losses of the steps since the last flush into ``history`` as floats, in one device read;
        the newest record."""
        if not self._pending:
            return self.history[-1] if self.history else {"step": self.step}
        tensors = [v.float().reshape(()) for _, _, terms in self._pending for v in terms.values()]
        values = iter(torch.stack(tensors).tolist())
        for step, kind, terms in self._pending:
            record = {"step": step, **{name: next(values) for name in terms}}
            self.history.append(record | {"identity_step": float(kind == "identity")})
        self._pending.clear()
        # a nan loss: stop now where the weights went with it, not after every step left; with several processes each
        # checks (their weights are one), as one process's nan batch alone would leave the others in a collective
        if self.accelerator.num_processes > 1 or not all(math.isfinite(v) for v in self.history[-1].values()):
            self._check_finite()
        return self.history[-1]

    def _check_finite(self) -> None:
        """Raise ``Diverged`` where a student weight is nan or inf, before it is written over the last checkpoint."""
        params = self.adapters.parameters(STUDENT)
        if torch.stack([torch.isfinite(p).all() for p in params]).all():
            return
        bad = next((r["step"] for r in self.history if not math.isfinite(r.get("loss", 0.0))), None)
        kept = self._saved_at  # this run's own last checkpoint (a resumed run's is its start)
        again = (f"the checkpoint of step {kept} ({self.checkpoint_path}) is kept: resume it" if kept is not None
                 else "no checkpoint of it was written: start it again")
        clip = ", or grad_clip above 0 (now 0: off)" if self.cfg.grad_clip == 0 else ""
        raise Diverged(f"training diverged: the LoRA's weights are not finite (nan or inf) after step {self.step}"
                       f"{f' (the loss first not finite at step {bad})' if bad is not None else ''}; nothing was written "
                       f"and {again} with a lower lr (now {self.cfg.lr}){clip}", kept)

    def preview(self, count: int = 4, steps: int = EDIT_STEPS) -> torch.Tensor:
        """Edit the first ``count`` sources with the current EMA editor as an edit after training would (its seed;
        FLUX's steps: a Wan model's own sampler takes more, which a preview does not spend); pixels (N, 3, ...)."""
        batch = self.data.batch(self.backbone, list(range(min(count, len(self.data)))))
        role = EMA if self.cfg.use_ema else STUDENT
        edited = edit(self.backbone, self.adapters, batch.x, batch.c, steps=steps, seed=self.cfg.seed, role=role)
        return self.backbone.decode_latents(edited.latents)

    def save_lora(self) -> list[Path]:
        """The LoRA of the steps done: ``<save_name>.safetensors`` when the run is complete, else
        ``<save_name>_step<N>.safetensors``, so a stopped run never takes the finished LoRA's name.
        Its config says ``steps = N`` (and the schedule's length): that config, trained from scratch, gives this
        very file."""
        self._check_finite()
        if not self.accelerator.is_main_process:
            return []
        role = EMA if self.cfg.use_ema else STUDENT
        config = self.cfg.to_dict() | {"steps": self.step, "lr_decay_steps": self.cfg.lr_decay_steps or self.cfg.steps}
        return save_lora(self._lora_path(), self.backbone, self.adapters, role=role, config=config)

    def _lora_path(self) -> Path:
        name = self.cfg.save_name if self.step >= self.cfg.steps else f"{self.cfg.save_name}_step{self.step}"
        return self.output_dir / f"{name}.safetensors"

    # --- checkpoints ----------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT

    def save_checkpoint(self) -> Path:
        self._flush()  # the checkpoint holds the whole history
        self._check_finite()
        self._saved_at = self.step
        if not self.accelerator.is_main_process:
            return self.checkpoint_path
        tensors = {f"student/{k}": v for k, v in self.adapters.state_dict(STUDENT).items()}
        tensors |= {f"ema/{k}": v for k, v in self.adapters.state_dict(EMA).items()}
        optim = self.optimizer.state_dict()
        for index, state in optim["state"].items():
            tensors |= {f"optim/{index}/{name}": torch.as_tensor(value) for name, value in state.items()}
        metadata = {
            "byg.step": self.step,
            "byg.config": self.cfg.to_dict(),
            "byg.param_groups": optim["param_groups"],
            "byg.history": self.history,
            "byg.data": data_fingerprint(self.data.records),  # the tuples it trained on (same_finished_run)
            "byg.processes": self.accelerator.num_processes,  # a step's batch is batch_size on each of them
        }
        return save_atomic(tensors, self.checkpoint_path, metadata)

    def resume(self, path: str | Path | None = None) -> int:
        """Continue from a checkpoint; a missing, corrupt or mismatched one raises and changes nothing."""
        path = Path(path) if path else self.checkpoint_path
        tensors, raw = load_checked(path, "checkpoint")
        check_resumable(self.cfg, path, raw)
        data = data_fingerprint(self.data.records)
        if raw.get("byg.data", data) != data:  # a checkpoint older than its "byg.data" is taken at its word
            # said, not refused: a fixed caption is the user's to make, and a copy without its timestamps looks so too
            warnings.warn(f"checkpoint {path} was made on the dataset as it was before: a line or a file of "
                          f"{self.cfg.data} changed since (or its files' times); the resumed run trains on it as it is "
                          "now, so it is not the run that never stopped", stacklevel=2)
        made_on, now = int(raw.get("byg.processes", self.accelerator.num_processes)), self.accelerator.num_processes
        if made_on != now and self.accelerator.is_main_process:  # said, not refused: a machine may have lost a GPU
            # (a checkpoint from before the count was recorded is taken at its word)
            warnings.warn(f"checkpoint {path} was made on {made_on} process(es), this run has {now}: each step now "
                          f"averages {now} x batch_size = {now * self.cfg.batch_size} samples (it was {made_on * self.cfg.batch_size}), "
                          "so the resumed run is not the run that never stopped; launch it on "
                          f"{made_on} GPU(s) to continue that run", stacklevel=2)
        step, history = int(meta_json(raw, "byg.step", path)), list(meta_json(raw, "byg.history", path))
        optim_state = self._optimizer_state(tensors, meta_json(raw, "byg.param_groups", path), path)
        student = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("student/")}
        ema = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("ema/")}
        try:  # another model's shapes under this model's name (other weights): said with the checkpoint
            self.adapters.check_state_dict(STUDENT, student)
            self.adapters.check_state_dict(EMA, ema)
        except ValueError as error:
            raise ValueError(f"checkpoint {path} does not fit this model: {error}; resume with the model files it "
                             "was made with, or start a new run in another output_dir") from None
        self.optimizer.load_state_dict(optim_state)  # validates before it changes anything
        self.adapters.load_state_dict(STUDENT, student)
        self.adapters.load_state_dict(EMA, ema)
        self.step = self._saved_at = step
        # the schedule is a function of the step: this run's, from its lr (each group's); AdamW's beta2 and weight
        # decay are this run's too (load_state_dict had put back the checkpoint's)
        for group, start in zip(self.optimizer.param_groups, self._param_groups()):
            group["initial_lr"] = start["lr"]
            group["betas"], group["weight_decay"] = (0.9, self.cfg.adam_beta2), self.cfg.weight_decay
        self.lr_schedule = self._lr_schedule(last_step=self.step)
        self.history = history
        return self.step

    def _optimizer_state(self, tensors: dict[str, torch.Tensor], groups: list, path: Path) -> dict:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, index, name = key.split("/")
                state.setdefault(int(index), {})[name] = value.to(self.accelerator.device) if name != "step" else value
        if len(groups) != len(self.optimizer.param_groups):
            raise ValueError(f"checkpoint {path} holds {len(groups)} optimizer groups, this run has "
                             f"{len(self.optimizer.param_groups)}: resume it with the loraplus_lr_ratio it was made with "
                             "(1: one group; another: two)")
        return {"state": state, "param_groups": groups}


def _checkpoint_non_reentrant(module, *args):
    """Activation checkpointing that keeps LoRA gradients (``use_reentrant=True`` drops them)."""
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


def warmup_only(cfg: TrainConfig) -> str | None:
    """What to say when every step of a run (ByG's or the supervised reference's) is an identity step, a warm-up one
    or a random one at identity_prob 1 (its LoRA learns no edit), else None."""
    if cfg.steps <= cfg.warmup_identity_steps:
        return (f"all {cfg.steps} steps are identity warm-up steps (warmup_identity_steps = "
                f"{cfg.warmup_identity_steps}): the LoRA learns to copy its source, no edit; raise steps or lower "
                "warmup_identity_steps")
    if cfg.identity_prob >= 1 and cfg.objective.identity_steps:
        return ("identity_prob = 1: every step is an identity step, the LoRA learns to copy its source, no edit; "
                "lower identity_prob (B.1: 0.15)")
    return None


def existing_run(output_dir: str | Path) -> str | None:
    """The checkpoint a run left in ``output_dir``, said ("checkpoint at step 2"; None where there is none), so a
    fresh run can refuse to overwrite it; a checkpoint that cannot be read still counts as a run, said so."""
    path = Path(output_dir) / CHECKPOINT
    if not path.is_file():
        return None
    metadata = read_metadata(path)
    if metadata is None or "byg.step" not in metadata:
        return f"checkpoint {path}, which cannot be read (it may be truncated)"
    return f"checkpoint at step {int(metadata['byg.step'])}"


def check_resumable(cfg: TrainConfig, path: Path | None = None, raw: dict | None = None) -> None:
    """Raise ``ResumeMismatch`` where ``cfg`` differs from the checkpoint's config in a ``RESUME_KEYS`` field (the
    checkpoint at ``path``, ``cfg.output_dir``'s by default; its metadata ``raw`` read here unless given), a ValueError
    where the checkpoint is past ``cfg.steps``, FileNotFoundError where there is none. An unreadable checkpoint passes:
    ``Trainer.resume`` names it."""
    path = path or Path(cfg.output_dir) / CHECKPOINT
    if raw is None and not path.is_file():
        raise FileNotFoundError(f"nothing to resume: checkpoint {path} does not exist; start a new run, or continue the "
                                "run whose folder holds its checkpoint")
    raw = raw if raw is not None else read_metadata(path)
    if not raw or "byg.config" not in raw:
        return
    saved = meta_json(raw, "byg.config", path)
    key = first_difference(saved, cfg.to_dict(), RESUME_KEYS)
    if key is not None:
        raise ResumeMismatch(path, key, saved.get(key), cfg.to_dict()[key])
    done = int(meta_json(raw, "byg.step", path))
    if done > cfg.steps:  # else its LoRA would take the finished name, of a schedule that decayed over other steps
        raise ValueError(f"checkpoint {path} is at step {done}, past this run's steps = {cfg.steps}: set steps to {done} "
                         "or more to continue it")


def first_difference(saved: dict, now: dict, keys) -> str | None:
    """The first of ``keys`` whose value a saved config and this run's differ in (None: none does)."""
    return next(iter(differences(saved, now, keys)), None)


def differences(saved: dict, now: dict, keys) -> list[str]:
    """The ``keys`` whose value a saved config and this run's differ in; ``data`` is one folder however written
    (data/, ./data)."""
    found = []
    for key in keys:
        was, wanted = saved.get(key), now.get(key)
        if key == "data" and was is not None and wanted is not None:
            was, wanted = Path(was), Path(wanted)
        if was != wanted:
            found.append(key)
    return found


def run_changes(cfg: TrainConfig) -> list[tuple[str, object, object]]:
    """(field, the checkpoint's value, ``cfg``'s) for each field but ``BOOKKEEPING_KEYS`` in which ``cfg`` differs from
    the run ``cfg.output_dir`` holds, so a refusal can say what changed; [] where there is no readable checkpoint."""
    path = Path(cfg.output_dir) / CHECKPOINT
    metadata = read_metadata(path) if path.is_file() else None
    if not metadata or "byg.config" not in metadata:
        return []
    saved, now = meta_json(metadata, "byg.config", path), cfg.to_dict()
    keys = [k for k in {**saved, **now} if k not in BOOKKEEPING_KEYS]
    return [(key, saved.get(key), now.get(key)) for key in differences(saved, now, keys)]


# fields that change where a run writes and what it shows, never what it trains
BOOKKEEPING_KEYS = ("output_dir", "text_cache_dir", "checkpoint_every", "preview_every", "log_every")


def same_finished_run(cfg: TrainConfig, data: str) -> TrainResult | None:
    """``cfg.output_dir``'s run when it is this very run, finished: its checkpoint is at ``cfg.steps``, was made with
    ``cfg`` in every field but ``BOOKKEEPING_KEYS`` and on the tuples whose ``data.data_fingerprint`` is ``data``, and
    its LoRA is there; else None. Asked for again (a host re-running an unchanged graph, after a restart or an edit
    elsewhere in it), such a run is returned as it is, without loading or encoding anything, not refused."""
    path = Path(cfg.output_dir) / CHECKPOINT
    metadata = read_metadata(path) if path.is_file() else None
    if not metadata or metadata.get("byg.step") != str(cfg.steps) or metadata.get("byg.data") != data:
        return None
    if run_changes(cfg):
        return None
    written = existing_lora(cfg.output_dir, cfg.save_name)
    if not written or any(lora_steps(p) != cfg.steps for p in written):
        return None
    return TrainResult(cfg.steps, False, written, path, json.loads(metadata["byg.history"]))


def existing_lora(output_dir: str | Path, save_name: str) -> list[Path]:
    """The finished LoRA files named ``save_name`` in ``output_dir`` (one model's or a two-expert pair's), so a fresh
    run can refuse them where their checkpoint was deleted."""
    path = Path(output_dir) / f"{save_name}.safetensors"
    return sorted({*finished_lora(path, ["transformer"]), *finished_lora(path, ["transformer", "transformer_2"])})


def stopped_loras(folder: str | Path, save_name: str) -> list[Path]:
    """The LoRA files of stopped runs named ``save_name`` in ``folder`` (``<save_name>_step<N>``, each expert's), so a
    fresh run that would stop at the same step cannot write over one."""
    experts = "|".join(f"_{suffix}" for suffix in EXPERT_SUFFIX.values())
    name = re.compile(rf"{re.escape(save_name)}_step\d+({experts})?\.safetensors")
    return sorted(p for p in Path(folder).glob(f"{glob.escape(save_name)}_step*.safetensors") if name.fullmatch(p.name))


def accelerator_for(device: torch.device | str, mixed_precision: str):
    """The Trainer takes the GPU when there is one; a run asked to stay on the CPU passes it this (accelerate
    allows one choice per process: a process that trained on the GPU already cannot switch); None otherwise."""
    if torch.device(device).type == "cpu" and not _no_accelerator():
        return Accelerator(mixed_precision=mixed_precision, cpu=True)
    return None


def _no_accelerator() -> bool:
    """accelerate runs several CPU processes (gloo) only when told the run is on the CPU."""
    return not (torch.cuda.is_available() or torch.backends.mps.is_available())


# how long a process waits for the others (NCCL's default, 10 minutes, ends a run whose main process is still
# encoding thousands of prompts into the disk text cache while the others wait for it)
PROCESS_TIMEOUT = timedelta(hours=2)


def processes() -> PartialState:
    """The processes ``accelerate launch`` started (one without it), known before a Trainer exists: what they
    share (a disk text cache, the run folder's reports) is written by the main process alone."""
    return PartialState(cpu=_no_accelerator(), timeout=PROCESS_TIMEOUT)


def check_launch(env: Mapping[str, str], mixed_precision: str) -> list[str]:
    """What ``accelerate launch`` (its flags or ``accelerate config``, passed in ``env``) asks that the Trainer does not
    do, found before the model loads: DeepSpeed, FSDP, Megatron-LM and gradient accumulation are refused (the Trainer
    averages the LoRA's gradients itself, step by step); a launcher's mixed precision other than the config's is
    named in the warnings returned (the config's ``mixed_precision`` is the one used)."""
    for flag, name in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP"),
                       ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")):
        if env.get(flag, "false").lower() in ("1", "true", "yes"):
            raise ValueError(f"accelerate launch was set up for {name} (its flags or `accelerate config`), which byg "
                             "train does not use: it averages the LoRA's gradients over plain processes; launch with "
                             "--multi_gpu and without --use_deepspeed / --use_fsdp, or answer 'no' to them in "
                             "`accelerate config`")
    steps = env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    if steps != "1":
        raise ValueError(f"accelerate launch asks for {steps} gradient accumulation steps, which byg train does not "
                         "do (byg_step's staged backward carries a gradient from one backward call into the next): "
                         "launch with --gradient_accumulation_steps 1 and raise batch_size instead")
    launcher = env.get("ACCELERATE_MIXED_PRECISION", "no")
    if launcher not in ("no", mixed_precision):
        return [f"accelerate launch's mixed precision ({launcher}) is not used: the config's mixed_precision = "
                f"{mixed_precision!r} is; set mixed_precision in the config (or --set mixed_precision={launcher})"]
    return []


def write_history(history: list[dict[str, float]], path: Path) -> Path:
    """The per-step loss terms as JSON lines (for plots and the closing note)."""
    return write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in history))
