"""Read a toy scene back from pixels and score an edit against the true edited scene.

The reading procedure is fixed, so every method of the bench is scored the same way:

1. Background colour: the palette colour nearest (Euclidean RGB) to the per-channel median
   of the image's border pixels (sampled shapes keep a margin, so the border is background).
2. Shape mask: pixels farther than MASK_DISTANCE (0.5, half the smallest distance between
   palette colours) from that palette background colour.
3. No shape when the mask has fewer than MIN_SHAPE_PIXELS pixels; otherwise
   shape colour: the palette colour nearest to the per-channel median of the mask pixels;
   centroid: the mean (x, y) of the mask's pixel centres, in pixels;
   kind: for each kind, a template of the same area and centroid is rendered (the kind's
   analytic area and centroid offset give its size and box centre); the kind whose
   template has the highest IoU with the mask wins (ties go to the earlier of SHAPES).
   A bounding-box fill ratio is too coarse at 16 px, a template fit is not.

An edit succeeds when the requested attribute reads as the target value. It preserves
the source when every other attribute reads as in the true edited scene, the mask's IoU
with the true edited mask is at least PRESERVE_IOU and its centroid is within
PRESERVE_CENTROID_PX pixels of the true edited mask's centroid.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import torch

from .world import (
    COLORS,
    PALETTE,
    SHAPE_KINDS,
    SHAPES,
    EditTuple,
    edit_family,
    kind_mask,
    render,
    shape_mask,
)

MASK_DISTANCE = 0.5
MIN_SHAPE_PIXELS = 4
PRESERVE_IOU = 0.6
PRESERVE_CENTROID_PX = 1.5

_PALETTE = torch.tensor([PALETTE[name] for name in COLORS], dtype=torch.float32)
_ATTRIBUTE_FIELDS = ("shape", "shape_color", "bg_color")


@dataclass(frozen=True)
class Reading:
    """What the fixed procedure reads from one image; shape parts are None without a shape."""

    bg_color: str
    shape_color: str | None
    shape: str | None
    mask: torch.Tensor  # bool (H, W)
    centroid: (
        tuple[float, float] | None
    )  # (x, y) in pixels, pixel (i, j) centred at (j + .5, i + .5)


def nearest_color(rgb: torch.Tensor) -> str:
    """The palette name nearest to one (3,) colour."""
    return COLORS[int(torch.linalg.vector_norm(_PALETTE - rgb, dim=1).argmin())]


def _border(image: torch.Tensor) -> torch.Tensor:
    """(3, N) pixels of the outermost rows and columns."""
    rows = torch.cat([image[:, 0, :], image[:, -1, :]], dim=1)
    cols = torch.cat([image[:, 1:-1, 0], image[:, 1:-1, -1]], dim=1)
    return torch.cat([rows, cols], dim=1)


def mask_centroid(mask: torch.Tensor) -> tuple[float, float]:
    """Mean (x, y) of the mask's pixel centres, in pixels."""
    i, j = torch.nonzero(mask, as_tuple=True)
    return float(j.double().mean() + 0.5), float(i.double().mean() + 0.5)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def classify_kind(mask: torch.Tensor) -> str:
    """The kind whose area- and centroid-matched template overlaps ``mask`` best."""
    side = mask.shape[-1]
    area = float(mask.sum()) / side**2
    x, y = mask_centroid(mask)

    def fit(name: str) -> float:
        kind = SHAPE_KINDS[name]
        box = (area / kind.area) ** 0.5
        return mask_iou(
            mask, kind_mask(name, x / side, y / side - kind.centroid_dy * box, box, side)
        )

    return max(SHAPES, key=fit)


def read_scene(image: torch.Tensor) -> Reading:
    """Read a (3, N, N) image in [0, 1] with the module's fixed procedure."""
    if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] != image.shape[2]:
        raise ValueError(f"read_scene takes one square (3, N, N) image, got {tuple(image.shape)}")
    image = image.detach().float().cpu().clamp(0, 1)
    bg_color = nearest_color(_border(image).median(dim=1).values)
    distance = torch.linalg.vector_norm(
        image - _PALETTE[COLORS.index(bg_color)][:, None, None], dim=0
    )
    mask = distance > MASK_DISTANCE
    if int(mask.sum()) < MIN_SHAPE_PIXELS:
        return Reading(bg_color, None, None, mask, None)
    shape_color = nearest_color(image[:, mask].median(dim=1).values)
    return Reading(bg_color, shape_color, classify_kind(mask), mask, mask_centroid(mask))


def _centroid_ok(reading: Reading, true_mask: torch.Tensor) -> bool:
    if reading.centroid is None:
        return False
    (x, y), (tx, ty) = reading.centroid, mask_centroid(true_mask)
    return ((x - tx) ** 2 + (y - ty) ** 2) ** 0.5 <= PRESERVE_CENTROID_PX


def evaluate_edit(source_img: torch.Tensor, edited_img: torch.Tensor, tup: EditTuple) -> dict:
    """Score one edited (3, N, N) image against the tuple's true edited scene.

    Returns a row: ``family``, ``unseen`` and the metrics ``edit_success``,
    ``preservation`` (0/1), ``mask_iou``, ``pixel_error`` (mean |edited - true target|)
    and ``source_distance`` (mean |edited - source|; 0 means the editor did nothing).
    Preservation is the AND of three 0/1 criteria, kept in the row so that a bench can say
    which one fails: ``kept_<field>`` for each attribute the edit must leave alone (it reads
    as in the true edited scene), ``kept_mask_iou`` and ``kept_centroid``.
    """
    side = edited_img.shape[-1]
    reading = read_scene(edited_img)
    field = edit_family(tup.family).field
    true_mask = shape_mask(tup.target, side)
    iou = mask_iou(reading.mask, true_mask)
    kept = {f"kept_{f}": float(getattr(reading, f) == getattr(tup.target, f)) for f in _ATTRIBUTE_FIELDS if f != field}
    kept["kept_mask_iou"] = float(iou >= PRESERVE_IOU)
    kept["kept_centroid"] = float(_centroid_ok(reading, true_mask))
    edited = edited_img.detach().float().cpu()
    return {
        "family": tup.family,
        "unseen": tup.unseen,
        "edit_success": float(getattr(reading, field) == getattr(tup.target, field)),
        "preservation": min(kept.values()),
        **kept,
        "mask_iou": iou,
        "pixel_error": float((edited - render(tup.target, side)).abs().mean()),
        "source_distance": float((edited - source_img.detach().float().cpu()).abs().mean()),
    }


def _mean_rows(rows: list[dict]) -> dict:
    """Each metric's mean over the rows that have it (``kept_<field>`` only where ``field`` was not edited)."""
    metrics = dict.fromkeys(
        k for row in rows for k, v in row.items() if k not in ("family", "unseen") and isinstance(v, (int, float))
    )
    means = {}
    for k in metrics:
        values = [float(row[k]) for row in rows if k in row]
        means[k] = sum(values) / len(values)
    return {**means, "n": len(rows)}


def aggregate(rows: Iterable[dict]) -> dict:
    """Means of every metric: ``all``, ``by_family[name]`` and ``by_split['seen'|'unseen']``."""
    rows = list(rows)
    if not rows:
        raise ValueError("aggregate needs at least one row")
    families: dict[str, list[dict]] = defaultdict(list)
    splits: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        families[row["family"]].append(row)
        splits["unseen" if row["unseen"] else "seen"].append(row)
    return {
        "all": _mean_rows(rows),
        "by_family": {name: _mean_rows(group) for name, group in families.items()},
        "by_split": {name: _mean_rows(group) for name, group in splits.items()},
    }
