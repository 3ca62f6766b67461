"""One copy of the weights in three roles: base, student, EMA (DESIGN.md)."""

import copy

import pytest
import torch

from byg_core.adapters import BASE, EMA, STUDENT, Adapters, Generators, LoraSpec, all_linear_targets


@pytest.fixture
def parts(flux_backbone):
    plain = copy.deepcopy(flux_backbone.transformer)  # the transformer before any adapter
    adapters = Adapters(flux_backbone, LoraSpec(4, 8.0, tuple(flux_backbone.lora_target_modules())))
    with torch.no_grad():
        for p in adapters.parameters(STUDENT):
            p.normal_(0, 0.3)
        for p in adapters.parameters(EMA):
            p.normal_(0, 0.3)
    return flux_backbone, adapters, plain


def inputs(backbone):
    y = torch.randn(2, 3, 8, 8)
    t = torch.tensor([0.2, 0.7])
    return y, t, backbone.encode_text(["a red circle on a blue background"] * 2)


def test_base_query_equals_the_transformer_without_adapters(parts):
    backbone, adapters, plain = parts
    y, t, p = inputs(backbone)
    with adapters.use(BASE):
        v_base = backbone.velocity(y, t, p)
    with adapters.use(STUDENT):
        v_student = backbone.velocity(y, t, p)
    backbone.transformer = plain
    v_plain = backbone.velocity(y, t, p)
    assert torch.allclose(v_base, v_plain, atol=1e-6)
    assert not torch.allclose(v_student, v_plain, atol=1e-3)


def test_roles_differ_and_trainable_set_stays_the_student_after_every_switch(parts):
    backbone, adapters, _ = parts
    y, t, p = inputs(backbone)
    G = Generators(backbone, adapters)
    x = torch.randn_like(y)
    outputs = [G.edit(y, t, p, x), G.ema(y, t, p, x), G.t2i(y, t, p)]
    assert not torch.allclose(outputs[0], outputs[1]) and not torch.allclose(outputs[1], outputs[2])
    student = {id(p) for p in adapters.parameters(STUDENT)}
    for role in (BASE, EMA, STUDENT):
        with adapters.use(role):
            trainable = {id(q) for q in backbone.transformer.parameters() if q.requires_grad}
            assert trainable == student
    assert adapters.active == STUDENT


def test_ema_moves_toward_the_student_by_the_decay(parts):
    _, adapters, _ = parts
    before_ema = [p.detach().clone() for p in adapters.parameters(EMA)]
    student = [p.detach().clone() for p in adapters.parameters(STUDENT)]
    adapters.ema_update(0.9)
    for old, s, new in zip(before_ema, student, adapters.parameters(EMA)):
        assert torch.allclose(new, 0.9 * old + 0.1 * s, atol=1e-6)
    assert all(torch.equal(s, p) for s, p in zip(student, adapters.parameters(STUDENT)))


def test_without_ema_the_bootstrap_network_is_the_current_student(parts):
    backbone, adapters, _ = parts
    y, t, p = inputs(backbone)
    x = torch.randn_like(y)
    G = Generators(backbone, adapters, use_ema=False)
    assert torch.allclose(G.ema(y, t, p, x), G.edit(y, t, p, x).detach())


def test_strength_zero_is_the_base_model(parts):
    backbone, adapters, _ = parts
    y, t, p = inputs(backbone)
    with adapters.use(BASE):
        v_base = backbone.velocity(y, t, p)
    adapters.set_strength(0.0)
    assert torch.allclose(backbone.velocity(y, t, p), v_base, atol=1e-6)


@pytest.mark.parametrize("strength", [float("nan"), float("inf")])
def test_a_strength_that_is_not_a_number_is_refused_and_changes_nothing(parts, strength):
    backbone, adapters, _ = parts
    y, t, p = inputs(backbone)
    before = backbone.velocity(y, t, p)
    with pytest.raises(ValueError, match=f"LoRA strength must be a finite number, got {strength}"):
        adapters.set_strength(strength)
    assert torch.equal(backbone.velocity(y, t, p), before)


def test_all_linear_targets_wrap_every_linear_layer_with_adapters_in_or_not(flux_backbone):
    linear = {name for name, module in flux_backbone.transformer.named_modules() if isinstance(module, torch.nn.Linear)}
    targets = all_linear_targets(flux_backbone)
    assert set(targets) == linear and len(targets) == len(linear) > len(flux_backbone.lora_target_modules())
    Adapters(flux_backbone, LoraSpec(4, 4.0, tuple(flux_backbone.lora_target_modules())))  # lora_A / B are Linear too
    assert all_linear_targets(flux_backbone) == targets
    adapters = Adapters(flux_backbone, LoraSpec(4, 4.0, targets))
    assert len(adapters.parameters(STUDENT)) == 2 * len(linear)  # an A and a B for each


def test_no_matching_target_module_is_refused(flux_backbone):
    with pytest.raises(ValueError, match="not found"):
        Adapters(flux_backbone, LoraSpec(4, 4.0, ("no_such_module",)))


def test_adapters_attach_again_reset_and_change_rank(parts):
    backbone, adapters, _ = parts
    y, t, p = inputs(backbone)
    with adapters.use(BASE):
        v_base = backbone.velocity(y, t, p)
    again = Adapters(backbone, adapters.spec, seed=1)  # same spec: reused, reset to the base
    assert torch.allclose(backbone.velocity(y, t, p), v_base, atol=1e-6)
    first_a = again.parameters(STUDENT)[0].detach().clone()
    assert torch.equal(Adapters(backbone, adapters.spec, seed=1).parameters(STUDENT)[0], first_a)
    wider = Adapters(backbone, LoraSpec(8, 8.0, adapters.spec.target_modules))
    assert wider.parameters(STUDENT)[0].shape[0] == 8
    assert len(wider.parameters(STUDENT)) == len(adapters.parameters(STUDENT))


def test_adapters_of_fewer_targets_attach_after_wider_ones_and_leave_the_rest_the_base(flux_backbone):
    """A loaded model given an all-linear LoRA, then a LoRA of the default targets (two BYGLoRALoaders on one model,
    or a CycleTrainer after one): attaching the second raised KeyError 'student' from the layers the first had
    wrapped. Those layers now run as the base, and the new adapters hold exactly the new targets."""
    y, t, p = inputs(flux_backbone)
    v_base = flux_backbone.velocity(y, t, p)
    wide = Adapters(flux_backbone, LoraSpec(4, 4.0, all_linear_targets(flux_backbone)))
    with torch.no_grad():
        for q in wide.parameters(STUDENT):
            q.normal_(0, 0.3)
    assert not torch.allclose(flux_backbone.velocity(y, t, p), v_base, atol=1e-4)
    wide_count = len(wide.parameters(STUDENT))
    targets = tuple(flux_backbone.lora_target_modules())
    narrow = Adapters(flux_backbone, LoraSpec(4, 4.0, targets))
    assert len(narrow.parameters(STUDENT)) == 2 * len(narrow.layers()) < wide_count
    assert all(any(name.endswith(f".{target}") for target in targets) for name in narrow.layers())
    torch.testing.assert_close(flux_backbone.velocity(y, t, p), v_base, rtol=0, atol=1e-6)  # B = 0 and the rest bare
