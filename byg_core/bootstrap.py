"""Noisy pseudo-targets from the editor's own EMA rollout (paper 4.1, Algorithm 1 lines 4-11), and an opt-in cache
that reuses a tuple's rollout for a few of its later steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from .backbones.base import TextCond

if TYPE_CHECKING:
    from .adapters import Generators


@dataclass
class Rollout:
    """States of one EMA rollout: ``y_t`` at each sample's (snapped) ``t`` and the clean ``y_0``."""

    y_t: torch.Tensor
    y_0: torch.Tensor
    t: torch.Tensor  # (B,) the sampled times snapped onto the rollout grid {1/n, ..., 1}
    states: torch.Tensor | None = None  # (B, n, ...) y at every grid point k/n, k = n..1 (kept for the cache)


def snap_to_grid(t: torch.Tensor, n: int) -> torch.Tensor:
    """The state k/n (k in 1..n) of the rollout step that covers t: t in ((k-1)/n, k/n] (Algorithm 1, lines 6-9), so
    t ~ U(0, 1) visits every state equally often; a t already on the grid (within float error) stays put."""
    return (t * n - 1e-4).ceil().clamp(1, n) / n


def state_at(states: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """y_t from a rollout's grid states (B, n, ...): the state at k/n = t, stored at position n - k."""
    n = states.shape[1]
    position = n - (t * n).round().long().to(states.device)
    return states[torch.arange(states.shape[0], device=states.device), position]


@torch.no_grad()
def bootstrap_rollout(
    G: "Generators", x: torch.Tensor, c: TextCond, eps: torch.Tensor, t: torch.Tensor, n: int,
    keep_states: bool = False,
) -> Rollout:
    """Euler-integrate G_EMA(y_s, s, c, x) from y_1 = eps to y_0 in n steps, keeping y_t (and, with
    ``keep_states``, every grid state).

    y_{s - 1/n} = y_s - (1/n) G_EMA(y_s, s, c, x)  (Algorithm 1, line 7).
    """
    t = snap_to_grid(t, n)
    k_t = (t * n).round().long()
    y = eps
    y_t = eps.clone()
    states = []
    with G.ema_scope():  # one adapter switch for the n steps
        for k in range(n, 0, -1):
            keep = (k_t == k).view(-1, *([1] * (y.ndim - 1)))
            y_t = torch.where(keep, y, y_t)
            if keep_states:
                states.append(y)
            s = torch.full_like(t, k / n)
            y = y - (1.0 / n) * G.ema(y, s, c, x)
    return Rollout(y_t=y_t, y_0=y, t=t, states=torch.stack(states, dim=1) if keep_states else None)


# ---------------------------------------------------------------------------------------------------------------------
# The rollout cache (opt-in): a tuple's rollout serves up to `reuse` of its steps
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class CachedRollout:
    """One tuple's rollout: the noise it started from (the step reuses it: x_t shares eps with the rollout), its
    grid states and y_0, kept on the CPU."""

    eps: torch.Tensor
    states: torch.Tensor  # (n, ...)
    y_0: torch.Tensor
    made_at: int  # the training step it was made at
    uses: int = 0


class RolloutCache:
    """Keeps each tuple's EMA rollout for ``reuse`` steps that draw the tuple, or ``max_age`` training steps
    (0: no limit), whichever ends first: the rollout's share of a step (about half of a ByG step) is paid
    once per ``reuse`` uses, against targets from an EMA that is up to that old. ``reuse = 1`` is the exact
    algorithm (a fresh rollout every step)."""

    def __init__(self, reuse: int, max_age: int = 0) -> None:
        if reuse < 1 or max_age < 0:
            raise ValueError(f"rollout reuse must be >= 1 and max age >= 0, got {reuse} and {max_age}")
        self.reuse, self.max_age = reuse, max_age
        self.entries: dict[int, CachedRollout] = {}
        self.made = self.served = 0  # rollouts computed / samples served from the cache (for the logs)

    def lookup(self, index: Sequence[int], step: int) -> list[CachedRollout | None]:
        """Each tuple's entry if it may serve this step (its use is counted), else None (an expired one is dropped)."""
        found = []
        for i in index:
            entry = self.entries.get(i)
            if entry is not None and (entry.uses >= self.reuse or (self.max_age and step - entry.made_at >= self.max_age)):
                del self.entries[i]
                entry = None
            if entry is not None:
                entry.uses += 1
                self.served += 1
            found.append(entry)
        return found

    def store(self, index: Sequence[int], eps: torch.Tensor, rollout: Rollout, step: int) -> None:
        """Keep the new rollouts of tuples ``index`` (each counts its first use, this step's)."""
        for row, i in enumerate(index):
            self.entries[i] = CachedRollout(eps[row].detach().cpu(), rollout.states[row].cpu(), rollout.y_0[row].cpu(),
                                            step, uses=1)
        self.made += len(index)


def cached_rollout(
    G: "Generators", cache: RolloutCache, index: Sequence[int], x: torch.Tensor, c: TextCond, eps: torch.Tensor,
    t: torch.Tensor, n: int, step: int,
) -> tuple[Rollout, torch.Tensor]:
    """The batch's rollout with cached tuples served from ``cache`` and the rest rolled out now (and stored):
    the rollout and the noise each sample's rollout started from (the step's eps)."""
    found = cache.lookup(index, step)
    missing = [row for row, entry in enumerate(found) if entry is None]
    eps = eps.clone()
    states = torch.empty((len(index), n, *x.shape[1:]), dtype=x.dtype, device=x.device)
    y_0 = torch.empty_like(x)
    if missing:
        rows = torch.tensor(missing, device=x.device)
        fresh = bootstrap_rollout(G, x[rows], c.select(rows), eps[rows], t[rows], n, keep_states=True)
        states[rows], y_0[rows] = fresh.states, fresh.y_0
        cache.store([index[row] for row in missing], eps[rows], fresh, step)
    for row, entry in enumerate(found):
        if entry is not None:
            eps[row], states[row], y_0[row] = (v.to(x.device, x.dtype) for v in (entry.eps, entry.states, entry.y_0))
    t = snap_to_grid(t, n)
    return Rollout(y_t=state_at(states, t), y_0=y_0, t=t, states=states), eps
