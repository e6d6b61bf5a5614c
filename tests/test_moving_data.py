"""moving_fashion / moving_emoji: the builders, prepared clips, and the loader's (B, T, H, W, C) batches."""

import importlib.util
import io
import os

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from PIL import Image

from dit_jax.data import augment, fashion_mnist, moving, pipeline, prepare, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, BATCH, T = 28, 8, 8
needs_fashion = pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEFAULT_DIR),
                                   reason="apt-get install dataset-fashion-mnist")


def video_config(**moving_options):
    spec = importlib.util.spec_from_file_location("video_fashion", os.path.join(ROOT, "configs", "video_fashion.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("runlocal")
    config.data.moving.update(examples=N, **moving_options)
    return config


def sharding():
    return NamedSharding(jax.make_mesh((len(jax.devices()),), ("data",)), P("data"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    config = video_config()
    data_dir = str(tmp_path_factory.mktemp("data"))
    return config, pipeline.ensure_prepared(config, data_dir), data_dir


def records(manifest):
    return pipeline.read_prepared(manifest, range(manifest["examples"]))


@needs_fashion
def test_builder_records_are_the_generated_clips(prepared):
    config, manifest, data_dir = prepared
    source = sources.load(config.data, data_dir)  # built by the fixture: read back from the tfds files
    assert source.frames == T and source.channels == 1 and source.extra_labels == {"motion": list(moving.MOTIONS)}
    objects = moving.FashionObjects()
    for position in (0, 5, 13):  # tfds stores examples in an order of its own: the key names the clip
        row, example = source.records[position], source[position]
        i = int(example["key"].rsplit("_", 1)[1])
        strip = np.asarray(Image.open(io.BytesIO(example["image"])))[..., None]
        frames, text, label, motion, path = moving.clip(objects, 0, i, 32, T)
        np.testing.assert_array_equal(moving.strip_frames(strip, T), frames)  # PNG is lossless
        assert example["captions"] == [text] and example["label"] == label and int(row["motion"]) == motion
        np.testing.assert_array_equal(row["track"], path)
        assert text.endswith(moving.PHRASES[moving.MOTIONS[motion]])
        assert text.split()[1] in fashion_mnist.CLASSES[label]  # "a t-shirt ...", "an ankle boot ..."
    again = moving.clip(objects, 0, 13, 32, T)[0]
    np.testing.assert_array_equal(again, moving.clip(objects, 0, 13, 32, T)[0])
    assert not np.array_equal(again, moving.clip(objects, 1, 13, 32, T)[0])


def test_moving_emoji_builder(tmp_path):
    builder = moving.MovingEmoji(data_dir=str(tmp_path), file_format="array_record", num_examples=3, size=16,
                                 frames=4, motions=("zoom", "spin"))
    builder.download_and_prepare()
    features, objects = builder.info.features, moving.EmojiObjects()
    assert features["image"].shape == (16, 64, 3) and features["label"].names == objects.class_names
    rows = builder.as_data_source("train")
    assert len(rows) == 3
    for row in rows:
        i = int(row["key"].decode().rsplit("_", 1)[1])
        frames, text, label, motion, _ = moving.clip(objects, 0, i, 16, 4, ("zoom", "spin"))
        np.testing.assert_array_equal(moving.strip_frames(row["image"], 4), frames)
        assert [c.decode() for c in row["captions"]] == [text] and row["label"] == label and row["motion"] == motion


def test_clips_move_as_the_track_says():
    """Each motion's track, checked by its own rule, and each motion equally common."""
    rng = np.random.default_rng(0)
    for motion in moving.MOTIONS:
        for frames in (8, 16):
            x, y, scale, angle = moving.track(motion, rng, frames, 32).T
            assert np.all((x >= 8 * scale - 1e-4) & (x <= 32 - 8 * scale + 1e-4)), motion  # the object stays inside
            steps = {"right": np.diff(x) > 0, "left": np.diff(x) < 0, "up": np.diff(y) < 0, "down": np.diff(y) > 0,
                     "spin": np.abs(np.diff(angle)) > 5, "zoom": np.diff(scale) > 0}
            if motion in steps:
                assert steps[motion].all(), motion
            if motion == "bounce":
                low = np.argmax(y)
                assert 0 < low < frames - 1 and y[low] - y[0] > 9 and y[low] - y[-1] > 9
    objects = moving.EmojiObjects()
    words = [moving.clip(objects, 0, i, 16, 4, ("up", "spin", "zoom"))[3] for i in range(6)]
    assert [moving.MOTIONS[w] for w in words] == ["up", "spin", "zoom"] * 2
    frames, text, label, motion, _ = moving.clip(objects, 0, 1, 16, 4, ("up", "spin", "zoom"))
    assert frames.shape == (4, 16, 16, 3) and frames.dtype == np.uint8 and text.endswith(" spinning")
    assert np.median(frames[:, 0]) == 255  # emoji on white


def test_unknown_motion_word_is_one_line_error(tmp_path):
    data = ml_collections.ConfigDict(dict(name="moving_emoji", resolution=32, source_dir="", frames=8,
                                          moving=dict(motions="right,sideways")))
    with pytest.raises(ValueError, match=r"Unknown motion 'sideways'.*choose from right, left") as e:
        sources.moving_options(data)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="Unknown motion 'sideways'"):
        sources.load(data, str(tmp_path))
    with pytest.raises(ValueError, match="Unknown motion 'diagonal'"):
        moving.MovingEmoji(data_dir=str(tmp_path), motions=("up", "diagonal"))
    with pytest.raises(ValueError, match="data.frames >= 3"):
        moving.MovingEmoji(data_dir=str(tmp_path), frames=2)
    config = video_config(motions="left,wobble")
    with pytest.raises(ValueError, match="Unknown motion 'wobble'"):
        prepare.prepared_dir(config, str(tmp_path))
    assert not os.listdir(tmp_path)  # nothing was built


@needs_fashion
def test_loader_gives_clips_and_resumes(prepared):
    config, manifest, _ = prepared
    assert manifest["frames"] == T and manifest["image_shape"] == [32, 32, 1]
    assert pipeline.model_kwargs(manifest, config)["frames"] == T
    rows = records(manifest)
    assert rows[0]["image"].shape == (T, 32, 32, 1) and "label_motion" in rows[0]
    stored = {r["image"].tobytes(): r for r in rows}
    loader = pipeline.make_loader(config, manifest, global_batch_size=BATCH, seed=0, sharding=sharding())
    batch = next(loader)
    assert batch["image"].shape == (BATCH, T, 32, 32, 1) and batch["image"].dtype == np.float32
    assert batch["text"].shape == (BATCH, 16, 384) and batch["label"].shape == (BATCH,)
    for clip, text, label in zip(np.asarray(batch["image"]), np.asarray(batch["text"]), np.asarray(batch["label"])):
        row = stored[np.round((clip + 1) * 127.5).astype(np.uint8).tobytes()]  # no augmentation: as stored
        np.testing.assert_array_equal(text, row["text"][0])
        assert label == row["label"]
    next(loader)
    state = loader.get_state()
    expected = next(loader)
    resumed = pipeline.make_loader(config, manifest, global_batch_size=BATCH, seed=0, sharding=sharding())
    resumed.set_state(state)
    got = next(resumed)
    for key in expected:
        np.testing.assert_array_equal(np.asarray(expected[key]), np.asarray(got[key]))


@needs_fashion
def test_process_shares_make_the_global_batch(prepared):
    config, manifest, _ = prepared
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    whole = next(pipeline.make_loader(config, manifest, global_batch_size=BATCH, seed=0, sharding=device,
                                      process_index=0, process_count=1))["image"]
    shares = [next(pipeline.make_loader(config, manifest, global_batch_size=BATCH, seed=0, sharding=device,
                                        process_index=p, process_count=2))["image"] for p in range(2)]
    assert shares[0].shape == (BATCH // 2, T, 32, 32, 1)
    np.testing.assert_array_equal(np.concatenate([np.asarray(s) for s in shares]), np.asarray(whole))


@needs_fashion
def test_flip_is_one_for_the_whole_clip_and_spares_left_and_right(prepared):
    config, manifest, _ = prepared
    rows = records(manifest)
    stored = {r["image"].tobytes(): r for r in rows}
    mirrored = {r["image"][:, :, ::-1].tobytes(): r for r in rows}
    config.data.flip = True
    try:
        loader = pipeline.make_loader(config, manifest, global_batch_size=BATCH, seed=0, sharding=sharding())
        seen = {"kept": 0, "flipped": 0}
        for _ in range(N // BATCH * 2):
            for clip in np.asarray(next(loader)["image"]):
                key = np.round((clip + 1) * 127.5).astype(np.uint8).tobytes()
                if key in stored:
                    seen["kept"] += 1
                else:  # the whole clip mirrored, never one that says left or right
                    row = mirrored[key]
                    assert moving.MOTIONS[int(row["label_motion"])] not in ("left", "right")
                    assert augment.flippable(row["captions"])
                    seen["flipped"] += 1
        assert seen["kept"] and seen["flipped"]
    finally:
        config.data.flip = False


def test_augment_clip_draws_once_for_all_frames():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    frame[[0, 0, -1, -1], [0, -1, 0, -1]] = frame[0, 0]  # one background colour for both ways of filling
    still = np.stack([frame] * 4)  # a clip whose frames are equal stays so, and matches `augment` of one frame
    for seed in range(4):
        options = dict(flip=True, color_jitter=0.4, rotation=15.0)
        out = augment.augment_clip(still, np.random.default_rng(seed), **options)
        for f in out:
            np.testing.assert_array_equal(f, out[0])
        np.testing.assert_allclose(out[0], augment.augment(frame, np.random.default_rng(seed), **options), atol=1e-6)
    moving_clip = moving.clip(moving.EmojiObjects(), 0, 0, 16, 4)[0]
    seed = next(s for s in range(10) if np.random.default_rng(s).random() < 0.5)  # a seed that flips
    out = augment.augment_clip(moving_clip, np.random.default_rng(seed), flip=True)
    np.testing.assert_array_equal(out, moving_clip[:, :, ::-1].astype(np.float32) / 127.5 - 1)


@needs_fashion
def test_clip_data_and_model_must_agree(prepared, tmp_path):
    config, manifest, _ = prepared
    pipeline.check_compatible(manifest, config)
    for key, value, message in (("model.frames", 0, "clips of 8 frames but model.frames is unset"),
                                ("model.frames", 16, "model.frames=16 but the data gives 8"),
                                ("data.frames", 16, "data.frames=16 but the data has 8 frames")):
        bad = video_config()
        section, name = key.split(".")
        bad[section][name] = value
        with pytest.raises(ValueError, match=message):
            pipeline.check_compatible(manifest, bad)
    bad = video_config()
    bad.vae.path = "/some/vae"
    with pytest.raises(ValueError, match="clip dataset, prepared in pixel space"):
        prepare.Preparer(bad, str(tmp_path))
