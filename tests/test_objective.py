"""The losses equal their formulas, and gradients flow where the paper says (section 4)."""

import dataclasses

import pytest
import torch

from byg_core.adapters import STUDENT, Adapters, Generators, LoraSpec
from byg_core.objective import (
    EditBatch,
    ObjectiveConfig,
    byg_step,
    directional_loss,
    directional_prior_loss,
    noise,
    one_step_prediction,
    route_gradients,
    total_loss,
)


def test_time_convention_t1_is_noise_t0_is_data():
    x, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.equal(noise(x, eps, torch.zeros(2)), x)
    assert torch.equal(noise(x, eps, torch.ones(2)), eps)
    # with the exact velocity eps - x, the one-step prediction recovers the data from any t
    t = torch.tensor([0.3, 0.9])
    assert torch.allclose(one_step_prediction(noise(x, eps, t), t, eps - x), x, atol=1e-6)


def test_route_gradients_has_value_of_clean_and_gradient_of_one_step():
    clean = torch.randn(2, 3, requires_grad=True)
    one_step = torch.randn(2, 3, requires_grad=True)
    weights = torch.randn(2, 3)
    y_hyb = route_gradients(clean, one_step)
    assert torch.equal(y_hyb, clean)
    (y_hyb * weights).sum().backward()
    assert torch.allclose(one_step.grad, weights)
    assert clean.grad is None


def test_directional_loss_is_one_minus_cosine_of_the_papers_vectors():
    v_fwd, v_src, v_tgt = (torch.randn(3, 2, 4, 4) for _ in range(3))
    expected = []
    for i in range(3):
        a, b = (v_fwd[i] - v_src[i]).flatten(), (v_tgt[i] - v_src[i]).flatten()
        expected.append(1 - a.dot(b) / (a.norm() * b.norm()))
    assert torch.allclose(directional_loss(v_fwd, v_src, v_tgt), torch.stack(expected).mean(), atol=1e-6)
    # pointing exactly along the edit direction costs nothing, against it costs 2
    assert directional_loss(v_src + 2 * (v_tgt - v_src), v_src, v_tgt) < 1e-6
    assert torch.allclose(directional_loss(v_src - (v_tgt - v_src), v_src, v_tgt), torch.tensor(2.0))


def test_prior_loss_adds_alpha_times_mse_and_drops_the_direction_when_switched_off():
    v_fwd, v_src, v_tgt = (torch.randn(2, 3, 4, 4) for _ in range(3))
    mse = ((v_fwd - v_tgt) ** 2).mean()
    full = directional_prior_loss(v_fwd, v_src, v_tgt, alpha=0.5)
    assert torch.allclose(full, directional_loss(v_fwd, v_src, v_tgt) + 0.5 * mse)
    assert torch.allclose(directional_prior_loss(v_fwd, v_src, v_tgt, 0.5, directional=False), mse)


def test_total_loss_is_equation_5():
    terms = [torch.tensor(v) for v in (1.0, 2.0, 3.0, 4.0)]
    assert total_loss(*terms, lambda_cycle=1.0, lambda_prior=0.5, lambda_id=0.2) == pytest.approx(1 + 2.5 + 0.8)


@pytest.fixture
def setup(flux_backbone):
    adapters = Adapters(flux_backbone, LoraSpec(4, 4.0, tuple(flux_backbone.lora_target_modules())))
    with torch.no_grad():  # non-zero LoRA so every path through the student is live
        for p in adapters.parameters(STUDENT):
            p.normal_(0, 0.3)
    adapters.copy(STUDENT, "ema")
    G = Generators(flux_backbone, adapters)
    enc = lambda s: flux_backbone.encode_text([s, s])  # noqa: E731
    batch = EditBatch(
        x=torch.randn(2, 3, 8, 8),
        p_src=enc("a red circle on a blue background"),
        p_tgt=enc("a green circle on a blue background"),
        c=enc("change the circle's colour to green"),
        c_bar=enc("change the circle's colour to red"),
    )
    return G, adapters, batch


def step_terms(G, batch, **switches):
    eps = torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(1))
    losses = byg_step(G, batch, torch.tensor([0.3, 0.8]), eps, ObjectiveConfig(**switches))
    return {k: v for k, v in losses.as_floats().items() if k != "loss"}


def test_only_the_student_lora_receives_gradients(setup):
    G, adapters, batch = setup
    eps = torch.randn_like(batch.x)
    byg_step(G, batch, torch.tensor([0.3, 0.8]), eps, ObjectiveConfig()).total.backward()
    student = {id(p) for p in adapters.parameters(STUDENT)}
    with_grad = [(n, p) for n, p in G.backbone.transformer.named_parameters() if p.grad is not None]
    assert {id(p) for _, p in with_grad} == student
    assert all(p.grad.abs().sum() > 0 for _, p in with_grad)


@pytest.mark.parametrize(
    "switch, changed",
    [
        ("cycle", {"cycle", "prior_rev"}),
        ("regularization", {"prior_fwd", "prior_rev"}),
        ("directional", {"prior_fwd", "prior_rev"}),
        ("gradient_routing", {"cycle", "prior_rev"}),
        ("bootstrap", {"prior_fwd"}),  # the reverse pass still sees y_0: same value
    ],
)
def test_each_ablation_switch_changes_exactly_the_terms_it_names(setup, switch, changed):
    G, _, batch = setup
    full = step_terms(G, batch)
    ablated = step_terms(G, batch, **{switch: False})
    differs = {k for k in full if abs(full[k] - ablated[k]) > 1e-7}
    assert differs == changed


def test_routing_off_sends_the_cycle_gradient_through_the_blurry_condition(setup):
    """With routing, the reverse pass *sees* y_0; without, it sees y_hat. Same gradient path."""
    G, adapters, batch = setup
    grads = {}
    for routing in (True, False):
        for p in adapters.parameters(STUDENT):
            p.grad = None
        eps = torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(1))
        cfg = ObjectiveConfig(gradient_routing=routing, regularization=False, lambda_id=0.0)
        byg_step(G, batch, torch.tensor([0.3, 0.8]), eps, cfg).total.backward()
        grads[routing] = torch.cat([p.grad.flatten() for p in adapters.parameters(STUDENT)])
    assert grads[True].abs().sum() > 0 and grads[False].abs().sum() > 0
    assert not torch.allclose(grads[True], grads[False])


def test_objective_config_refuses_negative_weights():
    with pytest.raises(ValueError, match="alpha"):
        dataclasses.replace(ObjectiveConfig(), alpha=-1).validate()
    with pytest.raises(ValueError, match="rollout_steps"):
        dataclasses.replace(ObjectiveConfig(), rollout_steps=0).validate()
