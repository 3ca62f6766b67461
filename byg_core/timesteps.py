"""Training-time samplers for t (1 = noise): strategies in a registry, not an if-chain."""

from __future__ import annotations

import torch


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = s t / (1 + (s - 1) t), the resolution shift of Esser et al. (paper B.2 uses s = 12 for video)."""
    return shift * t / (1 + (shift - 1) * t)


class UniformTimesteps:
    """t ~ U(0, 1), as Algorithm 1 line 2."""

    def __init__(self, shift: float = 1.0, **_) -> None:
        self.shift = shift

    def __call__(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return shift_time(torch.rand(n, generator=generator), self.shift)


class LogitNormalTimesteps:
    """t = sigmoid(u), u ~ N(mean, std), then shifted (Esser et al.; paper B.2)."""

    def __init__(self, shift: float = 1.0, mean: float = 0.0, std: float = 1.0) -> None:
        self.shift, self.mean, self.std = shift, mean, std

    def __call__(self, n: int, generator: torch.Generator) -> torch.Tensor:
        u = torch.randn(n, generator=generator) * self.std + self.mean
        return shift_time(torch.sigmoid(u), self.shift)


TIMESTEP_SAMPLERS = {"uniform": UniformTimesteps, "logit_normal": LogitNormalTimesteps}
