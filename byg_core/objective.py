"""The ByG objective, one function per equation of the paper (section 4, Algorithm 1).

Time convention (section 3): ``t = 1`` is noise, ``t = 0`` is data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from .adapters import Generators
from .backbones.base import TextCond
from .bootstrap import Rollout, bootstrap_rollout


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a (B,) time over a (B, ...) latent, in fp32: a bf16 t is 1.0 at 0.999 and 0.898 at 0.9, so the
    blends below are computed in fp32 and given the latent's dtype after."""
    return t.view(-1, *([1] * (like.ndim - 1))).float()


def noise(x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x + t eps (section 3)."""
    t = _per_sample(t, x)
    return ((1 - t) * x + t * eps).to(x.dtype)


def velocity_target(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """u_t = eps - x, the ground-truth flow velocity (Eq. 1)."""
    return eps - x


def one_step_prediction(y_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """y_hat = y_t - t v (Algorithm 1, line 15)."""
    return (y_t - _per_sample(t, y_t) * v).to(y_t.dtype)


def supervised_edit_loss(v: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """||u_t - G(y_t, t, c, x)||^2 with u_t = eps - y (Eq. 1; also Eq. 3 and the identity loss)."""
    return F.mse_loss(v.float(), velocity_target(x, eps).float())  # in fp32 over bf16 velocities


def classifier_free_guidance(v_c: torch.Tensor, v_u: torch.Tensor, w: float) -> torch.Tensor:
    """v_u + w (v_c - v_u): the velocity under a prompt at guidance w, v_u the empty prompt's (Ho & Salimans 2022)."""
    return v_u + w * (v_c - v_u)


def directional_loss(v_pred: torch.Tensor, v_src: torch.Tensor, v_tgt: torch.Tensor) -> torch.Tensor:
    """1 - cos(v_pred - v_src, v_tgt - v_src) over each sample's flattened velocity (Eq. 2)."""
    d_pred, d_tgt = (v_pred.float() - v_src.float()).flatten(1), (v_tgt.float() - v_src.float()).flatten(1)
    cos = F.cosine_similarity(d_pred, d_tgt, dim=1, eps=1e-8)  # in fp32: a bf16 1 - cos moves in steps of 0.004
    return (1 - cos).mean()


def directional_prior_loss(
    v_pred: torch.Tensor, v_src: torch.Tensor, v_tgt: torch.Tensor, alpha: float, directional: bool = True,
    v_anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_prior = L_dir + alpha * ||v_pred - v_tgt||^2 (section 4.2); without the directional term the MSE alone
    (section 6: "retaining only the MSE component of the prior"), at weight 1: our reading, which keeps the prior's
    pull comparable to the full one's (alpha * MSE, the other reading, would leave 0.1 of an MSE term).
    ``v_anchor``: the anchor's velocity where it is not v_tgt (``ObjectiveConfig.prior_guidance_terms`` "anchor")."""
    mse = F.mse_loss(v_pred.float(), (v_tgt if v_anchor is None else v_anchor).float())
    if not directional:
        return mse
    return directional_loss(v_pred, v_src, v_tgt) + alpha * mse


def route_gradients(clean: torch.Tensor, one_step: torch.Tensor) -> torch.Tensor:
    """y_hyb = sg(clean) + (one_step - sg(one_step)): the value of ``clean``, the gradient of ``one_step`` (Eq. 4)."""
    return clean.detach() + (one_step - one_step.detach())


def total_loss(
    l_cycle: torch.Tensor,
    l_prior_fwd: torch.Tensor,
    l_prior_rev: torch.Tensor,
    l_id: torch.Tensor,
    lambda_cycle: float,
    lambda_prior: float,
    lambda_id: float,
) -> torch.Tensor:
    """L = lambda_cycle L_cycle + lambda_prior (L_prior_fwd + L_prior_rev) + lambda_id L_id (Eq. 5)."""
    return lambda_cycle * l_cycle + lambda_prior * (l_prior_fwd + l_prior_rev) + lambda_id * l_id


PRIOR_GUIDANCE_TERMS = ("all", "anchor")  # ObjectiveConfig.prior_guidance_terms


@dataclass
class ObjectiveConfig:
    """Loss weights and the switches of the paper's ablations (Table 4)."""

    lambda_cycle: float = 1.0  # paper B.1
    lambda_prior: float = 1.0  # paper B.1
    lambda_id: float = 0.2  # paper B.1
    alpha: float = 0.1  # MSE anchor inside the prior (4.2); the paper gives no value
    rollout_steps: int = 10  # n, Euler steps of the EMA rollout (B.1)
    gradient_routing: bool = True  # off: the reverse pass is conditioned on the blurry y_hat
    # Table 4's ablations; the paper says what each removes, not all it keeps, so each is a reading:
    cycle: bool = True  # off: no cycle loss and no reverse-pass prior (section 4.3 applies that prior to the cycle)
    directional: bool = True  # off: the prior is the MSE anchor alone, at weight 1 (directional_prior_loss)
    bootstrap: bool = True  # off: the forward pass is fed the noised source x_t, not y_t; the rollout still gives
    # the reverse pass its sg(y_0) (section 6 names only the forward input)
    regularization: bool = True  # off: no prior loss at all (the editor collapses to identity)
    identity_steps: bool = True  # off: no random identity-only steps (the trainer reads this)
    # w of the base's velocities in the prior (4.2), classifier-free against the empty prompt (needs a base that
    # has the unconditional velocity); 1: unguided. The paper's FLUX.1-dev base is guidance-distilled, so its prior's
    # velocities are guided (at the embedded 3.5); a base without distillation (the toy, Wan2.2) has this instead
    prior_guidance: float = 1.0
    # which of the prior's base velocities prior_guidance guides: "all" (v_src and v_tgt, in both terms, as the
    # paper's distilled base does) or "anchor" (only the MSE anchor's v_tgt; the directional term reads the unguided
    # v_src, v_tgt, so guidance does not move its reference point: not the paper's, docs/toy_bench.md, stop 54)
    prior_guidance_terms: str = "all"

    @property
    def guides_prior(self) -> bool:
        """Whether the prior's velocities are guided (``prior_guidance`` other than 1)."""
        return self.prior_guidance != 1.0

    def validate(self) -> None:
        refuse_non_finite(self)
        for name in ("lambda_cycle", "lambda_prior", "lambda_id", "alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.rollout_steps < 1:
            raise ValueError(f"rollout_steps must be >= 1, got {self.rollout_steps}")
        if not self.prior_guidance > 0:
            raise ValueError(f"prior_guidance must be > 0, got {self.prior_guidance}")
        if self.prior_guidance_terms not in PRIOR_GUIDANCE_TERMS:
            raise ValueError(f"prior_guidance_terms must be one of {', '.join(PRIOR_GUIDANCE_TERMS)}, "
                             f"got {self.prior_guidance_terms!r}")
        if self.prior_guidance_terms != "all" and not self.guides_prior:
            raise ValueError(f"prior_guidance_terms {self.prior_guidance_terms!r} guides nothing at prior_guidance 1; "
                             "give the guidance too (prior_guidance, --prior-guidance W), or leave the terms at 'all'")


def refuse_non_finite(config) -> None:
    """A config's float fields must be numbers: nan and inf pass every range test ("< 0" is False for nan)."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{item.name} must be a finite number, got {value}")


@dataclass
class StepLosses:
    """Every term of one training step; ``total`` is what is back-propagated."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    t: torch.Tensor | None = None  # the (snapped) timesteps the step trained on
    kind: str = "byg"  # "byg", "identity" or "supervised"
    backpropagated: bool = False  # the step ran its own backward (``byg_step(backward=...)``); ``total`` is detached

    def as_floats(self) -> dict[str, float]:
        return {"loss": float(self.total.detach()), **{k: float(v.detach()) for k, v in self.terms.items()}}


@dataclass
class EditBatch:
    """A batch of tuples (x, p_src, p_tgt, c, c_bar) in model space (Algorithm 1, line 2)."""

    x: torch.Tensor  # source latents
    p_src: TextCond
    p_tgt: TextCond
    c: TextCond
    c_bar: TextCond
    y: torch.Tensor | None = None  # true edited latents: only the supervised reference has them
    uncond: TextCond | None = None  # the empty prompt's, one per tuple: only a guided prior needs it


def identity_step(G: Generators, batch: EditBatch, t: torch.Tensor, eps: torch.Tensor) -> StepLosses:
    """L_id = ||G_edit(x_t, t, c_bar, x) - (eps - x)||^2 (section 4.3; the warm-up and random identity steps)."""
    x_t = noise(batch.x, eps, t)
    l_id = supervised_edit_loss(G.edit(x_t, t, batch.c_bar, batch.x), batch.x, eps)
    return StepLosses(total=l_id, terms={"identity": l_id}, t=t, kind="identity")


def supervised_step(G: Generators, batch: EditBatch, t: torch.Tensor, eps: torch.Tensor) -> StepLosses:
    """Eq. 1 on true pairs, ||(eps - y) - G_edit(y_t, t, c, x)||^2: the reference ByG does without."""
    if batch.y is None:
        raise ValueError("supervised training needs the true edited targets y; this dataset has none")
    y_t = noise(batch.y, eps, t)
    l_edit = supervised_edit_loss(G.edit(y_t, t, batch.c, batch.x), batch.y, eps)
    return StepLosses(total=l_edit, terms={"edit": l_edit}, t=t, kind="supervised")


def byg_step(
    G: Generators, batch: EditBatch, t: torch.Tensor, eps: torch.Tensor, cfg: ObjectiveConfig,
    backward: Callable[[torch.Tensor], None] | None = None, rollout: Rollout | None = None,
) -> StepLosses:
    """One full ByG step (Algorithm 1, lines 4-34): bootstrap, identity, forward, prior, cycle.

    ``rollout`` replaces the step's own bootstrap rollout (the rollout cache's; ``eps`` must be the noise it
    started from).

    With ``backward`` (e.g. ``accelerator.backward``) the step back-propagates itself, each pass's loss as soon as
    it is computed (the gradients add up, so each graph is freed before the next pass builds its own: a lower
    peak): the identity pass, then (with gradient routing) the reverse pass, then the forward pass; the returned
    ``total`` and terms are then detached. ``backward`` must not rescale the loss (accelerate's rescales only under
    gradient accumulation or fp16 loss scaling, which ``Trainer`` refuses): the reverse pass's gradient is carried
    into the forward pass as a tensor and would be rescaled twice.
    """
    x = batch.x
    if rollout is None:
        with record_function("byg.rollout"):  # the labels name the phases `byg bench speed` reports
            rollout = bootstrap_rollout(G, x, batch.c, eps, t, cfg.rollout_steps)
    t = rollout.t
    x_t = noise(x, eps, t)
    terms = {}
    with record_function("byg.identity"):
        terms["identity"] = supervised_edit_loss(G.edit(x_t, t, batch.c_bar, x), x, eps)
    if backward is not None:
        with record_function("byg.backward"):
            backward(cfg.lambda_id * terms["identity"])
        terms["identity"] = terms["identity"].detach()

    y_t = rollout.y_t if cfg.bootstrap else x_t
    zero = x.new_zeros(())

    # the base model's queries in one call: v_src, v_tgt at y_t (4.2) and, for the reverse pass, at x_t with the
    # prompts swapped (4.3)
    queries = [(y_t, batch.p_src), (y_t, batch.p_tgt)] if cfg.regularization else []
    queries += [(x_t, batch.p_tgt), (x_t, batch.p_src)] if cfg.regularization and cfg.cycle else []
    pairs = len(queries)
    guided = pairs > 0 and cfg.guides_prior
    if guided:  # and the empty prompt's at each noised input (y_t, x_t), for the guided prior
        if batch.uncond is None:
            raise ValueError(f"prior_guidance {cfg.prior_guidance:g} needs the empty prompt's conditioning "
                             "(EditBatch.uncond)")
        queries += [(y, batch.uncond) for y, _ in queries[::2]]
    with record_function("byg.base"):
        v_base = G.t2i_many(queries, t)
    v_anchor = v_base  # the MSE anchor's velocities: guided, with the directional term's or alone
    if guided:  # query i's input is query (2 * (i // 2))'s, whose empty-prompt velocity is v_base[pairs + i // 2]
        v_anchor = [classifier_free_guidance(v, v_base[pairs + i // 2], cfg.prior_guidance)
                    for i, v in enumerate(v_base[:pairs])]
        v_base = v_base[:pairs] if cfg.prior_guidance_terms == "anchor" else v_anchor

    def reverse_pass(y_hyb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L_cycle and L_prior_rev of the reverse pass G_edit(x_t, t, c_bar, y_hyb) (4.3)."""
        # not batched with the identity pass (which shares x_t, t and c_bar): batched, both graphs are held at once
        # (a step's peak went from 2.2x to 3.1x a supervised step's) with no gain in time (byg bench speed, CPU)
        with record_function("byg.reverse"):
            v_rev = G.edit(x_t, t, batch.c_bar, y_hyb)
        prior_rev = directional_prior_loss(v_rev, v_base[2], v_base[3], cfg.alpha, cfg.directional,
                                           v_anchor[3]) if cfg.regularization else zero
        return supervised_edit_loss(v_rev, x, eps), prior_rev

    # Staged backward: with routing, y_hyb has the value sg(y_0) (Eq. 4), known before the forward pass, so the
    # reverse pass runs first from a leaf holding that value and is back-propagated at once; its gradient w.r.t.
    # y_hyb then reaches y_hat, as routing sends it, in the forward pass's backward. One pass's graph is held at a
    # time instead of two; the gradients are the same.
    staged = backward is not None and cfg.cycle and cfg.gradient_routing
    terms["cycle"], terms["prior_rev"] = zero, zero
    if staged:
        y_hyb = rollout.y_0.detach().requires_grad_()
        terms["cycle"], terms["prior_rev"] = reverse_pass(y_hyb)
        with record_function("byg.backward"):
            backward(cfg.lambda_cycle * terms["cycle"] + cfg.lambda_prior * terms["prior_rev"])
        g_hyb = y_hyb.grad
        terms["cycle"], terms["prior_rev"] = terms["cycle"].detach(), terms["prior_rev"].detach()

    with record_function("byg.forward"):
        v_fwd = G.edit(y_t, t, batch.c, x)
    y_hat = one_step_prediction(y_t, t, v_fwd)
    terms["prior_fwd"] = zero
    if cfg.regularization:
        terms["prior_fwd"] = directional_prior_loss(v_fwd, v_base[0], v_base[1], cfg.alpha, cfg.directional,
                                                    v_anchor[1])
    if cfg.cycle and not staged:
        terms["cycle"], terms["prior_rev"] = reverse_pass(
            route_gradients(rollout.y_0, y_hat) if cfg.gradient_routing else y_hat)

    total = total_loss(
        terms["cycle"], terms["prior_fwd"], terms["prior_rev"], terms["identity"],
        cfg.lambda_cycle, cfg.lambda_prior, cfg.lambda_id,
    )
    if backward is None:
        return StepLosses(total=total, terms=terms, t=t)
    with record_function("byg.backward"):
        if staged:  # L_prior_fwd, and the routed cycle gradient carried into y_hat (its value is not the loss)
            backward(cfg.lambda_prior * terms["prior_fwd"] + (y_hat * g_hyb).sum())
        elif total.requires_grad:  # the identity part is already back-propagated and detached
            backward(total)
    terms["prior_fwd"] = terms["prior_fwd"].detach()
    return StepLosses(total=total.detach(), terms=terms, t=t, backpropagated=True)
