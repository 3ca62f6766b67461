"""Reading scenes back from pixels and scoring edits against the true edited scene."""

import dataclasses
import random

import pytest
import torch
import torch.nn.functional as F

from byg_core.toy.metrics import (
    CLEAN_EDIT_SHARE,
    PRESERVE_IOU,
    Ceiling,
    aggregate,
    aggregate_seeds,
    classify_kind,
    clean_edit,
    clean_edit_ceiling,
    evaluate_edit,
    mask_centroid,
    paired_change,
    read_scene,
    right_pixel_share,
    wilson_interval,
)
from byg_core.toy.world import (
    COLORS,
    DEFAULT_RESOLUTION,
    FAMILIES,
    MARGIN,
    SHAPE_KINDS,
    SIZE_RANGE,
    SHAPES,
    Scene,
    color_tensor,
    make_edit,
    random_scene,
    render,
    sample_tuples,
    shape_mask,
)

torch.set_num_threads(1)


def _scene_with(rng, shape, fg, bg):
    geometry = random_scene(rng)
    return Scene(shape, fg, bg, geometry.cx, geometry.cy, geometry.size)


def test_read_scene_recovers_every_attribute_of_every_combination():
    rng = random.Random(0)
    for shape in SHAPES:
        for fg in COLORS:
            for bg in (c for c in COLORS if c != fg):
                for _ in range(3):
                    scene = _scene_with(rng, shape, fg, bg)
                    reading = read_scene(render(scene))
                    assert (reading.shape, reading.shape_color, reading.bg_color) == (
                        shape,
                        fg,
                        bg,
                    ), scene
                    assert torch.equal(reading.mask, shape_mask(scene, 16))


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_read_scene_centroid_tracks_the_analytic_centroid(resolution):
    rng = random.Random(resolution)
    for _ in range(100):
        scene = random_scene(rng)
        reading = read_scene(render(scene, resolution))
        assert reading.shape == scene.shape
        x, y = reading.centroid
        true_y = scene.cy + SHAPE_KINDS[scene.shape].centroid_dy * scene.size
        # Pixel sampling moves the centroid by well under a pixel.
        assert abs(x - scene.cx * resolution) < 0.6
        assert abs(y - true_y * resolution) < 0.6


def test_read_scene_of_a_plain_image_finds_no_shape():
    image = color_tensor("cyan")[:, None, None].expand(3, 16, 16)
    reading = read_scene(image)
    assert reading.bg_color == "cyan"
    assert (reading.shape, reading.shape_color, reading.centroid) == (None, None, None)
    assert not reading.mask.any()


def test_read_scene_tolerates_small_noise_and_refuses_non_square_images():
    scene = Scene("triangle", "yellow", "blue", 0.5, 0.5, 0.6)
    noise = 0.15 * torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    reading = read_scene(render(scene) + noise.clamp(-0.25, 0.25))
    assert (reading.shape, reading.shape_color, reading.bg_color) == ("triangle", "yellow", "blue")
    with pytest.raises(ValueError, match="square"):
        read_scene(torch.zeros(3, 16, 8))


def test_classify_kind_tells_shapes_apart_in_the_same_box():
    for shape in SHAPES:
        assert classify_kind(shape_mask(Scene(shape, "red", "black", 0.5, 0.5, 0.45), 16)) == shape


@pytest.mark.parametrize("family", FAMILIES)
def test_true_edit_scores_perfectly(family):
    for t in sample_tuples(30, seed=1, families=[family]):
        row = evaluate_edit(render(t.source), render(t.target), t)
        assert row["edit_success"] == 1.0 and row["preservation"] == 1.0
        assert row["pixel_error"] == 0.0 and row["mask_iou"] == 1.0
        assert row["source_distance"] > 0
        assert row["family"] == family and row["unseen"] is False


@pytest.mark.parametrize("family", FAMILIES)
def test_doing_nothing_never_counts_as_an_edit(family):
    for t in sample_tuples(30, seed=2, families=[family]):
        source = render(t.source)
        row = evaluate_edit(source, source, t)
        assert row["edit_success"] == 0.0
        assert row["source_distance"] == 0.0 and row["pixel_error"] > 0


def _smear(image, width):
    """Horizontal motion blur over ``width`` pixels (the shape is dragged sideways)."""
    padded = F.pad(image[None], (width - 1, 0, 0, 0), mode="replicate")
    return F.avg_pool2d(padded, (1, width), stride=1)[0]


def test_smeared_result_loses_preservation():
    rows = [
        evaluate_edit(render(t.source), _smear(render(t.target), 7), t)
        for t in sample_tuples(60, seed=3)
    ]
    summary = aggregate(rows)["all"]
    assert summary["preservation"] < 0.1
    assert summary["mask_iou"] < PRESERVE_IOU
    assert summary["pixel_error"] > 0.05


def test_moved_or_recoloured_result_loses_preservation_but_keeps_success():
    t = make_edit(Scene("square", "red", "blue", 0.5, 0.5, 0.5), "shape_color", "green")
    moved = render(Scene("square", "green", "blue", 0.65, 0.5, 0.5))
    row = evaluate_edit(render(t.source), moved, t)
    assert (row["edit_success"], row["preservation"]) == (1.0, 0.0)
    # the row says which criterion failed: only the position, 2.4 px off
    assert (row["kept_shape"], row["kept_bg_color"], row["kept_centroid"]) == (1.0, 1.0, 0.0)
    assert "kept_shape_color" not in row  # the edited attribute is edit success's business
    recoloured = render(Scene("square", "green", "white", 0.5, 0.5, 0.5))
    row = evaluate_edit(render(t.source), recoloured, t)
    assert (row["edit_success"], row["preservation"], row["mask_iou"]) == (1.0, 0.0, 1.0)
    assert (row["kept_bg_color"], row["kept_shape"], row["kept_mask_iou"], row["kept_centroid"]) == (0.0, 1.0, 1.0, 1.0)
    blank = color_tensor("blue")[:, None, None].expand(3, 16, 16)
    row = evaluate_edit(render(t.source), blank, t)
    assert (row["edit_success"], row["preservation"], row["mask_iou"]) == (0.0, 0.0, 0.0)


def test_shape_kind_edit_is_judged_against_the_true_edited_mask():
    t = make_edit(Scene("circle", "white", "black", 0.5, 0.5, 0.6), "shape_kind", "triangle")
    row = evaluate_edit(render(t.source), render(t.target), t)
    assert mask_centroid(shape_mask(t.target, 16))[1] > mask_centroid(shape_mask(t.source, 16))[1]
    assert (row["edit_success"], row["preservation"]) == (1.0, 1.0)


def test_aggregate_means_overall_per_family_and_per_split():
    rows = [
        {"family": "bg_color", "unseen": False, "edit_success": 1.0, "pixel_error": 0.0},
        {"family": "bg_color", "unseen": True, "edit_success": 0.0, "pixel_error": 0.4},
        {"family": "shape_kind", "unseen": False, "edit_success": 1.0, "pixel_error": 0.2},
    ]
    summary = aggregate(rows)
    expected = {"all": (2 / 3, 0.2, 3), "by_family": (0.5, 0.2, 2), "by_split": (1.0, 0.1, 2)}
    for (part, (success, error, n)), got in zip(
        expected.items(), (summary["all"], summary["by_family"]["bg_color"], summary["by_split"]["seen"])
    ):
        interval = got.pop("edit_success_ci")  # a rate carries its interval; pixel error is no rate
        assert interval == pytest.approx(list(wilson_interval(success, n))), part
        assert got == pytest.approx({"edit_success": success, "pixel_error": error, "n": n}), part
    assert summary["by_split"]["unseen"]["n"] == 1
    with pytest.raises(ValueError):
        aggregate([])


def test_aggregate_means_a_criterion_over_the_rows_that_have_it():
    """kept_shape exists only for colour edits: a kind edit's row must not count in its mean."""
    rows = [
        {"family": "bg_color", "unseen": False, "kept_shape": 1.0, "kept_mask_iou": 1.0},
        {"family": "shape_color", "unseen": False, "kept_shape": 0.0, "kept_mask_iou": 1.0},
        {"family": "shape_kind", "unseen": False, "kept_shape_color": 1.0, "kept_mask_iou": 0.0},
    ]
    summary = aggregate(rows)["all"]  # criteria are diagnostics: no interval
    assert summary == pytest.approx({"kept_shape": 0.5, "kept_mask_iou": 2 / 3, "kept_shape_color": 1.0, "n": 3})


def test_aggregate_of_evaluated_rows_reports_unseen_split():
    tuples = sample_tuples(6, seed=0, exclude_combos=(), require_combos=[("red", "yellow")])
    tuples += sample_tuples(6, seed=0)
    rows = [evaluate_edit(render(t.source), render(t.target), t) for t in tuples]
    summary = aggregate(rows)
    assert summary["by_split"]["unseen"]["n"] == 6 and summary["by_split"]["seen"]["n"] == 6
    assert summary["by_split"]["unseen"]["edit_success"] == 1.0


def _recolour_part(t, share):
    """The true edited scene with only the first ``share`` of the shape's pixels (raster order) recoloured."""
    image, source = render(t.target), render(t.source)
    pixels = torch.nonzero(shape_mask(t.target, 16))
    keep = pixels[round(share * len(pixels)):]
    image[:, keep[:, 0], keep[:, 1]] = source[:, keep[:, 0], keep[:, 1]]
    return image


def test_clean_edit_takes_the_truth_and_refuses_a_57_percent_recolouring():
    t = make_edit(Scene("square", "red", "blue", 0.5, 0.5, 0.6), "shape_color", "green")
    truth, partial = render(t.target), _recolour_part(t, 0.57)
    assert clean_edit(truth, t) == 1.0 and right_pixel_share(truth, truth) == 1.0
    row = evaluate_edit(render(t.source), partial, t)
    # the lenient criterion reads the median colour and passes it; the clean edit does not
    assert (row["edit_success"], row["clean_edit"]) == (1.0, 0.0)
    assert row["right_pixels"] < CLEAN_EDIT_SHARE
    assert clean_edit(_recolour_part(t, 0.98), t) == 1.0  # two stray pixels are still a clean edit


def test_a_small_shape_recoloured_on_57_percent_is_no_clean_edit_though_95_percent_of_the_image_is_right():
    """The whole image alone (the earlier rule, ``clean_edit_image``) passed it: 8 wrong pixels of an 18-pixel
    triangle are 3% of the image; of the shapes' pixels, 44% show the source's colour, which the edited scene lacks.
    An outline a pixel off in the scene's own colours is not counted twice."""
    t = make_edit(Scene("triangle", "red", "blue", 0.5, 0.5, 0.36), "shape_color", "green")
    assert 15 <= int(shape_mask(t.target, 16).sum()) <= 22
    partial = _recolour_part(t, 0.57)
    row = evaluate_edit(render(t.source), partial, t)
    assert row["right_pixels"] >= CLEAN_EDIT_SHARE and row["clean_edit_image"] == 1.0
    assert (row["edit_success"], row["clean_edit"]) == (1.0, 0.0)
    assert evaluate_edit(render(t.source), render(t.target), t)["clean_edit"] == 1.0
    shifted = render(dataclasses.replace(t.target, cx=t.target.cx + 1 / 16))  # the outline a pixel to the right
    assert clean_edit(shifted, t) == clean_edit(shifted, t, image_only=True) == 1.0


def test_clean_edit_tolerates_small_colour_errors_but_not_another_colour():
    t = make_edit(Scene("circle", "white", "black", 0.5, 0.5, 0.6), "bg_color", "cyan")
    noise = 0.15 * torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert clean_edit(render(t.target) + noise.clamp(-0.25, 0.25), t) == 1.0  # at most 0.43 from the truth
    assert clean_edit(render(t.target) * 0.4, t) == 0.0  # dimmed: the background reads black, not cyan


@pytest.mark.parametrize("family", ["shape_color", "bg_color"])
def test_the_unedited_source_is_never_a_clean_colour_edit(family):
    for t in sample_tuples(30, seed=4, families=[family]):
        assert evaluate_edit(render(t.source), render(t.source), t)["clean_edit"] == 0.0
        assert evaluate_edit(render(t.source), render(t.target), t)["clean_edit"] == 1.0


def test_doing_nothing_on_a_small_shapes_kind_edit_is_no_clean_edit():
    """A small circle and square differ by fewer pixels than the 5% a clean edit may get wrong."""
    t = make_edit(Scene("circle", "red", "blue", 0.5, 0.5, 0.4), "shape_kind", "square")
    source = render(t.source)
    assert right_pixel_share(source, render(t.target)) >= CLEAN_EDIT_SHARE
    assert clean_edit(source, t) == 0.0


def test_the_clean_edit_is_attainable_but_a_shape_kind_edits_outline_is_not_always_determined():
    """The ceiling: colour edits keep the geometry (1.0); a shape-kind edit's source fits several outlines of the
    target kind, mostly within the clean edit's tolerance (so the issue's >= 0.9 target can be met by an editor
    that draws the likeliest outline), not always; an editor drawing outlines from the posterior gets less."""
    tuples = sample_tuples(12, seed=5, families=["shape_kind"])
    assert clean_edit_ceiling(sample_tuples(1, seed=5, families=["bg_color"])[0]) == Ceiling(1.0, 1.0)
    assert all(clean_edit_ceiling(t, samples=0) == Ceiling(1.0, 1.0) for t in tuples)  # the true geometry alone
    ceilings = [clean_edit_ceiling(t, samples=20000) for t in tuples]
    assert all(0.0 < c.sampled <= c.best <= 1.0 for c in ceilings)
    best = [c.best for c in ceilings]
    assert min(best) < 1.0 and sum(best) / len(best) > 0.9
    assert any(c.sampled < c.best for c in ceilings)


def test_the_sampled_ceiling_is_the_mean_pairwise_clean_rate_of_the_posteriors_outlines():
    """``sampled`` and ``best`` by their definitions, recomputed one scene at a time: the same geometries drawn
    (same seed), kept when the scene renders the source's mask, the target kind's outline rendered for each, and
    clean_edit's rule counted over every pair of outlines."""
    tup = next(t for t in sample_tuples(40, seed=5, families=["shape_kind"]) if clean_edit_ceiling(t, 4000).best < 1)
    ceiling = clean_edit_ceiling(tup, samples=4000)
    side, rows, g = DEFAULT_RESOLUTION, [], torch.Generator().manual_seed(0)  # the function's draws, in its order

    def around(value, pixels):
        jitter = (torch.rand(4000, 1, 1, generator=g, dtype=torch.float64) - 0.5) * 2 * pixels / side
        return torch.cat([torch.full((1, 1, 1), value, dtype=torch.float64), value + jitter]).flatten().tolist()

    src = tup.source
    for cx, cy, size in zip(around(src.cx, 1.5), around(src.cy, 1.5), around(src.size, 2.0)):
        if not (SIZE_RANGE[0] <= size <= SIZE_RANGE[1]) or not all(
                size / 2 + MARGIN <= c <= 1 - size / 2 - MARGIN for c in (cx, cy)):
            continue  # outside the world's prior
        moved = dataclasses.replace(src, cx=cx, cy=cy, size=size)
        if torch.equal(shape_mask(moved, side), shape_mask(src, side)):
            rows.append(dataclasses.replace(moved, shape=tup.target.shape))
    masks = torch.stack([shape_mask(r, side).flatten().float() for r in rows])
    agree = 1 - torch.cdist(masks, masks, p=1) / (side * side)
    assert len(rows) > 1
    assert ceiling.sampled == pytest.approx(float((agree >= CLEAN_EDIT_SHARE).double().mean()))
    assert ceiling.best == pytest.approx(float((agree >= CLEAN_EDIT_SHARE).double().mean(1).max()))


def test_paired_change_is_the_mean_difference_with_its_normal_interval():
    a, b = [1.0, 1.0, 0.0, 1.0, 2 / 3], [0.0, 1.0, 0.0, 1 / 3, 2 / 3]
    d = [1.0, 0.0, 0.0, 2 / 3, 0.0]
    mean = sum(d) / 5
    sd = (sum((x - mean) ** 2 for x in d) / 4) ** 0.5
    assert paired_change(a, b) == pytest.approx((mean, mean - 1.959964 * sd / 5 ** 0.5, mean + 1.959964 * sd / 5 ** 0.5))
    # the same tuples' difficulty cancels: a constant shift has no spread, so the interval is the change itself
    assert paired_change([0.1, 0.9, 0.5], [0.0, 0.8, 0.4]) == pytest.approx((0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="same tuples"):
        paired_change([1.0], [1.0, 0.0])


def test_wilson_interval_matches_known_values():
    assert wilson_interval(0.5, 100) == pytest.approx((0.40383, 0.59617), abs=1e-5)
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(1.0, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert wilson_interval(0.2, 50) == pytest.approx((0.11243, 0.33037), abs=1e-5)
    assert wilson_interval(0.3, 0) == (0.0, 1.0)
    # +-0.05 needs about 400 samples at a rate of 0.5
    low, high = wilson_interval(0.5, 384)
    assert 0.049 < (high - low) / 2 < 0.05


def test_aggregate_seeds_averages_each_tuple_over_seeds_and_counts_tuples():
    def row(family, clean):
        return {"family": family, "unseen": False, "clean_edit": clean, "edit_success": 1.0, "preservation": 0.0}

    seed_a = [row("bg_color", 1.0), row("bg_color", 0.0), row("shape_kind", 0.0), row("shape_kind", 0.0)]
    seed_b = [row("bg_color", 1.0), row("bg_color", 1.0), row("shape_kind", 1.0), row("shape_kind", 0.0)]
    summary = aggregate_seeds([seed_a, seed_b])
    overall = summary["all"]
    assert overall["clean_edit"] == pytest.approx(0.5)
    assert overall["clean_edit_by_seed"] == pytest.approx([0.25, 0.75])
    assert (overall["n"], overall["n_seeds"]) == (4, 2)  # the interval counts tuples, not outputs
    assert overall["clean_edit_ci"] == pytest.approx(list(wilson_interval(0.5, 4)))
    assert summary["by_family"]["bg_color"]["clean_edit"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        aggregate_seeds([])


def test_a_render_too_small_for_the_shape_is_scored_by_the_image_alone():
    """At 2 px a small shape covers no pixel: the shapes' criteria have nothing to count (they gave NaN, which min()
    then skipped by accident), so the clean edit is the image's alone."""
    t = make_edit(Scene("triangle", "red", "blue", 0.5, 0.5, 0.36), "shape_color", "green")
    for edited in (render(t.target, 2), render(t.source, 2)):
        row = evaluate_edit(render(t.source, 2), edited, t)
        assert row["shape_right_pixels"] == 1.0 and row["clean_edit"] == row["clean_edit_image"]
