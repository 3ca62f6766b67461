"""The EMA rollout (paper 4.1): Euler from t=1 to 0, keeping y_t on the grid."""

import contextlib

import torch

from byg_core.bootstrap import bootstrap_rollout, snap_to_grid


class LinearField:
    """G.ema stand-in with a known velocity v = a*y + s, recording each call's time."""

    def __init__(self):
        self.times = []

    def ema(self, y, s, c, x):
        self.times.append(float(s[0]))
        return 0.5 * y + s.view(-1, 1, 1, 1)

    def ema_scope(self):
        return contextlib.nullcontext()  # the real one switches the adapters once for the whole rollout


def test_snap_to_grid_rounds_onto_k_over_n_and_never_zero():
    t = torch.tensor([0.0, 0.04, 0.26, 0.5, 0.99, 1.0])
    assert torch.allclose(snap_to_grid(t, 10), torch.tensor([0.1, 0.1, 0.3, 0.5, 1.0, 1.0]))


def test_rollout_is_euler_and_keeps_the_state_at_each_samples_t():
    field = LinearField()
    eps = torch.randn(3, 2, 4, 4)
    t = torch.tensor([1.0, 0.5, 0.1])
    rollout = bootstrap_rollout(field, None, None, eps, t, n=4)
    assert field.times == [1.0, 0.75, 0.5, 0.25]
    y, states = eps.clone(), {}
    for k in range(4, 0, -1):
        states[k] = y.clone()
        y = y - 0.25 * (0.5 * y + k / 4)
    assert torch.allclose(rollout.y_0, y)
    assert torch.allclose(rollout.t, torch.tensor([1.0, 0.5, 0.25]))
    for i, k in enumerate([4, 2, 1]):
        assert torch.allclose(rollout.y_t[i], states[k][i])
