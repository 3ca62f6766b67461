"""Pictures for people: a loss curve and an image grid, drawn with PIL (no plotting dependency).

Both return float tensors (H, W, 3) in [0, 1], the layout ComfyUI's IMAGE uses, and
``save_png`` writes one to disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average of the finite values, so a noisy per-step loss shows its trend and one nan or inf
    step leaves the rest of the curve (nan only where a window holds no finite value)."""
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, array, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    ends = np.arange(1, len(array) + 1)
    starts = np.maximum(ends - window, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums[ends] - sums[starts]) / (counts[ends] - counts[starts])
    return [float(v) for v in means]


def loss_curve(history: list[dict[str, float]], keys: Sequence[str] | None = None, size=(640, 360)) -> torch.Tensor:
    """Each loss term against the step, smoothed, one colour per term, with a legend."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    seen = dict.fromkeys(k for row in history for k in row)  # every term any step logged, in first-seen order
    keys = keys or [k for k in seen if k not in ("step", "identity_step")]
    window = max(1, len(history) // 50)
    steps = {k: [i for i, row in enumerate(history) if k in row] for k in keys}  # a term's own steps
    series = {k: smooth([history[i][k] for i in steps[k]], window) for k in keys}
    series = {k: v for k, v in series.items() if v}
    left, top, right, bottom = 50, 20, width - 10, height - 30
    draw.rectangle([left, top, right, bottom], outline="black")
    if not series:
        draw.text((left + 10, top + 10), "no steps yet", fill="black")
        return _to_tensor(image)
    shown = [v for values in series.values() for v in values if np.isfinite(v)] or [0.0]
    high, low = max(shown), min(0.0, min(shown))
    span = max(high - low, 1e-9)
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        n = max(len(history) - 1, 1)
        points = [(left + (right - left) * i / n, bottom - (bottom - top) * (v - low) / span) if np.isfinite(v)
                  else None for i, v in zip(steps[name], values)]
        run = []  # a window without a finite value breaks the line
        for point in [*points, None]:
            if point is not None:
                run.append(point)
                continue
            if run:
                draw.line(run if len(run) > 1 else run * 2, fill=colour, width=2)
            run = []
        draw.text((left + 8, top + 6 + 14 * i), name, fill=colour)
    draw.text((4, top), f"{high:.3g}", fill="black")
    draw.text((4, bottom - 10), f"{low:.3g}", fill="black")
    draw.text((left, bottom + 8), f"step 1 .. {len(history)}", fill="black")
    return _to_tensor(image)


def image_grid(rows: Sequence[Sequence[torch.Tensor]], labels: Sequence[str] = (), scale: int = 4, pad: int = 2) -> torch.Tensor:
    """Rows of (3, H, W) images in [0, 1], enlarged ``scale`` times, columns titled by ``labels``."""
    height, width = rows[0][0].shape[-2:]
    cell_h, cell_w = height * scale + pad, width * scale + pad
    title = 14 if labels else 0
    columns = max(len(r) for r in rows)
    canvas = Image.new("RGB", (columns * cell_w + pad, title + len(rows) * cell_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(labels):
        draw.text((pad + j * cell_w, 1), label[: max(1, cell_w // 6)], fill="black")
    for i, row in enumerate(rows):
        for j, pixels in enumerate(row):
            array = (pixels.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(array).resize((width * scale, height * scale), Image.NEAREST)
            canvas.paste(tile, (pad + j * cell_w, title + pad + i * cell_h))
    return _to_tensor(canvas)


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write an (H, W, 3) image in [0, 1] as a PNG, atomically."""
    from .video_io import save_pixels

    return save_pixels(image.permute(2, 0, 1).unsqueeze(0), path)
