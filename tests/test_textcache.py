"""Encoded prompts on disk: the same conditioning as in memory, read back by a later run without a text encoder,
never another model's."""

import pytest
import torch

from byg_core import textcache
from byg_core.textcache import DiskTextCache
from helpers import make_flux_backbone

PROMPTS = ["a red circle on a blue background", "change the circle's colour to green",
           "a green circle on a blue background", "change the circle's colour to red"]


def test_a_disk_cache_gives_the_in_memory_conditioning_and_outlives_the_text_encoder(tmp_path, monkeypatch):
    monkeypatch.setattr(textcache, "SHARD", 3)  # two shards for four prompts
    memory = make_flux_backbone().encode_text(PROMPTS)
    backbone = make_flux_backbone()
    backbone.use_text_cache(DiskTextCache(tmp_path, "toy"))
    on_disk = backbone.encode_text(PROMPTS)
    backbone.flush_text_cache()
    assert sorted(p.name for p in tmp_path.glob("shard_*.safetensors")) == ["shard_00000.safetensors",
                                                                            "shard_00001.safetensors"]
    later = make_flux_backbone()
    later.release_text_encoder()  # a later run reads every prompt from disk
    later.use_text_cache(DiskTextCache(tmp_path, "toy"))
    again = later.encode_text(PROMPTS[::-1])
    assert on_disk.tokens.shape == again.tokens.shape == memory.tokens.shape
    torch.testing.assert_close(on_disk.tokens, memory.tokens, rtol=0, atol=0)
    torch.testing.assert_close(again.tokens, memory.tokens.flip(0), rtol=0, atol=0)
    torch.testing.assert_close(again.pooled, memory.pooled.flip(0), rtol=0, atol=0)

    other = make_flux_backbone()
    other.release_text_encoder()
    other.use_text_cache(DiskTextCache(tmp_path, "flux1-dev"))  # made by another model: not read
    with pytest.raises(RuntimeError, match="no text encoder is loaded"):
        other.encode_text(PROMPTS[:1])


def test_byg_train_keeps_its_prompts_on_disk_when_asked(tmp_path):
    from pathlib import Path

    from byg_core import cli

    examples = Path(__file__).resolve().parents[1] / "examples"
    assert cli.main(["toy", "dataset", "--out", str(tmp_path / "data"), "--n", "4"]) == 0
    assert cli.main(["train", str(examples / "toy.toml"), "--set", f"data={tmp_path / 'data'}", "--set",
                     f"output_dir={tmp_path / 'run'}", "--set", "steps=1", "--set", "rank=2", "--set", "batch_size=2",
                     "--set", f"text_cache_dir={tmp_path / 'text'}", "--set", "objective.rollout_steps=2"]) == 0
    assert (tmp_path / "text" / "index.json").is_file() and list((tmp_path / "text").glob("shard_*.safetensors"))
