"""Datasets: every bad line is reported with its file and line; sources are cached once."""

import json

import pytest
import torch

from byg_core.data import EditDataset, cache, write_dataset

ROW = {
    "src_caption": "a red circle on a blue background",
    "instruction": "change the circle's colour to green",
    "tgt_caption": "a green circle on a blue background",
    "reverse_instruction": "change the circle's colour to red",
}


def make(tmp_path, n=2):
    return write_dataset(tmp_path, [ROW] * n, [torch.rand(3, 8, 8) for _ in range(n)])


def append(root, obj):
    with open(root / "edits.jsonl", "a") as f:
        f.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")


def test_a_written_dataset_reads_back(tmp_path):
    dataset = EditDataset.from_folder(make(tmp_path))
    assert len(dataset) == 2 and dataset.records[1].line == 2
    assert dataset.records[0].instruction == ROW["instruction"]


@pytest.mark.parametrize(
    "obj, message",
    [
        ({**ROW, "image": "00000.png", "tgt_caption": ""}, "missing or empty field 'tgt_caption'"),
        ({**ROW, "image": "missing.png"}, "missing.png does not exist"),
        ({**ROW, "image": "00000.png", "reverse_instruction": "undo the edit"}, "restore/revert/undo"),
        ({**ROW, "image": "00000.png", "reverse_instruction": "Restore the original colour"}, "restore/revert/undo"),
        ({k: v for k, v in ROW.items()}, "exactly one of 'image' or 'video'"),
        ("{not json", "Expecting property name"),
    ],
)
def test_bad_lines_name_the_file_line_and_reason(tmp_path, obj, message):
    root = make(tmp_path)
    append(root, obj)
    with pytest.raises(ValueError, match=rf"edits.jsonl:3: .*{message}"):
        EditDataset.from_folder(root)
    lenient = EditDataset.from_folder(root, strict=False)
    assert len(lenient) == 2 and len(lenient.rejected) == 1


def test_an_unreadable_image_is_refused(tmp_path):
    root = make(tmp_path)
    (root / "broken.png").write_bytes(b"not an image")
    append(root, {**ROW, "image": "broken.png"})
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        EditDataset.from_folder(root)


def test_an_empty_dataset_is_refused(tmp_path):
    (tmp_path / "edits.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="has no edit tuple: write one JSON object per line"):
        EditDataset.from_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="edits.jsonl not found"):
        EditDataset.from_folder(tmp_path / "nowhere")


def test_cache_encodes_sources_and_prompts_once(tmp_path, flux_backbone):
    cached = cache(EditDataset.from_folder(make(tmp_path)), flux_backbone)
    assert cached.x.shape == (2, 3, 8, 8) and cached.x.min() >= -1
    flux_backbone.release_text_encoder()  # everything needed is cached now
    batch = cached.batch(flux_backbone, [1, 0])
    assert batch.c.tokens.shape[0] == 2


def test_a_source_the_model_cannot_take_names_the_file(tmp_path, flux_backbone):
    root = write_dataset(tmp_path, [ROW], [torch.rand(3, 9, 8)])
    with pytest.raises(ValueError, match="00000.png .*line 1.*height 9"):
        cache(EditDataset.from_folder(root), flux_backbone)
    assert cache(EditDataset.from_folder(root), flux_backbone, size=(8, 8)).x.shape == (1, 3, 8, 8)
