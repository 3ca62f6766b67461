"""A memory estimate printed when training starts, so a user knows before an out-of-memory error.

Weights, LoRA and optimizer state are counted exactly from the tensors; activations are a rough
figure (about 16 tensors of the model's width per token per block held for the backward pass,
one per block with gradient checkpointing) for the editor passes whose graphs a step holds at once.
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIVATION_WIDTHS = 16  # tensors of the model's width held per token per block (attention, MLP, norms)


def held_passes(cfg) -> int:
    """Editor passes whose graphs a training step holds at once: one, as ``byg_step`` back-propagates each pass
    when it is computed; two for ByG without gradient routing (the reverse pass then needs the forward's graph)."""
    objective = cfg.objective
    return 2 if cfg.method == "byg" and objective.cycle and not objective.gradient_routing else 1


@dataclass
class MemoryEstimate:
    weights: int  # bytes: the transformers' weights as stored (fp8, bf16, ...)
    lora: int  # bytes: student and EMA adapters
    optimizer: int  # bytes: the student's gradients and AdamW's two moments
    activations: int  # bytes, rough: what the grad passes of one step hold for backward

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.optimizer + self.activations

    def describe(self) -> str:
        return (f"memory estimate: weights {_gib(self.weights)}, LoRA {_gib(self.lora)}, gradients + AdamW "
                f"{_gib(self.optimizer)}, activations ~{_gib(self.activations)} (rough) = ~{_gib(self.total)}")

    def warning(self, device_bytes: int | None) -> str | None:
        """What to say when the estimate exceeds the GPU's memory (``gpu_bytes``; None: no GPU known, or it fits);
        the check before loading counts the weights alone."""
        if device_bytes is None or self.total <= device_bytes:
            return None
        return (f"the memory estimate (~{_gib(self.total)}) exceeds the GPU's {_gib(device_bytes)}: expect an out-of-"
                "memory error; lower the batch size, the resolution or the LoRA rank, or, where they are in bf16, "
                "keep the weights in fp8 (byg train: storage = \"float8_e4m3fn\"; ComfyUI: BYGModelLoader's weights)")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


PATCH_CELLS = 4  # FLUX packs 2x2 latent cells per token; Wan2.2's patches are 1x2x2 too


def tokens_per_sample(trainer) -> int:
    """Transformer tokens of one editor pass: the noisy and the source latents' patches, plus the prompt's tokens where
    the blocks attend to text jointly (FLUX; Wan attends to it by cross-attention, outside the sequence)."""
    x = trainer.data.x[:1]
    patches = 2 * (x[0].numel() // x.shape[1]) // PATCH_CELLS
    if trainer.backbone.family == "wan":
        return patches
    return patches + trainer.backbone.encode_text([trainer.data.records[0].instruction]).tokens.shape[1]


def estimate(trainer) -> MemoryEstimate:
    """The estimate for ``trainer``'s model, data and config."""
    from .adapters import EMA, STUDENT

    cfg = trainer.cfg
    transformers = list(trainer.backbone.transformers.values())
    lora_params = {id(p) for role in (STUDENT, EMA) for p in trainer.adapters.parameters(role)}
    weights = _bytes(p for t in transformers for p in t.parameters() if id(p) not in lora_params)
    student = list(trainer.adapters.parameters(STUDENT))
    lora = _bytes(student) + _bytes(trainer.adapters.parameters(EMA))
    trained = None if cfg.expert == "auto" else cfg.expert  # only that expert's LoRA gets gradients and AdamW state
    optimizer = 3 * _bytes(trainer.adapters.parameters(STUDENT, trained))
    config = transformers[0].config
    width = config.num_attention_heads * config.attention_head_dim
    blocks = config.num_layers + getattr(config, "num_single_layers", 0)
    compute = 2 if cfg.mixed_precision == "bf16" else trainer.backbone.dtype.itemsize  # a bf16-loaded model's too
    held = 1 if cfg.gradient_checkpointing else ACTIVATION_WIDTHS
    activations = (held_passes(cfg) * cfg.batch_size * tokens_per_sample(trainer) * width * compute
                   * held * blocks)
    return MemoryEstimate(weights, lora, optimizer, activations)


# --- before loading: will the weights fit at all? -------------------------------------------------------------------
STORAGE_BYTES = {"float8_e4m3fn": 1, "float8_e5m2": 1, "bfloat16": 2, "float16": 2, "float32": 4}
HEADROOM = 1.15  # LoRA, optimizer state, activations and the CUDA context on top of the weights, at the least


def transformer_bytes(model: str, storage: str | None, dtype: str) -> int:
    """Bytes every transformer (both A14B experts) of a model with shipped configs takes as its loader stores it:
    built on the meta device from those configs (no weights read), fp8 where ``storage`` casts it."""
    from accelerate import init_empty_weights

    from .loading import CONFIGS, shipped_config

    total = 0
    for part in ("transformer", "transformer_2"):
        if not (CONFIGS / model / part).is_dir():
            continue
        with init_empty_weights():
            module = _transformer_class(model).from_config(shipped_config(model, part))
        total += stored_bytes(module, model.startswith("wan"), storage, dtype)
    return total


def stored_bytes(module, wan: bool, storage: str | None, dtype: str) -> int:
    """Bytes of ``module``'s weights at ``dtype`` once ``storage`` is applied by the loaders' rule (norms, embedders
    and the in/out layers stay at ``dtype``: FLUX's adaLN modulation linears alone are 3.3B parameters; what the
    model keeps in fp32, as its loader does, at 4 bytes)."""
    from .loading import FP8_SKIP, WAN_FP8_SKIP, precision_of, store_in_fp8, torch_dtype_of

    if storage is not None:
        store_in_fp8(module, storage, torch_dtype_of(dtype), WAN_FP8_SKIP if wan else FP8_SKIP)
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    return sum(p.numel() * (STORAGE_BYTES[storage] if p.dtype.itemsize == 1 else
                            precision_of(name, keep, torch_dtype_of(dtype)).itemsize)
               for name, p in module.named_parameters())


def _transformer_class(model: str):
    from diffusers import FluxTransformer2DModel, WanTransformer3DModel

    return WanTransformer3DModel if model.startswith("wan") else FluxTransformer2DModel


def check_weights_fit(model: str, storage: str | None, dtype: str, device_bytes: int | None) -> int:
    """Bytes the model's transformers take as stored; raises before anything is loaded when they (with the least
    headroom training needs) exceed ``device_bytes`` (a GPU's memory; None: no limit is known, nothing refused)."""
    from .loading import CONFIGS

    weights = transformer_bytes(model, storage, dtype)
    if device_bytes is not None and weights * HEADROOM > device_bytes:
        gib = lambda n: f"{n / 2**30:.1f} GiB"  # noqa: E731
        fix = "use a GPU with more memory" if storage else "store the weights in fp8 (storage = float8_e4m3fn), or use a GPU with more memory"
        if storage is None and dtype == "float32" and transformer_bytes(model, None, "bfloat16") * HEADROOM <= device_bytes:
            fix = 'load it in bfloat16 (dtype = "bfloat16"), or ' + fix
        both = " (the ByG rollout walks both A14B experts every step, so both stay resident)" if (
            CONFIGS / model / "transformer_2").is_dir() else ""
        raise ValueError(
            f"{model} cannot train on this GPU: its transformer weights alone take {gib(weights)} as "
            f"{storage or dtype}{both}, ~{gib(weights * HEADROOM)} with the least room for LoRA, optimizer and "
            f"activations; the GPU has {gib(device_bytes)}: {fix}"
        )
    return weights


def gpu_bytes(device=None) -> int | None:
    """Total memory of ``device`` (default: the current CUDA device), or None when it is no CUDA device (a host
    started with --cpu on a machine with a GPU trains on the CPU: the GPU's size says nothing)."""
    import torch

    if device is None:
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory if torch.cuda.is_available() else None
    device = torch.device(device)
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
