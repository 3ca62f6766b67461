"""LoRA files: stock-ComfyUI key format, metadata, exact reload, clear refusals."""

import pytest
import torch
from safetensors import safe_open

from byg_core.adapters import EMA, STUDENT, Adapters, LoraSpec
from byg_core.lora_io import load_lora, read_lora, save_lora
from byg_core.sample import edit
from helpers import make_flux_backbone


def trained_adapters(backbone, rank=4):
    adapters = Adapters(backbone, LoraSpec(rank, 2.0 * rank, tuple(backbone.lora_target_modules())))
    with torch.no_grad():
        for p in adapters.parameters(EMA):
            p.normal_(0, 0.2)
    return adapters


def test_flux_keys_are_what_comfyui_loads_and_alpha_is_written(tmp_path):
    backbone = make_flux_backbone()
    (path,) = save_lora(tmp_path / "edit.safetensors", backbone, trained_adapters(backbone))
    with safe_open(path, "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        alpha = f.get_tensor("transformer.transformer_blocks.0.attn.to_q.alpha")
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in keys
    assert "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight" in keys
    assert all(k.startswith("transformer.") for k in keys)
    modules = {k.rsplit(".", 2)[0] for k in keys if k.endswith(".weight")}
    assert {f"{m}.alpha" for m in modules} <= keys
    assert float(alpha) == 8.0
    assert meta["byg.family"] == "flux" and meta["byg.rank"] == "4" and meta["byg.positions"] == "index"


def test_a_saved_lora_loads_back_to_identical_edits(tmp_path):
    backbone = make_flux_backbone()
    adapters = trained_adapters(backbone)
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    c = backbone.encode_text(["change the circle's colour to green"])
    before = edit(backbone, adapters, x, c, steps=4, seed=3).latents
    paths = save_lora(tmp_path / "edit.safetensors", backbone, adapters)
    fresh = make_flux_backbone()
    fresh.encode_text(["change the circle's colour to green"])
    loaded = load_lora(paths, fresh)
    after = edit(fresh, loaded, x, c, steps=4, seed=3).latents
    assert torch.equal(before, after)
    assert not torch.allclose(edit(fresh, loaded, x, c, steps=4, seed=3, role="base").latents, after)


def test_student_and_ema_are_saved_separately(tmp_path):
    backbone = make_flux_backbone()
    adapters = trained_adapters(backbone)
    (student,) = save_lora(tmp_path / "s.safetensors", backbone, adapters, role=STUDENT)
    assert all(v.abs().sum() == 0 for k, v in read_lora(student, backbone).tensors.items() if "lora_B" in k)


def test_a_lora_of_another_family_or_rank_is_refused(tmp_path):
    backbone = make_flux_backbone()
    (path,) = save_lora(tmp_path / "edit.safetensors", backbone, trained_adapters(backbone, rank=4))
    other = make_flux_backbone()
    other.family = "wan"
    with pytest.raises(ValueError, match="trained for a flux model; the model given is wan"):
        read_lora(path, other)
    from byg_core.lora_io import load_lora_into

    with pytest.raises(ValueError, match="rank 4 .* have rank 8"):
        load_lora_into(trained_adapters(make_flux_backbone(), rank=8), [read_lora(path, backbone)])


def test_a_missing_or_foreign_file_is_named(tmp_path):
    backbone = make_flux_backbone()
    with pytest.raises(FileNotFoundError, match="LoRA file .*nope.safetensors does not exist"):
        read_lora(tmp_path / "nope.safetensors", backbone)
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="no 'byg.family' metadata"):
        read_lora(tmp_path / "plain.safetensors", backbone)


def test_writes_are_atomic_an_existing_file_survives_a_failed_write(tmp_path, monkeypatch):
    backbone = make_flux_backbone()
    adapters = trained_adapters(backbone)
    (path,) = save_lora(tmp_path / "edit.safetensors", backbone, adapters)
    original = path.read_bytes()
    import byg_core.safefiles as safefiles

    def broken(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safefiles, "save_file", broken)
    with pytest.raises(OSError):
        save_lora(path, backbone, adapters)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["edit.safetensors"]


def test_reports_are_written_atomically_a_stopped_write_leaves_the_earlier_report(tmp_path, monkeypatch):
    from pathlib import Path

    from byg_core.train import write_history

    path = write_history([{"loss": 1.0}], tmp_path / "losses.jsonl")
    assert path.read_text() == '{"loss": 1.0}\n'
    written = Path.write_text

    def stopped_half_way(self, text, *args, **kwargs):
        written(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt  # a Cancel, a crash, a full disk

    monkeypatch.setattr(Path, "write_text", stopped_half_way)
    with pytest.raises(KeyboardInterrupt):
        write_history([{"loss": 0.5}, {"loss": 0.25}], path)
    assert path.read_text() == '{"loss": 1.0}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["losses.jsonl"]
    monkeypatch.setattr(Path, "write_text", written)
    assert write_history([{"loss": 0.5}], path).read_text() == '{"loss": 0.5}\n'


def test_alpha_tensors_another_tool_changed_are_refused_not_ignored(tmp_path):
    """ComfyUI scales a LoRA by its .alpha tensors, this pack by the alpha its metadata records: a file whose tensors
    were rewritten (alpha 1 in a rank-4, alpha-8 file) loaded here at scale 2 where ComfyUI applies 0.25."""
    from safetensors.torch import load_file, save_file

    backbone = make_flux_backbone()
    path = save_lora(tmp_path / "a.safetensors", backbone,
                     Adapters(backbone, LoraSpec(4, 8.0, tuple(backbone.lora_target_modules()))))[0]
    assert read_lora(path, backbone).spec.alpha == 8.0
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    save_file({k: torch.ones_like(v) if k.endswith(".alpha") else v for k, v in load_file(path).items()}, path,
              metadata=metadata)
    with pytest.raises(ValueError, match=r"a.safetensors: its .alpha tensors \(1\) differ from the alpha its metadata "
                                         r"records \(8\)"):
        read_lora(path, backbone)
