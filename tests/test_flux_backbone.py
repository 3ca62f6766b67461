"""FLUX behind EditBackbone: packing, Kontext/ReferenceLatent position ids, plain T2I query."""

import pytest
import torch

from byg_core.backbones.flux import image_ids, pack_latents, unpack_latents
from helpers import make_flux_backbone


def test_pack_unpack_round_trip_and_token_layout():
    latents = torch.randn(2, 3, 8, 6)
    tokens = pack_latents(latents)
    assert tokens.shape == (2, 12, 12)
    # token (row 1, col 2) holds the 2x2 cell at latent rows 2-3, cols 4-5, channel-major
    assert torch.equal(tokens[0, 1 * 3 + 2].view(3, 2, 2), latents[0, :, 2:4, 4:6])
    assert torch.equal(unpack_latents(tokens, 8, 6), latents)


def test_image_ids_are_index_row_col():
    ids = image_ids(4, 6, index=1)
    assert ids.shape == (6, 3)
    assert ids[:, 0].eq(1).all()
    assert ids[4].tolist() == [1.0, 1.0, 1.0]


def test_plain_query_is_the_stock_transformer_call(flux_backbone):
    y, t = torch.randn(2, 3, 8, 8), torch.tensor([0.25, 0.75])
    text = flux_backbone.encode_text(["a red circle on a blue background"] * 2)
    out = flux_backbone.transformer(
        hidden_states=pack_latents(y),
        encoder_hidden_states=text.tokens,
        pooled_projections=text.pooled,
        timestep=t,
        img_ids=image_ids(8, 8, 0),
        txt_ids=torch.zeros(text.tokens.shape[1], 3),
        guidance=torch.full((2,), 3.5),
        return_dict=False,
    )[0]
    assert torch.allclose(flux_backbone.velocity(y, t, text), unpack_latents(out, 8, 8), atol=1e-6)


def test_source_tokens_change_the_output_and_their_position_scheme_matters():
    y, x, t = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8), torch.tensor([0.5])
    index, same = make_flux_backbone(positions="index"), make_flux_backbone(positions="same")
    text = index.encode_text(["change the circle's colour to green"])
    v_plain = index.velocity(y, t, text)
    v_index = index.velocity(y, t, text, source=x)
    v_same = same.velocity(y, t, text, source=x)
    assert v_index.shape == y.shape
    assert not torch.allclose(v_plain, v_index, atol=1e-4)
    assert not torch.allclose(v_index, v_same, atol=1e-5)


def test_guidance_value_reaches_the_guidance_embedding():
    y, t = torch.randn(1, 3, 8, 8), torch.tensor([0.5])
    low, high = make_flux_backbone(guidance=1.0), make_flux_backbone(guidance=5.0)
    text = low.encode_text(["a red circle on a blue background"])
    assert not torch.allclose(low.velocity(y, t, text), high.velocity(y, t, text))


def test_pixels_the_model_cannot_take_are_refused_with_sizes_to_use(flux_backbone):
    with pytest.raises(ValueError, match="height 9 px.*resize or crop it to 8 or 10"):
        flux_backbone.check_pixels((1, 3, 9, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        flux_backbone.check_pixels((1, 4, 8, 8))


def test_text_is_encoded_once_and_served_from_the_cache(flux_backbone):
    first = flux_backbone.encode_text(["a red circle on a blue background"])
    flux_backbone.release_text_encoder()
    again = flux_backbone.encode_text(["a red circle on a blue background"])
    assert torch.equal(first.tokens, again.tokens)
    with pytest.raises(RuntimeError, match="never cached"):
        flux_backbone.encode_text(["a green square on a red background"])
