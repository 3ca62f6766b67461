"""The toy world as an ordinary dataset folder (PNG images + edits.jsonl), for the CLI and nodes."""

from __future__ import annotations

from pathlib import Path

from ..data import write_dataset
from .world import check_training_seed, render, sample_tuples


def write_toy_dataset(root: str | Path, n: int = 256, seed: int = 0, overwrite: bool = False, instead: str = "") -> Path:
    """``n`` training tuples (held-out colour combinations excluded), deterministic from ``seed``; a folder
    holding other files is refused unless ``overwrite`` (``data.write_dataset``)."""
    check_training_seed(seed, "seed")
    tuples = sample_tuples(n, seed)
    return write_dataset(root, [t.record() for t in tuples], [render(t.source) for t in tuples], overwrite, instead)
