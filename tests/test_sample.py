"""Inference: the ODE solver's time convention, seeding, and the two zero-shot baselines."""

import numpy as np
import pytest
import torch

from byg_core.adapters import BASE, EMA, Adapters, LoraSpec
from byg_core.objective import noise
from byg_core.sample import _sigma_grid, as_batch, edit, flowedit, guided_velocity, initial_noise, integrate, sdedit


def test_integrating_the_straight_flow_lands_on_the_data(flux_backbone):
    x, eps = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    result = integrate(flux_backbone.schedule(7, eps.shape), lambda y, t: eps - x, eps, keep_states=True)
    assert torch.allclose(result.latents, x, atol=1e-5)
    assert len(result.states) == 7 and result.t[0] == 1.0 and torch.equal(result.states[0], eps)
    calls = []
    integrate(flux_backbone.schedule(3, eps.shape), lambda y, t: eps - x, eps, on_step=calls.append)
    assert calls == [1, 2, 3]


def test_edit_is_seeded_and_uses_the_chosen_adapter(flux_backbone):
    adapters = Adapters(flux_backbone, LoraSpec(4, 4.0, tuple(flux_backbone.lora_target_modules())))
    with torch.no_grad():
        for p in adapters.parameters(EMA):
            p.normal_(0, 0.3)
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    c = flux_backbone.encode_text(["change the circle's colour to green"])
    a = edit(flux_backbone, adapters, x, c, steps=3, seed=1).latents
    assert torch.equal(a, edit(flux_backbone, adapters, x, c, steps=3, seed=1).latents)
    assert not torch.allclose(a, edit(flux_backbone, adapters, x, c, steps=3, seed=2).latents)
    assert not torch.allclose(a, edit(flux_backbone, adapters, x, c, steps=3, seed=1, role=BASE).latents)


def test_flowedit_with_equal_prompts_returns_the_source(flux_backbone):
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    p = flux_backbone.encode_text(["a red circle on a blue background"])
    assert torch.allclose(flowedit(flux_backbone, None, x, p, p, steps=6), x, atol=1e-6)
    q = flux_backbone.encode_text(["a green circle on a blue background"])
    assert not torch.allclose(flowedit(flux_backbone, None, x, p, q, steps=6), x, atol=1e-4)


def test_sdedit_at_zero_strength_keeps_the_source_and_at_full_strength_ignores_it(flux_backbone):
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    p = flux_backbone.encode_text(["a green circle on a blue background"])
    assert torch.allclose(sdedit(flux_backbone, None, x, p, strength=0.0, steps=6), x)
    far = sdedit(flux_backbone, None, x, p, strength=1.0, steps=6, seed=4)
    other = sdedit(flux_backbone, None, -x, p, strength=1.0, steps=6, seed=4)
    assert torch.allclose(far, other, atol=1e-5)


def test_guided_velocity_is_classifier_free_guidance_against_the_empty_prompt(flux_backbone):
    torch.manual_seed(0)
    y, t = torch.randn(2, 3, 8, 8), torch.tensor([0.7, 0.3])
    c = flux_backbone.encode_text(["a red circle on a blue background", "a green square on a red background"])
    empty = flux_backbone.encode_text([""])
    v_c, v_u = flux_backbone.velocity(y, t, c), flux_backbone.velocity(y, t, as_batch(empty, 2))
    assert not torch.allclose(v_u, v_c, atol=1e-4)  # the empty prompt's velocity is another one
    assert torch.allclose(guided_velocity(flux_backbone, y, t, c, empty, 4.0), v_u + 4.0 * (v_c - v_u), atol=1e-6)
    assert torch.equal(guided_velocity(flux_backbone, y, t, c, None, 1.0), v_c)  # w = 1: no empty prompt needed
    with pytest.raises(ValueError, match="guidance 4 needs the empty prompt"):
        guided_velocity(flux_backbone, y, t, c, None, 4.0)


def test_guided_sdedit_denoises_along_the_guided_velocity(flux_backbone):
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    p, empty = flux_backbone.encode_text(["a green circle on a blue background"]), flux_backbone.encode_text([""])
    got = sdedit(flux_backbone, None, x, p, strength=0.6, steps=6, seed=3, guidance=5.5, uncond=empty)
    grid = _sigma_grid(flux_backbone, 6, 0.6, x.shape)
    y = noise(x, initial_noise(x.shape, 3, x.device, x.dtype), torch.full((2,), grid[0]))
    for s, s_next in zip(grid[:-1], grid[1:]):  # Euler on v_u + w (v_c - v_u)
        t = torch.full((2,), s)
        v_c, v_u = flux_backbone.velocity(y, t, as_batch(p, 2)), flux_backbone.velocity(y, t, as_batch(empty, 2))
        y = y + (s_next - s) * (v_u + 5.5 * (v_c - v_u))
    assert len(grid) > 2 and torch.allclose(got, y, atol=1e-5)
    unguided = sdedit(flux_backbone, None, x, p, strength=0.6, steps=6, seed=3)
    assert torch.equal(sdedit(flux_backbone, None, x, p, strength=0.6, steps=6, seed=3, uncond=empty), unguided)
    assert not torch.allclose(got, unguided, atol=1e-4)


def test_flowedit_steps_along_the_target_velocity_at_z_tgt_minus_the_source_velocity_at_z_src(flux_backbone):
    """FlowEdit's Algorithm 1 written out: at equal prompts any loop returns x, so the loop itself is checked here."""
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    p = flux_backbone.encode_text(["a red circle on a blue background"])
    q = flux_backbone.encode_text(["a green circle on a blue background"])
    empty = flux_backbone.encode_text([""])
    got = flowedit(flux_backbone, None, x, p, q, steps=6, n_avg=2, seed=4, src_guidance=1.5, tgt_guidance=5.5,
                   uncond=empty)
    rng, z_fe = np.random.default_rng(4), x.clone()
    grid = _sigma_grid(flux_backbone, 6, 0.8, x.shape)
    for s, s_next in zip(grid[:-1], grid[1:]):
        t, v_delta = torch.full((2,), s), 0
        for _ in range(2):  # n_avg noise draws
            z_src = noise(x, initial_noise(x.shape, int(rng.integers(2**31)), x.device, x.dtype), t)
            z_tgt = z_fe + z_src - x
            v_u_tgt, v_u_src = (flux_backbone.velocity(z, t, as_batch(empty, 2)) for z in (z_tgt, z_src))
            v_tgt = v_u_tgt + 5.5 * (flux_backbone.velocity(z_tgt, t, as_batch(q, 2)) - v_u_tgt)
            v_src = v_u_src + 1.5 * (flux_backbone.velocity(z_src, t, as_batch(p, 2)) - v_u_src)
            v_delta = v_delta + v_tgt - v_src
        z_fe = z_fe + (s_next - s) * v_delta / 2
    assert len(grid) > 2 and torch.allclose(got, z_fe, atol=1e-5)
    assert not torch.allclose(got, x, atol=1e-3)


def test_guided_flowedit_keeps_the_source_at_equal_prompts_and_guidance_and_edits_otherwise(flux_backbone):
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    p = flux_backbone.encode_text(["a red circle on a blue background"])
    q = flux_backbone.encode_text(["a green circle on a blue background"])
    empty = flux_backbone.encode_text([""])
    same = flowedit(flux_backbone, None, x, p, p, steps=6, src_guidance=3.0, tgt_guidance=3.0, uncond=empty)
    assert torch.allclose(same, x, atol=1e-6)
    # at equal prompts, unequal guidance is an edit: the target velocity is pushed further from the empty prompt's
    assert not torch.allclose(flowedit(flux_backbone, None, x, p, p, steps=6, src_guidance=1.5, tgt_guidance=5.5,
                                       uncond=empty), x, atol=1e-4)
    unguided = flowedit(flux_backbone, None, x, p, q, steps=6)
    assert torch.equal(flowedit(flux_backbone, None, x, p, q, steps=6, uncond=empty), unguided)
    assert not torch.allclose(flowedit(flux_backbone, None, x, p, q, steps=6, src_guidance=1.5, tgt_guidance=5.5,
                                       uncond=empty), unguided, atol=1e-4)
