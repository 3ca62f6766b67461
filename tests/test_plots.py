"""Pictures: the loss curve shows every logged term; the grid lays images out at scale."""

import torch

from byg_core.plots import image_grid, loss_curve, smooth


def test_smooth_is_a_trailing_mean():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_loss_curve_draws_terms_that_appear_after_the_first_step():
    warmup = [{"step": i, "loss": 1.0, "identity": 1.0} for i in range(5)]
    full = [{"step": i, "loss": 2.0, "identity": 1.0, "cycle": 0.5} for i in range(5, 10)]
    with_cycle = loss_curve(warmup + full)
    without = loss_curve(warmup + [{k: v for k, v in r.items() if k != "cycle"} for r in full])
    assert with_cycle.shape == (360, 640, 3) and 0 <= with_cycle.min() and with_cycle.max() <= 1
    assert not torch.equal(with_cycle, without)


def test_image_grid_places_each_image_scaled():
    red = torch.zeros(3, 2, 2)
    red[0] = 1
    grid = image_grid([[red, torch.ones(3, 2, 2)]], scale=3, pad=1)
    assert grid.shape == (1 + 6 + 1, 2 * 7 + 1, 3)
    assert torch.equal(grid[1, 1], torch.tensor([1.0, 0.0, 0.0]))


def test_one_non_finite_step_does_not_blank_the_curve_after_it():
    """smooth kept a running sum: one nan or inf step made every later point nan, and the loss line vanished from
    the rest of the plot (a diverged step, or a term logged as inf)."""
    nan, inf = float("nan"), float("inf")
    assert smooth([1.0, nan, 1.0, 1.0, 1.0], 2) == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert smooth([1.0, inf, 3.0, 5.0], 2) == [1.0, 1.0, 3.0, 4.0]
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    blue = torch.tensor([31, 119, 180]) / 255.0  # the first term's colour
    image = loss_curve([{"step": i, "loss": nan if i == 3 else 1.0 + 0.01 * i} for i in range(40)])
    right = image[:, 400:630]
    assert torch.isclose(right, blue, atol=1e-3).all(-1).any()  # the line goes on after the nan step
