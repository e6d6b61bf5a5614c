"""Motion adherence, frame consistency and per-frame class adherence, scored on real clips from the builders."""

import os

import numpy as np
import pytest

from dit_jax.data import fashion_mnist, moving
from dit_jax.evaluation import motion

PER_MOTION, T = 2, 8
needs_fashion = pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEFAULT_DIR),
                                   reason="apt-get install dataset-fashion-mnist")


def real_clips(objects, seed=3):
    """Clips i = 0 .. 7 * PER_MOTION - 1 of a builder: every motion PER_MOTION times; (clips, motions, labels, tracks)."""
    made = [moving.clip(objects, seed, i, 32, T) for i in range(len(moving.MOTIONS) * PER_MOTION)]
    return (np.stack([m[0] for m in made]), np.array([m[3] for m in made]), np.array([m[2] for m in made]),
            np.stack([m[4] for m in made]))


@pytest.fixture(scope="module")
def fashion():
    if not os.path.isdir(fashion_mnist.DEFAULT_DIR):
        pytest.skip("apt-get install dataset-fashion-mnist")
    objects = moving.FashionObjects()
    return objects, real_clips(objects)


@pytest.fixture(scope="module")
def emoji():
    return real_clips(moving.EmojiObjects())


@pytest.fixture(scope="module", params=["fashion", "emoji"])
def clips(request):
    if request.param == "fashion":
        return request.getfixturevalue("fashion")[1]
    return request.getfixturevalue("emoji")


def test_real_clips_move_as_captioned(clips):
    frames, motions, _, _ = clips
    scores = motion.motion_adherence(frames, motions)
    assert scores == {"motion_adherence": 1.0, **{f"motion_adherence/{m}": 1.0 for m in moving.MOTIONS}}
    uint8_and_floats = motion.read_motions(frames.astype(np.float32) / 127.5 - 1)
    assert uint8_and_floats == [moving.MOTIONS[m] for m in motions]


def test_wrong_motions_and_reversed_frames_score_low(clips):
    frames, motions, _, _ = clips
    assert motion.motion_adherence(frames, (motions + 1) % len(moving.MOTIONS))["motion_adherence"] == 0.0
    reversed_scores = motion.motion_adherence(frames[:, ::-1], motions)
    for word in ("right", "left", "up", "down", "zoom"):  # reversed: the other way, or shrinking
        assert reversed_scores[f"motion_adherence/{word}"] == 0.0, word
    for word in ("bounce", "spin"):  # the same motion backwards (a spin the other way)
        assert reversed_scores[f"motion_adherence/{word}"] == 1.0, word
    still = np.repeat(frames[:, :1], T, axis=1)
    assert motion.motion_adherence(still, motions)["motion_adherence"] == 0.0
    assert set(motion.read_motions(still)) == {"none"}


def test_turns_match_the_rendered_rotation(clips):
    frames, motions, _, tracks = clips
    spins = motions == moving.MOTIONS.index("spin")
    turns = motion.tracks(frames[spins])["turn"]
    np.testing.assert_allclose(turns, np.diff(tracks[spins, :, 3], axis=1), atol=2.5)
    centroids = motion.tracks(frames[~spins])["centroid"]  # the object's centroid moves as its centre does
    np.testing.assert_allclose(np.diff(centroids, axis=1), np.diff(tracks[~spins, :, :2], axis=1), atol=1.0)


def pooled_pixels(frames):
    """A cheap stand-in for Inception features: 8x8 average-pooled pixels less their mean (a plain background
    would otherwise make every pair alike)."""
    n, h, w, c = frames.shape
    pooled = frames.reshape(n, 8, h // 8, 8, w // 8, c).mean((2, 4)).reshape(n, -1)
    return pooled - pooled.mean(-1, keepdims=True)


def test_frame_consistency_real_above_shuffled(clips):
    frames, _, _, _ = clips
    real = motion.frame_consistency(frames, pooled_pixels)
    rng = np.random.default_rng(0)
    shuffled = np.stack([c[rng.permutation(T)] for c in frames])
    mixed = frames[(np.arange(len(frames))[:, None] + np.arange(T)) % len(frames), np.arange(T)]  # frame j of clip i+j
    assert real > motion.frame_consistency(shuffled, pooled_pixels) + 0.02
    assert real > motion.frame_consistency(mixed, pooled_pixels) + 0.05
    still = np.repeat(frames[:, :1], T, axis=1)
    assert motion.frame_consistency(still, pooled_pixels) == pytest.approx(1.0, abs=1e-9)
    two = np.stack([np.full((2, 8, 8, 1), -1.0), np.full((2, 8, 8, 1), 1.0)], 1)  # features (0, 1) then (1, 0)
    assert motion.frame_consistency(two, lambda f: np.stack([f.mean((1, 2, 3)) < 0, f.mean((1, 2, 3)) > 0], -1)) == 0.0


def nearest_class_mean(objects):
    """An independent judge for the test: the class whose mean training item (padded to 32) is nearest."""
    pixels = np.pad(objects.pixels[:6000], ((0, 0), (2, 2), (2, 2))).astype(np.float32)
    labels = objects.labels[:6000]
    means = np.stack([pixels[labels == k].mean(0) for k in range(10)]).reshape(10, -1)
    return lambda x: np.argmin(((x.reshape(len(x), 1, -1).astype(np.float32) - means) ** 2).sum(-1), axis=1)


@needs_fashion
def test_class_adherence_of_real_clips(fashion):
    objects, (frames, motions, labels, _) = fashion
    judge = nearest_class_mean(objects)
    real = motion.class_adherence(frames, labels, judge)
    wrong = motion.class_adherence(frames, (labels + 5) % 10, judge)
    assert real >= 0.6 and wrong <= 0.2, (real, wrong)
    not_centred = np.mean(judge(frames.reshape(-1, 32, 32, 1)) == np.repeat(labels, T))
    assert real > not_centred + 0.2  # the judge needs each frame's object centred at its scale
    _, mask = motion.foreground(frames[:1, :1])
    item = motion.centre_object(frames[0, 0].astype(np.float32) / 127.5 - 1, mask[0, 0])
    assert item.shape == (32, 32, 1) and item[2:30, 2:30].any(axis=0).sum() in (27, 28, 29) or \
        item[2:30, 2:30].any(axis=1).sum() in (27, 28, 29)  # its longer side fills the 28 px


@needs_fashion
def test_turn_back_matches_the_renderer_and_helps_the_judge(fashion):
    objects, (frames, motions, labels, _) = fashion
    obj = objects[7][0]
    still = np.array([[12.0, 17.0, 1.0, 0.0]], np.float32)
    upright = moving.render(obj, objects.background, still, 32)[0, :, :, 0].astype(np.float32) / 255
    for degrees in (-40.0, 25.0):
        turned = moving.render(obj, objects.background, still + [0, 0, 0, degrees], 32)[0, :, :, 0] / 255
        assert np.abs(motion.turn(upright, (12.0, 17.0), degrees) - turned).mean() < 0.1 * np.abs(turned).mean()
    spins = motions == moving.MOTIONS.index("spin")
    judge = nearest_class_mean(objects)
    as_stood = motion.class_adherence(frames[spins], labels[spins], judge)
    assert as_stood > motion.class_adherence(frames[spins], labels[spins], judge, turn_back=False) + 0.2
    assert motion.class_adherence(frames[~spins], labels[~spins], judge) == \
        motion.class_adherence(frames[~spins], labels[~spins], judge, turn_back=False)  # only spins are turned


def test_bad_input_is_one_line_error(emoji):
    frames, motions, _, _ = emoji
    with pytest.raises(ValueError, match="Unknown motion 'sideways'"):
        motion.motion_adherence(frames[:1], ["sideways"])
    with pytest.raises(ValueError, match="2 clips but 1 motions"):
        motion.motion_adherence(frames[:2], ["up"])
    with pytest.raises(ValueError, match=r"expected clips \(N, T, H, W, C\) with T >= 3"):
        motion.motion_adherence(frames[:, :2], motions)
    with pytest.raises(ValueError, match="grey frames"):
        motion.class_adherence(frames, motions, lambda x: x)
