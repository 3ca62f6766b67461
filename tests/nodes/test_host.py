"""The host adapter without ComfyUI: IMAGE <-> pixel layouts and the fallback folders."""

import pytest
import torch


def test_image_and_pixels_round_trip(submodule):
    host = submodule("nodes.host")
    image = torch.rand(2, 5, 7, 4)  # an alpha channel is dropped
    pixels = host.image_to_pixels(image)
    assert pixels.shape == (2, 3, 5, 7) and torch.equal(pixels[1, 2, 3, 4], image[1, 3, 4, 2])
    torch.testing.assert_close(host.pixels_to_image(pixels), image[..., :3])
    with pytest.raises(ValueError, match=r"IMAGE \(batch, height, width, 3\)"):
        host.image_to_pixels(torch.rand(5, 7, 3))


def test_frames_and_video_round_trip(submodule):
    host = submodule("nodes.host")
    frames = torch.rand(5, 4, 6, 3)
    video = host.frames_to_video(frames)
    assert video.shape == (1, 3, 5, 4, 6) and torch.equal(video[0, :, 2], frames[2].permute(2, 0, 1))
    torch.testing.assert_close(host.video_to_frames(video), frames)


def test_fallback_folders_and_lora_listing(submodule, no_host):
    host_folders = no_host
    host = submodule("nodes.host")
    assert host.loras_dir() == host_folders / "loras" and host.output_dir() == host_folders / "output"
    (host_folders / "loras" / "sub").mkdir()
    (host_folders / "loras" / "sub" / "a.safetensors").write_bytes(b"")
    (host_folders / "loras" / "notes.txt").write_text("")
    (host_folders / "loras" / "B.SAFETENSORS").write_bytes(b"")  # renamed on Windows: ComfyUI lists it too
    assert host.lora_names() == ["B.SAFETENSORS", "sub/a.safetensors"]
    assert host.lora_path("sub/a.safetensors") == host_folders / "loras" / "sub" / "a.safetensors"
    with pytest.raises(FileNotFoundError, match="not in the loras folder"):
        host.lora_path("missing.safetensors")


def test_progress_without_comfyui_never_stops(submodule, no_host):
    progress = submodule("nodes.host").Progress(3)
    progress.update(1)
    assert not progress.should_stop()
    progress.raise_if_interrupted()
