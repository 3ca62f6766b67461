"""Encoded prompts kept on disk, for datasets whose text states do not fit in memory.

FLUX.1's T5-XXL gives 512 x 4096 states per prompt (4 MB in bf16, 8 MB in fp32), four prompts per edit
tuple: 10k tuples would hold 160-320 GB in memory. ``DiskTextCache`` is the mapping a backbone keeps
its encoded prompts in (``EditBackbone.use_text_cache``), written in safetensors shards of ``SHARD``
prompts (atomically, as they fill) and read back one prompt at a time, so memory holds one shard at most.
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from pathlib import Path

from safetensors import safe_open

from .backbones.base import TextCond
from .safefiles import save_atomic, write_text_atomic

SHARD = 256  # prompts per file
INDEX = "index.json"


class DiskTextCache(MutableMapping):
    """prompt -> ``TextCond`` in ``folder``; the index names the model, so another model's cache is never read."""

    def __init__(self, folder: str | os.PathLike, model: str) -> None:
        self.folder, self.model = Path(folder), model
        self.folder.mkdir(parents=True, exist_ok=True)
        saved = json.loads((self.folder / INDEX).read_text()) if (self.folder / INDEX).is_file() else {}
        self.shards: int = saved.get("shards", 0) if saved.get("model") == model else 0
        self.where: dict[str, list] = saved.get("prompts", {}) if saved.get("model") == model else {}
        self.pending: dict[str, TextCond] = {}

    def __contains__(self, prompt) -> bool:
        return prompt in self.pending or prompt in self.where

    def __getitem__(self, prompt: str) -> TextCond:
        if prompt in self.pending:
            return self.pending[prompt]
        shard, slot = self.where[prompt]
        with safe_open(self.folder / f"shard_{shard:05d}.safetensors", framework="pt") as handle:
            pooled = f"{slot}.pooled" in handle.keys()
            return TextCond(handle.get_tensor(f"{slot}.tokens"), handle.get_tensor(f"{slot}.pooled") if pooled else None)

    def __setitem__(self, prompt: str, cond: TextCond) -> None:
        self.pending[prompt] = TextCond(cond.tokens.detach().cpu(),
                                        None if cond.pooled is None else cond.pooled.detach().cpu())
        if len(self.pending) >= SHARD:
            self.flush()

    def __delitem__(self, prompt: str) -> None:
        raise TypeError("prompts are never removed from a text cache; delete its folder to start over")

    def __iter__(self):
        return iter([*self.where, *self.pending])

    def __len__(self) -> int:
        return len(self.where) + len(self.pending)

    def flush(self) -> None:
        """Write the pending prompts as one shard, then the index (each atomically)."""
        if not self.pending:
            return
        tensors = {}
        for slot, cond in enumerate(self.pending.values()):
            tensors[f"{slot}.tokens"] = cond.tokens
            if cond.pooled is not None:
                tensors[f"{slot}.pooled"] = cond.pooled
        save_atomic(tensors, self.folder / f"shard_{self.shards:05d}.safetensors", {})
        self.where |= {prompt: [self.shards, slot] for slot, prompt in enumerate(self.pending)}
        self.shards += 1
        self.pending = {}
        index = {"model": self.model, "shards": self.shards, "prompts": self.where}
        write_text_atomic(self.folder / INDEX, json.dumps(index))
