"""The toy world's latent codec: the toy world has no VAE; latents are pixels scaled to [-1, 1].

Keeping the codec trivial means every error the bench measures comes from the flow model
and the training method, never from a learned autoencoder.
"""

from __future__ import annotations

import torch


class ToyCodec:
    """``LatentCodec`` for pixels (B, 3, H, W) or videos (B, 3, F, H, W); shapes are kept."""

    spatial_factor = 1
    temporal_factor = 1
    latent_channels = 3

    @staticmethod
    def _check(x: torch.Tensor, what: str) -> None:
        if x.ndim not in (4, 5) or x.shape[1] != 3:
            raise ValueError(
                f"ToyCodec {what} must be (B, 3, H, W) or (B, 3, F, H, W), got {tuple(x.shape)}"
            )

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self._check(pixels, "pixels")
        return pixels * 2 - 1

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check(latents, "latents")
        return (latents + 1) / 2
