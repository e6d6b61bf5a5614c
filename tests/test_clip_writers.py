"""Clips as pictures: GIF frames read back, frame strips and their grids, MP4 only with imageio-ffmpeg, --out checks."""

import numpy as np
import pytest
from PIL import Image

from dit_jax.data import moving
from dit_jax.utils import video
from dit_jax.utils.visualization import CAPTION_HEIGHT, captioned_grid


@pytest.fixture(scope="module")
def clips():
    """Two real moving_emoji clips of 4 frames at 16 px, and one grey clip."""
    objects = moving.EmojiObjects()
    colour = np.stack([moving.clip(objects, 0, i, 16, 4)[0] for i in range(2)])
    grey = colour[..., :1]
    return colour, grey


def read_gif(path):
    with Image.open(path) as gif:
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("RGB")))
        return np.stack(frames), gif.info.get("duration"), gif.info.get("loop")


def test_gif_holds_the_frames(clips, tmp_path):
    _, grey = clips
    video.write_gif(str(tmp_path / "a.gif"), grey[0], fps=5)
    frames, duration, loop = read_gif(tmp_path / "a.gif")
    want = np.repeat(grey[0].repeat(8, 1).repeat(8, 2), 3, -1)  # 16 px enlarged 8x to 128, grey as RGB
    assert frames.shape == (4, 128, 128, 3) and duration == 200 and loop == 0
    np.testing.assert_array_equal(frames, want)  # at most 256 grey levels: the palette is exact
    floats = grey[0].astype(np.float32) / 127.5 - 1
    video.write_gif(str(tmp_path / "b.gif"), floats, scale=1)
    np.testing.assert_array_equal(read_gif(tmp_path / "b.gif")[0][..., :1], grey[0])


def test_frame_strip_and_grid(clips):
    colour, _ = clips
    strip = video.frame_strip(colour[0], gap=1)
    assert strip.shape == (16, 4 * 16 + 3, 3)
    for i in range(4):
        np.testing.assert_array_equal(strip[:, i * 17:i * 17 + 16], colour[0, i])
    assert (strip[:, 16] == 255).all()
    grid = video.strip_grid(colour, ["a", "b"], scale=2)
    assert grid.size == (67 * 2, 2 * (16 * 2 + CAPTION_HEIGHT))  # a row a clip, its caption under it
    np.testing.assert_array_equal(np.asarray(grid)[:32:2, :134:2], strip)
    assert np.asarray(video.sample_grid(colour, ["a", "b"])).shape == np.asarray(video.strip_grid(colour, ["a", "b"])).shape
    images = colour[:, 0]
    np.testing.assert_array_equal(np.asarray(video.sample_grid(images, ["a", "b"])),  # images: as before
                                  np.asarray(captioned_grid(images, ["a", "b"])))
    with pytest.raises(ValueError, match="C 1 or 3"):
        video.frame_strip(colour[0, :, :, :, :2])


def test_save_clips_writes_gif_strip_and_mp4_when_installed(clips, tmp_path):
    colour, _ = clips
    written = video.save_clips(str(tmp_path / "out" / "bag.gif"), colour, ["a bag moving up", "a cat face spinning"])
    stem = str(tmp_path / "out" / "bag")
    assert written[:2] == [stem + ".gif", stem + ".png"]
    assert (stem + ".mp4" in written) == video.mp4_available()  # skipped cleanly when imageio-ffmpeg is missing
    frames, _, _ = read_gif(stem + ".gif")
    assert len(frames) == 4 and frames.shape[2] == 2 * 128  # both clips side by side, each enlarged to 128
    if video.mp4_available():
        import imageio_ffmpeg  # pylint: disable=import-outside-toplevel
        reader = imageio_ffmpeg.read_frames(stem + ".mp4")
        meta = next(reader)
        assert meta["size"][0] % 16 == 0 and sum(1 for _ in reader) == 4


def test_out_extension_is_checked():
    assert video.check_out("x.GIF", clips=True) == ".gif"
    assert video.check_out("x.jpg") == ".jpg" and video.check_out("x.mp4") == ".mp4"
    for path, clips, message in (("bag.avi", True, "unknown extension .avi; use one of .gif, .mp4, .png"),
                                 ("bag", None, "has no extension"), ("bag.mp4", False, "unknown extension .mp4")):
        with pytest.raises(ValueError, match=message) as e:
            video.check_out(path, clips=clips)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown extension .avi"):
        video.save_clips("clip.avi", np.zeros((1, 4, 8, 8, 1), np.uint8))


def test_sample_refuses_an_unknown_out_extension_before_loading(tmp_path):
    from dit_jax import sample  # pylint: disable=import-outside-toplevel
    with pytest.raises(ValueError, match=r"--out=.*bag\.avi has the unknown extension \.avi"):
        sample.run(sample.Options(workdir=str(tmp_path / "no_run"), prompt=["a bag moving up"],
                                  out=str(tmp_path / "bag.avi")))
