"""LoRA files in the key formats stock ComfyUI applies.

FLUX: ``transformer.<diffusers module>.lora_A.weight`` / ``.lora_B.weight`` plus a
``transformer.<diffusers module>.alpha`` tensor (LoraLoaderModelOnly scales by alpha / rank;
without ``.alpha`` it scales wrongly, without the prefix it loads nothing).
Wan: native names, ``diffusion_model.blocks.N.self_attn.q.lora_A.weight`` etc. plus
``.alpha``; a two-expert model (Wan2.2 A14B) gets one file per expert.
Metadata records family, rank, alpha, position scheme, targets and the training config.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .adapters import EMA, STUDENT, Adapters, LoraSpec
from .backbones.base import EditBackbone
from .safefiles import load_checked, meta_json, read_metadata, save_atomic

FORMAT_VERSION = 1
EXPERT_SUFFIX = {"transformer": "high_noise", "transformer_2": "low_noise"}  # Wan2.2 A14B convention


@dataclass
class LoraFile:
    """A LoRA read from disk: per-module A, B matrices (keyed '<expert>/<module>') and metadata."""

    path: Path
    family: str
    spec: LoraSpec
    expert: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)


def expert_paths(path: str | os.PathLike, experts: list[str]) -> dict[str, Path]:
    """One file per expert: the path itself for one, ``<stem>_high_noise`` / ``_low_noise`` for two."""
    path = Path(path)
    if len(experts) == 1:
        return {experts[0]: path}
    return {e: path.with_name(f"{path.stem}_{EXPERT_SUFFIX.get(e, e)}{path.suffix}") for e in experts}


def sibling_paths(path: str | os.PathLike, experts: list[str]) -> list[Path]:
    """All existing files of the pair ``path`` belongs to (a two-expert model's high/low-noise files; ``experts``: the
    model's transformers)."""
    path = Path(path)
    for suffix in (f"_{EXPERT_SUFFIX.get(e, e)}" for e in experts if len(experts) > 1):
        if path.stem.endswith(suffix):
            base = path.with_name(path.stem[: -len(suffix)] + path.suffix)
            return [p for p in expert_paths(base, experts).values() if p.is_file()]
    return [path]


def finished_lora(path: str | os.PathLike, experts: list[str]) -> list[Path]:
    """The files of a LoRA already at ``path`` (each expert's), [] where there is none."""
    return [p for p in expert_paths(path, experts).values() if p.is_file()]


def lora_steps(path: str | os.PathLike) -> int | None:
    """The steps a LoRA file's training config records (None where it records none)."""
    try:
        steps = json.loads((read_metadata(path) or {}).get("byg.config", "{}")).get("steps")
    except (json.JSONDecodeError, AttributeError):
        return None
    return steps if isinstance(steps, int) else None


def set_aside(path: str | os.PathLike, experts: list[str]) -> list[Path]:
    """Move a finished LoRA at ``path`` to ``<stem>_step<K>`` (K: the steps its metadata records; ``_2``... where
    that is taken), as a stopped run names its LoRA, so a longer run resumed under the same name never replaces it;
    the moved files' new paths."""
    path = Path(path)
    existing = finished_lora(path, experts)
    if not existing:
        return []
    steps = lora_steps(existing[0])
    stem = f"{path.stem}_step{steps if steps is not None else '_earlier'}"
    for n in range(1, 10_000):
        aside = expert_paths(path.with_name(f"{stem}{f'_{n}' if n > 1 else ''}{path.suffix}"), experts)
        if not any(p.exists() for p in aside.values()):
            break
    moved = []
    for expert, current in expert_paths(path, experts).items():
        if current.is_file():
            os.replace(current, aside[expert])
            moved.append(aside[expert])
    return moved


def save_lora(
    path: str | os.PathLike,
    backbone: EditBackbone,
    adapters: Adapters,
    role: str = EMA,
    config: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the ``role`` adapter atomically: EMA by default, the averaged weights an EMA-trained run edits with
    (Algorithm 1 outputs the student G_edit; a run with ``use_ema = false``, as video's, saves the student)."""
    state = adapters.state_dict(role)
    written = []
    for expert, file_path in expert_paths(path, list(backbone.transformers)).items():
        tensors = {}
        for key, value in state.items():
            owner, rest = key.split("/", 1)
            if owner != expert:
                continue
            module, which = rest.rsplit(".", 1)
            prefix = backbone.lora_file_key(module, expert)
            tensors[f"{prefix}.{which}.weight"] = value
            tensors[f"{prefix}.alpha"] = torch.tensor(float(adapters.spec.alpha))
        metadata = {
            "byg.format": FORMAT_VERSION,
            "byg.family": backbone.family,
            "byg.rank": adapters.spec.rank,
            "byg.alpha": adapters.spec.alpha,
            "byg.target_modules": list(adapters.spec.target_modules),
            "byg.positions": getattr(backbone, "positions", "same"),
            "byg.expert": expert,
            "byg.config": config or {},
        }
        written.append(save_atomic(tensors, file_path, metadata))
    return written


def refuse_checkpoint(path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """A training checkpoint given where a LoRA belongs is named as one."""
    if "byg.step" in metadata and "byg.family" not in metadata:
        raise ValueError(f"{path} is a training checkpoint, not a LoRA: give the LoRA training wrote beside it "
                         "(<save_name>.safetensors, or <save_name>_step<N>.safetensors for a stopped run)")


def read_lora(path: str | os.PathLike, backbone: EditBackbone) -> LoraFile:
    """Read one LoRA file and map its keys back to this backbone's modules."""
    tensors, raw = load_checked(path, "LoRA file")
    refuse_checkpoint(path, raw)
    family = meta_json(raw, "byg.family", path)
    if family != backbone.family:
        raise ValueError(f"LoRA file {path} was trained for a {family} model; the model given is {backbone.family}")
    spec = LoraSpec(
        rank=int(meta_json(raw, "byg.rank", path)),
        alpha=float(meta_json(raw, "byg.alpha", path)),
        target_modules=tuple(meta_json(raw, "byg.target_modules", path)),
    )
    expert = meta_json(raw, "byg.expert", path)
    alphas = sorted({float(v) for k, v in tensors.items() if k.endswith(".alpha")})
    if any(not math.isclose(a, spec.alpha, rel_tol=1e-6) for a in alphas):  # ComfyUI scales by the tensors
        raise ValueError(f"LoRA file {path}: its .alpha tensors ({', '.join(f'{a:g}' for a in alphas)}) differ from "
                         f"the alpha its metadata records ({spec.alpha:g}), so ComfyUI's LoraLoader and this pack would "
                         "apply it at different strengths: another tool changed the file; use it as training wrote it")
    mapped = {}
    for key, value in tensors.items():
        if key.endswith(".alpha"):
            continue
        prefix, which, _ = key.rsplit(".", 2)
        mapped[f"{expert}/{backbone.lora_module_name(prefix)}.{which}"] = value
    return LoraFile(Path(path), family, spec, expert, mapped, {k: meta_json(raw, k, path) for k in raw})


def check_one_training(files: list[LoraFile]) -> None:
    """The files of a two-expert pair carry one LoRA spec (rank, alpha, targets): halves of pairs of other specs are
    refused, naming what differs. Two runs that each trained one expert (``TrainConfig.expert``) make a pair."""
    first = files[0]
    for lora in files[1:]:
        differ = [f"{name} {getattr(first.spec, name)!r} against {getattr(lora.spec, name)!r}"
                  for name in ("rank", "alpha", "target_modules") if getattr(first.spec, name) != getattr(lora.spec, name)]
        if differ:
            raise ValueError(f"LoRA files {first.path} and {lora.path} do not make one LoRA ({'; '.join(differ)}): "
                             "give both files one training wrote, or two trainings of one rank, alpha and targets")


def load_lora_into(adapters: Adapters, files: list[LoraFile], strength: float = 1.0) -> None:
    """Put the files' weights into both the student and EMA adapters, scaled by ``strength``."""
    check_one_training(files)
    for lora in files:
        if lora.spec != adapters.spec:
            raise ValueError(
                f"LoRA file {lora.path} has rank {lora.spec.rank} (alpha {lora.spec.alpha}); the model's adapters "
                f"have rank {adapters.spec.rank} (alpha {adapters.spec.alpha}): load it onto a model without a LoRA"
            )
    check_one_file_per_expert([(lora.path, lora.expert) for lora in files], list(adapters.backbone.transformers))
    state = {k: v for lora in files for k, v in lora.tensors.items()}
    for role in (STUDENT, EMA):
        adapters.load_state_dict(role, state)
    adapters.set_strength(strength)


def check_trained_on(files: list[LoraFile], model: str) -> None:
    """A LoRA file whose training config names another model than ``model`` (a TI2V-5B LoRA on A14B) is refused,
    naming both, before its experts and shapes are compared (a file that names none is taken at its family)."""
    for lora in files:
        made = (lora.metadata.get("byg.config") or {}).get("model")
        if made and made != model:
            raise ValueError(f"LoRA file {lora.path} was trained on model {made!r}; the model given is {model!r}")


def check_one_file_per_expert(files: list[tuple[Path, str]], experts: list[str]) -> None:
    """``files``: (path, the expert it holds). A two-expert model takes its pair whole: training writes both files (an
    expert it did not train holds a LoRA that changes nothing), so a missing or doubled expert is a file mix-up,
    never half a LoRA on purpose."""
    given = [expert for _, expert in files]
    names = ", ".join(str(path) for path, _ in files)
    twice = sorted({e for e in given if given.count(e) > 1})
    if twice:
        raise ValueError(f"LoRA files {names}: each holds expert {twice[0]!r}; give one file per expert")
    missing = [e for e in experts if e not in given]
    if missing:
        pair = " and ".join(f"<name>_{EXPERT_SUFFIX.get(e, e)}" for e in experts)
        raise ValueError(
            f"LoRA file(s) {names} hold no LoRA for expert {missing[0]!r}: give both files the training wrote ({pair})"
        )


def load_lora(paths: list[str | os.PathLike], backbone: EditBackbone, strength: float = 1.0) -> Adapters:
    """Fresh adapters on ``backbone`` holding the LoRA files' weights."""
    files = [read_lora(p, backbone) for p in paths]
    adapters = Adapters(backbone, files[0].spec)
    load_lora_into(adapters, files, strength)
    return adapters
