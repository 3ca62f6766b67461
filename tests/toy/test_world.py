"""The toy world: scene rules, exact renders, captions and ground-truth edit tuples."""

import random
from dataclasses import replace

import pytest
import torch

from byg_core.toy.codec import ToyCodec
from byg_core.toy.world import (
    COLORS,
    FAMILIES,
    PALETTE,
    SHAPE_KINDS,
    SHAPES,
    UNSEEN_COMBOS,
    VOCABULARY,
    Attributes,
    Scene,
    caption,
    held_out_tuples,
    make_edit,
    parse_caption,
    random_scene,
    render,
    render_batch,
    sample_scenes,
    sample_tuples,
    shape_mask,
    tokenize,
    validate_tuple,
)

torch.set_num_threads(1)

SCENE = Scene("circle", "red", "blue", cx=0.5, cy=0.5, size=0.5)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(shape="hexagon"), ["shape", "circle, square, triangle"]),
        (dict(shape_color="purple"), ["shape_color", "black", "magenta"]),
        (dict(bg_color="grey"), ["bg_color", "white"]),
        (dict(bg_color="red"), ["shape_color", "bg_color", "invisible"]),
        (dict(cx=0.9), ["cx=0.9", "[0.25, 0.75]"]),
        (dict(cy=0.1), ["cy=0.1", "[0.25, 0.75]"]),
        (dict(size=0.0), ["size"]),
        (dict(size=1.5), ["size"]),
    ],
)
def test_scene_refuses_rule_breaking_fields_by_name(kwargs, words):
    with pytest.raises(ValueError) as error:
        replace(SCENE, **kwargs)
    for word in words:
        assert word in str(error.value)


def test_palette_colours_are_far_apart():
    rgb = torch.tensor(list(PALETTE.values()))
    distances = torch.cdist(rgb, rgb) + torch.eye(len(rgb)) * 10
    assert distances.min() >= 1.0
    assert len(COLORS) == 8 and set(SHAPES) == {"circle", "square", "triangle"}


def test_render_is_exact_two_colour_image():
    image = render(SCENE)
    mask = shape_mask(SCENE, 16)
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert torch.equal(
        image[:, mask], torch.tensor([1.0, 0, 0])[:, None].expand(3, int(mask.sum()))
    )
    assert torch.equal(
        image[:, ~mask], torch.tensor([0.0, 0, 1])[:, None].expand(3, int((~mask).sum()))
    )
    # Circle of diameter 8 px centred on a pixel corner: 52 pixel centres fall inside.
    assert int(mask.sum()) == 52
    assert torch.equal(render(SCENE), image)


@pytest.mark.parametrize("shape", SHAPES)
def test_mask_area_and_centroid_match_the_analytic_shape(shape):
    scene = Scene(shape, "white", "black", cx=0.45, cy=0.55, size=0.6)
    mask = shape_mask(scene, 256).double()
    kind = SHAPE_KINDS[shape]
    assert mask.mean().item() == pytest.approx(kind.area * 0.36, rel=0.02)
    rows = (torch.arange(256, dtype=torch.float64) + 0.5) / 256
    centroid_y = (mask.sum(1) * rows).sum() / mask.sum()
    assert centroid_y.item() == pytest.approx(0.55 + kind.centroid_dy * 0.6, abs=0.005)


def test_triangle_points_up():
    mask = shape_mask(Scene("triangle", "white", "black", size=0.75), 32)
    widths = mask.sum(1)[mask.any(1)]
    assert widths[0] < widths[-1]
    assert torch.all(widths[1:] >= widths[:-1])


def test_render_refuses_odd_size_and_batches():
    with pytest.raises(ValueError, match="even"):
        render(SCENE, 15)
    batch = render_batch([SCENE, replace(SCENE, shape="square")], 8)
    assert batch.shape == (2, 3, 8, 8)
    assert not torch.equal(batch[0], batch[1])


def test_caption_round_trips_every_attribute_combination():
    for shape in SHAPES:
        for fg in COLORS:
            for bg in (c for c in COLORS if c != fg):
                attributes = Attributes(shape, fg, bg)
                assert parse_caption(caption(attributes)) == attributes
    assert caption(SCENE) == "a red circle on a blue background"
    assert parse_caption("A red circle on a blue background.") == SCENE.attributes


@pytest.mark.parametrize(
    "text, word",
    [
        ("a purple circle on a blue background", "purple"),
        ("a red hexagon on a blue background", "hexagon"),
        ("a red circle on a red background", "invisible"),
        ("a red circle", "form"),
        ("the red circle in a blue background", "form"),
    ],
)
def test_parse_caption_refuses_text_outside_the_world(text, word):
    with pytest.raises(ValueError, match=word):
        parse_caption(text)


def test_make_edit_writes_paper_style_tuples():
    colour = make_edit(SCENE, "shape_color", "green")
    assert colour.record() == {
        "src_caption": "a red circle on a blue background",
        "instruction": "change the circle's colour to green",
        "tgt_caption": "a green circle on a blue background",
        "reverse_instruction": "change the circle's colour to red",
    }
    assert colour.target == replace(SCENE, shape_color="green")
    background = make_edit(SCENE, "bg_color", "yellow")
    assert background.instruction == "change the background colour to yellow"
    assert background.reverse_instruction == "change the background colour to blue"
    kind = make_edit(SCENE, "shape_kind", "triangle")
    assert kind.instruction == "turn the circle into a triangle"
    assert kind.reverse_instruction == "turn the triangle into a circle"
    assert kind.tgt_caption == "a red triangle on a blue background"


@pytest.mark.parametrize("family", FAMILIES)
def test_reverse_instruction_is_the_forward_instruction_of_the_inverse_edit(family):
    forward = make_edit(SCENE, family, FAMILIES[family].options(SCENE)[0])
    field = FAMILIES[family].field
    inverse = make_edit(forward.target, family, getattr(SCENE, field))
    assert inverse.instruction == forward.reverse_instruction
    assert inverse.target == SCENE
    assert inverse.tgt_caption == forward.src_caption


@pytest.mark.parametrize(
    "family, value, match",
    [
        ("shape_color", "red", "cannot set"),
        ("shape_color", "blue", "cannot set"),
        ("shape_kind", "circle", "cannot set"),
        ("bg_color", "purple", "cannot set"),
        ("size", "big", "family"),
    ],
)
def test_make_edit_refuses_no_op_clashing_and_unknown_edits(family, value, match):
    with pytest.raises(ValueError, match=match):
        make_edit(SCENE, family, value)


def test_sample_tuples_is_deterministic_valid_and_varied():
    tuples = sample_tuples(300, seed=3)
    assert tuples == sample_tuples(300, seed=3)
    assert tuples != sample_tuples(300, seed=4)
    assert {t.family for t in tuples} == set(FAMILIES)
    assert len({(round(t.source.cx, 6), round(t.source.size, 6)) for t in tuples}) == 300
    for t in tuples:
        validate_tuple(t)
        assert t.source != t.target and t.source.shape_color != t.source.bg_color
        assert t.target.shape_color != t.target.bg_color
        assert set(tokenize(" ".join(t.record().values()))) <= set(VOCABULARY)


def test_training_tuples_never_show_held_out_combinations():
    tuples = sample_tuples(500, seed=0)
    assert not any(t.unseen for t in tuples)
    seen = {c for t in tuples for c in (t.source.combo, t.target.combo)}
    assert not seen & UNSEEN_COMBOS
    # Every colour still appears in both roles during training.
    assert {fg for fg, _ in seen} == set(COLORS) == {bg for _, bg in seen}


def test_unseen_bench_tuples_each_show_a_held_out_combination():
    tuples = sample_tuples(100, seed=0, exclude_combos=(), require_combos=UNSEEN_COMBOS)
    assert all(t.unseen for t in tuples)
    assert {t.family for t in tuples} == set(FAMILIES)


def test_held_out_sets_are_balanced_over_families_and_colour_splits():
    from collections import Counter

    tuples = held_out_tuples(20, seed=0)
    cells = Counter((t.family, t.unseen) for t in tuples)
    assert cells == {(family, unseen): 20 for family in FAMILIES for unseen in (False, True)}
    for t in tuples:
        validate_tuple(t)
    assert held_out_tuples(20, seed=0) == tuples and held_out_tuples(20, seed=1) != tuples
    # another draw shares no scene with this one (draws 0 and 1 once shared two families' source scenes)
    scenes = [{t.source for t in held_out_tuples(20, seed=s)} for s in (0, 1, 2, 100)]
    assert all(not a & b for i, a in enumerate(scenes) for b in scenes[i + 1:])
    with pytest.raises(ValueError, match=r"a held-out draw's seed is in \[0, 3000\)"):
        held_out_tuples(1, seed=3000)
    training = {(t.source, t.family) for t in sample_tuples(200, seed=0)}
    assert not training & {(t.source, t.family) for t in tuples}  # its own draws, not the training tuples


def test_sample_tuples_respects_families_and_refuses_impossible_constraints():
    assert {t.family for t in sample_tuples(50, 1, families=["bg_color"])} == {"bg_color"}
    every_combo = {(a, b) for a in COLORS for b in COLORS if a != b}
    with pytest.raises(ValueError, match="passed"):
        sample_tuples(2, 0, exclude_combos=every_combo)
    with pytest.raises(ValueError, match="family"):
        sample_tuples(2, 0, families=["rotate"])


def test_sampled_scenes_keep_a_background_border():
    rng = random.Random(0)
    for _ in range(200):
        image = render(random_scene(rng))
        border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)
        assert torch.equal(border, border[:, :1].expand_as(border))
    scenes = sample_scenes(50, seed=2, exclude_combos=UNSEEN_COMBOS)
    assert scenes == sample_scenes(50, seed=2, exclude_combos=UNSEEN_COMBOS)
    assert not {s.combo for s in scenes} & UNSEEN_COMBOS


GOOD = make_edit(SCENE, "shape_color", "green")


@pytest.mark.parametrize(
    "broken, match",
    [
        (replace(GOOD, reverse_instruction="restore the circle's colour"), "restore"),
        (replace(GOOD, reverse_instruction="undo the edit"), "undo"),
        (replace(GOOD, reverse_instruction="change the circle back to red"), "back"),
        (replace(GOOD, reverse_instruction="revert to the original colour"), "revert"),
        (replace(GOOD, instruction="change the circle's colour to purple"), "purple"),
        (replace(GOOD, tgt_caption="a green circle on a blue background now"), "now"),
        (replace(GOOD, src_caption="a red square on a blue background"), "source scene"),
        (replace(GOOD, tgt_caption="a yellow circle on a blue background"), "true edited scene"),
        (replace(GOOD, instruction="change the circle's colour to yellow"), "instruction"),
        (replace(GOOD, reverse_instruction="change the circle's colour to white"), "inverse edit"),
        (replace(GOOD, target=replace(GOOD.target, cx=0.4)), "only shape_color"),
        (replace(GOOD, family="rotate"), "family"),
    ],
)
def test_validate_tuple_refuses_rule_breaking_tuples(broken, match):
    validate_tuple(GOOD)
    with pytest.raises(ValueError, match=match):
        validate_tuple(broken)


def test_validate_tuple_ignores_case_and_punctuation_only():
    validate_tuple(replace(GOOD, src_caption="A red circle on a blue background."))


# The toy codec lives beside the world: it has no VAE, latents are pixels in [-1, 1].
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 3, 4, 8, 8)])
def test_toy_codec_scales_pixels_and_inverts(shape):
    codec = ToyCodec()
    pixels = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    latents = codec.encode(pixels)
    assert latents.shape == shape and latents.min() >= -1 and latents.max() <= 1
    assert torch.allclose(latents, pixels * 2 - 1)
    assert torch.allclose(codec.decode(latents), pixels)
    assert (codec.spatial_factor, codec.temporal_factor) == (1, 1)
    with pytest.raises(ValueError, match="B, 3"):
        codec.encode(torch.zeros(3, 16, 16))
