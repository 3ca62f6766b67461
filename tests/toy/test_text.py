"""The toy text encoder: fixed vocabulary, seeded embeddings, word order matters."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from byg_core.backbones.base import TextCond
from byg_core.toy.text import ToyTextEncoder, sinusoidal_positions
from byg_core.toy.world import VOCABULARY, sample_tuples

torch.set_num_threads(1)

PROMPT = "a red circle on a blue background"
SWAPPED = "a blue circle on a red background"


def test_output_shapes_follow_the_configuration():
    cond = ToyTextEncoder(dim=24, pooled_dim=8, max_length=12)(
        [PROMPT, "turn the circle into a square"]
    )
    assert isinstance(cond, TextCond)
    assert cond.tokens.shape == (2, 12, 24) and cond.pooled.shape == (2, 8)
    assert torch.isfinite(cond.tokens).all() and torch.isfinite(cond.pooled).all()


def test_word_order_changes_tokens_and_pooled():
    cond = ToyTextEncoder()([PROMPT, SWAPPED])
    # Same words, so the same number of non-pad tokens, but different per-position states.
    assert not torch.allclose(cond.tokens[0], cond.tokens[1], atol=1e-3)
    assert not torch.allclose(cond.pooled[0], cond.pooled[1], atol=1e-3)
    same_word_same_place = cond.tokens[0, 2]  # "circle" sits third in both prompts
    assert torch.equal(same_word_same_place, cond.tokens[1, 2])


def test_same_word_at_another_position_differs():
    tokens = ToyTextEncoder()(["a a"]).tokens[0]
    assert not torch.allclose(tokens[0], tokens[1])


def test_encoder_is_deterministic_from_its_seed():
    a, b, c = ToyTextEncoder(seed=7), ToyTextEncoder(seed=7), ToyTextEncoder(seed=8)
    assert torch.equal(a([PROMPT]).tokens, b([PROMPT]).tokens)
    assert torch.equal(a([PROMPT]).pooled, b([PROMPT]).pooled)
    assert not torch.allclose(a([PROMPT]).tokens, c([PROMPT]).tokens)


def test_padding_is_zero_and_empty_prompt_is_all_zero():
    cond = ToyTextEncoder(max_length=10)([PROMPT, ""])
    assert cond.tokens[0, :7].abs().sum(-1).min() > 0
    assert torch.equal(cond.tokens[0, 7:], torch.zeros(3, 32))
    assert torch.equal(cond.tokens[1], torch.zeros(10, 32))
    assert torch.equal(cond.pooled[1], torch.zeros(32))


def test_tokenisation_ignores_case_and_punctuation_and_splits_possessives():
    encoder = ToyTextEncoder()
    assert torch.equal(
        encoder.token_ids(["A Red circle, on a blue background."]), encoder.token_ids([PROMPT])
    )
    ids = encoder.token_ids(["change the circle's colour to green"])[0]
    words = [encoder.vocab[i] for i in ids if i != 0]
    assert words == ["change", "the", "circle", "'s", "colour", "to", "green"]


def test_unknown_words_raise_in_strict_mode_and_map_to_unk_otherwise():
    with pytest.raises(ValueError, match="'purple'"):
        ToyTextEncoder()(["a purple circle on a blue background"])
    # digits and words of other scripts are words too (they had been dropped: "to 2" read as "to")
    for word in ("2", "\u7dd1", "gr\u00fcn"):
        with pytest.raises(ValueError, match=f"unknown word '{word}'"):
            ToyTextEncoder()([f"change the circle's colour to {word}"])
    loose = ToyTextEncoder(strict=False)
    purple, orange = loose(["a purple circle"]).tokens, loose(["a orange circle"]).tokens
    assert torch.equal(purple, orange)
    assert not torch.equal(purple, loose(["a red circle"]).tokens)


def test_bad_inputs_are_refused():
    encoder = ToyTextEncoder(max_length=4)
    with pytest.raises(ValueError, match="max_length"):
        encoder([PROMPT])
    with pytest.raises(TypeError, match="sequence"):
        encoder(PROMPT)


def test_every_tuple_text_of_the_world_is_encodable():
    encoder = ToyTextEncoder()
    texts = [text for t in sample_tuples(100, seed=0) for text in t.record().values()]
    assert encoder(texts).tokens.shape == (len(texts), 16, 32)
    assert set(encoder.vocab[2:]) == set(VOCABULARY)


def test_tables_are_frozen_buffers_that_round_trip_through_safetensors(tmp_path):
    encoder = ToyTextEncoder(seed=3)
    assert list(encoder.parameters()) == []
    state = encoder.state_dict()
    assert set(state) == {"word_embeddings", "position_embeddings", "pool_projection"}
    save_file(state, str(tmp_path / "text.safetensors"))
    fresh = ToyTextEncoder(seed=99)
    fresh.load_state_dict(load_file(str(tmp_path / "text.safetensors")))
    assert torch.equal(fresh([PROMPT]).tokens, encoder([PROMPT]).tokens)


def test_sinusoidal_positions_are_the_standard_table():
    table = sinusoidal_positions(5, 6)
    assert torch.allclose(table[3, 0], torch.sin(torch.tensor(3.0)))
    assert torch.allclose(table[3, 1], torch.cos(torch.tensor(3.0)))
    assert torch.allclose(table[0], torch.tensor([0.0, 1, 0, 1, 0, 1]))
    assert sinusoidal_positions(4, 7).shape == (4, 7)


def test_conditionings_batch_with_textcond_cat():
    encoder = ToyTextEncoder()
    cond = TextCond.cat([encoder([PROMPT]), encoder([SWAPPED])])
    assert torch.equal(cond.tokens, encoder([PROMPT, SWAPPED]).tokens)
