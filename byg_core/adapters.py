"""One copy of the base weights in three roles (DESIGN.md, paper Algorithm 1).

``G_t2i`` is the frozen base (all adapters disabled), ``G_edit`` is the base plus the
trainable ``student`` LoRA, ``G_EMA`` is the base plus the ``ema`` LoRA, a frozen moving
average of the student. peft's adapter switching flips ``requires_grad``; every switch here
re-applies the one rule that matters: exactly the student LoRA tensors are trainable.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from .backbones.base import EditBackbone, TextCond

STUDENT = "student"  # not "train": peft adapter names clash with nn.Module attributes
EMA = "ema"
BASE = "base"
ROLES = (STUDENT, EMA, BASE)


def all_linear_targets(backbone: EditBackbone) -> tuple[str, ...]:
    """The name of every linear layer of the backbone's transformers, as ``LoraSpec.target_modules`` takes them: what
    peft's "all-linear" wraps (the ai-toolkit FLUX set's modulation and output layers, the embedders too)."""
    names: dict[str, None] = {}
    for transformer in backbone.transformers.values():
        modules = dict(transformer.named_modules())
        wrapped = [name for name, module in modules.items() if isinstance(module, LoraLayer)]  # adapters already in
        names.update((name, None) for name, module in modules.items() if isinstance(module, LoraLayer) or (
            isinstance(module, torch.nn.Linear) and not any(name.startswith(f"{w}.") for w in wrapped)))
    return tuple(names)


@dataclass(frozen=True)
class LoraSpec:
    """What a LoRA adapter is: rank, alpha and the module-name suffixes it wraps."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]


class Adapters:
    """The student and EMA LoRA adapters injected into every transformer of a backbone."""

    def __init__(self, backbone: EditBackbone, spec: LoraSpec, seed: int = 0) -> None:
        """Attach fresh adapters (student initialised from ``seed``, EMA = student).

        A backbone that already carries adapters of the same spec is reused; of another spec,
        they are replaced, so one loaded model can be trained or given a LoRA again.
        """
        self.backbone = backbone
        self.spec = spec
        config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.target_modules))
        for transformer in backbone.transformers.values():
            if getattr(transformer, "_byg_lora_spec", None) == spec:
                continue
            self._remove(transformer)
            transformer.requires_grad_(False)
            with warnings.catch_warnings():  # two adapters in one model is the point here
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                inject_adapter_in_model(config, transformer, adapter_name=STUDENT)
                inject_adapter_in_model(config, transformer, adapter_name=EMA)
            transformer._byg_lora_spec = spec
        self._layers = self._find_layers()
        self._adapters_in_fp32()
        self.reset(seed)
        self.active = STUDENT
        self._activate(STUDENT)

    def _adapters_in_fp32(self) -> None:
        """peft gives a new adapter its base layer's dtype: over fp8-stored weights an untrainable fp8 adapter, over
        bf16 ones a bf16 adapter whose AdamW steps and EMA updates below half a bf16 step are lost. So every adapter
        is made fp32 (the base keeps its dtype; peft casts each layer's input to the adapter's dtype)."""
        for layer in self._layers.values():
            for role in (STUDENT, EMA):
                for part in (layer.lora_A[role], layer.lora_B[role]):
                    if part.weight.dtype != torch.float32:
                        part.to(torch.float32)

    @staticmethod
    def _remove(transformer: torch.nn.Module) -> None:
        for module in transformer.modules():
            if isinstance(module, LoraLayer):
                for role in (STUDENT, EMA):
                    if role in module.lora_A:
                        with warnings.catch_warnings():  # "adapter was active which is now deleted": intended
                            warnings.simplefilter("ignore")
                            module.delete_adapter(role)
        transformer._byg_lora_spec = None

    @torch.no_grad()
    def reset(self, seed: int = 0) -> None:
        """Student to peft's LoRA init (B = 0, so the editor starts as the base), EMA = student."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in self.layers().values():
                layer.reset_lora_parameters(STUDENT, True)
                layer.set_scale(STUDENT, 1.0)
                layer.set_scale(EMA, 1.0)
        self.copy(STUDENT, EMA)

    def _find_layers(self) -> dict[str, LoraLayer]:
        found = {}
        for name, transformer in self.backbone.transformers.items():
            for module_name, module in transformer.named_modules():
                # a layer an earlier spec targeted and this one does not stays wrapped, without adapters: the base
                if isinstance(module, LoraLayer) and STUDENT in module.lora_A:
                    found[f"{name}/{module_name}"] = module
        return found

    def layers(self, expert: str | None = None) -> dict[str, LoraLayer]:
        """LoRA layers by '<expert>/<module name>' (one expert's only when ``expert`` is given)."""
        if expert is None:
            return self._layers
        return {k: v for k, v in self._layers.items() if k.split("/", 1)[0] == expert}

    def parameters(self, role: str = STUDENT, expert: str | None = None, matrices: str = "AB") -> list[torch.nn.Parameter]:
        """The A and B matrices of one adapter (or those ``matrices`` names), in a fixed order (the optimizer's)."""
        params = []
        for layer in self.layers(expert).values():
            params += [getattr(layer, f"lora_{m}")[role].weight for m in matrices]
        return params

    def _activate(self, role: str) -> None:
        for layer in self._layers.values():
            if role == BASE:
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                layer.set_adapter(role)
            for name in (STUDENT, EMA):  # peft flipped these: only the student is trainable
                layer.lora_A[name].weight.requires_grad_(name == STUDENT)
                layer.lora_B[name].weight.requires_grad_(name == STUDENT)
        self.active = role

    @contextmanager
    def use(self, role: str) -> Iterator[None]:
        """Run the backbone as ``G_edit`` (student), ``G_EMA`` (ema) or ``G_t2i`` (base)."""
        if role not in ROLES:
            raise ValueError(f"adapter role must be one of {ROLES}, got {role!r}")
        previous = self.active
        if role == previous:  # switching walks every LoRA layer: skip it when nothing changes
            yield
            return
        self._activate(role)
        try:
            yield
        finally:
            self._activate(previous)

    @torch.no_grad()
    def copy(self, src: str, dst: str) -> None:
        for p_src, p_dst in zip(self.parameters(src), self.parameters(dst)):
            p_dst.copy_(p_src)

    @torch.no_grad()
    def ema_update(self, decay: float) -> None:
        """theta_EMA <- decay * theta_EMA + (1 - decay) * theta_student (paper 4.1), in one fused pass."""
        torch._foreach_lerp_(self.parameters(EMA), self.parameters(STUDENT), 1.0 - decay)

    def set_strength(self, strength: float) -> None:
        """Scale every LoRA's output: 1 is the trained edit, 0 is the base model."""
        if not math.isfinite(strength):  # nan or inf would make every edit nan, silently
            raise ValueError(f"LoRA strength must be a finite number, got {strength}")
        for layer in self.layers().values():
            for role in (STUDENT, EMA):
                layer.set_scale(role, strength)

    def state_dict(self, role: str) -> dict[str, torch.Tensor]:
        """'<expert>/<module>.lora_A' / '.lora_B' -> tensor, for one adapter."""
        state = {}
        for name, layer in self.layers().items():
            state[f"{name}.lora_A"] = layer.lora_A[role].weight.detach()
            state[f"{name}.lora_B"] = layer.lora_B[role].weight.detach()
        return state

    def check_state_dict(self, role: str, state: dict[str, torch.Tensor]) -> None:
        """Raise, changing nothing, unless ``state`` has exactly this adapter's keys and shapes."""
        own = self.state_dict(role)
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"LoRA tensors do not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        for key, target in own.items():
            if state[key].shape != target.shape:
                raise ValueError(
                    f"LoRA tensor {key} has shape {tuple(state[key].shape)}, the model expects {tuple(target.shape)}"
                )

    @torch.no_grad()
    def load_state_dict(self, role: str, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``state_dict``, all or nothing."""
        self.check_state_dict(role, state)
        for key, target in self.state_dict(role).items():
            target.copy_(state[key])


class Generators:
    """The paper's three networks over one backbone: ``edit``, ``ema`` and ``t2i``.

    ``use_ema=False`` makes ``ema`` a stop-gradient copy of the current student (the
    paper's default for video, appendix C.1).
    """

    def __init__(self, backbone: EditBackbone, adapters: Adapters, use_ema: bool = True) -> None:
        self.backbone = backbone
        self.adapters = adapters
        self.use_ema = use_ema

    def edit(self, y_t: torch.Tensor, t: torch.Tensor, c: TextCond, x: torch.Tensor) -> torch.Tensor:
        """G_edit(y_t, t, c, x): the trainable editor (Eq. 1)."""
        with self.adapters.use(STUDENT):
            return self.backbone.velocity(y_t, t, c, source=x)

    @torch.no_grad()
    def ema(self, y_t: torch.Tensor, t: torch.Tensor, c: TextCond, x: torch.Tensor) -> torch.Tensor:
        """G_EMA(y_t, t, c, x): the frozen moving-average editor that bootstraps targets (4.1)."""
        with self.adapters.use(EMA if self.use_ema else STUDENT):
            return self.backbone.velocity(y_t, t, c, source=x)

    @torch.no_grad()
    def t2i(self, y_t: torch.Tensor, t: torch.Tensor, p: TextCond) -> torch.Tensor:
        """G_t2i(y_t, t, p): the frozen base model with no source (4.2)."""
        with self.adapters.use(BASE):
            return self.backbone.velocity(y_t, t, p)

    def ema_scope(self):
        """The EMA editor's adapter for a whole rollout: one switch, so each ``ema`` call inside switches nothing."""
        return self.adapters.use(EMA if self.use_ema else STUDENT)

    @torch.no_grad()
    def t2i_many(self, queries: list[tuple[torch.Tensor, TextCond]], t: torch.Tensor) -> list[torch.Tensor]:
        """G_t2i(y_i, t, p_i) for several queries under one adapter switch, as one batched call when the prompts'
        token counts agree (zero-padding a shorter prompt would change its result)."""
        if not queries:
            return []
        with self.adapters.use(BASE):
            if len({p.tokens.shape[1] for _, p in queries}) > 1:
                return [self.backbone.velocity(y, t, p) for y, p in queries]
            v = self.backbone.velocity(torch.cat([y for y, _ in queries]), torch.cat([t] * len(queries)),
                                       TextCond.cat([p for _, p in queries]))
        return list(v.chunk(len(queries)))
