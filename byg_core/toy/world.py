"""The toy shapes world: scenes, exact renders, captions and ground-truth edit tuples.

A scene is one hard-edged shape of one palette colour on a plain background of another
palette colour. Everything is analytic, so the true result of every edit is known and a
bench can score an editor against it (DESIGN.md, "The toy world"). The text follows the
paper's tuple format (appendix D): a source caption, a forward instruction, a target
caption and a self-contained reverse instruction that never refers to an "original".

Scene coordinates are fractions of the image side (0 = left/top, 1 = right/bottom), so one
scene renders at any resolution; pixel (i, j) of an N x N render samples the point
``((j + 0.5) / N, (i + 0.5) / N)``. ``Scene.size`` is the side of the shape's bounding box
as a fraction of the image side; ``render(scene, size)`` takes the image side in pixels.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from typing import Callable, Collection, Iterable, Sequence

import torch

from ..data import TEXT_FIELDS

# The corners of the RGB cube: any two are at least 1 apart, so a pixel read back with
# an error below 0.5 still lands on the right name. No name starts with a vowel, so the
# captions' article is always "a".
PALETTE: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
}
COLORS: tuple[str, ...] = tuple(PALETTE)

DEFAULT_RESOLUTION = 16
# Sampled shapes span 40-70% of the image side and keep this margin to every edge, so
# the image border is pure background (the metrics read the background colour there).
SIZE_RANGE = (0.4, 0.7)
MARGIN = 1 / 16

# (shape_color, bg_color) pairs that training tuples never show, neither as source nor
# as target scene: each colour is held out once as a shape colour and once as a
# background, so every colour is still seen in both roles. 8 of the 56 pairs.
UNSEEN_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {
        ("black", "green"),
        ("white", "blue"),
        ("red", "yellow"),
        ("green", "cyan"),
        ("blue", "magenta"),
        ("yellow", "black"),
        ("cyan", "white"),
        ("magenta", "red"),
    }
)

CAPTION_TEMPLATE = "a {shape_color} {shape} on a {bg_color} background"
# Words a reverse instruction may not use: it must state the inverse edit itself
# (paper appendix D), because the editor never sees the source when it applies it.
FORBIDDEN_REVERSE = re.compile(r"\b(undo\w*|restor\w*|revert\w*|original\w*|back)\b")

_WORD = r"'s\b|[^\W_]+"  # a possessive, or a run of letters or digits of any script (none dropped unread)


@dataclass(frozen=True)
class ShapeKind:
    """One kind of shape, described on a unit bounding box centred at the origin."""

    name: str
    inside: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (u, v) in box units -> bool
    area: float  # area / size**2: lets the metrics size a template from a mask's area
    centroid_dy: float  # (centroid - box centre) along y / size: places that template


SHAPE_KINDS: dict[str, ShapeKind] = {
    kind.name: kind
    for kind in (
        ShapeKind("circle", lambda u, v: u * u + v * v <= 0.25, torch.pi / 4, 0.0),
        ShapeKind("square", lambda u, v: (u.abs() <= 0.5) & (v.abs() <= 0.5), 1.0, 0.0),
        # Apex at the top centre, base along the bottom edge: the half-width grows from
        # 0 to 0.5 down the box, so the centroid sits a sixth of the side below centre.
        ShapeKind("triangle", lambda u, v: (v <= 0.5) & (u.abs() <= (v + 0.5) / 2), 0.5, 1 / 6),
    )
}
SHAPES: tuple[str, ...] = tuple(SHAPE_KINDS)


def tokenize(text: str) -> list[str]:
    """Lowercase words (letters or digits of any script); a possessive "'s" is its own token, everything else splits."""
    return re.findall(_WORD, text.lower().replace("\u2019", "'"))


def _check_choice(field: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(
            f"{field}={value!r} is not in the toy world; allowed: {', '.join(allowed)}"
        )


@dataclass(frozen=True)
class Attributes:
    """What a caption says about a scene (everything but the geometry)."""

    shape: str
    shape_color: str
    bg_color: str


@dataclass(frozen=True)
class Scene:
    """One shape on a background; validated so that every scene renders and reads back."""

    shape: str
    shape_color: str
    bg_color: str
    cx: float = 0.5  # centre of the bounding box, fraction of the image width
    cy: float = 0.5  # centre of the bounding box, fraction of the image height
    size: float = 0.5  # side of the bounding box, fraction of the image side

    def __post_init__(self) -> None:
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("shape_color", self.shape_color, COLORS)
        _check_choice("bg_color", self.bg_color, COLORS)
        if self.shape_color == self.bg_color:
            raise ValueError(
                f"shape_color and bg_color are both {self.shape_color!r}: the shape would be invisible"
            )
        if not 0 < self.size <= 1:
            raise ValueError(f"size={self.size} must lie in (0, 1] (a fraction of the image side)")
        for field in ("cx", "cy"):
            self._check_inside(field, getattr(self, field))

    def _check_inside(self, field: str, value: float) -> None:
        low, high = self.size / 2, 1 - self.size / 2
        if not low <= value <= high:
            raise ValueError(
                f"{field}={value} puts the shape outside the image: with size={self.size} "
                f"it must lie in [{low:.4g}, {high:.4g}]"
            )

    @property
    def attributes(self) -> Attributes:
        return Attributes(self.shape, self.shape_color, self.bg_color)

    @property
    def combo(self) -> tuple[str, str]:
        return (self.shape_color, self.bg_color)


def _check_resolution(size: int) -> None:
    if not isinstance(size, int) or size < 2 or size % 2:
        raise ValueError(f"render size={size!r} must be an even number of pixels >= 2")


def pixel_centres(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of every pixel centre of a size x size image, as fractions, each (size, size)."""
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return x, y


def kind_mask(kind: str, cx: float, cy: float, box: float, size: int) -> torch.Tensor:
    """Boolean (size, size) mask of a shape without scene validation (metrics fit templates)."""
    x, y = pixel_centres(size)
    return SHAPE_KINDS[kind].inside((x - cx) / box, (y - cy) / box)


def shape_mask(scene: Scene, size: int = DEFAULT_RESOLUTION) -> torch.Tensor:
    """Boolean (size, size) mask of the pixels whose centre lies inside the shape."""
    _check_resolution(size)
    return kind_mask(scene.shape, scene.cx, scene.cy, scene.size, size)


def color_tensor(name: str) -> torch.Tensor:
    """The palette colour ``name`` as a float32 (3,) tensor in [0, 1]."""
    return torch.tensor(PALETTE[name], dtype=torch.float32)


def render(scene: Scene, size: int = DEFAULT_RESOLUTION) -> torch.Tensor:
    """Exact hard-edged render: float32 (3, size, size) in [0, 1], two palette colours only."""
    mask = shape_mask(scene, size)
    shape_rgb = color_tensor(scene.shape_color)[:, None, None]
    bg_rgb = color_tensor(scene.bg_color)[:, None, None]
    return torch.where(mask, shape_rgb, bg_rgb)


def render_batch(scenes: Iterable[Scene], size: int = DEFAULT_RESOLUTION) -> torch.Tensor:
    """Renders stacked into (B, 3, size, size)."""
    return torch.stack([render(scene, size) for scene in scenes])


def caption(scene: Scene | Attributes) -> str:
    """ "a red circle on a blue background"."""
    return CAPTION_TEMPLATE.format(
        shape=scene.shape, shape_color=scene.shape_color, bg_color=scene.bg_color
    )


def _template_tokens(template: str) -> list[str]:
    """Template words, with each "{field}" kept as one token."""
    return re.findall(r"\{\w+\}|" + _WORD, template)


def parse_caption(text: str) -> Attributes:
    """Attributes named by a caption in the world's one caption form; ValueError otherwise."""
    pattern, words = _template_tokens(CAPTION_TEMPLATE), tokenize(text)
    if len(words) != len(pattern):
        raise ValueError(f"caption {text!r} is not of the form {CAPTION_TEMPLATE!r}")
    slots = {}
    for expected, word in zip(pattern, words):
        if expected.startswith("{"):
            slots[expected[1:-1]] = word
        elif word != expected:
            raise ValueError(f"caption {text!r} is not of the form {CAPTION_TEMPLATE!r}")
    # Building a Scene validates the words: known colours and shape, colours differ.
    return Scene(**slots).attributes


@dataclass(frozen=True)
class EditFamily:
    """One kind of edit: which scene field it changes and how the instruction reads."""

    name: str
    field: str  # the Scene field the edit changes
    template: str  # {shape} is the scene's shape before the edit, {value} the new value
    values: tuple[str, ...]
    other: str | None = None  # a field that must keep a different value than ``field``

    def options(self, scene: Scene) -> list[str]:
        """New values this edit can give ``scene``: not the current one, not a clash."""
        taken = {getattr(scene, self.field)}
        if self.other is not None:
            taken.add(getattr(scene, self.other))
        return [value for value in self.values if value not in taken]

    def instruction(self, scene: Scene, value: str) -> str:
        return self.template.format(shape=scene.shape, value=value)


FAMILIES: dict[str, EditFamily] = {
    family.name: family
    for family in (
        EditFamily(
            "shape_color", "shape_color", "change the {shape}'s colour to {value}", COLORS,
            other="bg_color",
        ),
        EditFamily(
            "bg_color", "bg_color", "change the background colour to {value}", COLORS,
            other="shape_color",
        ),
        EditFamily("shape_kind", "shape", "turn the {shape} into a {value}", SHAPES),
    )
}

VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        {
            word
            for template in (CAPTION_TEMPLATE, *(f.template for f in FAMILIES.values()))
            for word in _template_tokens(template)
            if not word.startswith("{")
        }
        | set(COLORS)
        | set(SHAPES)
    )
)


def edit_family(name: str) -> EditFamily:
    _check_choice("family", name, tuple(FAMILIES))
    return FAMILIES[name]


@dataclass(frozen=True)
class EditTuple:
    """One training tuple (paper appendix D) plus the scenes it was made from."""

    src_caption: str
    instruction: str
    tgt_caption: str
    reverse_instruction: str
    family: str
    source: Scene
    target: Scene  # the true edited scene: for evaluation only, never for ByG training

    @property
    def unseen(self) -> bool:
        """Whether the tuple shows a held-out colour combination (see UNSEEN_COMBOS)."""
        return bool(touched_combos(self) & UNSEEN_COMBOS)

    def record(self) -> dict[str, str]:
        """The text fields of one ``edits.jsonl`` line (the image path is the caller's)."""
        return {field: getattr(self, field) for field in TEXT_FIELDS}


def touched_combos(t: EditTuple) -> set[tuple[str, str]]:
    return {t.source.combo, t.target.combo}


def make_edit(scene: Scene, family: str, new_value: str) -> EditTuple:
    """The tuple that changes ``family``'s attribute of ``scene`` to ``new_value``."""
    edit = edit_family(family)
    if new_value not in edit.options(scene):
        raise ValueError(
            f"a {family} edit of {caption(scene)!r} cannot set {edit.field}={new_value!r}; "
            f"allowed: {', '.join(edit.options(scene))}"
        )
    target = replace(scene, **{edit.field: new_value})
    return EditTuple(
        src_caption=caption(scene),
        instruction=edit.instruction(scene, new_value),
        tgt_caption=caption(target),
        reverse_instruction=edit.instruction(target, getattr(scene, edit.field)),
        family=family,
        source=scene,
        target=target,
    )


def random_scene(rng: random.Random) -> Scene:
    """A uniformly random scene whose shape stays MARGIN away from every image edge."""
    shape_color = rng.choice(COLORS)
    bg_color = rng.choice([c for c in COLORS if c != shape_color])
    box = rng.uniform(*SIZE_RANGE)
    low, high = MARGIN + box / 2, 1 - MARGIN - box / 2
    shape = rng.choice(SHAPES)
    cx, cy = rng.uniform(low, high), rng.uniform(low, high)
    return Scene(shape, shape_color, bg_color, cx=cx, cy=cy, size=box)


def _rejection_sample(n: int, draw: Callable[[], object], keep: Callable[[object], bool]) -> list:
    """``n`` draws that pass ``keep``; ValueError when the constraints keep almost nothing."""
    kept: list = []
    for _ in range(1000 * n):
        if len(kept) == n:
            break
        item = draw()
        if keep(item):
            kept.append(item)
    if len(kept) == n:
        return kept
    raise ValueError(f"only {len(kept)} of {n} draws passed the combination constraints")


def sample_scenes(
    n: int, seed: int, exclude_combos: Collection[tuple[str, str]] = ()
) -> list[Scene]:
    """Random scenes for text-to-image pretraining, deterministic from ``seed``.

    Nothing is held out by default: the base model knows the whole world, as FLUX knows
    the real one; only the editing tuples hold combinations out.
    """
    rng = random.Random(seed)
    return _rejection_sample(n, lambda: random_scene(rng), lambda s: s.combo not in exclude_combos)


def sample_tuples(
    n: int,
    seed: int,
    families: Sequence[str] = tuple(FAMILIES),
    exclude_combos: Collection[tuple[str, str]] = UNSEEN_COMBOS,
    require_combos: Collection[tuple[str, str]] | None = None,
) -> list[EditTuple]:
    """Random edit tuples, deterministic from ``seed``.

    A tuple is dropped when its source or target scene shows a pair in ``exclude_combos``
    (by default the held-out UNSEEN_COMBOS, so training never sees them) and, when
    ``require_combos`` is given, kept only if one of its scenes shows a pair in it: an
    unseen bench set is ``sample_tuples(n, seed, exclude_combos=(), require_combos=UNSEEN_COMBOS)``.
    """
    edits = [edit_family(name) for name in families]
    rng = random.Random(seed)

    def draw() -> EditTuple:
        scene = random_scene(rng)
        edit = rng.choice(edits)
        return make_edit(scene, edit.name, rng.choice(edit.options(scene)))

    def keep(t: EditTuple) -> bool:
        combos = touched_combos(t)
        return not combos & set(exclude_combos) and (
            require_combos is None or bool(combos & set(require_combos))
        )

    return _rejection_sample(n, draw, keep)


MAX_EVAL_SEED = 3000  # held-out draws' scene seeds stay within 10000-18999 (seen) and 20000-28999 (unseen)
HELD_OUT_SCENE_SEEDS = 10_000  # the first held-out scene seed: training draws (sample_tuples(n, seed)) stay below it


def check_training_seed(seed: int, name: str) -> None:
    """A training draw's seed (tuples, or a base's pretraining scenes) stays below the held-out draws' scene seeds."""
    if not 0 <= seed < HELD_OUT_SCENE_SEEDS:
        raise ValueError(f"{name} must be in [0, {HELD_OUT_SCENE_SEEDS}), got {seed}: the held-out draws' scenes are "
                         f"drawn from seeds {HELD_OUT_SCENE_SEEDS} and up, and a training seed among them trains on "
                         "held-out scenes")


def held_out_tuples(per_cell: int, seed: int) -> list[EditTuple]:
    """An evaluation set balanced over edit families and colour splits: ``per_cell`` tuples of each family
    on seen colour pairs, then ``per_cell`` of each touching UNSEEN_COMBOS; deterministic from ``seed``.

    Balanced so that a rate means the same on every draw: the demo's old random 64 tuples were a lucky mix
    (25% shape-kind edits, the hard family) that measured edit success 0.77 where 288 balanced tuples
    measured 0.55-0.58 (issue 17).
    """
    if not 0 <= seed < MAX_EVAL_SEED:
        raise ValueError(f"a held-out draw's seed is in [0, {MAX_EVAL_SEED}), got {seed}")
    # each (draw, family) its own scene seed: draws 0 and 1 once shared two families' scenes (seed + i)
    cells = [len(FAMILIES) * seed + i for i in range(len(FAMILIES))]
    seen = [sample_tuples(per_cell, HELD_OUT_SCENE_SEEDS + cell, families=(name,)) for cell, name in zip(cells, FAMILIES)]
    unseen = [sample_tuples(per_cell, 2 * HELD_OUT_SCENE_SEEDS + cell, families=(name,), exclude_combos=(),
                            require_combos=UNSEEN_COMBOS) for cell, name in zip(cells, FAMILIES)]
    return [t for cell in seen + unseen for t in cell]


def _check_words(field: str, text: str) -> None:
    if field == "reverse_instruction" and (match := FORBIDDEN_REVERSE.search(text.lower())):
        raise ValueError(
            f"reverse_instruction {text!r} says {match.group(0)!r}: it must state the inverse "
            "edit itself (e.g. 'change the circle's colour to red'), never restore/revert/undo"
        )
    unknown = [word for word in tokenize(text) if word not in VOCABULARY]
    if unknown:
        raise ValueError(
            f"{field} {text!r} uses words outside the toy world: {unknown}; colours: "
            f"{', '.join(COLORS)}; shapes: {', '.join(SHAPES)}"
        )


_FIELD_MEANING = {
    "src_caption": "the source scene",
    "instruction": "the edit",
    "tgt_caption": "the true edited scene",
    "reverse_instruction": "the inverse edit",
}


def validate_tuple(t: EditTuple) -> None:
    """Raise ValueError naming the first rule of the world that ``t`` breaks."""
    for field in TEXT_FIELDS:
        _check_words(field, getattr(t, field))
    edit = edit_family(t.family)
    value = getattr(t.target, edit.field)
    if replace(t.source, **{edit.field: value}) != t.target:
        raise ValueError(
            f"a {t.family} edit may change only {edit.field}, but {t.source} became {t.target}"
        )
    expected = make_edit(t.source, t.family, value)
    for field in TEXT_FIELDS:
        if tokenize(getattr(t, field)) != tokenize(getattr(expected, field)):
            raise ValueError(
                f"{field} {getattr(t, field)!r} does not match {_FIELD_MEANING[field]}: "
                f"expected {getattr(expected, field)!r}"
            )
