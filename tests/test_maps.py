"""edit_direction_map: |v_tgt - v_src| of the base model per pixel (paper 4.2)."""

import torch

from byg_core.adapters import Adapters, LoraSpec, STUDENT
from byg_core.maps import edit_direction_map


def test_same_captions_give_an_empty_map(flux_backbone):
    pixels = torch.rand(2, 3, 8, 8)
    p = flux_backbone.encode_text(["a red circle on a blue background"])
    heat = edit_direction_map(flux_backbone, None, pixels, p, p, t=0.5, seed=0)
    assert heat.shape == (2, 1, 8, 8) and float(heat.abs().max()) == 0


def test_map_is_scaled_per_image_and_uses_the_base_model(flux_backbone):
    pixels = torch.rand(2, 3, 8, 8)
    p_src = flux_backbone.encode_text(["a red circle on a blue background"])
    p_tgt = flux_backbone.encode_text(["a green circle on a blue background"])
    base = edit_direction_map(flux_backbone, None, pixels, p_src, p_tgt, t=0.5, seed=0)
    assert 0 <= float(base.min()) and torch.allclose(base.amax(dim=(1, 2, 3)), torch.ones(2))

    adapters = Adapters(flux_backbone, LoraSpec(2, 2.0, tuple(flux_backbone.lora_target_modules())))
    with torch.no_grad():
        for p in adapters.parameters(STUDENT):
            p.normal_()
    assert adapters.active == STUDENT  # a LoRA is live, yet the map reads the base model
    torch.testing.assert_close(edit_direction_map(flux_backbone, adapters, pixels, p_src, p_tgt, t=0.5, seed=0), base)
    assert not torch.equal(edit_direction_map(flux_backbone, None, pixels, p_src, p_tgt, t=0.5, seed=0), base)
