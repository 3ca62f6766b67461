"""Noisy pseudo-targets from the editor's own EMA rollout (paper 4.1, Algorithm 1 lines 4-11)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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


def snap_to_grid(t: torch.Tensor, n: int) -> torch.Tensor:
    """Round t to the nearest state the n-step rollout visits, k/n with k in 1..n (Algorithm 1, line 8)."""
    return (t * n).round().clamp(1, n) / n


@torch.no_grad()
def bootstrap_rollout(
    G: "Generators", x: torch.Tensor, c: TextCond, eps: torch.Tensor, t: torch.Tensor, n: int
) -> Rollout:
    """Euler-integrate G_EMA(y_s, s, c, x) from y_1 = eps to y_0 in n steps, keeping y_t.

    y_{s - 1/n} = y_s - (1/n) G_EMA(y_s, s, c, x)  (Algorithm 1, line 7).
    """
    t = snap_to_grid(t, n)
    k_t = (t * n).round().long()
    y = eps
    y_t = eps.clone()
    with G.ema_scope():  # one adapter switch for the n steps
        for k in range(n, 0, -1):
            keep = (k_t == k).view(-1, *([1] * (y.ndim - 1)))
            y_t = torch.where(keep, y, y_t)
            s = torch.full_like(t, k / n)
            y = y - (1.0 / n) * G.ema(y, s, c, x)
    return Rollout(y_t=y_t, y_0=y, t=t)
