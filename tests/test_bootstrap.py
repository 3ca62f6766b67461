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


def test_snap_to_grid_maps_each_t_to_the_euler_step_that_covers_it_and_never_zero():
    """t in ((k-1)/n, k/n] is covered by the rollout's step from k/n: the state y_{k/n} (Algorithm 1, lines 6-9)."""
    t = torch.tensor([0.0, 0.04, 0.26, 0.3, 0.5, 0.91, 0.99, 1.0])
    assert torch.allclose(snap_to_grid(t, 10), torch.tensor([0.1, 0.1, 0.3, 0.3, 0.5, 1.0, 1.0, 1.0]))
    grid = torch.arange(1, 11) / 10
    assert torch.equal(snap_to_grid(grid, 10), grid)  # a t on the grid stays put


def test_uniform_t_visits_every_rollout_state_equally_often():
    """Algorithm 1's t ~ U(0, 1) on the n-step grid: each k/n a tenth of the time (rounding to the nearest k/n
    gave k = 1 half as often again and the pure-noise state y_1 = eps half as often)."""
    t = snap_to_grid(torch.rand(200_000, generator=torch.Generator().manual_seed(0)), 10)
    share = torch.bincount((t * 10).round().long(), minlength=11)[1:] / len(t)
    assert (share - 0.1).abs().max() < 0.003, share


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


# --- the rollout cache ------------------------------------------------------------------------------------------
class SampleField(LinearField):
    """A field that depends on the sample (its source x), so a row served to the wrong tuple shows."""

    def ema(self, y, s, c, x):
        self.times.append(float(s[0]))
        return 0.5 * y + s.view(-1, 1, 1, 1) + x


def test_a_cached_rollout_serves_the_states_of_its_own_tuple_at_any_t():
    from byg_core.backbones.base import TextCond
    from byg_core.bootstrap import RolloutCache, cached_rollout, state_at

    field, cache = SampleField(), RolloutCache(reuse=3)
    x = torch.randn(4, 2, 4, 4)
    c = TextCond(torch.zeros(4, 1, 1))
    eps = torch.randn(4, 2, 4, 4)
    index = [10, 11, 12, 13]
    first, used = cached_rollout(field, cache, index, x, c, eps, torch.tensor([1.0, 0.5, 0.25, 0.75]), 4, step=0)
    assert torch.equal(used, eps) and cache.made == 4 and len(field.times) == 4
    exact = bootstrap_rollout(field, x, c, eps, torch.tensor([1.0, 0.5, 0.25, 0.75]), 4, keep_states=True)
    assert torch.equal(first.y_t, exact.y_t) and torch.equal(first.y_0, exact.y_0)
    # tuples 12 and 10 again (cached, other t) beside a new tuple 20: only 20 is rolled out, each row is its own
    calls = len(field.times)
    t2 = torch.tensor([0.25, 1.0, 0.5])
    second, used2 = cached_rollout(field, cache, [12, 20, 10], x[[2, 0, 0]], c.select([2, 0, 0]),
                                   torch.randn(3, 2, 4, 4), t2, 4, step=1)
    assert len(field.times) == calls + 4 and cache.made == 5 and cache.served == 2
    assert torch.equal(used2[0], eps[2]) and torch.equal(used2[2], eps[0])  # the step reuses the rollout's noise
    assert torch.equal(second.y_t[0], state_at(exact.states[[2]], torch.tensor([0.25]))[0])
    assert torch.equal(second.y_t[2], exact.states[0, 2]) and torch.equal(second.y_0[2], exact.y_0[0])  # t = 2/4
    fresh = bootstrap_rollout(field, x[[0]], c.select([0]), used2[[1]], torch.tensor([1.0]), 4)
    assert torch.equal(second.y_0[1], fresh.y_0[0])


def test_an_entry_serves_reuse_steps_then_a_fresh_rollout_is_made():
    from byg_core.bootstrap import RolloutCache

    cache = RolloutCache(reuse=2)
    rollout = bootstrap_rollout(LinearField(), None, None, torch.randn(1, 1, 2, 2), torch.ones(1), 2, keep_states=True)
    cache.store([7], torch.zeros(1, 1, 2, 2), rollout, step=0)  # its first use
    assert cache.lookup([7], step=1)[0] is not None  # the second
    assert cache.lookup([7], step=2) == [None] and 7 not in cache.entries  # spent
    aged = RolloutCache(reuse=10, max_age=3)
    aged.store([7], torch.zeros(1, 1, 2, 2), rollout, step=0)
    assert aged.lookup([7], step=2)[0] is not None and aged.lookup([7], step=3) == [None]


def test_training_with_the_cache_rolls_out_once_per_reuse(flux_backbone):
    from byg_core.config import TrainConfig
    from byg_core.data import CachedEdits, EditRecord
    from byg_core.train import Trainer
    from pathlib import Path

    records = [EditRecord(Path(f"{i}.png"), "a red circle", "make it green", "a green circle", "make it red")
               for i in range(2)]
    data = CachedEdits(x=torch.rand(2, 3, 8, 8) * 2 - 1, records=records)
    cfg = TrainConfig(steps=6, batch_size=2, rank=2, warmup_identity_steps=0, identity_prob=0.0, checkpoint_every=0,
                      output_dir="unused", rollout_reuse=3)
    cfg.objective.rollout_steps = 2
    trainer = Trainer(cfg, flux_backbone, data)
    for _ in range(6):
        assert torch.isfinite(trainer.train_step().total)
    cache = trainer.rollouts
    assert cache.made + cache.served == 12 and cache.made <= 6 and cache.served >= 6
