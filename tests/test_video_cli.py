"""A video run through the commands: `sample` writes GIF, frame strip (and MP4), reads clips to edit;
`evaluate`'s motion, consistency and adherence; the bad inputs of issue 15 section 6."""

import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from dit_jax import evaluate as evaluate_lib, sample, sampling
from dit_jax.data import fashion_mnist, moving
from dit_jax.models.pretrained import abstract_model, save_pretrained
from dit_jax.training.checks import validate
from dit_jax.utils import video
from test_video_model import randomize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, SIDE = 4, 8
VIDEO = dict(input_size=SIDE, patch_size=4, in_channels=1, hidden_size=32, depth=1, num_heads=4, num_classes=10,
             text_dim=0, frames=T)


def video_fashion(arg="runlocal"):
    spec = importlib.util.spec_from_file_location("video_fashion", os.path.join(ROOT, "configs", "video_fashion.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def write_run(workdir, model, frames=T):
    """A run directory as training leaves it (run.json, export/), with random weights: nothing is trained."""
    config = video_fashion(f"frames={frames},runlocal=True")
    config.diffusion.prediction = "eps"
    save_pretrained(randomize(abstract_model(model)), model, str(workdir / "export"))
    (workdir / "run.json").write_text(json.dumps({"config": config.to_dict()}))
    return str(workdir)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("video_run"), VIDEO)


def options(run, tmp_path, **kw):
    return sample.Options(**{**dict(workdir=run, data_dir=str(tmp_path), classes=["3", "1"], num_images=1,
                                    steps=2, batch_size=8), **kw})


def read_gif(path):
    with Image.open(path) as image:
        return [np.asarray(image.seek(i) or image.convert("RGB")) for i in range(image.n_frames)]


def test_sample_writes_gif_strip_and_mp4(run, tmp_path):
    """--out=bag.gif: the clips animated side by side, their frame strips, an MP4 where imageio-ffmpeg is, each
    clip's GIF, and NTHWC npz; with DPM-Solver++ (the default sampler; DDIM on clips: test_video_model)."""
    clips, captions = sample.run(options(run, tmp_path, sampler="dpmpp_2m", out=str(tmp_path / "bag.gif"),
                                         npz=str(tmp_path / "bag.npz")))
    assert clips.shape == (2, T, SIDE, SIDE, 1) and clips.dtype == np.uint8 and len(captions) == 2
    assert len({clips[1, t].tobytes() for t in range(T)}) > 1  # the frames differ
    frames = read_gif(tmp_path / "bag.gif")
    assert len(frames) == T and frames[0].shape[1] == 2 * 128  # two clips side by side, enlarged to 128 px
    assert (tmp_path / "bag.mp4").exists() == video.mp4_available()
    strips = np.asarray(Image.open(tmp_path / "bag.png"))
    assert strips.shape[1] == (T * SIDE + T - 1) * 16  # a row a clip: T frames, 1-pixel gaps, enlarged 16x
    one = read_gif(tmp_path / "bag_0001.gif")
    for t in range(T):
        np.testing.assert_array_equal(one[t][::16, ::16, 0], clips[1, t, ..., 0])
    np.testing.assert_array_equal(np.load(tmp_path / "bag.npz")["arr_0"], clips)


def test_clips_to_edit_are_read_from_a_gif_or_a_frame_strip(tmp_path):
    """What --image gives a video model's img2img and inpaint (generate broadcasts the clip and the mask)."""
    clip = np.random.default_rng(0).integers(0, 256, (T, SIDE, SIDE, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate(list(clip[..., 0]), axis=1)).save(tmp_path / "strip.png")
    np.testing.assert_array_equal(video.read_clip(str(tmp_path / "strip.png"), T, SIDE, 1), clip)
    video.write_gif(str(tmp_path / "clip.gif"), clip, scale=1)
    np.testing.assert_array_equal(video.read_clip(str(tmp_path / "clip.gif"), T, SIDE, 1), clip)
    assert video.read_clip(str(tmp_path / "clip.gif"), T, SIDE, 3).shape == (T, SIDE, SIDE, 3)


def test_bad_sample_inputs_fail_in_one_line_before_loading(run, tmp_path, monkeypatch):
    def loaded(*_, **__):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(sampling, "load_pretrained", loaded)
    image_run = tmp_path / "image_run"
    image_run.mkdir()
    (image_run / "export").mkdir()
    (image_run / "export" / "config.json").write_text(json.dumps(dict(VIDEO, frames=0)))
    with open(os.path.join(run, "run.json")) as f:
        (image_run / "run.json").write_text(f.read())
    three = np.arange(3, dtype=np.uint8)[:, None, None, None] * np.full((1, SIDE, SIDE, 1), 60, np.uint8)
    video.write_gif(str(tmp_path / "three.gif"), three, scale=1)  # frames that differ: GIF merges equal ones
    Image.fromarray(np.zeros((16, 4 * 16), np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.zeros((SIDE, 20), np.uint8)).save(tmp_path / "odd.png")
    cases = [(dict(out=str(tmp_path / "bag.jpg")), r"unknown extension \.jpg; use one of \.gif, \.mp4, \.png"),
             (dict(workdir=str(image_run), out=str(tmp_path / "x.mp4")), r"unknown extension \.mp4"),
             (dict(trajectory=str(tmp_path / "t.png")), "a video model has no trajectory strip"),
             (dict(mode="img2img", image=str(tmp_path / "three.gif")),
              "holds 3 frames of 8x8; this model was trained on 4 frames of 8x8"),
             (dict(mode="img2img", image=str(tmp_path / "big.png")), "holds 4 frames of 16x16"),
             (dict(mode="img2img", image=str(tmp_path / "odd.png")), "neither an animated GIF nor a strip")]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            sample.run(options(run, tmp_path, **kw))
        assert "\n" not in str(e.value)


def test_bad_video_configs_fail_in_one_line():
    cases = [(dict(t_patch=4, frames=2), dict(frames=2), {}, "model.frames=2 is shorter than one tubelet"),
             (dict(frames=16), {}, {}, r"data.frames=8 but model.frames=16"),
             (dict(frames=16), dict(frames=0), {}, r"clips have 8 frames \(data.frames\) but model.frames=16"),
             ({}, dict(name="fashion_mnist", frames=0), {}, "gives images: use one of"),
             ({}, {}, dict(motions="up,wobble"), "Unknown motion 'wobble'")]
    for model, data, motions, match in cases:
        config = video_fashion()
        config.model.update(model)
        config.data.update(data)
        config.data.moving.update(motions)
        with pytest.raises(ValueError, match=match) as e:
            validate(config)
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------- evaluate

CLIP_MANIFEST = dict(dataset="moving_fashion", space="pixel", frames=8, text={}, examples=7)


def test_clip_runs_are_scored_on_clip_metrics():
    assert evaluate_lib.default_metrics(CLIP_MANIFEST, None) == ["motion", "consistency", "adherence"]
    assert evaluate_lib.default_metrics(dict(CLIP_MANIFEST, dataset="moving_emoji"), None) == ["motion",
                                                                                               "consistency"]
    for metrics, manifest, match in ((["fid"], CLIP_MANIFEST, r"\['fid'\] score images"),
                                     (["adherence"], dict(CLIP_MANIFEST, dataset="moving_emoji"), "moving_fashion"),
                                     (["motion"], dict(CLIP_MANIFEST, dataset="fashion_mnist", frames=0),
                                      r"\['motion'\] score clips")):
        with pytest.raises(ValueError, match=match):
            evaluate_lib.check_metrics(metrics, manifest, None)


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEFAULT_DIR), reason="apt-get install dataset-fashion-mnist")
def test_judge_scores_motion_consistency_and_adherence(tmp_path, monkeypatch):
    """The Judge reads each example's motion, caches the real clips' consistency beside the data, and scores
    samples: the real clips themselves move as captioned and match the real consistency; played backwards the
    directed motions fail. Features (pooled pixels) and the Fashion judge (always class 3) are stand-ins here."""
    objects = moving.FashionObjects()
    made = [moving.clip(objects, 0, i, 32, 8) for i in range(7)]  # one clip of each motion
    real, labels = np.stack([m[0] for m in made]), [m[2] for m in made]
    examples = [dict(image=m[0], label_motion=m[3], label=m[2]) for m in made]
    monkeypatch.setattr(evaluate_lib.pipeline, "read_prepared", lambda manifest, indices: [examples[i] for i in
                                                                                           indices])
    pooled = lambda frames: np.asarray(frames, np.float32).reshape(len(frames), 8, 4, 8, 4, -1).mean((2, 4)).reshape(
        len(frames), -1)
    from dit_jax.evaluation import classifier, inception  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr(inception, "load_fid_inception", lambda *_: pooled)
    monkeypatch.setattr(classifier, "load_or_train", lambda *_: ("judge", 0.9))
    monkeypatch.setattr(classifier, "predict", lambda model, frames: np.full(len(frames), 3))
    manifest = dict(CLIP_MANIFEST, dir=str(tmp_path), source_dir="", class_names=list(fashion_mnist.CLASSES))
    judge = evaluate_lib.Judge(["motion", "consistency", "adherence"], manifest, str(tmp_path), np.arange(7),
                               [], None)
    assert os.path.exists(tmp_path / "frame_consistency.npy")  # the real figure, cached beside the data
    got = judge(real, [], labels)
    assert got["motion_adherence"] == 1.0 and abs(got["frame_consistency_gap"]) < 1e-6
    assert got["adherence"] == pytest.approx(np.mean(np.asarray(labels) == 3))
    backwards = judge(real[:, ::-1], [], labels)
    for word in ("right", "left", "up", "down", "zoom"):
        assert backwards[f"motion_adherence/{word}"] == 0.0, word
