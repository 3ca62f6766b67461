"""A fixed, seeded text encoder for the toy world (stands in for T5 + CLIP).

Every word the world's captions and instructions use gets a random embedding drawn from
a seed; sinusoidal position embeddings are added so word order matters ("a red circle on
a blue background" and "a blue circle on a red background" differ). Padding positions are
zero, as ``TextCond.cat`` pads. The tables are buffers, not parameters: nothing trains
them, yet they are in the ``state_dict`` and so ship in the toy base model's safetensors.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..backbones.base import TextCond
from .world import VOCABULARY, tokenize

PAD, UNK = "<pad>", "<unk>"


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) transformer position table: sin on even, cos on odd channels."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return table


class ToyTextEncoder(nn.Module):
    """Prompts -> ``TextCond(tokens=(B, max_length, dim), pooled=(B, pooled_dim))``."""

    def __init__(
        self,
        dim: int = 32,
        pooled_dim: int = 32,
        max_length: int = 16,
        seed: int = 0,
        strict: bool = True,
    ) -> None:
        super().__init__()
        self.dim, self.pooled_dim, self.max_length, self.seed = dim, pooled_dim, max_length, seed
        self.strict = strict  # unknown words raise (refuses rule-breaking text) or map to <unk>
        self.vocab: tuple[str, ...] = (PAD, UNK, *VOCABULARY)
        self._index = {word: i for i, word in enumerate(self.vocab)}
        generator = torch.Generator().manual_seed(seed)
        words = torch.randn(len(self.vocab), dim, generator=generator)
        words[0] = 0  # <pad>
        self.register_buffer("word_embeddings", words)
        self.register_buffer("position_embeddings", sinusoidal_positions(max_length, dim))
        # A tanh before the mean makes pooled depend on order too (a plain mean of
        # word + position embeddings would not); 1/sqrt(dim) keeps tanh out of saturation.
        projection = torch.randn(dim, pooled_dim, generator=generator) / math.sqrt(dim)
        self.register_buffer("pool_projection", projection)

    def word_id(self, word: str, prompt: str) -> int:
        if word in self._index:
            return self._index[word]
        if self.strict:
            raise ValueError(
                f"unknown word {word!r} in prompt {prompt!r}; the toy vocabulary is {VOCABULARY}"
            )
        return self._index[UNK]

    def token_ids(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, max_length) word ids, 0 (= <pad>) after each prompt's last word."""
        if isinstance(prompts, str):
            raise TypeError("ToyTextEncoder takes a sequence of prompts, not one string")
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = tokenize(prompt)
            if len(words) > self.max_length:
                raise ValueError(
                    f"prompt {prompt!r} has {len(words)} words; max_length is {self.max_length}"
                )
            ids[row, : len(words)] = torch.tensor(
                [self.word_id(w, prompt) for w in words], dtype=torch.long
            )
        return ids

    def forward(self, prompts: Sequence[str]) -> TextCond:
        ids = self.token_ids(prompts).to(self.word_embeddings.device)
        present = (ids != 0).unsqueeze(-1).to(self.word_embeddings.dtype)
        tokens = (self.word_embeddings[ids] + self.position_embeddings) * present
        # An empty prompt (the unconditional one) pools to zeros instead of 0 / 0.
        pooled = (torch.tanh(tokens @ self.pool_projection) * present).sum(1) / present.sum(
            1
        ).clamp(min=1)
        return TextCond(tokens=tokens, pooled=pooled)
