"""Inference: the ODE solver's time convention, seeding, and the two zero-shot baselines."""

import torch

from byg_core.adapters import BASE, EMA, Adapters, LoraSpec
from byg_core.sample import edit, flowedit, integrate, sdedit


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
