"""Datasets: every bad line is reported with its file and line; sources are cached once."""

import json

import numpy as np
import pytest
import torch

from byg_core.data import EditDataset, cache, load_image, load_media, write_dataset

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
        ({**ROW, "image": None}, r"missing or empty field 'image' \(a file name, as text\)"),  # had raised TypeError
        ({**ROW, "image": ""}, "missing or empty field 'image'"),  # had read the dataset folder as video frames
        ({**ROW, "image": "sub\\00000.png"}, r"does not exist; write paths with /"),  # a Windows path on Linux
        ({**ROW, "image": "00000.png", "tgt_caption": ROW["src_caption"] + " "}, "tgt_caption is src_caption"),
        ({**ROW, "image": "00000.PNG"}, r"00000.PNG does not exist; 00000.png exists: file names are case-sensitive"),
        # an invisible space had read "file .../00000.png  does not exist"
        ({**ROW, "image": "00000.png "}, r"'00000.png ' does not exist; '00000.png' exists: the name has a space or "
                                         r"tab at its start or end, remove it"),
        ({**ROW, "image": "\t00000.png"}, r"'\\t00000.png' does not exist; '00000.png' exists"),
        ({**ROW, "image": "."}, r"image .* is a video \(a folder of frames or a video file\): give it as 'video'"),
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
    rows = [ROW, {**ROW, "instruction": "change the circle's colour to blue"}]
    dataset = EditDataset.from_folder(write_dataset(tmp_path, rows, [torch.rand(3, 8, 8) for _ in rows]))
    cached = cache(dataset, flux_backbone)
    # each source encoded as the backbone encodes that file, in the dataset's order
    want = torch.cat([flux_backbone.encode_pixels(load_media(r.media).unsqueeze(0)) for r in dataset.records])
    assert cached.x.shape == (2, 3, 8, 8) and not torch.equal(cached.x[0], cached.x[1])
    torch.testing.assert_close(cached.x, want, rtol=0, atol=0)
    want_c = flux_backbone.encode_text([rows[1]["instruction"], rows[0]["instruction"]]).tokens
    flux_backbone.release_text_encoder()  # everything needed is cached now
    batch = cached.batch(flux_backbone, [1, 0])
    torch.testing.assert_close(batch.x, want[[1, 0]], rtol=0, atol=0)
    torch.testing.assert_close(batch.c.tokens, want_c, rtol=0, atol=0)
    assert batch.uncond is None
    # and the empty prompt, which a guided prior (ObjectiveConfig.prior_guidance) asks for with each batch
    guided = cached.batch(flux_backbone, [1, 0], uncond=True)
    assert guided.uncond.tokens.shape[0] == 2
    assert torch.equal(guided.uncond.tokens[0], flux_backbone.encode_text([""]).tokens[0])


def test_a_source_the_model_cannot_take_names_the_file(tmp_path, flux_backbone):
    root = write_dataset(tmp_path, [ROW], [torch.rand(3, 9, 8)])
    with pytest.raises(ValueError, match="00000.png .*line 1.*height 9"):
        cache(EditDataset.from_folder(root), flux_backbone)
    assert cache(EditDataset.from_folder(root), flux_backbone, size=(8, 8)).x.shape == (1, 3, 8, 8)


def _tree(root):
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_a_dataset_writer_never_writes_into_a_folder_holding_other_files(tmp_path, monkeypatch, capsys):
    from byg_core import cli, video_io
    from byg_core.toy.dataset import write_toy_dataset
    from byg_core.toy.video import write_video_dataset

    torch.manual_seed(0)
    toy = tmp_path / "toy"
    assert cli.main(["toy", "dataset", "--out", str(toy), "--n", "4", "--seed", "0"]) == 0
    written = _tree(toy)
    assert len(written) == 5 and EditDataset.from_folder(toy).records[3].media.name == "00003.png"
    assert cli.main(["toy", "dataset", "--out", str(toy), "--n", "4", "--seed", "0"]) == 0  # a repeated run: as it was
    assert _tree(toy) == written
    capsys.readouterr()
    assert cli.main(["toy", "dataset", "--out", str(toy), "--n", "4", "--seed", "1"]) == 2  # another draw: refused
    error = capsys.readouterr().err
    assert f"{toy} already holds other files (00000.png, 00001.png, 00002.png and 2 more); nothing was overwritten" in error
    assert "Pick another --out, or pass --overwrite" in error and _tree(toy) == written
    assert cli.main(["toy", "dataset", "--out", str(toy), "--n", "4", "--seed", "1", "--overwrite"]) == 0
    assert _tree(toy)["edits.jsonl"] != written["edits.jsonl"] and len(_tree(toy)) == 5

    # a folder the user made (photos, their own edits.jsonl) is never written into, by either writer
    photos = tmp_path / "photos"
    make(photos, n=1)
    (photos / "holiday.jpg").write_bytes(b"not ours")
    mine = _tree(photos)
    with pytest.raises(FileExistsError, match=r"photos already holds other files \(00000.png, edits.jsonl, holiday.jpg\)"):
        write_toy_dataset(photos, n=2)
    with pytest.raises(FileExistsError, match="nothing was overwritten"):
        write_video_dataset(photos, 1, frames=5, size=16)
    with pytest.raises(FileExistsError, match="is a file; a dataset is a folder"):
        write_toy_dataset(photos / "holiday.jpg", n=2)
    assert _tree(photos) == mine

    # a write stopped half-way leaves no half dataset, and the next run writes the whole one
    saved, calls = video_io.save_pixels, []

    def stop_at_the_third(pixels, path, fps=None):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return saved(pixels, path, fps)

    monkeypatch.setattr(video_io, "save_pixels", stop_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        write_toy_dataset(tmp_path / "stopped", n=4)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["photos", "toy"]
    monkeypatch.setattr(video_io, "save_pixels", saved)
    videos = write_video_dataset(tmp_path / "stopped", 2, frames=5, size=16)
    assert len(EditDataset.from_folder(tmp_path / "stopped")) == 2 and len(videos) == 2
    again = _tree(tmp_path / "stopped")
    assert write_video_dataset(tmp_path / "stopped", 2, frames=5, size=16)[1].edit == videos[1].edit
    assert _tree(tmp_path / "stopped") == again
    # a frame a killed write left half-written (hidden, as every write's temporary file) is not a frame
    from byg_core.data import load_media

    clip = tmp_path / "stopped" / "00001"
    frames = load_media(clip)
    (clip / ".00002.png.k1x2.partial.png").write_bytes((clip / "00002.png").read_bytes()[:40])
    assert torch.equal(load_media(clip), frames) and frames.shape[1] == 5

    # an --overwrite stopped half-way leaves no dataset whose captions belong to the old images, and the same
    # command again writes the whole new one (it was taken as already written)
    calls.clear()
    monkeypatch.setattr(video_io, "save_pixels", stop_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["toy", "dataset", "--out", str(toy), "--n", "4", "--seed", "0", "--overwrite"])
    monkeypatch.setattr(video_io, "save_pixels", saved)
    with pytest.raises(FileNotFoundError, match="edits.jsonl not found"):
        EditDataset.from_folder(toy)
    assert cli.main(["toy", "dataset", "--out", str(toy), "--n", "4", "--seed", "0", "--overwrite"]) == 0
    assert _tree(toy) == written


def test_a_phone_photo_loads_upright_and_16_bit_greyscale_keeps_its_tones(tmp_path):
    from PIL import Image, ImageOps

    pixels = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)  # stored 64 wide, 32 high
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view, as phones write portrait photos
    Image.fromarray(pixels).save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "portrait.jpg")
    assert loaded.shape == (3, 64, 32)  # as a viewer (and ComfyUI's LoadImage) shows it
    with Image.open(tmp_path / "portrait.jpg") as image:
        upright = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.float32) / 255
    assert torch.equal(loaded, torch.from_numpy(upright).permute(2, 0, 1))
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    grey = load_image(tmp_path / "grey16.png")
    assert grey.shape == (3, 8, 64) and abs(float(grey.mean()) - 0.5) < 0.01 and float(grey.min()) == 0


def test_a_byte_order_mark_is_read_and_a_file_not_in_utf8_is_named_with_its_line(tmp_path):
    root = make(tmp_path)
    text = (root / "edits.jsonl").read_bytes()
    (root / "edits.jsonl").write_bytes(b"\xef\xbb\xbf" + text)  # as Windows editors save "UTF-8 with BOM"
    assert len(EditDataset.from_folder(root)) == 2
    (root / "edits.jsonl").write_bytes(text + json.dumps({**ROW, "image": "00000.png", "src_caption": "café"}, ensure_ascii=False)
                                      .encode("cp1252") + b"\n")
    with pytest.raises(ValueError, match=r"edits.jsonl:3: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
        EditDataset.from_folder(root, strict=False)


def test_sources_of_different_sizes_or_lengths_name_two_files_and_the_setting_that_fixes_them(tmp_path, flux_backbone):
    from byg_core.toy.video import build_toy_wan_backbone
    from byg_core.video_io import save_pixels

    images = write_dataset(tmp_path / "images", [ROW] * 3, [torch.rand(3, 8, 8), torch.rand(3, 8, 8), torch.rand(3, 16, 8)])
    with pytest.raises(ValueError, match=r"sources differ in size: .*00000.png \(edits.jsonl line 1\) is 8x8 px, "
                                         r".*00002.png \(edits.jsonl line 3\) is 8x16 px; set a training resolution"):
        cache(EditDataset.from_folder(images), flux_backbone)
    videos = tmp_path / "videos"
    for name, count in (("short", 5), ("long", 9)):
        save_pixels(torch.rand(1, 3, count, 16, 16), videos / name)
    (videos / "edits.jsonl").write_text("".join(json.dumps({**ROW, "video": n}) + "\n" for n in ("short", "long")))
    with pytest.raises(ValueError, match=r"short \(edits.jsonl line 1\) is 5 frames of 16x16 px, .*long \(edits.jsonl "
                                         r"line 2\) is 9 frames of 16x16 px; set frames"):
        cache(EditDataset.from_folder(videos), build_toy_wan_backbone("ti2v-5b"))
    # a still beside the clips: had been told to set a resolution, which changes no source's kind
    save_pixels(torch.rand(1, 3, 16, 16), videos / "still.png")
    (videos / "edits.jsonl").write_text(json.dumps({**ROW, "video": "short"}) + "\n"
                                        + json.dumps({**ROW, "image": "still.png"}) + "\n")
    with pytest.raises(ValueError, match=r"short \(edits.jsonl line 1\) is 5 frames of 16x16 px, .*still.png "
                                         r"\(edits.jsonl line 2\) is 16x16 px; a run trains on clips or on images, "
                                         r"not both: give the stills a dataset of their own"):
        cache(EditDataset.from_folder(videos), build_toy_wan_backbone("ti2v-5b"))


def test_a_truncated_jpeg_or_an_empty_frame_is_a_bad_line_before_any_model_loads(tmp_path):
    """PIL's verify() reads no JPEG data: a half-copied photo had passed, then failed training with a traceback
    after the model loaded; a frame folder's frames were never opened."""
    from PIL import Image

    root = make(tmp_path)
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(root / "a.jpg")
    whole = (root / "a.jpg").read_bytes()
    (root / "a.jpg").write_bytes(whole[: len(whole) * 6 // 10])
    append(root, {**ROW, "image": "a.jpg"})
    with pytest.raises(ValueError, match=r"edits.jsonl:3: cannot read image .*a.jpg"):
        EditDataset.from_folder(root)
    (root / "a.jpg").write_bytes(whole)
    assert len(EditDataset.from_folder(root)) == 3
    clip = root / "clip"
    clip.mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8)).save(clip / f"{i:05d}.png")
    (clip / "00003.png").write_bytes(b"")  # a frame a stopped copy left empty
    append(root, {**ROW, "video": "clip"})
    with pytest.raises(ValueError, match=r"edits.jsonl:4: cannot read image .*00003.png"):
        EditDataset.from_folder(root)
    # only the frames the clip takes are decoded (a long folder's others would cost seconds a line, and are not read)
    for i in (3, 5):
        Image.new("RGB", (8, 8)).save(clip / f"{i:05d}.png")
    (clip / "00006.png").write_bytes(b"")  # 7 frames: the clip is the longest 4k+1 run, frames 0-4
    assert len(EditDataset.from_folder(root)) == 4


@pytest.mark.parametrize("reverse", ["make the boat undocked", "make the desk a restorer's workbench"])
def test_a_reverse_instruction_that_only_contains_undo_or_restore_is_read(tmp_path, reverse):
    root = make(tmp_path)
    append(root, {**ROW, "image": "00000.png", "reverse_instruction": reverse})
    assert EditDataset.from_folder(root).records[2].reverse_instruction == reverse


def test_a_caption_holding_a_unicode_line_separator_is_one_line(tmp_path):
    """JSON allows U+2028 and U+0085 raw in strings (json.dumps(..., ensure_ascii=False) writes them): the line had
    been split in two, refused as broken JSON, and every later line named one number too high."""
    root = make(tmp_path)
    with open(root / "edits.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({**ROW, "image": "00000.png", "src_caption": "a red circle\u2028on blue\u0085sky"},
                           ensure_ascii=False) + "\r\n")
    append(root, {**ROW, "image": "missing.png"})
    with pytest.raises(ValueError, match=r"edits.jsonl:4: file .*missing.png does not exist") as refused:
        EditDataset.from_folder(root)
    assert "edits.jsonl:3" not in str(refused.value)
    assert EditDataset.from_folder(root, strict=False).records[2].src_caption == "a red circle\u2028on blue\u0085sky"
    old_mac = (root / "edits.jsonl").read_text(encoding="utf-8").replace("\r\n", "\n").replace("\n", "\r")
    (root / "edits.jsonl").write_text(old_mac, encoding="utf-8", newline="")  # lines ending at a bare \r
    with pytest.raises(ValueError, match=r"edits.jsonl:4: file .*missing.png does not exist"):
        EditDataset.from_folder(root)


def test_a_json_array_is_named_as_one_not_as_one_error_per_line(tmp_path):
    """A pretty-printed JSON array had given one JSON error per physical line (58 for 8 tuples) and no hint."""
    root = make(tmp_path)
    rows = [json.loads(line) for line in (root / "edits.jsonl").read_text().splitlines()]
    (root / "edits.jsonl").write_text(json.dumps(rows, indent=2))
    with pytest.raises(ValueError, match=r"edits.jsonl holds a JSON array: write one JSON object per line") as refused:
        EditDataset.from_folder(root)
    assert len(refused.value.rejected) == 0
