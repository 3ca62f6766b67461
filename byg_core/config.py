"""``TrainConfig``: the one typed configuration the CLI, the nodes and the bench all build.

Loadable from TOML (objective weights and ablation switches live in an ``[objective]``
table). Every bad value is refused with a message naming the field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .objective import ObjectiveConfig, refuse_non_finite
from .timesteps import TIMESTEP_SAMPLERS
from .video_io import check_frame_count

MIXED_PRECISION = ("no", "bf16")
# what video training changes from the image defaults (paper appendix B.2, C.1)
VIDEO_PRESET: dict[str, Any] = {
    "lr": 1e-4,
    "identity_prob": 0.1,
    "timesteps": "logit_normal",
    "shift": 12.0,
    "use_ema": False,
}
# What each kind of base model trains with unless the user says otherwise, on top of the dataclass's
# paper defaults (B.1). A model loader names its preset (byg_core.loading); the CLI's TOML and the
# node's widgets override any field.
PRESETS: dict[str, dict[str, Any]] = {
    # FLUX.1: the paper's image values (B.1; t ~ U(0, 1) as Algorithm 1). Noisier t (shift = 3.1582, FLUX.1-dev's own
    # sampling shift at 1024 px) doubled both toy editors' clean edits on the same architecture (docs/toy_bench.md,
    # "Noisier t for the editors") but is not measured on FLUX.1-dev, so the paper's value stays the default
    # The real models also recompute activations in the backward pass, as the example TOMLs do: FLUX.1-dev at batch 8
    # and 512 px holds ~115 GB of them otherwise, ~7 GB with it (bf16; byg_core.memory.estimate's count)
    "flux": {"gradient_checkpointing": True},
    # Wan2.2: the paper's video values (B.2: 750 steps at batch 8, as the example TOMLs)
    "wan": VIDEO_PRESET | {"steps": 750, "gradient_checkpointing": True},
    # the toy FLUX-architecture base on a 2-core CPU: a clear colour edit within minutes (with the toy
    # workflow's objective, lambda_id 3 and a 4-step rollout: 0.81 edit success on 48 held-out tuples, 3 min on one
    # core; 500 steps at batch 8 or 4 left the circle red). The paper's 3e-4 and rank 64 are for a 12B model.
    # noisier t (shift 4) doubled both toy editors' clean edits at the bench's budget (toy.bench.ToySettings.shift)
    "toy": {"steps": 700, "batch_size": 8, "lr": 3e-3, "rank": 16, "warmup_identity_steps": 200, "ema_decay": 0.95,
            "shift": 4.0},
    # the tiny random Wan stand-ins: the video path end to end in a minute, not edit quality
    "toy-wan": VIDEO_PRESET | {"steps": 40, "batch_size": 2, "rank": 16, "warmup_identity_steps": 5},
}
METHODS = ("byg", "supervised")
MAX_SEED = 2**32 - 1  # each step's generator seed is derived from it (Trainer._generator) in 64 bits; the nodes' too
LR_SCHEDULERS = ("constant", "linear", "cosine")


@dataclass
class TrainConfig:
    """Paper defaults (appendix B.1) unless a comment says otherwise."""

    # what to train on what
    model: str = "toy"  # a loader's name (byg_core.loading.LOADERS): "toy", "toy-wan-5b", "flux1-dev", ...
    # the user's files for a model that needs them, e.g. flux1-dev: folder = a local diffusers folder, or
    # transformer / vae / clip_l / t5 single files and tokenizers = a diffusers folder; dtype = "bfloat16" on GPUs
    model_files: dict[str, str] = field(default_factory=dict)
    # keep encoded prompts on disk in this folder instead of memory (T5-XXL: 4-8 MB a prompt); reused by later runs
    text_cache_dir: str | None = None
    data: str = ""  # dataset folder holding edits.jsonl
    output_dir: str = "runs/byg"  # checkpoint, LoRA, logs
    save_name: str = "byg_lora"  # LoRA file name (without .safetensors)
    resolution: list[int] | None = None  # [H, W] sources are resized to; None keeps file sizes
    frames: int | None = None  # video frames per clip, 4k+1; None: the longest 4k+1 count up to 81
    frame_stride: int = 1  # a clip takes every frame_stride-th frame of its video from the first
    # optimisation
    steps: int = 1000  # the paper trains 30k, and sees editing after ~1k
    batch_size: int = 8
    lr: float = 3e-4  # video: 1e-4 (B.2)
    # the learning rate over the run (not in the paper, which gives one lr): "constant", or a decay to 0 at step
    # lr_decay_steps (None: `steps`), "linear" or "cosine", after lr_warmup_steps of linear warm-up from 0
    # (diffusers' schedules)
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    lr_decay_steps: int | None = None
    weight_decay: float = 1e-2  # AdamW
    # AdamW's second-moment decay (not in the paper; torch's 0.999 by default). 0.95 lifted the medium toy base's
    # reference at the bench's budget past 0.9 clean edits (0.914, +0.028 over three seeds; docs/toy_bench.md)
    adam_beta2: float = 0.999
    # LoRA+ (Hayou et al. 2024; not in the paper): the B matrices learn at this multiple of lr, the A matrices at lr
    # (1: plain LoRA). On the small toy base 4 lifted the supervised reference's clean edits at the bench's budget,
    # on the medium base it did not (docs/toy_bench.md, "LoRA+ lifts the small base's reference")
    loraplus_lr_ratio: float = 1.0
    grad_clip: float = 1.0  # not in the paper; guards the early bootstrapping steps
    rank: int = 64
    lora_alpha: float | None = None  # None: alpha = rank, i.e. LoRA scale 1
    target_modules: list[str] | None = None  # None: the backbone's defaults
    mixed_precision: str = "no"  # "bf16" on GPUs that have it
    # recompute each block's activations in the backward pass (non-reentrant: the reentrant kind silently
    # drops LoRA gradients); trades ~30% more time for most of the activation memory
    gradient_checkpointing: bool = False
    # ByG
    method: str = "byg"  # "supervised" trains on true pairs with Eq. 1 (the toy bench's reference)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    warmup_identity_steps: int = 200  # identity loss only, so the editor learns to read its source (B.1, for
    # 30000 image steps; B.2 gives none for video's 750, which keep the 200: our assumption, not the paper's)
    identity_prob: float = 0.15  # random identity steps (video: 0.10)
    use_ema: bool = True  # video default omits EMA (C.1): targets come from the current student
    ema_decay: float = 0.99  # the paper gives no value
    timesteps: str = "uniform"  # "uniform" or "logit_normal" (video: logit-normal, shift 12)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # t' = s t / (1 + (s - 1) t), biases t toward noise for s > 1
    # two-expert Wan: "auto" trains the expert each t falls on, or name one: "transformer" (high noise) or
    # "transformer_2" (low noise); "high_noise" and "low_noise", the LoRA files' names, read as those
    expert: str = "auto"
    # the rollout cache (not in the paper; off = 1): a tuple's EMA rollout serves up to this many of its steps, so
    # the rollout (about half a ByG step) is paid once per reuse, against targets from an older EMA; the states
    # live on the CPU (n + 2 latents per tuple) and are rebuilt after a resume (exact resume needs it off).
    # Measured on the toy world it hurts: K = 4 cut edit success 0.60 -> 0.18 at equal steps (docs/toy_bench.md)
    rollout_reuse: int = 1
    rollout_max_age: int = 0  # and for at most this many training steps (0: no limit)
    # bookkeeping
    seed: int = 0
    checkpoint_every: int = 100  # steps between checkpoints (0: only at the end)
    preview_every: int = 0  # steps between preview edits (0: none)
    log_every: int = 10

    def validate(self) -> "TrainConfig":
        refuse_non_finite(self)
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, {MAX_SEED}] (the nodes' range), got {self.seed}")
        self._check_names()
        positive = ("steps", "batch_size", "rank", "rollout_reuse", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "loraplus_lr_ratio"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "lr_warmup_steps", "warmup_identity_steps", "checkpoint_every",
                     "preview_every", "rollout_max_age"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.adam_beta2 < 1:
            raise ValueError(f"adam_beta2 must be in (0, 1), got {self.adam_beta2}")
        for name in ("identity_prob", "ema_decay"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.use_ema and self.ema_decay == 1:
            raise ValueError("ema_decay 1 never moves the EMA editor that bootstraps the targets (Algorithm 1, lines 7 and 36): "
                             "use a value below 1, e.g. 0.99 (a widget rounds to its step: type at most 4 decimals)")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        targets = self.target_modules
        if targets is not None and (isinstance(targets, str) or not targets
                                    or not all(isinstance(name, str) and name for name in targets)):
            raise ValueError(f'target_modules must be a list of module names (suffixes), e.g. ["attn.to_q", '
                             f'"attn.to_k"], or left out for the backbone\'s defaults; got {targets!r}')
        if self.timesteps not in TIMESTEP_SAMPLERS:
            raise ValueError(f"timesteps must be one of {sorted(TIMESTEP_SAMPLERS)}, got {self.timesteps!r}")
        if self.shift <= 0 or self.logit_std <= 0:
            raise ValueError(f"shift and logit_std must be > 0, got shift={self.shift}, logit_std={self.logit_std}")
        decay = self.lr_decay_steps
        if decay is not None and (isinstance(decay, bool) or not isinstance(decay, int) or decay < 1):
            raise ValueError(f"lr_decay_steps must be >= 1 or left out (the run's steps), got {self.lr_decay_steps}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}")
        if self.lr_scheduler != "constant":
            self._check_decay()
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.resolution is not None and (len(self.resolution) != 2 or min(self.resolution) < 1):
            raise ValueError(f"resolution must be [height, width], got {self.resolution}")
        if self.frames is not None:
            if isinstance(self.frames, bool) or not isinstance(self.frames, int):
                raise ValueError(f"frames must be a whole number 4k+1 (e.g. 81), got {self.frames!r}")
            check_frame_count(self.frames)
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")
        from .lora_io import EXPERT_SUFFIX

        aliases = {suffix: expert for expert, suffix in EXPERT_SUFFIX.items()}  # the LoRA files' names for them
        self.expert = aliases.get(self.expert, self.expert)
        weights = self.objective
        if self.method == "byg" and weights.lambda_cycle == weights.lambda_prior == weights.lambda_id == 0:
            raise ValueError("lambda_cycle, lambda_prior and lambda_id are all 0: ByG's steps train nothing (its "
                             "identity steps alone would teach a copy); give one of them a weight")
        self.objective.validate()
        return self

    def _check_names(self) -> None:
        """save_name a plain file name any system can write (the LoRA is written at the run's end); the folders
        named, not blank (output_dir "" wrote into the current folder)."""
        name = self.save_name
        if not name.strip() or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"save_name must be a plain file name like 'byg_lora' (the LoRA is written into "
                             f"output_dir), got {name!r}")
        if name.lower().endswith(".safetensors"):
            raise ValueError(f"save_name is the LoRA's name without .safetensors: {name[:-len('.safetensors')]!r}")
        if name != name.strip():
            raise ValueError(f"save_name {name!r} begins or ends with a space")
        forbidden = next((c for c in name if c in '<>:"|?*' or ord(c) < 32), None)
        if forbidden is not None:
            raise ValueError(f"save_name {name!r} holds {forbidden!r}, which Windows does not allow in a file name")
        if not self.output_dir.strip():
            raise ValueError(f"output_dir must name a folder, got {self.output_dir!r}")
        if self.text_cache_dir is not None and not self.text_cache_dir.strip():
            raise ValueError("text_cache_dir must name a folder, or be left out (no disk cache)")

    def _check_decay(self) -> None:
        """A linear or cosine decay ends at or after the run's last step (a stopped run's config: after), its warm-up
        before it: diffusers' cosine rises again past its end, so a run longer than its decay went back to full lr."""
        decay = self.lr_decay_steps or self.steps
        if decay < self.steps:
            raise ValueError(f"lr_decay_steps {decay} ends before the run's {self.steps} steps: the lr would be 0 (or, "
                             "cosine, rise again) for the rest; set lr_decay_steps >= steps, or leave it out")
        if self.lr_warmup_steps >= decay:
            raise ValueError(f"lr_warmup_steps {self.lr_warmup_steps} must end before the decay does (lr_decay_steps, "
                             f"or steps where it is left out: {decay})")

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.rank)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Build from plain values (a TOML table); unknown or mistyped keys name the field."""
        values = dict(values)
        objective = values.pop("objective", {})
        if not isinstance(objective, dict):
            raise ValueError(f"{source}: 'objective' must be a table ([objective] in TOML, its fields below it), "
                             f"got {objective!r}")
        objective = _build(ObjectiveConfig, objective, f"{source} [objective]")
        config = _build(cls, values, source)
        config.objective = objective
        try:
            return config.validate()
        except ValueError as error:  # a value of the right type but out of range: name the file it came from
            raise ValueError(f"{source}: {error}") from error

    @classmethod
    def for_preset(cls, preset: str, values: dict[str, Any] | None = None, source: str = "config") -> "TrainConfig":
        """``from_dict`` on top of ``PRESETS[preset]``: the preset's values unless ``values`` say otherwise."""
        if preset not in PRESETS:
            raise ValueError(f"{source}: unknown preset {preset!r}; known presets are {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[preset], **(values or {})}, source)

    @classmethod
    def for_video(cls, values: dict[str, Any] | None = None, source: str = "config") -> "TrainConfig":
        """The paper's video options (B.2) unless ``values`` say otherwise."""
        return cls.for_preset("wan", values, source)

    @classmethod
    def for_model(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        """``values`` on top of the preset their model's loader names (byg_core.loading), as CycleTrainer's widgets
        at -1 take it: a TOML naming a Wan2.2 model and nothing else trains with the paper's video values (B.2)."""
        from .loading import PRESET_OF, check_model_files, check_model_name, model_experts

        values = _home_expanded(values, source)
        model = values.get("model", cls.model)
        files = values.get("model_files", {})
        if isinstance(model, str):  # a name or file mistyped is said now, not after the dataset scan and loading
            with said_in(source):
                check_model_name(model)
            if isinstance(files, dict):
                with said_in(f"{source} [model_files]"):
                    check_model_files(model, files, top_level=[f.name for f in dataclasses.fields(cls)])
        preset = PRESET_OF.get(model) if isinstance(model, str) else None
        config = cls.for_preset(preset, values, source) if preset else cls.from_dict(values, source)
        experts = model_experts(config.model)
        if experts and config.expert not in ("auto", *experts):
            raise ValueError(f"{source}: expert must be 'auto' or one of {config.model}'s experts {list(experts)}, got "
                             f"{config.expert!r}")
        return config

    @classmethod
    def from_toml(cls, path: str | Path) -> "TrainConfig":
        return cls.for_model(read_toml(path), str(path))


PATH_FIELDS = ("data", "output_dir", "text_cache_dir")


def _home_expanded(values: dict[str, Any], source: str) -> dict[str, Any]:
    """``~`` in a config's paths is the home folder, as a shell reads it (not a folder named '~'); a path holding a
    control character is a Windows path whose backslash began a TOML escape ("C:\\new": a newline)."""
    import os

    values = dict(values)
    files = values.get("model_files") if isinstance(values.get("model_files"), dict) else {}
    for key, value in [*((k, values.get(k)) for k in PATH_FIELDS), *files.items()]:
        bad = next((c for c in value if ord(c) < 32), None) if isinstance(value, str) else None
        if bad is not None:
            raise ValueError(f"{source}: {key} holds a control character ({bad!r}): a backslash in double quotes "
                             "began an escape (\\n, \\t); write the path in single quotes or with /")
    for key in PATH_FIELDS:
        if isinstance(values.get(key), str):
            values[key] = os.path.expanduser(values[key])
    if files:
        values["model_files"] = {k: os.path.expanduser(v) if isinstance(v, str) else v for k, v in files.items()}
    return values


@contextlib.contextmanager
def said_in(source: str):
    """A value's refusal, said with where it was set (a file and table, a flag and its values)."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's tables; an error names the file (UTF-8, a byte-order mark allowed)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config file {path} is a folder: give the training .toml file (examples/*.toml)")
    text = None
    try:
        text = path.read_text(encoding="utf-8-sig")
        return tomllib.loads(text)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as error:  # "C:\data": an unescaped backslash; "C:\Users": a bad \U escape
        hint = ("; write a Windows path in single quotes ('C:\\data') or with / (C:/data)"
                if re.search(r'"[^"\n]*\\', text or "") else "")
        raise ValueError(f"{path} is not valid TOML: {error}{hint}") from None


def _build(cls, values: dict[str, Any], source: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    misplaced = [name for name in unknown if cls is not TrainConfig and name in TrainConfig.__dataclass_fields__]
    if misplaced:  # a TOML table holds every key below it up to the next table
        raise ValueError(f"{source}: {misplaced[0]!r} is a top-level setting: write it above the first [table]")
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown}; known fields are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if not _matches(value, hints[name]):
            raise ValueError(f"{source}: field '{name}' must be {_describe(hints[name])}, got {value!r}")
    return cls(**values)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a TOML value can stand for a field of type ``hint`` (ints pass for floats, bools for nothing else)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value)
    if origin is dict:  # [model_files]: its loader checks the values (paths, dtypes, lists)
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    """A field type as a user reads it: "float or nothing (leave it out)", "list of int"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        named = [_describe(arg) for arg in args if arg is not type(None)]
        return " or ".join(named) + (" (or left out)" if type(None) in args else "")
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return "a table ([name] in TOML)"
    return getattr(hint, "__name__", str(hint))
