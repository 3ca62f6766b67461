"""The toy video world: moving renders, tuples that validate, a dataset that loads back,
metrics that score true edits as perfect, and the Wan-layout toy codec."""

import pytest
import torch

from byg_core.data import EditDataset, load_media
from byg_core.toy.metrics import mask_centroid
from byg_core.toy.video import (
    ToyVideoCodec,
    build_toy_wan_backbone,
    evaluate_video_edit,
    render_video,
    sample_video_tuples,
    scene_at,
    write_video_dataset,
)
from byg_core.toy.world import Scene, render, shape_mask, validate_tuple


def test_render_video_moves_the_shape_linearly():
    scene, velocity = Scene("square", "red", "blue", cx=0.35, cy=0.5, size=0.4), (0.05, 0.0)
    video = render_video(scene, velocity, frames=5, size=16)
    assert video.shape == (3, 5, 16, 16)
    for f in range(5):
        assert torch.equal(video[:, f], render(scene_at(scene, velocity, f), 16))
    xs = [mask_centroid(shape_mask(scene_at(scene, velocity, f), 16))[0] for f in range(5)]
    assert xs[-1] - xs[0] == pytest.approx(4 * 0.05 * 16, abs=1.0)


def test_sampled_tuples_move_stay_inside_and_validate_in_every_frame():
    tuples = sample_video_tuples(12, seed=3)
    assert [t.record() for t in tuples] == [t.record() for t in sample_video_tuples(12, seed=3)]
    for tup in tuples:
        assert tup.frames == 5 and max(abs(v) for v in tup.velocity) > 0
        for f in range(tup.frames):
            validate_tuple(tup.frame_tuple(f))  # scenes are re-validated in bounds when moved
        assert not torch.equal(tup.source_video()[:, 0], tup.source_video()[:, -1])


def test_written_dataset_validates_and_loads_back_exactly(tmp_path):
    tuples = write_video_dataset(tmp_path, n=3, seed=1)
    dataset = EditDataset.from_folder(tmp_path)
    assert len(dataset) == 3 and not dataset.rejected
    for record, tup in zip(dataset.records, tuples):
        assert record.media.is_dir() and record.instruction == tup.edit.instruction
        assert torch.equal(load_media(record.media), tup.source_video())


def test_metrics_score_the_true_edit_as_perfect_and_catch_failures():
    tup = sample_video_tuples(1, seed=5)[0]
    source, target = tup.source_video(), tup.target_video()
    true = evaluate_video_edit(source, target, tup)
    assert true["edit_success"] == 1 and true["preservation"] == 1
    assert true["trajectory_error"] == 0 and true["motion_preservation"] == 1 and true["pixel_error"] == 0
    unchanged = evaluate_video_edit(source, source, tup)
    assert unchanged["edit_success"] == 0 and unchanged["source_distance"] == 0
    frozen = target[:, :1].expand_as(target)  # right edit, motion lost
    still = evaluate_video_edit(source, frozen, tup)
    assert still["edit_success"] == 1 and still["motion_preservation"] == 0 and still["trajectory_error"] > 1


@pytest.mark.parametrize("spatial", [1, 2])
def test_codec_is_lossless_with_wans_causal_layout(spatial):
    codec = ToyVideoCodec(spatial)
    pixels = torch.rand(2, 3, 9, 8, 12)
    latents = codec.encode(pixels)
    assert latents.shape == (2, 3 * 4 * spatial**2, 3, 8 // spatial, 12 // spatial)
    torch.testing.assert_close(codec.decode(latents), pixels, atol=1e-6, rtol=0)
    # latent frame 1 depends on frames 1-4 only: the first frame is compressed alone
    changed = pixels.clone()
    changed[:, :, 5] = 0
    diff = (codec.encode(changed) - latents).abs().amax(dim=(0, 1, 3, 4))
    assert diff.tolist()[:2] == [0, 0] and diff[2] > 0


def test_codec_and_backbone_refuse_frame_counts_wan_cannot_take():
    with pytest.raises(ValueError, match="4k\\+1 frames"):
        ToyVideoCodec(2).encode(torch.rand(1, 3, 6, 8, 8))
    with pytest.raises(ValueError, match="got 6 frames; Wan needs 4k\\+1 frames: use 5 or 9"):
        build_toy_wan_backbone("ti2v-5b").check_pixels((1, 3, 6, 16, 16))
    with pytest.raises(ValueError, match="height 18; Wan needs a height divisible by 4: use 16 or 20"):
        build_toy_wan_backbone("ti2v-5b").check_pixels((1, 3, 5, 18, 16))
