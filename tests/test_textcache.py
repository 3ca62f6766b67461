"""Encoded prompts on disk: the same conditioning as in memory, read back by a later run without a text encoder,
never another model's."""

import os

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
    assert len(list(tmp_path.glob("shard_*.safetensors"))) == 2
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
    assert list((tmp_path / "text").glob("index_*.json")) and list((tmp_path / "text").glob("shard_*.safetensors"))


def test_two_runs_sharing_a_cache_folder_at_once_read_their_own_prompts(tmp_path):
    """Each had numbered its shard 0 from the index it read: the second overwrote the first's, and the first then
    read another prompt's states as its own."""
    first, second = DiskTextCache(tmp_path, "toy"), DiskTextCache(tmp_path, "toy")  # both start from an empty folder
    first["a red car"] = textcache.TextCond(torch.full((1, 2), 1.0), None)
    second["a blue boat"] = textcache.TextCond(torch.full((1, 2), 2.0), None)
    first.flush()
    second.flush()
    assert float(first["a red car"].tokens[0, 0]) == 1.0
    later = DiskTextCache(tmp_path, "toy")
    assert float(later["a blue boat"].tokens[0, 0]) == 2.0 and "a blue boat" in later
    assert "a red car" not in later or float(later["a red car"].tokens[0, 0]) == 1.0  # a lost entry is re-encoded


def test_a_cache_made_with_other_text_encoder_files_is_not_read(tmp_path):
    t5, other = tmp_path / "t5xxl_fp16.safetensors", tmp_path / "t5xxl_fp8_e4m3fn.safetensors"
    t5.write_bytes(b"0" * 16)
    other.write_bytes(b"0" * 8)
    cache = DiskTextCache(tmp_path / "text", textcache.cache_key("flux1-dev", {"t5": str(t5), "transformer": "a"}))
    cache["a prompt"] = textcache.TextCond(torch.ones(1, 2), None)
    cache.flush()
    same = textcache.cache_key("flux1-dev", {"t5": str(t5), "transformer": "b"})  # the transformer does not matter
    assert "a prompt" in DiskTextCache(tmp_path / "text", same)
    swapped = textcache.cache_key("flux1-dev", {"t5": str(other), "transformer": "a"})
    assert "a prompt" not in DiskTextCache(tmp_path / "text", swapped)
    # a fine-tuned encoder copied over the same file name, of the same size (a CLIP-L swap), is another encoder
    t5.write_bytes(b"1" * 16)
    os.utime(t5, ns=(t5.stat().st_atime_ns, t5.stat().st_mtime_ns + 10**9))
    replaced = textcache.cache_key("flux1-dev", {"t5": str(t5), "transformer": "a"})
    assert "a prompt" not in DiskTextCache(tmp_path / "text", replaced)


def test_encoded_prompts_are_kept_at_the_models_compute_dtype():
    """A host's CLIP hands over fp32 states (a T5-XXL prompt 4 MiB): a bf16 model keeps them in bf16, half the
    memory, and is given the same values it was given before (they were cast on the way out)."""
    as_fp32 = make_flux_backbone().encode_text(PROMPTS)
    backbone = make_flux_backbone()
    backbone.transformers["transformer"].to(torch.bfloat16)
    given = backbone.encode_text(PROMPTS)
    assert {backbone._text_cache[p].tokens.dtype for p in PROMPTS} == {torch.bfloat16}
    assert backbone._text_cache[PROMPTS[0]].pooled.dtype == torch.bfloat16
    torch.testing.assert_close(given.tokens, as_fp32.tokens.to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(given.pooled, as_fp32.pooled.to(torch.bfloat16), rtol=0, atol=0)


def test_a_folder_shared_by_two_models_keeps_each_ones_prompts(tmp_path):
    """Each model (or text-encoder file, or dtype) keeps its own index in a shared folder: switching between two had
    dropped the other's whole index, leaving its shards unread on disk and its prompts to encode again."""
    cond = textcache.TextCond(torch.ones(1, 2), None)
    for key, prompt in (("k1", "a red car"), ("k2", "a blue boat")):
        cache = DiskTextCache(tmp_path, key)
        cache[prompt] = cond
        cache.flush()
    assert "a red car" in DiskTextCache(tmp_path, "k1") and "a blue boat" in DiskTextCache(tmp_path, "k2")
    assert "a blue boat" not in DiskTextCache(tmp_path, "k1")  # never another's
    older = DiskTextCache(tmp_path / "older", "k1")
    older["a red car"] = cond
    older.flush()
    older.index.rename(tmp_path / "older" / "index.json")  # a cache made before per-model indexes: still read
    assert "a red car" in DiskTextCache(tmp_path / "older", "k1")
    for index in tmp_path.glob("index*.json"):
        index.write_text("{")  # a stopped copy, a hand edit
    with pytest.raises(ValueError, match=r"text cache index .*index.*\.json cannot be read .*delete the folder"):
        DiskTextCache(tmp_path, "k1")


def test_caching_a_datasets_prompts_reads_none_back(tmp_path, monkeypatch):
    """encode_prompts had read every prompt back from disk on every process and every run (FLUX: 4 MB each)."""
    from pathlib import Path
    from types import SimpleNamespace

    from byg_core.data import EditRecord, encode_prompts

    records = [EditRecord(Path(f"{i}.png"), PROMPTS[0], PROMPTS[1], f"caption {i}", "undo it") for i in range(3)]
    backbone = make_flux_backbone()
    backbone.use_text_cache(DiskTextCache(tmp_path / "text", "flux1-dev"))
    reads = []
    read = DiskTextCache.__getitem__
    monkeypatch.setattr(DiskTextCache, "__getitem__", lambda self, prompt: reads.append(prompt) or read(self, prompt))
    encode_prompts(SimpleNamespace(records=records), backbone)
    later = make_flux_backbone()
    later.use_text_cache(DiskTextCache(tmp_path / "text", "flux1-dev"))
    later.release_text_encoder()
    encode_prompts(SimpleNamespace(records=records), later)  # every prompt cached: nothing encoded, nothing read
    assert reads == [] and len(DiskTextCache(tmp_path / "text", "flux1-dev")) == 2 + 3 + 1 + 1  # and ""
    torch.testing.assert_close(later.encode_text([PROMPTS[0]]).tokens, backbone.encode_text([PROMPTS[0]]).tokens)
