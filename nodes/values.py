"""What travels on this pack's sockets: ``BYG_MODEL``, ``BYG_LORA``, ``BYG_DATASET``, ``BYG_OBJECTIVE``.

**BYG_MODEL is immutable from the graph's point of view, yet the weights are one shared
copy.** A 12B transformer cannot be copied per node, and ComfyUI may run any branch of a
graph in any order, so a ``BygModel`` does not *hold* a patched network: it holds the shared
backbone plus a description of the LoRA state it stands for (which LoRA, what strength).
``with_lora`` returns a new value and never touches the weights; every node that runs the
network (sampler, video edit, objective map) calls ``prepare()`` right before use, which
puts exactly that state on the shared backbone's adapters. Two branches that hold the same
backbone with different LoRAs therefore never see each other's state, the way ComfyUI's
own ``ModelPatcher`` clones patch one set of weights just in time.

``BYG_OBJECTIVE`` is a ``byg_core.objective.ObjectiveConfig``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from byg_core.adapters import Adapters

MODEL = "BYG_MODEL"
LORA = "BYG_LORA"
DATASET = "BYG_DATASET"
OBJECTIVE = "BYG_OBJECTIVE"

NO_LORA_RANK = 1  # adapters a LoRA-free model runs with when none were attached yet
_ATTACHED = weakref.WeakKeyDictionary()  # backbone -> the LoraSpec last attached by prepare()


@dataclass(frozen=True, eq=False)
class BygLora:
    """A LoRA in memory: the ``byg_core.lora_io.LoraFile``s of one training (one per expert)."""

    name: str
    family: str
    files: tuple[Any, ...]

    @property
    def rank(self) -> int:
        return self.files[0].spec.rank


@dataclass(frozen=True, eq=False)
class BygModel:
    """A loaded backbone (shared, never copied) and the LoRA state this value stands for."""

    name: str  # the loader's model name (TrainConfig.model, checked when a run resumes)
    backbone: Any  # byg_core EditBackbone
    lora: BygLora | None = None
    strength: float = 1.0

    @property
    def family(self) -> str:
        return self.backbone.family

    def with_lora(self, lora: BygLora, strength: float) -> "BygModel":
        if lora.family != self.family:
            raise ValueError(
                f"LoRA {lora.name!r} was trained for a {lora.family} model; the model is {self.name!r} "
                f"({self.family}): load a LoRA trained on this model family"
            )
        from byg_core.lora_io import check_trained_on

        check_trained_on(list(lora.files), self.name)  # a CycleTrainer's LoRA from another model's graph
        if self.lora is not None:
            raise ValueError(
                f"the model already carries LoRA {self.lora.name!r}; ByG applies one LoRA at a time: "
                "connect this loader to the model loader's output instead"
            )
        return replace(self, lora=lora, strength=strength)

    def prepare(self) -> "Adapters":
        """Put this value's LoRA state on the shared backbone, now; returns the adapters to run with."""
        from byg_core.adapters import Adapters, LoraSpec
        from byg_core.lora_io import load_lora_into

        if self.lora is None:
            # freshly reset adapters have lora_B = 0: the base model; reusing the attached spec avoids re-injecting
            default = LoraSpec(NO_LORA_RANK, float(NO_LORA_RANK), tuple(self.backbone.lora_target_modules()))
            adapters = Adapters(self.backbone, _ATTACHED.get(self.backbone, default))
        else:
            adapters = Adapters(self.backbone, self.lora.files[0].spec)
            load_lora_into(adapters, list(self.lora.files), self.strength)
        _ATTACHED[self.backbone] = adapters.spec
        return adapters


@dataclass(frozen=True, eq=False)
class BygDataset:
    """A validated ``byg_core.data.EditDataset`` and the size its sources are resized to."""

    dataset: Any
    size: tuple[int, int] | None = None  # (height, width); None keeps the files' sizes
    frames: int | None = None  # video frames per clip (4k+1); None: the longest 4k+1 run up to 81
    frame_stride: int = 1  # every n-th frame of a video

    @property
    def report(self) -> str:
        data = self.dataset
        lines = [f"{len(data.records)} edit tuples from {data.root / 'edits.jsonl'}; {len(data.rejected)} rejected"]
        return "\n".join(lines + [f"rejected {reason}" for reason in data.rejected])
