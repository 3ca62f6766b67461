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

Both read the scene back, so they are lenient: a colour read with a median passes a shape
recoloured only in part. The strict criterion is the clean edit: the edit succeeds, at least
CLEAN_EDIT_SHARE of the pixels are right (within CLEAN_PIXEL_DISTANCE of the true edited scene's pixel),
and at least CLEAN_EDIT_SHARE of the shapes' pixels (the source's and the true edited scene's: where the
edit acts) show one of the true edited scene's two colours. The first alone (``clean_edit_image``, the rule
of every figure recorded before the second was added) let a small shape recoloured on 57% of its pixels
pass; the second does not count an outline a pixel off, which a 16 px render cannot always determine
(``clean_edit_ceiling``), nor a wrong pixel of a scene colour, which the first counts. Every rate carries
a 95% Wilson interval (``wilson_interval``).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import math

import torch

from .world import (
    COLORS,
    DEFAULT_RESOLUTION,
    MARGIN,
    PALETTE,
    SIZE_RANGE,
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
# A pixel is right when its Euclidean RGB distance to the true pixel is at most 0.5: half the smallest distance
# between palette colours, so a right pixel is nearer the true colour than any other and reads as it (the rule
# the shape mask uses). Tighter tolerances hardly change the rate: a trained editor's pixels sit within 0.1 of
# a palette colour 90% of the time (the demo's LoRA: 3.1% clean at 0.5, 2.1% at a max channel error of 0.1).
CLEAN_PIXEL_DISTANCE = 0.5
# At least 95% of the pixels (at most 12 of a 16 x 16 image wrong), and 95% of the shapes' pixels (the source's
# and the true edited scene's) in the edited scene's own colours: a shape recoloured on 57% of its pixels fails at
# every size, as the issue asks, while a few ragged pixels pass. The image alone passed 57% on a small shape (an
# 18-pixel triangle: 8 wrong pixels are 3% of the image), and 75% on half the bench's shape-colour tuples.
CLEAN_EDIT_SHARE = 0.95
CLEAN_EDIT_RULE = "95% of the pixels right and 95% of the shapes' pixels in the scene's colours"  # results.json
IMAGE_ONLY_RULE = "95% of the pixels right"  # the rule of runs that record none
# The rates that carry an interval wherever they are reported; the rest are diagnostics.
RATE_KEYS = ("clean_edit", "edit_success", "preservation")
Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile

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


def right_pixels(edited: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Which pixels lie within CLEAN_PIXEL_DISTANCE (Euclidean RGB) of the true edited scene's: (..., H, W) for
    images (..., 3, H, W), one image or a batch."""
    distance = torch.linalg.vector_norm(edited.detach().float().cpu().clamp(0, 1) - target, dim=-3)
    return distance <= CLEAN_PIXEL_DISTANCE


def right_pixel_share(edited_img: torch.Tensor, target_img: torch.Tensor) -> float:
    """The share of pixels within CLEAN_PIXEL_DISTANCE (Euclidean RGB) of the true edited scene's."""
    return float(right_pixels(edited_img, target_img).float().mean())


def edit_succeeded(reading: Reading, tup: EditTuple) -> bool:
    """The lenient criterion: the edited attribute reads as the target value."""
    field = edit_family(tup.family).field
    return getattr(reading, field) == getattr(tup.target, field)


def edit_region(tup: EditTuple, side: int) -> torch.Tensor:
    """Where an edit acts: the source's shape and the true edited scene's, (side, side) bool."""
    return shape_mask(tup.source, side) | shape_mask(tup.target, side)


def in_scene_colours(image: torch.Tensor, scene) -> torch.Tensor:
    """Which pixels of a (3, H, W) image lie within CLEAN_PIXEL_DISTANCE of one of ``scene``'s two colours."""
    colours = torch.tensor([PALETTE[scene.shape_color], PALETTE[scene.bg_color]], dtype=torch.float32)
    distance = torch.linalg.vector_norm(image.detach().float().cpu().clamp(0, 1)[None] - colours[:, :, None, None], dim=1)
    return distance.min(0).values <= CLEAN_PIXEL_DISTANCE


def clean_edit(edited_img: torch.Tensor, tup: EditTuple, reading: Reading | None = None,
               image_only: bool = False) -> float:
    """1.0 when ``edited_img`` is a clean edit: the edit succeeds, CLEAN_EDIT_SHARE of its pixels are right and
    CLEAN_EDIT_SHARE of ``edit_region``'s pixels are in the true edited scene's colours (``image_only``: the first
    two alone, the earlier rule).

    Success is required as well because the pixel share alone passes doing nothing on a small shape's
    kind edit (a circle and a square of the same box differ by fewer than 12 pixels when the box is small).
    ``reading`` saves a second read of the same image.
    """
    reading = reading or read_scene(edited_img)
    side = edited_img.shape[-1]
    shares = [right_pixel_share(edited_img, render(tup.target, side))]
    region = edit_region(tup, side)
    if not image_only and region.any():  # at 2-4 px a shape can cover no pixel
        shares.append(float(in_scene_colours(edited_img, tup.target)[region].float().mean()))
    return float(edit_succeeded(reading, tup) and min(shares) >= CLEAN_EDIT_SHARE)


@dataclass(frozen=True)
class Ceiling:
    """How clean an edit of one tuple can be: ``best`` for an editor that draws the most likely outline every time,
    ``sampled`` for one that draws an outline from the posterior (what a flow model trained to match the true
    pairs does, as its noise seeds vary)."""

    best: float
    sampled: float


def clean_edit_ceiling(tup: EditTuple, samples: int = 40000, seed: int = 0) -> Ceiling:
    """The best chance any editor has of a clean edit of ``tup``: can its source tell the true target apart?

    A colour edit keeps the geometry, so its target is the source recoloured: 1.0. A shape-kind edit must redraw
    the outline from a 16 px render of another kind, which fits many geometries (cx, cy, size) of the world's
    prior. ``samples`` geometries are drawn within 1.5 pixels (centre) and 2 pixels (size) of the true one and
    kept when they render the source exactly (the posterior, the true one included; on the bench's held-out
    tuples none farther than 0.96 and 1.46 pixels does, of 20000 drawn within 3 and 4 pixels); each kept target outline
    is a candidate answer, scored by the share of kept targets it is a clean edit of (at most
    (1 - CLEAN_EDIT_SHARE) of the pixels differ; the edited attribute is right and every pixel is in the scene's
    colours by construction). The best
    candidate's share is ``best``: below 1 where the source leaves the target's outline undetermined. The mean
    candidate's share is ``sampled``: the chance that an outline drawn from the posterior is a clean edit of a
    truth drawn from it too (the world's prior is uniform in the window, so the kept geometries are such draws).
    """
    if tup.family != "shape_kind":
        return Ceiling(1.0, 1.0)
    src, side = tup.source, DEFAULT_RESOLUTION
    generator = torch.Generator().manual_seed(seed)

    def around(value: float, pixels: float) -> torch.Tensor:
        jitter = (torch.rand(samples, 1, 1, generator=generator, dtype=torch.float64) - 0.5) * 2 * pixels / side
        return torch.cat([torch.full((1, 1, 1), value, dtype=torch.float64), value + jitter])

    cx, cy, box = around(src.cx, 1.5), around(src.cy, 1.5), around(src.size, 2.0)
    prior = (box >= SIZE_RANGE[0]) & (box <= SIZE_RANGE[1])
    for centre in (cx, cy):
        prior &= (centre >= box / 2 + MARGIN) & (centre <= 1 - box / 2 - MARGIN)
    same_source = (kind_mask(src.shape, cx, cy, box, side) == shape_mask(src, side)).flatten(1).all(1)
    keep = prior.flatten() & same_source
    targets = kind_mask(tup.target.shape, cx[keep], cy[keep], box[keep], side).flatten(1).float()
    right = 1 - torch.cdist(targets, targets, p=1) / (side * side)  # share of pixels where two outlines agree
    # clean_edit's rule, per candidate (an outline drawn in the scene's colours meets its colour criterion)
    share = (right >= CLEAN_EDIT_SHARE).double().mean(1)
    return Ceiling(best=float(share.max()), sampled=float(share.mean()))


def wilson_interval(rate: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a rate measured on ``n`` samples (95% by default); (0, 1) when n = 0.

    A rate averaged over several noise seeds per sample is still given ``n`` samples, not n x seeds: a
    per-sample mean in [0, 1] varies no more than one 0/1 outcome, so the interval is, if anything, wide.
    """
    if n <= 0:
        return 0.0, 1.0
    scale = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / scale
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / scale
    # exactly 0 and 1 at the ends (rounding would leave 0.9999999999999999)
    return (0.0 if rate <= 0 else centre - half), (1.0 if rate >= 1 else centre + half)


def _t_density(x: float, df: float) -> float:
    return math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - (df + 1) / 2 * math.log1p(x * x / df)) / math.sqrt(
        df * math.pi)


@functools.lru_cache(maxsize=256)  # a pure function of df, asked for the same few df again and again
def t_quantile(df: float) -> float:
    """Student's t 97.5% quantile for ``df`` >= 1 degrees of freedom, a fraction too (Satterthwaite's): its density
    integrated by Simpson's rule (400 intervals) and the CDF inverted by bisection; the normal's beyond 10^6 degrees
    of freedom."""
    if df < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {df}")
    if df > 1e6:
        return Z_95
    p = 0.975

    def cdf(q: float, steps: int = 400) -> float:
        h = q / steps
        weights = (1 if i in (0, steps) else 4 if i % 2 else 2 for i in range(steps + 1))
        return 0.5 + h / 3 * sum(w * _t_density(i * h, df) for i, w in enumerate(weights))

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


def over_seeds_and_tuples(table: Sequence[Sequence[float]]) -> tuple[float, float, float] | None:
    """The mean of a (training seeds x held-out tuples) table — each training seed's per-tuple values on the same
    tuples, or a paired change's — and its 95% interval counting both draws. From the two-way ANOVA of the table
    (tuples, seeds, residual), each draw's part of Var(mean) at its own t quantile, the two half-widths added in
    quadrature: t(n-1) sqrt(MS_T / nS) and t(S-1) sqrt(MS_S / nS). With two or three seeds the seed spread is known
    from one or two degrees of freedom, and an interval at Satterthwaite's pooled degrees of freedom (with MS_E
    subtracted) held the truth in about 90% of simulated draws at two seeds; this one in about 97%. The tuples'
    interval alone (``paired_change``, ``wilson_interval``) holds the training runs fixed; this one does not, and is
    never the narrower. None with fewer than two seeds."""
    seeds, n = len(table), len(table[0]) if table else 0
    if seeds < 2 or n < 2:
        return None
    grand = sum(map(sum, table)) / (seeds * n)
    by_seed = [sum(row) / n for row in table]
    by_tuple = [sum(column) / seeds for column in zip(*table)]
    ms_seeds = n * sum((m - grand) ** 2 for m in by_seed) / (seeds - 1)
    ms_tuples = seeds * sum((m - grand) ** 2 for m in by_tuple) / (n - 1)
    half = math.hypot(t_quantile(n - 1) * math.sqrt(ms_tuples / (n * seeds)),
                      t_quantile(seeds - 1) * math.sqrt(ms_seeds / (n * seeds)))
    return grand, grand - half, grand + half


def paired_change(a: Sequence[float], b: Sequence[float], z: float = Z_95) -> tuple[float, float, float]:
    """Two methods on the same tuples: the mean of a_i - b_i and its 95% normal interval over the tuples.

    Each tuple's difficulty cancels in a_i - b_i, so this is tighter than the two rates' own intervals side by side.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"a paired change needs the same tuples on both sides: {len(a)} and {len(b)} outcomes")
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / max(1, len(d) - 1))
    half = z * sd / math.sqrt(len(d))
    return mean, mean - half, mean + half


def evaluate_edit(source_img: torch.Tensor, edited_img: torch.Tensor, tup: EditTuple) -> dict:
    """Score one edited (3, N, N) image against the tuple's true edited scene.

    Returns a row: ``family``, ``unseen`` and the metrics ``clean_edit`` (``clean_edit_image``: by the whole image
    alone, the earlier rule), ``edit_success``,
    ``preservation`` (0/1), ``right_pixels`` (the share ``clean_edit`` thresholds), ``mask_iou``,
    ``pixel_error`` (mean |edited - true target|) and ``source_distance`` (mean |edited - source|;
    0 means the editor did nothing).
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
    edited, target = edited_img.detach().float().cpu(), render(tup.target, side)
    return {
        "family": tup.family,
        "unseen": tup.unseen,
        "clean_edit": clean_edit(edited, tup, reading),
        "clean_edit_image": clean_edit(edited, tup, reading, image_only=True),
        "edit_success": float(edit_succeeded(reading, tup)),
        "preservation": min(kept.values()),
        **kept,
        "right_pixels": right_pixel_share(edited, target),
        "shape_right_pixels": float(right_pixels(edited, target)[edit_region(tup, side)].float().mean().nan_to_num(1.0)),
        "mask_iou": iou,
        "pixel_error": float((edited - target).abs().mean()),
        "source_distance": float((edited - source_img.detach().float().cpu()).abs().mean()),
    }


def _metric_means(rows: Sequence[dict]) -> dict:
    """Each metric's mean over the rows that have it (``kept_<field>`` only where ``field`` was not edited)."""
    metrics = dict.fromkeys(
        k for row in rows for k, v in row.items() if k not in ("family", "unseen") and isinstance(v, (int, float))
    )
    means = {}
    for k in metrics:
        values = [float(row[k]) for row in rows if k in row]
        means[k] = sum(values) / len(values)
    return means


def _mean_rows(rows: list[dict]) -> dict:
    """The metrics' means, ``n`` and, for each of RATE_KEYS, ``<key>_ci``: its 95% Wilson interval over n."""
    means = _metric_means(rows)
    intervals = {f"{k}_ci": list(wilson_interval(means[k], len(rows))) for k in RATE_KEYS if k in means}
    return {**means, **intervals, "n": len(rows)}


def aggregate(rows: Iterable[dict]) -> dict:
    """Means of every metric: ``all``, ``by_family[name]`` and ``by_split['seen'|'unseen']``; the RATE_KEYS
    carry ``<key>_ci``, their 95% Wilson interval."""
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


def aggregate_seeds(rows_by_seed: Sequence[Sequence[dict]]) -> dict:
    """``aggregate`` of the same tuples edited with several noise seeds (one row list per seed, same order).

    Each tuple's metrics are first averaged over the seeds, so the intervals count tuples, not outputs;
    ``all`` adds ``<key>_by_seed``, each seed's rate alone, for the spread the noise alone makes, and
    ``per_tuple[key]`` keeps each tuple's rate, in the tuples' order, for paired comparisons (``paired_change``).
    """
    if not rows_by_seed:
        raise ValueError("aggregate_seeds needs at least one seed's rows")
    per_tuple = [{"family": group[0]["family"], "unseen": group[0]["unseen"], **_metric_means(group)}
                 for group in zip(*rows_by_seed)]
    summary = aggregate(per_tuple)
    summary["per_tuple"] = {k: [row[k] for row in per_tuple] for k in RATE_KEYS if k in per_tuple[0]}
    per_seed = [_metric_means(rows) for rows in rows_by_seed]
    summary["all"].update({f"{k}_by_seed": [seed[k] for seed in per_seed] for k in RATE_KEYS if k in per_seed[0]})
    summary["all"]["n_seeds"] = len(rows_by_seed)
    return summary
