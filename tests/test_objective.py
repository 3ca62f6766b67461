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
    identity_step,
    directional_prior_loss,
    noise,
    one_step_prediction,
    route_gradients,
    supervised_edit_loss,
    total_loss,
)


def test_time_convention_t1_is_noise_t0_is_data():
    x, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.equal(noise(x, eps, torch.zeros(2)), x)
    assert torch.equal(noise(x, eps, torch.ones(2)), eps)
    # with the exact velocity eps - x, the one-step prediction recovers the data from any t
    t = torch.tensor([0.3, 0.9])
    assert torch.allclose(one_step_prediction(noise(x, eps, t), t, eps - x), x, atol=1e-6)


def test_bf16_latents_are_noised_and_predicted_at_the_fp32_t():
    """On bf16 latents t stays fp32 (a bf16 0.999 is 1.0, 0.9 is 0.898): each blend is the fp32 one, rounded once."""
    x, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    x16, eps16, t = x.bfloat16(), eps.bfloat16(), torch.tensor([0.999, 0.9])
    x_t = noise(x16, eps16, t)
    want = (1 - t.view(-1, 1, 1, 1)) * x16.float() + t.view(-1, 1, 1, 1) * eps16.float()
    assert x_t.dtype == torch.bfloat16 and torch.equal(x_t, want.bfloat16())
    assert not torch.equal(x_t[0], eps16[0])  # 0.999 is not pure noise
    v16 = (eps - x).bfloat16()
    y_hat = one_step_prediction(x_t, t, v16)
    assert y_hat.dtype == torch.bfloat16
    assert torch.equal(y_hat, (x_t.float() - t.view(-1, 1, 1, 1) * v16.float()).bfloat16())
    # and the losses of bf16 velocities are the fp32 losses of the same values
    v_pred, v_src, v_tgt = (torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(i)).bfloat16()
                            for i in range(3))
    fp32 = [v.float() for v in (v_pred, v_src, v_tgt)]
    for got, want in ((directional_prior_loss(v_pred, v_src, v_tgt, 0.1), directional_prior_loss(*fp32, 0.1)),
                      (directional_loss(v_pred, v_src, v_tgt), directional_loss(*fp32))):
        assert got.dtype == torch.float32 and torch.equal(got, want)


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
    differs = {k for k in full if abs(full[k] - ablated[k]) > 1e-5}  # batched passes round differently (~1e-7)
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


def byg_step_as_written(G, batch, t, eps, cfg):
    """Algorithm 1 transcribed call by call (one network query per line of the paper): the oracle the batched
    ``byg_step`` must equal."""
    from byg_core.bootstrap import snap_to_grid
    from byg_core.objective import supervised_edit_loss

    t = snap_to_grid(t, cfg.rollout_steps)
    k_t, y, y_t = (t * cfg.rollout_steps).round().long(), eps, eps.clone()
    with torch.no_grad():
        for k in range(cfg.rollout_steps, 0, -1):
            y_t = torch.where((k_t == k).view(-1, 1, 1, 1), y, y_t)
            y = y - (1.0 / cfg.rollout_steps) * G.ema(y, torch.full_like(t, k / cfg.rollout_steps), batch.c, batch.x)
    x, x_t = batch.x, noise(batch.x, eps, t)
    y_t = y_t if cfg.bootstrap else x_t
    v_fwd = G.edit(y_t, t, batch.c, x)
    y_hat = one_step_prediction(y_t, t, v_fwd)
    zero = v_fwd.new_zeros(())
    prior_fwd = directional_prior_loss(v_fwd, G.t2i(y_t, t, batch.p_src), G.t2i(y_t, t, batch.p_tgt), cfg.alpha,
                                       cfg.directional) if cfg.regularization else zero
    cycle = prior_rev = zero
    if cfg.cycle:
        v_rev = G.edit(x_t, t, batch.c_bar, route_gradients(y, y_hat) if cfg.gradient_routing else y_hat)
        cycle = supervised_edit_loss(v_rev, x, eps)
        if cfg.regularization:
            prior_rev = directional_prior_loss(v_rev, G.t2i(x_t, t, batch.p_tgt), G.t2i(x_t, t, batch.p_src),
                                               cfg.alpha, cfg.directional)
    identity = supervised_edit_loss(G.edit(x_t, t, batch.c_bar, x), x, eps)
    total = total_loss(cycle, prior_fwd, prior_rev, identity, cfg.lambda_cycle, cfg.lambda_prior, cfg.lambda_id)
    return total, {"cycle": cycle, "prior_fwd": prior_fwd, "prior_rev": prior_rev, "identity": identity}


@pytest.mark.parametrize("switches", [{}, {"cycle": False}, {"regularization": False}, {"gradient_routing": False},
                                      {"bootstrap": False}])
def test_the_batched_step_equals_the_algorithm_as_written(setup, switches):
    """One adapter switch per rollout, the base queries batched, the identity loss back-propagated first and (with
    routing) the reverse pass before the forward pass: same losses and same gradients as the call-by-call
    transcription, to 1e-5."""
    G, adapters, batch = setup
    eps = torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(1))
    t, cfg = torch.tensor([0.3, 0.8]), ObjectiveConfig(rollout_steps=3, **switches)

    def run(step, backpropagates=False):
        for p in adapters.parameters(STUDENT):
            p.grad = None
        total, terms = step()
        if not backpropagates:
            total.backward()
        floats = float(total.detach()), {k: float(v.detach()) for k, v in terms.items()}
        return *floats, [p.grad.clone() for p in adapters.parameters(STUDENT)]

    old = run(lambda: byg_step_as_written(G, batch, t, eps, cfg))
    new = run(lambda: (lambda s: (s.total, s.terms))(byg_step(G, batch, t, eps, cfg)))
    # the identity loss back-propagated as soon as it is computed, the rest after: the same gradient
    early = run(lambda: (lambda s: (s.total, s.terms))(byg_step(G, batch, t, eps, cfg, backward=torch.Tensor.backward)),
                backpropagates=True)
    for result in (new, early):
        assert result[0] == pytest.approx(old[0], rel=1e-5, abs=1e-6) and old[0] > 0
        assert result[1] == pytest.approx(old[1], rel=1e-5, abs=1e-6)
        for g_new, g_old in zip(result[2], old[2]):
            torch.testing.assert_close(g_new, g_old, rtol=1e-5, atol=1e-5)
    assert any(float(g.abs().sum()) > 0 for g in old[2])


class SavedBytes:
    """The bytes of the tensors autograd holds for backward (storages counted once, parameters not), and their peak."""

    class _Held:
        def __init__(self, owner, key, tensor):
            self.owner, self.key, self.tensor = owner, key, tensor

        def __del__(self):  # the graph node that saved it is freed
            count, size = self.owner.live[self.key]
            self.owner.live[self.key] = (count - 1, size)
            self.owner.now -= size if count == 1 else 0

    def __init__(self, module):
        self.parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}
        self.live, self.now, self.peak = {}, 0, 0

    def pack(self, tensor):
        key = tensor.untyped_storage().data_ptr()
        if key in self.parameters:
            return tensor
        count, size = self.live.get(key, (0, tensor.untyped_storage().nbytes()))
        self.now += size if count == 0 else 0
        self.peak = max(self.peak, self.now)
        self.live[key] = (count + 1, size)
        return self._Held(self, key, tensor)

    def __call__(self, step) -> int:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda held: getattr(held, "tensor", held)):
            step()
        return self.peak


def test_the_staged_step_holds_one_passs_graph_at_a_time(setup, flux_backbone):
    """Back-propagated pass by pass (identity, reverse, forward), a ByG step's peak of tensors held for backward is
    one editor pass's; the step as written holds the forward and reverse graphs together (issue 16's memory)."""
    G, adapters, batch = setup
    eps = torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(1))
    t, cfg = torch.tensor([0.3, 0.8]), ObjectiveConfig(rollout_steps=3)
    transformer = flux_backbone.transformers["transformer"]
    one_pass = SavedBytes(transformer)(lambda: identity_step(G, batch, t, eps).total.backward())
    staged = SavedBytes(transformer)(lambda: byg_step(G, batch, t, eps, cfg, backward=torch.Tensor.backward))
    held = SavedBytes(transformer)(lambda: byg_step(G, batch, t, eps, cfg).total.backward())
    assert one_pass > 0
    assert staged <= 1.25 * one_pass, (staged, one_pass)  # + the prior losses' small tensors
    assert held >= 2 * one_pass, (held, one_pass)


def test_a_step_switches_adapters_twice_for_the_rollout_and_twice_for_the_base(setup, monkeypatch):
    """Each switch walks every LoRA layer (FLUX.1: ~380): one pair around the whole rollout, one around the base."""
    G, adapters, batch = setup
    switches = []
    activate = adapters._activate
    monkeypatch.setattr(adapters, "_activate", lambda role: (switches.append(role), activate(role)))
    eps = torch.randn(batch.x.shape, generator=torch.Generator().manual_seed(1))
    byg_step(G, batch, torch.tensor([0.3, 0.8]), eps, ObjectiveConfig(rollout_steps=10))
    assert switches == ["ema", STUDENT, "base", STUDENT]


def test_a_guided_prior_takes_each_base_velocity_at_classifier_free_guidance_against_the_empty_prompt(setup):
    """prior_guidance w: every base velocity of the prior (4.2) is v_u + w (v_c - v_u) at its own noised input."""
    from byg_core.adapters import BASE
    from byg_core.sample import guided_velocity

    G, adapters, batch = setup
    uncond = G.backbone.encode_text(["", ""])
    guided = dataclasses.replace(batch, uncond=uncond)

    class GuidedBase(Generators):  # the base answering each query guided, one query at a time
        def t2i_many(self, queries, t):
            with self.adapters.use(BASE):
                return [guided_velocity(self.backbone, y, t, p, uncond, 3.0) for y, p in queries]

    plain = step_terms(G, batch)
    assert step_terms(G, guided, prior_guidance=1.0) == plain  # w = 1: the uncond is not used
    terms = step_terms(G, guided, prior_guidance=3.0)
    expected = step_terms(GuidedBase(G.backbone, adapters), batch)
    for key in ("prior_fwd", "prior_rev"):
        assert terms[key] == pytest.approx(expected[key], rel=1e-4)
        assert abs(terms[key] - plain[key]) > 1e-3
    for key in ("cycle", "identity"):  # guidance touches the prior alone
        assert terms[key] == pytest.approx(plain[key], rel=1e-5)
    with pytest.raises(ValueError, match="prior_guidance 3 needs the empty prompt"):
        step_terms(G, batch, prior_guidance=3.0)
    with pytest.raises(ValueError, match="prior_guidance must be > 0"):
        ObjectiveConfig(prior_guidance=0).validate()


def test_a_prior_guided_on_its_anchor_alone_keeps_the_directional_term_unguided(setup):
    """prior_guidance_terms "anchor": L_dir reads the unguided v_src, v_tgt; alpha ||v_pred - v_tgt||^2 the guided v_tgt."""
    G, _, batch = setup
    guided = dataclasses.replace(batch, uncond=G.backbone.encode_text(["", ""]))

    def prior(**switches):
        terms = step_terms(G, guided, **switches)
        return torch.tensor([terms["prior_fwd"], terms["prior_rev"]])

    w, alpha = dict(prior_guidance=3.0), ObjectiveConfig.alpha
    mse_plain, mse_guided = prior(directional=False), prior(directional=False, **w)
    expected = prior() - alpha * mse_plain + alpha * mse_guided  # the unguided L_dir, the guided anchor
    anchored = prior(prior_guidance_terms="anchor", **w)
    assert torch.allclose(anchored, expected, rtol=1e-4)
    assert (anchored - prior(**w)).abs().min() > 1e-3 and (anchored - prior()).abs().min() > 1e-4
    cycle = step_terms(G, guided, prior_guidance_terms="anchor", **w)["cycle"]
    assert cycle == pytest.approx(step_terms(G, guided)["cycle"], rel=1e-5)
    with pytest.raises(ValueError, match="prior_guidance_terms must be one of all, anchor, got 'both'"):
        ObjectiveConfig(prior_guidance_terms="both").validate()
    with pytest.raises(ValueError, match="prior_guidance_terms 'anchor' guides nothing at prior_guidance 1"):
        ObjectiveConfig(prior_guidance_terms="anchor").validate()


def test_identity_step_is_G_edit_of_x_t_under_c_bar_conditioned_on_x(flux_backbone):  # paper 4.3, Algorithm 1
    adapters = Adapters(flux_backbone, LoraSpec(4, 4.0, tuple(flux_backbone.lora_target_modules())))
    with torch.no_grad():
        for p in adapters.parameters(STUDENT):
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    G = Generators(flux_backbone, adapters)

    def enc(s):
        return flux_backbone.encode_text([s, s])

    batch = EditBatch(x=torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)), p_src=enc("a"),
                      p_tgt=enc("b"), c=enc("make it green"), c_bar=enc("make it red"))
    t, eps = torch.tensor([0.3, 0.8]), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    got = identity_step(G, batch, t, eps).total
    x_t = noise(batch.x, eps, t)
    torch.testing.assert_close(got, supervised_edit_loss(G.edit(x_t, t, batch.c_bar, batch.x), batch.x, eps))
    assert not torch.allclose(got, supervised_edit_loss(G.edit(x_t, t, batch.c, batch.x), batch.x, eps))
