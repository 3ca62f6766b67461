"""Inference: editing with the trained adapter, and two zero-shot baselines on the base model.

``edit`` integrates the flow ODE of ``G_edit(y_t, t, c, x)`` from noise with the backbone's
diffusers scheduler (Euler for FLUX, UniPC for Wan, as the paper's inference does).
``sdedit`` and ``flowedit`` use only the frozen base ``G_t2i`` and two captions, each caption's velocity
optionally with classifier-free guidance (``guided_velocity``), as their papers sample.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .adapters import BASE, EMA, Adapters
from .backbones.base import EDIT_STEPS, EditBackbone, TextCond
from .objective import classifier_free_guidance, noise

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EditResult:
    """Edited latents and, when asked for, the intermediate states ``y_t`` of the ODE."""

    latents: torch.Tensor
    states: list[torch.Tensor] = field(default_factory=list)
    t: list[float] = field(default_factory=list)


def initial_noise(shape: Sequence[int], seed: int, device, dtype) -> torch.Tensor:
    """eps ~ N(0, I), drawn on the CPU so a seed gives the same noise on every device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator).to(device=device, dtype=dtype)


@torch.no_grad()
def integrate(
    scheduler, velocity: Velocity, y: torch.Tensor, keep_states: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> EditResult:
    """Solve dy/dt = v(y, t) from t = 1 to 0 with a diffusers flow scheduler whose timesteps are set
    (``EditBackbone.schedule``). The model is queried at the scheduler's own timesteps over its training range,
    as diffusers' pipelines query it: the sigmas for FLUX's Euler, whole numbers for Wan's UniPC.

    ``on_step(i)`` is called after step i (1-based), for a host's progress bar.
    """
    result = EditResult(latents=y)
    for i, timestep in enumerate(scheduler.timesteps):
        t = torch.full((y.shape[0],), float(timestep) / scheduler.config.num_train_timesteps, device=y.device)
        if keep_states:
            result.states.append(y)
            result.t.append(float(t[0]))
        y = scheduler.step(velocity(y, t), timestep, y, return_dict=False)[0]
        if on_step is not None:
            on_step(i + 1)
    result.latents = y
    return result


def as_batch(text: TextCond, batch: int) -> TextCond:
    """One prompt's conditioning repeated over a batch (a batch's own is returned as is)."""
    return text if len(text) == batch else TextCond.cat([text] * batch)


@torch.no_grad()
def edit(
    backbone: EditBackbone,
    adapters: Adapters,
    x: torch.Tensor,
    c: TextCond,
    steps: int = EDIT_STEPS,
    seed: int = 0,
    role: str = EMA,
    keep_states: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> EditResult:
    """Edit source latents ``x`` by instruction ``c`` with the EMA (default) or student adapter, guided as the
    model's own sampler guides (``EditBackbone.guide_scale``: Wan2.2 against its negative prompt; FLUX not)."""
    c = as_batch(c, x.shape[0])
    eps = initial_noise(x.shape, seed, x.device, x.dtype)
    scheduler = backbone.schedule(steps, x.shape, x.device)
    n_train = scheduler.config.num_train_timesteps
    guided = any(backbone.guide_scale(float(step) / n_train) != 1.0 for step in scheduler.timesteps)
    uncond = as_batch(backbone.encode_text([backbone.negative_prompt]), x.shape[0]) if guided else None

    def velocity(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_c = backbone.velocity(y, t, c, source=x)
        w = backbone.guide_scale(float(t[0])) if guided else 1.0  # one t per step, every sample's
        return v_c if w == 1.0 else classifier_free_guidance(v_c, backbone.velocity(y, t, uncond, source=x), w)

    with adapters.use(role):
        return integrate(scheduler, velocity, eps, keep_states, on_step)


def guide_scale_values(scales: float | Sequence[float], experts: int | None, family: str) -> list[float]:
    """``scales`` as one classifier-free guidance scale per expert (one value serves all); ``experts`` None is a model
    whose sampler does not guide, which takes 1 (no guidance) alone."""
    values = [float(v) for v in ([scales] if isinstance(scales, (int, float)) else scales)]
    if experts is None:
        if any(v != 1.0 for v in values):
            raise ValueError(f"this {family} model's edits take no classifier-free guidance (cfg): leave it "
                             "at the model's own (-1 on the nodes, no --cfg on the CLI)")
        return values
    values = values * (experts if len(values) == 1 else 1)  # one for all
    if len(values) != experts or not all(0 <= v < math.inf for v in values):
        raise ValueError(f"cfg takes one scale >= 0, or one per expert ({experts}), got {scales}")
    return values


@contextmanager
def guide_scales_of(backbone: EditBackbone, scales: float | Sequence[float] | None):
    """Within the block, an edit's classifier-free guidance (``EditBackbone.guide_scale``) is ``scales``: one value for
    every expert, or one per expert in order (high-noise first); None leaves the model's own. Refused for a model
    whose sampler does not guide (FLUX.1-dev: its guidance is distilled into its guidance input)."""
    if scales is None:
        yield
        return
    guided = hasattr(backbone, "guide_scales")
    values = guide_scale_values(scales, len(backbone.guide_scales) if guided else None, backbone.family)
    if not guided:
        yield  # no guidance asked of a model that has none
        return
    previous, backbone.guide_scales = backbone.guide_scales, dict(zip(backbone.guide_scales, values))
    try:
        yield
    finally:
        backbone.guide_scales = previous


@contextmanager
def distilled_guidance_of(backbone: EditBackbone, guidance: float | None):
    """Within the block, FLUX.1-dev's distilled guidance (its guidance input; B.1 trains and edits at the backbone's
    3.5) is ``guidance``; None leaves the model's own. Refused for a model without that input (Wan2.2, whose
    guidance is classifier-free: ``guide_scales_of``)."""
    if guidance is None:
        yield
        return
    if not hasattr(backbone, "guidance"):
        raise ValueError(NO_DISTILLED_GUIDANCE.format(family=backbone.family))
    previous, backbone.guidance = backbone.guidance, float(guidance)
    try:
        yield
    finally:
        backbone.guidance = previous


NO_DISTILLED_GUIDANCE = ("this {family} model has no distilled guidance input (FLUX.1-dev's); its guidance is "
                         "classifier-free: --cfg (the nodes' cfg widget)")


def guided_velocity(
    backbone: EditBackbone, y: torch.Tensor, t: torch.Tensor, text: TextCond, uncond: TextCond | None, w: float
) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): v_u + w (v_c - v_u), v_u the velocity under the empty prompt
    ``uncond`` (a base trained with dropped captions has one); w = 1 is v_c alone and needs no ``uncond``."""
    v_c = backbone.velocity(y, t, text)
    if w == 1.0:
        return v_c
    if uncond is None:
        raise ValueError(f"classifier-free guidance {w:g} needs the empty prompt's conditioning (uncond)")
    return classifier_free_guidance(v_c, backbone.velocity(y, t, as_batch(uncond, y.shape[0])), w)


def _sigma_grid(backbone: EditBackbone, steps: int, t_start: float, latent_shape: Sequence[int]) -> list[float]:
    """The backbone scheduler's t grid for ``steps`` steps, cut to start at ``t_start`` (SDEdit/FlowEdit)."""
    sigmas = [float(s) for s in backbone.schedule(steps, latent_shape).sigmas]
    return [s for s in sigmas[:-1] if s <= t_start + 1e-6] + [sigmas[-1]]


@torch.no_grad()
def sdedit(
    backbone: EditBackbone,
    adapters: Adapters | None,
    x: torch.Tensor,
    p_tgt: TextCond,
    strength: float = 0.6,
    steps: int = EDIT_STEPS,
    seed: int = 0,
    guidance: float = 1.0,
    uncond: TextCond | None = None,
) -> torch.Tensor:
    """SDEdit (Meng et al.): noise the source to t = strength, then denoise with the target caption (at
    classifier-free ``guidance`` against ``uncond``, the empty prompt's conditioning, when it is not 1)."""
    p_tgt = as_batch(p_tgt, x.shape[0])
    grid = _sigma_grid(backbone, steps, strength, x.shape)
    y = noise(x, initial_noise(x.shape, seed, x.device, x.dtype), torch.full((x.shape[0],), grid[0], device=x.device))
    with base_model(adapters):
        for s, s_next in zip(grid[:-1], grid[1:]):
            t = torch.full((x.shape[0],), s, device=x.device)
            y = y + (s_next - s) * guided_velocity(backbone, y, t, p_tgt, uncond, guidance)
    return y


@torch.no_grad()
def flowedit(
    backbone: EditBackbone,
    adapters: Adapters | None,
    x: torch.Tensor,
    p_src: TextCond,
    p_tgt: TextCond,
    steps: int = EDIT_STEPS,
    t_max: float = 0.8,
    n_avg: int = 1,
    seed: int = 0,
    src_guidance: float = 1.0,
    tgt_guidance: float = 1.0,
    uncond: TextCond | None = None,
) -> torch.Tensor:
    """FlowEdit (Kulikov et al.): inversion-free, integrates v(z_tgt, p_tgt) - v(z_src, p_src) from x.

    z_src = (1 - t) x + t eps,  z_tgt = z_fe + z_src - x,  z_fe <- z_fe + (t_next - t) * mean(v_delta).
    Each velocity at its own classifier-free guidance against ``uncond`` (1 and 1: unguided), as FlowEdit guides
    Stable Diffusion 3; its FLUX setting, source 1.5 and target 5.5, is FLUX.1-dev's distilled guidance input, not
    classifier-free guidance (set ``backbone.guidance`` for that), so it is not these two.
    """
    batch = x.shape[0]
    p_src, p_tgt = as_batch(p_src, batch), as_batch(p_tgt, batch)
    generator = np.random.default_rng(seed)
    z_fe = x.clone()
    grid = _sigma_grid(backbone, steps, t_max, x.shape)
    with base_model(adapters):
        for s, s_next in zip(grid[:-1], grid[1:]):
            t = torch.full((batch,), s, device=x.device)
            v_delta = torch.zeros_like(x)
            for _ in range(n_avg):
                eps = initial_noise(x.shape, int(generator.integers(2**31)), x.device, x.dtype)
                z_src = noise(x, eps, t)
                z_tgt = z_fe + z_src - x
                v_delta += (guided_velocity(backbone, z_tgt, t, p_tgt, uncond, tgt_guidance)
                            - guided_velocity(backbone, z_src, t, p_src, uncond, src_guidance))
            z_fe = z_fe + (s_next - s) * v_delta / n_avg
    return z_fe


def base_model(adapters: Adapters | None):
    """The base model: adapters disabled when there are any."""
    return nullcontext() if adapters is None else adapters.use(BASE)
