"""Clips as pictures: an animated GIF (Pillow), an MP4 (only when imageio-ffmpeg is installed) and frame strips.

A clip is (T, H, W, C) uint8, or floats in [-1, 1] as models give them; C is 1
or 3. Small clips are enlarged with nearest-neighbour pixels (to about 128 px)
so 32 px frames can be seen. `save_clips` writes what `sample --out=x.gif`
promises: x.gif (the samples side by side, animated), x.png (a frame strip a
sample, in rows) and x.mp4 when imageio-ffmpeg is there.
"""

import importlib.util
import io
import os
import tempfile

import numpy as np
from PIL import Image

from dit_jax.utils import paths
from dit_jax.utils.visualization import captioned_grid, to_uint8

CLIP_EXTENSIONS = (".gif", ".mp4", ".png")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FPS = 4  # 8 frames loop in 2 s: slow enough to follow a 32 px object
MP4_INSTALL_HINT = "pip install imageio-ffmpeg"


def check_out(path, clips=None):
    """The lower-cased extension of an output path, or a one-line ValueError naming the ones that work: for
    clips (clips=True), images (False) or either (None: the model is not known yet)."""
    allowed = {True: CLIP_EXTENSIONS, False: IMAGE_EXTENSIONS, None: tuple(dict.fromkeys(IMAGE_EXTENSIONS +
                                                                                      CLIP_EXTENSIONS))}[clips]
    ext = paths.path(path).suffix.lower()
    if ext not in allowed:
        what = f"the unknown extension {ext}" if ext else "no extension"
        raise ValueError(f"--out={path} has {what}; use one of {', '.join(allowed)}"
                         f"{' (a clip is written as .gif, .mp4 and a .png frame strip)' if clips else ''}.")
    return ext


def mp4_available():
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def as_uint8(clips):
    """uint8 as given, or [-1, 1] floats -> uint8."""
    clips = np.asarray(clips)
    return clips if clips.dtype == np.uint8 else to_uint8(clips)


def _check_clip(clip, ndim=4):
    if clip.ndim != ndim or clip.shape[-1] not in (1, 3):
        raise ValueError(f"expected {'(N, T, H, W, C)' if ndim == 5 else '(T, H, W, C)'} clips with C 1 or 3, "
                         f"got shape {clip.shape}")
    return clip


def _scale(h, w, scale):
    return scale or max(1, 128 // max(h, w))


def enlarge(frames, scale=None):
    """uint8 (T, H, W, C) -> (T, H*s, W*s, 3): nearest-neighbour, grayscale as RGB."""
    frames = _check_clip(as_uint8(frames))
    s = _scale(*frames.shape[1:3], scale)
    frames = frames.repeat(s, 1).repeat(s, 2)
    return np.repeat(frames, 3, -1) if frames.shape[-1] == 1 else frames


def write_gif(path, frames, fps=FPS, scale=None):
    """An endlessly looping GIF of (T, H, W, C) frames, or of a list of PIL images (the grids of `save_clips`)."""
    if not isinstance(frames, list):
        frames = [Image.fromarray(f) for f in enlarge(frames, scale)]
    frames = [f.convert("RGB") for f in frames]
    data = io.BytesIO()  # encoded in memory, then written whole, locally or to a remote path
    frames[0].save(data, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0,
                   optimize=False, disposal=1)
    paths.write_bytes(path, data.getvalue())
    return path


def write_mp4(path, frames, fps=FPS, scale=None):
    """An H.264 MP4 of the frames (as `write_gif` takes them) through imageio-ffmpeg; None (nothing written)
    when it is not installed. Sides are padded to a multiple of 16, as most players need."""
    if not mp4_available():
        return None
    import imageio_ffmpeg  # pylint: disable=import-outside-toplevel
    arrays = ([np.asarray(f.convert("RGB")) for f in frames] if isinstance(frames, list) else
              list(enlarge(frames, scale)))
    h, w = arrays[0].shape[:2]
    ph, pw = -h % 16, -w % 16
    writer = imageio_ffmpeg.write_frames(path, (w + pw, h + ph), fps=fps, macro_block_size=1)
    writer.send(None)  # starts ffmpeg
    for a in arrays:
        writer.send(np.ascontiguousarray(np.pad(a, ((0, ph), (0, pw), (0, 0)), constant_values=255)))
    writer.close()
    return path


def frame_strip(clip, gap=1):
    """uint8 (T, H, W, C) (or [-1, 1] floats) -> (H, T*W + (T-1)*gap, C): the frames left to right, `gap`
    white pixel columns apart."""
    clip = _check_clip(as_uint8(clip))
    t, h, w, c = clip.shape
    strip = np.full((h, t * w + (t - 1) * gap, c), 255, np.uint8)
    for i, frame in enumerate(clip):
        strip[:, i * (w + gap): i * (w + gap) + w] = frame
    return strip


def strip_grid(clips, captions=None, scale=None):
    """(N, T, H, W, C) clips -> one PIL image: a row a sample, its frame strip with its caption under it."""
    clips = _check_clip(as_uint8(clips), ndim=5)
    strips = np.stack([frame_strip(c) for c in clips])
    return captioned_grid(strips, captions, columns=1, scale=_scale(*clips.shape[2:4], scale))


def sample_grid(samples, captions=None):
    """What training writes for its sample prompts: a captioned grid of images (N, H, W, C), or frame strips
    of clips (N, T, H, W, C); uint8 or [-1, 1] floats."""
    samples = as_uint8(samples)
    return strip_grid(samples, captions) if samples.ndim == 5 else captioned_grid(samples, captions)


def grid_frames(clips, captions=None, columns=4):
    """(N, T, H, W, C) clips -> T PIL images, frame t of every clip side by side and captioned: what
    `write_gif` animates to show the clips together."""
    clips = _check_clip(as_uint8(clips), ndim=5)
    return [captioned_grid(clips[:, t], captions, columns=min(columns, len(clips))) for t in range(clips.shape[1])]


def save_clips(path, clips, captions=None, fps=FPS, columns=4):
    """Writes stem.gif (the clips side by side, captioned, animated), stem.png (their frame strips) and
    stem.mp4 (when imageio-ffmpeg is installed), for a path ending in any of the three; returns the paths."""
    check_out(path, clips=True)
    if paths.is_remote(path):  # GIF, PNG and ffmpeg's MP4 are written locally, then copied up
        with tempfile.TemporaryDirectory() as local:
            written = save_clips(os.path.join(local, paths.path(path).name), clips, captions, fps, columns)
            folder = paths.path(path).parent
            folder.mkdir(parents=True, exist_ok=True)
            for name in written:
                with open(name, "rb") as f:
                    folder.joinpath(os.path.basename(name)).write_bytes(f.read())
            return [os.fspath(folder.joinpath(os.path.basename(name))) for name in written]
    clips = _check_clip(as_uint8(clips), ndim=5)
    stem = os.path.splitext(path)[0]
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    grids = grid_frames(clips, captions, columns)
    written = [write_gif(stem + ".gif", grids, fps)]
    strip_grid(clips, captions).save(stem + ".png")
    written.append(stem + ".png")
    if write_mp4(stem + ".mp4", grids, fps):
        written.append(stem + ".mp4")
    return written


def read_clip(path, frames, size, channels):
    """A clip file for editing a video model: an animated GIF's frames, or a frame strip (square frames side by
    side, as the datasets store them) -> uint8 (T, H, W, C). A frame count or frame size other than the
    model's (frames of size x size) is a one-line ValueError, before anything loads."""
    mode = "L" if channels == 1 else "RGB"
    with Image.open(path) as image:
        stack = []
        for i in range(getattr(image, "n_frames", 1)):
            image.seek(i)
            stack.append(np.asarray(image.convert(mode)))
    if len(stack) == 1:  # a frame strip: as many square frames as its width holds
        h, w = stack[0].shape[:2]
        stack = [stack[0][:, i * h:(i + 1) * h] for i in range(w // h)] if w % h == 0 else []
        if not stack:
            raise ValueError(f"{path} ({w}x{h}) is neither an animated GIF nor a strip of square frames; this "
                             f"model takes {frames} frames of {size}x{size} ({frames * size}x{size} as a strip).")
    clip = np.stack(stack)
    if clip.shape[:3] != (frames, size, size):
        raise ValueError(f"{path} holds {len(clip)} frames of {clip.shape[2]}x{clip.shape[1]}; this model was "
                         f"trained on {frames} frames of {size}x{size}: give a GIF or a frame strip "
                         f"({frames * size}x{size}) of that.")
    return clip[..., None] if clip.ndim == 3 else clip
