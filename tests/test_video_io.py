"""Video files in and out with PyAV: round trips, the 4k+1 frame rule, broken files, and `byg` on .mp4 clips."""

import json
import subprocess
import sys
from pathlib import Path

import av
import pytest
import torch

from byg_core import cli, video_io
from byg_core.data import DatasetError, EditDataset, load_media, write_dataset
from byg_core.toy.video import render_video, sample_video_tuples
from byg_core.video_io import read_video, sample_frames, save_pixels, write_video

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "toy_video.toml"
ROW = {
    "src_caption": "a red circle on a blue background",
    "instruction": "change the circle's colour to green",
    "tgt_caption": "a green circle on a blue background",
    "reverse_instruction": "change the circle's colour to red",
}


def toy_clip(frames=9, size=32, seed=0):
    tup = sample_video_tuples(1, seed, frames=frames)[0]
    return render_video(tup.edit.source, tup.velocity, frames, size)


def test_an_mp4_reads_back_with_its_frames_rate_and_colours(tmp_path):
    clip = toy_clip()
    path = write_video(tmp_path / "clip.mp4", clip, fps=12, crf=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temporary file left
    video, fps = read_video(path)
    assert video.shape == (3, 9, 32, 32) and fps == 12
    error = (video - clip).abs().amax(0)
    # yuv420p keeps colour at half resolution: flat areas come back within rounding, shape edges blur
    assert (error < 0.03).float().mean() > 0.8
    assert (video.mean((2, 3)) - clip.mean((2, 3))).abs().max() < 0.02


def test_a_video_file_and_a_folder_of_its_frames_load_alike(tmp_path):
    path = write_video(tmp_path / "clip.mp4", toy_clip(frames=13))
    save_pixels(read_video(path)[0].unsqueeze(0), tmp_path / "frames")
    for kwargs in ({}, {"size": (16, 24)}, {"frames": 5, "stride": 3}):
        from_file = load_media(path, **kwargs)
        assert torch.equal(from_file, load_media(tmp_path / "frames", **kwargs))
    assert load_media(path, size=(16, 24)).shape == (3, 13, 16, 24)
    assert load_media(path, frames=5, stride=3).shape == (3, 5, 32, 32)


@pytest.mark.parametrize(
    "total, frames, stride, expected",
    [
        (13, None, 1, list(range(13))),
        (12, None, 1, list(range(9))),
        (12, None, 2, [0, 2, 4, 6, 8]),
        (1, None, 1, [0]),
        (200, None, 1, list(range(81))),
        (13, 5, 3, [0, 3, 6, 9, 12]),
    ],
)
def test_the_frame_rule_takes_4k_plus_1_frames_at_the_stride(total, frames, stride, expected):
    assert sample_frames(total, frames, stride) == expected


@pytest.mark.parametrize(
    "total, frames, stride, message",
    [
        (13, 8, 1, r"frames=8 is not 4k\+1 .*use 5 or 9"),
        (13, 0, 1, r"frames=0 is not 4k\+1 .*use 1$"),
        (8, 9, 1, r"clip.mp4 has 8 frames at stride 1; use frames=5 or a longer video"),
        (13, 9, 2, r"clip.mp4 has 13 frames at stride 2; use frames=5 or a longer video"),
        (13, None, 0, r"stride must be a whole number >= 1, got 0"),
        (0, None, 1, r"clip.mp4 holds no frames"),
    ],
)
def test_the_frame_rule_refuses_with_the_numbers_and_the_fix(total, frames, stride, message):
    with pytest.raises(ValueError, match=message):
        sample_frames(total, frames, stride, source="clip.mp4")


def test_stride_halves_the_rate_and_a_short_video_is_refused_with_its_numbers(tmp_path):
    path = write_video(tmp_path / "clip.mp4", toy_clip(frames=13), fps=16)
    every, _ = read_video(path)
    strided, fps = read_video(path, stride=2)
    assert strided.shape[1] == 5 and fps == 8  # 7 frames at stride 2: the longest 4k+1 is 5
    assert torch.equal(strided, every[:, 0:10:2])
    with pytest.raises(ValueError, match=r"clip.mp4 has 13 frames at stride 2; use frames=5 or a longer video"):
        read_video(path, frames=9, stride=2)


def test_write_video_refuses_odd_sizes_and_other_containers_and_never_leaves_half_a_file(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"odd.mp4: 15x16 has an odd side .*resize or crop to 14x16"):
        write_video(tmp_path / "odd.mp4", torch.rand(3, 5, 15, 16))
    with pytest.raises(ValueError, match=r"clip.avi: give a name ending in .mp4"):
        write_video(tmp_path / "clip.avi", torch.rand(3, 5, 16, 16))
    path = write_video(tmp_path / "clip.mp4", toy_clip(frames=5, size=16))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(video_io.av.VideoFrame, "from_ndarray", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_video(path, toy_clip(frames=9, size=16))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_mpeg4_stands_in_without_libx264_and_webm_gets_vp9(tmp_path, monkeypatch):
    assert video_io.encoder_for(tmp_path / "a.mp4") == "libx264"
    assert video_io.encoder_for(tmp_path / "a.webm") == "libvpx-vp9"
    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx264"})
    assert video_io.encoder_for(tmp_path / "a.mp4") == "mpeg4"
    clip = toy_clip(frames=5, size=16)
    for name in ("a.mp4", "a.webm"):
        video, _ = read_video(write_video(tmp_path / name, clip))
        assert video.shape == clip.shape and (video.mean((2, 3)) - clip.mean((2, 3))).abs().max() < 0.05


def test_without_pyav_the_library_imports_and_a_video_file_says_what_to_install(tmp_path, monkeypatch):
    # the GPU machine's image has no PyAV: the CLI, the toy bench and image training import without it
    code = ("import sys; sys.modules['av'] = None; import byg_core.cli, byg_core.toy.bench, byg_core.train; "
            "from byg_core import video_io; assert video_io.av is None")
    subprocess.run([sys.executable, "-c", code], check=True)
    clip = write_video(tmp_path / "clip.mp4", toy_clip(frames=5, size=16))
    monkeypatch.setattr(video_io, "av", None)
    for call in (lambda: read_video(clip), lambda: write_video(tmp_path / "new.mp4", toy_clip(frames=5, size=16))):
        with pytest.raises(ImportError, match="video files needs PyAV, which is not installed here: pip install av"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_a_broken_video_file_is_rejected_with_its_file_and_line(tmp_path):
    root = write_dataset(tmp_path, [ROW], [torch.rand(3, 8, 8)])
    whole = write_video(tmp_path / "whole.mp4", toy_clip()).read_bytes()
    (root / "truncated.mp4").write_bytes(whole[: len(whole) // 2])  # a copy cut short: no index at the end
    (root / "garbage.webm").write_bytes(b"not a video" * 20)
    with open(root / "edits.jsonl", "a") as f:
        for name in ("truncated.mp4", "garbage.webm"):
            f.write(json.dumps({**ROW, "video": name}) + "\n")
    with pytest.raises(DatasetError, match=r"edits.jsonl:2: cannot decode .*truncated.mp4") as refused:
        EditDataset.from_folder(root)
    assert [line.split(": ")[1] for line in refused.value.rejected] == [
        f"cannot decode {root / 'truncated.mp4'}", f"cannot decode {root / 'garbage.webm'}"]
    assert len(EditDataset.from_folder(root, strict=False)) == 1


def test_cli_trains_on_mp4_clips_and_edits_an_mp4(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        write_video(data / f"clip{i}.mp4", toy_clip(seed=i), fps=12)
    (data / "edits.jsonl").write_text("".join(json.dumps({**ROW, "video": f"clip{i}.mp4"}) + "\n" for i in range(2)))
    overrides = [f"data={data}", f"output_dir={tmp_path / 'run'}", "steps=1", "rank=4", "warmup_identity_steps=1",
                 "objective.rollout_steps=2", "frames=5"]
    train = ["train", str(EXAMPLE), *sum((["--set", o] for o in overrides), [])]
    assert cli.main([*train, "--set", "frames=13"]) == 2  # the clips are too short: frames reaches the dataset
    assert "edits.jsonl:1: " in (said := capsys.readouterr().err) and "clip0.mp4 has 9 frames at stride 1" in said
    assert cli.main(train) == 0
    lora = str(tmp_path / "run" / "byg_toy_video.safetensors")
    out = tmp_path / "edited.mp4"
    edit = ["edit", "--lora", lora, "--instruction", "change the circle's colour to green", "--steps", "2"]
    assert cli.main([*edit, "--image", str(data / "clip0.mp4"), "--out", str(out)]) == 0
    video, fps = read_video(out)
    assert video.shape == (3, 9, 32, 32) and fps == 12
    first = out.read_bytes()
    with pytest.raises(SystemExit, match=r"edited.mp4 already exists; nothing was overwritten.*--overwrite"):
        cli.main([*edit, "--video", str(data / "clip0.mp4"), "--out", str(out), "--frames", "5"])
    assert out.read_bytes() == first
    assert cli.main([*edit, "--video", str(data / "clip0.mp4"), "--out", str(out), "--frames", "5",
                     "--overwrite"]) == 0
    assert read_video(out)[0].shape == (3, 5, 32, 32)
    assert "editing 5 frames of " in capsys.readouterr().out
    guided = read_video(out)[0]
    assert cli.main([*edit, "--video", str(data / "clip0.mp4"), "--out", str(out), "--frames", "5", "--overwrite",
                     "--cfg", "1"]) == 0  # Wan2.2's guidance (5 on TI2V-5B) off
    assert (read_video(out)[0] - guided).abs().max() > 0.01
    assert cli.main([*edit, "--video", str(data / "clip0.mp4"), "--out", str(out), "--overwrite", "--cfg", "2", "3"]) == 2
    assert "cfg takes one scale >= 0, or one per expert (1)" in capsys.readouterr().err

    # a clip the model's cells do not divide: --size fits it, as training's resolution does; without it, the refusal
    # names --size; a video --out that is no video container is refused before anything loads
    write_video(data / "odd.mp4", torch.rand(3, 5, 38, 42, generator=torch.Generator().manual_seed(0)), fps=12)
    assert cli.main([*edit, "--video", str(data / "odd.mp4"), "--out", str(tmp_path / "odd_edit.mp4")]) == 2
    assert "pass --size H W" in capsys.readouterr().err
    assert cli.main([*edit, "--video", str(data / "odd.mp4"), "--out", str(tmp_path / "odd_edit.mp4"),
                     "--size", "32", "36"]) == 0
    assert read_video(tmp_path / "odd_edit.mp4")[0].shape == (3, 5, 32, 36)
    assert cli.main([*edit, "--video", str(data / "odd.mp4"), "--out", str(tmp_path / "edited.avi")]) == 2
    assert "a video is written as .mp4" in capsys.readouterr().err and not (tmp_path / "edited.avi").exists()


def test_the_toy_video_dataset_as_mp4_clips_reads_like_its_frame_folders(tmp_path):
    from byg_core.data import EditDataset, load_media
    from byg_core.toy.video import write_video_dataset

    write_video_dataset(tmp_path / "frames", 2, seed=3, size=32)
    write_video_dataset(tmp_path / "clips", 2, seed=3, size=32, mp4=True)
    folders, clips = (EditDataset.from_folder(tmp_path / name).records for name in ("frames", "clips"))
    assert [r.media.suffix for r in clips] == [".mp4", ".mp4"]
    for a, b in zip(folders, clips):
        assert a.instruction == b.instruction
        framed, decoded = load_media(a.media), load_media(b.media)
        assert framed.shape == decoded.shape == (3, 5, 32, 32)
        assert (framed - decoded).abs().mean() < 0.03  # H.264 at crf 17: flat colours within a few levels


def _encoded(path, frames, rotation=None, container=None):
    """Write ``frames`` (a list of (H, W, 3) uint8 arrays) with H.264, tagging a display rotation if given."""
    import numpy as np

    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream("libx264", rate=16)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if rotation is not None:
            if not hasattr(stream, "set_display_rotation"):
                pytest.skip("this PyAV cannot write a display rotation")
            stream.set_display_rotation(rotation)
        for array in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_a_phone_clip_reads_upright_as_its_display_rotation_shows_it(tmp_path, rotation):
    """A portrait phone clip is stored landscape with a display rotation; players and ComfyUI's LoadVideo turn it
    (counter-clockwise), and so must training data and `byg edit`, or a clip trains sideways."""
    import numpy as np

    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32] = (255, 0, 0)  # left half red, right half black, as stored
    path = _encoded(tmp_path / "phone.mp4", [stored] * 5, rotation)
    video, _ = read_video(path)
    shown = np.rot90(stored, k=rotation // 90)  # counter-clockwise, as ComfyUI's LoadVideo turns it
    assert video.shape == (3, 5, *shown.shape[:2])
    red = video[0, 0] > 0.5
    assert (red == torch.from_numpy(shown[..., 0].copy() > 127)).float().mean() > 0.95


def test_a_clip_whose_frames_change_size_is_refused_naming_the_file_or_fits_a_given_size(tmp_path):
    import numpy as np

    first = _encoded(tmp_path / "a.ts", [np.full((32, 32, 3), 100, np.uint8)] * 5, container="mpegts")
    second = _encoded(tmp_path / "b.ts", [np.full((32, 48, 3), 100, np.uint8)] * 8, container="mpegts")
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())  # concatenated segments, as a recording leaves them
    with pytest.raises(ValueError, match=r"joined.ts: frame \d+ is 48x32 where frame 0 is 32x32 .*give a size"):
        read_video(joined)
    assert read_video(joined, size=(32, 32))[0].shape == (3, 13, 32, 32)


def test_a_written_clip_says_which_colour_matrix_made_it_and_reads_back_its_colours(tmp_path):
    """An untagged H.264 file leaves the matrix to the player, and most assume BT.709 for it: a red (200, 40, 40)
    then shows as (212, 54, 36). The file says BT.601 (swscale's), so players and this reader agree."""
    red = torch.tensor([200, 40, 40]).float().div(255).view(3, 1, 1, 1).expand(3, 5, 32, 32).contiguous()
    path = write_video(tmp_path / "red.mp4", red, crf=0)
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        assert (int(context.colorspace), int(context.color_range)) == (6, 1)  # SMPTE 170M (BT.601), limited range
    video, _ = read_video(path)
    assert ((video[:, :, 16, 16] * 255).round() - torch.tensor([[200.0], [40.0], [40.0]])).abs().max() <= 2


def test_the_edit_says_which_frames_it_takes_and_that_the_sound_stays_behind(tmp_path):
    import numpy as np

    path = tmp_path / "talk.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=16)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        sound = out.add_stream("aac", rate=44100)
        for _ in range(9):
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        out.mux(video.encode(None))
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024 * 8), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 44100
        out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    assert video_io.has_audio(path) and not video_io.has_audio(write_video(tmp_path / "quiet.mp4", toy_clip()))
    said = cli.clip_report(path, 5, 2, 8.0)
    assert said.startswith("editing 5 frames of ") and "frames 1 to 9, one in 2," in said
    assert said.endswith("its audio is not carried over")


def test_a_clip_too_short_for_the_frame_rule_is_a_bad_line_that_a_lenient_dataset_skips(tmp_path):
    """Validation reads videos by the rule training will (frames, stride): a short clip is listed as its line, and
    strict=False skips it, where it used to stop the run later; a stride that leaves one frame is refused."""
    root = write_dataset(tmp_path, [ROW], [torch.rand(3, 8, 8)])
    write_video(root / "long.mp4", toy_clip(frames=13))
    write_video(root / "short.mp4", toy_clip(frames=5))
    with open(root / "edits.jsonl", "a") as f:
        f.write("".join(json.dumps({**ROW, "video": name}) + "\n" for name in ("long.mp4", "short.mp4")))
    with pytest.raises(DatasetError, match=r"edits.jsonl:3: .*short.mp4 has 5 frames at stride 1; use frames=5"):
        EditDataset.from_folder(root, frames=9)
    assert [r.media.name for r in EditDataset.from_folder(root, strict=False, frames=9).records][1:] == ["long.mp4"]
    with pytest.raises(DatasetError, match=r"short.mp4 gives a clip of 1 frame \(5 frames at frame_stride 8\)"):
        EditDataset.from_folder(root, stride=8)
    assert len(EditDataset.from_folder(root, strict=False, stride=3).records) == 2  # long.mp4 at stride 3: 5 frames
    assert len(EditDataset.from_folder(root, frames=1, stride=8).records) == 3  # one frame asked for: given


def test_a_frame_folder_named_by_ffmpegs_percent_d_reads_in_number_order(tmp_path):
    """ffmpeg writes frame1.png ... frame12.png unpadded: name order read frame10, frame11, frame12 before frame2."""
    from byg_core.data import frame_paths

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(1, 13):
        save_pixels(torch.full((1, 3, 16, 16), i / 20), folder / f"frame{i}.png")
    assert [p.name for p in frame_paths(folder)] == [f"frame{i}.png" for i in range(1, 13)]
    clip = load_media(folder, frames=9)
    levels = [round(float(clip[0, f].mean()) * 20) for f in range(9)]
    assert levels == list(range(1, 10))


def test_a_frame_folder_of_two_sequences_or_a_stray_image_is_refused_by_name(tmp_path):
    """Every image counted as a frame: a .png and a .jpg export side by side became one clip alternating between
    them, a thumbnail.png its last frame, both edited and trained on without a word."""
    from byg_core.data import check_media, frame_paths

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(5):
        save_pixels(torch.rand(1, 3, 16, 16), folder / f"{i:05d}.png")
    assert len(frame_paths(folder)) == 5 and load_media(folder).shape[1] == 5
    save_pixels(torch.rand(1, 3, 16, 16), folder / "thumbnail.png")
    with pytest.raises(ValueError, match=r"clip holds images of 2 name patterns \(#.png: 5 files, e.g. 00000.png; "
                                         r"thumbnail.png: 1 file\): a frame folder holds one numbered sequence"):
        load_media(folder)
    (folder / "thumbnail.png").unlink()
    for i in range(4):
        save_pixels(torch.rand(1, 3, 16, 16), folder / f"{i:05d}.jpg")
    with pytest.raises(ValueError, match=r"2 name patterns \(#.png: 5 files, e.g. 00000.png; #.jpg: 4 files, e.g. "
                                         r"00000.jpg\).*move the other images out"):
        check_media(folder)  # a dataset's line naming this folder is rejected with it


def test_a_trimmed_mp4s_cut_frames_do_not_count_toward_its_clip(tmp_path):
    """An .mp4 whose edit list cuts its first frames (as a trim does) held 9 packets and decoded to 5 frames: it passed
    the dataset's check for a 9-frame clip and failed only once the model had loaded."""
    from fractions import Fraction

    import numpy as np

    from byg_core.data import check_clip

    path = tmp_path / "trimmed.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=16)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 16)
        for i in range(9):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 20, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i - 4, Fraction(1, 16)  # the first four before 0: cut by the edit list
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    decoded = read_video(path)[0].shape[1]
    assert video_io.frame_count(path, 100) == decoded == 5
    with pytest.raises(ValueError, match=r"trimmed.mp4 has 5 frames at stride 1; use frames=5"):
        check_clip(path, 9, 1)
    check_clip(path, 5, 1)


def test_tiff_frames_are_frames_and_a_folder_of_none_says_what_it_holds(tmp_path):
    """A folder of .tif frames (an editor's export) "held no frames", naming no cause; a still .tif loaded."""
    import numpy as np
    from PIL import Image

    from byg_core.data import check_media

    folder = tmp_path / "tiff"
    folder.mkdir()
    frames = [np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(5)]
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:04d}.tif")
    clip = load_media(folder)
    assert clip.shape == (3, 5, 16, 16)
    assert torch.equal(clip[:, 3], torch.from_numpy(frames[3]).permute(2, 0, 1) / 255.0)
    Image.fromarray(frames[0]).save(tmp_path / "still.TIFF")
    check_media(tmp_path / "still.TIFF")
    assert torch.equal(load_media(tmp_path / "still.TIFF"), clip[:, 0])
    empty = tmp_path / "exr"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"video folder .*exr holds no image frames \(.png .jpg .jpeg .webp .bmp "
                                         r".tif .tiff\): it is empty"):
        check_media(empty)
    for i in range(3):
        (empty / f"{i:04d}.exr").write_bytes(b"EXR")
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"holds no image frames \(.png .* .tiff\): it holds 4 other files "
                                         r"\(.exr: 3, e.g. 0000.exr; .txt: 1, e.g. notes.txt\); convert"):
        load_media(empty)
