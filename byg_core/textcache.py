"""Encoded prompts kept on disk, for datasets whose text states do not fit in memory.

FLUX.1's T5-XXL gives 512 x 4096 states per prompt (4 MB in bf16, 8 MB in fp32), four prompts per edit
tuple: 10k tuples would hold 160-320 GB in memory. ``DiskTextCache`` is the mapping a backbone keeps
its encoded prompts in (``EditBackbone.use_text_cache``), written in safetensors shards of ``SHARD``
prompts (atomically, as they fill) and read back one prompt at a time, so memory holds one shard at most.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import MutableMapping
from pathlib import Path

from safetensors import safe_open

from .backbones.base import TextCond
from .safefiles import new_file, save_atomic, write_text_atomic

SHARD = 256  # prompts per file
OLD_INDEX = "index.json"  # one index for the folder's one model, as caches made before per-model indexes hold


TEXT_FILES = ("folder", "clip_l", "t5", "umt5", "tokenizers", "tokenizer", "dtype")  # [model_files] the states hang on


def cache_key(model: str, files: dict) -> str:
    """What a cache's states depend on: the model, and the text-encoder files (by name, size and modification time)
    and dtype that encoded them, so a T5 file swapped for another (fp8 for fp16, or a fine-tuned CLIP-L copied over the
    same name) starts another cache rather than reading this one."""
    def identity(value) -> str:
        path = Path(str(value))
        if not path.is_file():
            return str(value)
        found = path.stat()
        return f"{path.name} ({found.st_size} bytes, modified {found.st_mtime_ns})"

    return json.dumps([model, {key: identity(files[key]) for key in TEXT_FILES if key in files}])


class DiskTextCache(MutableMapping):
    """prompt -> ``TextCond`` in ``folder``; each model (with its text encoder's files and dtype: ``cache_key``) has
    an index of its own, naming it, so another model's prompts are never read and models sharing a folder keep theirs.
    Runs may share a folder at once: each shard file has a name of its own and is never rewritten, and each run
    merges its prompts into the index as it finds it (a run's update the other overwrites costs a re-encoding later,
    never a wrong prompt)."""

    def __init__(self, folder: str | os.PathLike, model: str) -> None:
        self.folder, self.model = Path(folder), model
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index = self.folder / f"index_{hashlib.sha256(model.encode()).hexdigest()[:16]}.json"
        self.where: dict[str, list] = self._saved()
        self.pending: dict[str, TextCond] = {}

    def _saved(self) -> dict[str, list]:
        """The index's prompts for this model, each at [shard file, slot]."""
        index = self.index if self.index.is_file() else self.folder / OLD_INDEX
        try:
            saved = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {}
        except ValueError as error:
            raise ValueError(f"text cache index {index} cannot be read ({error}): delete the folder {self.folder} "
                             "(its prompts are encoded again) or set another text_cache_dir") from None
        if saved.get("model") != self.model:
            return {}
        # shards were numbered before they were named: shard n is shard_0000n.safetensors
        return {p: [f"shard_{s:05d}.safetensors" if isinstance(s, int) else s, slot]
                for p, (s, slot) in saved.get("prompts", {}).items()}

    def __contains__(self, prompt) -> bool:
        return prompt in self.pending or prompt in self.where

    def __getitem__(self, prompt: str) -> TextCond:
        if prompt in self.pending:
            return self.pending[prompt]
        shard, slot = self.where[prompt]
        with safe_open(self.folder / shard, framework="pt") as handle:
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
        shard = new_file(self.folder, "shard_", ".safetensors").name
        save_atomic(tensors, self.folder / shard, {})
        self.where = self._saved() | self.where | {prompt: [shard, slot] for slot, prompt in enumerate(self.pending)}
        self.pending = {}
        write_text_atomic(self.index, json.dumps({"model": self.model, "prompts": self.where}))
