"""`moving_fashion` and `moving_emoji`: short clips of one object that moves as its caption says.

Each clip is `frames` frames of `size` pixels: a Fashion-MNIST item (on black)
or a Twemoji glyph (on white), drawn at half the frame's side, that moves to
the right, left, up or down, bounces (falls to a floor and rises again),
spins (in place, either way; never an object that looks the same turned, such as a disc) or zooms in (grows from half to 1.2-1.5 times its
size). Captions say so: "a sneaker moving to the right", "a cat face spinning".
Clip i takes its motion from i's place in the cycle over the configured
motions (so every motion is equally common) and everything else from
numpy.random.default_rng([seed, i]): the set is the same on every machine and
in any order of generation. Frames are rendered at twice the size from a
premultiplied, Lanczos-resized copy of the object (bilinear resampling) and
box-averaged down, so sub-pixel motion is smooth.

A record's `image` is the clip as a frame strip (size, frames * size, C), the
frames left to right; `motion` is the index in MOTIONS, `label` the item's
class (Fashion) or the emoji's category, `track` each frame's (cx, cy, scale,
degrees): the object's centre in pixels, its size relative to half the frame,
and its rotation.
"""

import functools
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from scipy import ndimage

from dit_jax.data import emoji, fashion_mnist, images

MOTIONS = ("right", "left", "up", "down", "bounce", "spin", "zoom")
PHRASES = {"right": "moving to the right", "left": "moving to the left", "up": "moving up", "down": "moving down",
           "bounce": "bouncing", "spin": "spinning", "zoom": "zooming in"}
OBJECT_SIZE = 0.5   # the object's side at scale 1, as a share of the frame's
ZOOM_FROM = 0.5     # a zoom starts at this scale and ends at 1.2-1.5
SUPERSAMPLE = 2


def check_motions(motions):
    """The motion words as a tuple (a string may list them with commas); an unknown one fails in one line."""
    if isinstance(motions, str):
        motions = [m.strip() for m in motions.split(",") if m.strip()]
    motions = tuple(motions)
    unknown = [m for m in motions if m not in MOTIONS]
    if unknown or not motions:
        raise ValueError(f"Unknown motion {unknown[0] if unknown else '(none given)'!r} in data.moving.motions; "
                         f"choose from {', '.join(MOTIONS)}.")
    return motions


def article(noun):
    return "an" if noun[:1] in "aeiou" and not noun.startswith(("uni", "use", "one", "eu")) else "a"


def caption(noun, motion):
    return f"{article(noun)} {noun} {PHRASES[motion]}"


def track(motion, rng, frames, size):
    """(frames, 4) float32: each frame's centre (cx, cy) in pixels, scale and rotation in degrees."""
    d = OBJECT_SIZE * size  # the object's side at scale 1
    half, room = d / 2, size - d  # the centre stays in [half, size - half]; room is that range's length
    t = np.linspace(0.0, 1.0, frames)
    x = y = np.full(frames, size / 2)
    scale, angle = np.ones(frames), np.zeros(frames)
    if motion in ("right", "left", "up", "down"):
        travel = rng.uniform(0.6, 1.0) * room
        start = rng.uniform(half, size - half - travel)
        along = start + travel * (t if motion in ("right", "down") else 1 - t)
        across = np.full(frames, rng.uniform(half, size - half))
        x, y = (along, across) if motion in ("right", "left") else (across, along)
    elif motion == "bounce":  # a fall onto a floor and back up: a parabola in y, lowest mid-clip
        height = rng.uniform(0.6, 1.0) * room
        floor = size - half - rng.uniform(0, room - height)
        x = np.full(frames, rng.uniform(half, size - half))
        y = floor - height * (2 * t - 1) ** 2
    elif motion == "spin":  # in place, so the rotated corners (up to half * sqrt 2 out) stay inside
        margin = half * np.sqrt(2)
        x, y = (np.full(frames, rng.uniform(margin, size - margin)) for _ in range(2))
        angle = rng.choice([-1, 1]) * rng.uniform(120, 240) * t
    elif motion == "zoom":
        end = rng.uniform(1.2, 1.5)
        scale = ZOOM_FROM * (end / ZOOM_FROM) ** t
        x, y = (np.full(frames, rng.uniform(end * half, size - end * half)) for _ in range(2))
    else:
        check_motions([motion])
    return np.stack([x, y, scale, angle], -1).astype(np.float32)


def _resized(obj, side):
    """Premultiplied (h, w, C+1) float -> (side, side, C+1), Lanczos per channel."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(obj[..., k]), "F").resize(
        (side, side), Image.Resampling.LANCZOS)) for k in range(obj.shape[-1])], -1)


def render(obj, background, path, size):
    """obj: premultiplied colour and alpha (h, w, C+1) floats in [0, 1]; background: C floats; path: `track`'s
    output. -> uint8 (frames, size, size, C)."""
    s = SUPERSAMPLE
    d = OBJECT_SIZE * size * s
    side = int(np.ceil(d * path[:, 2].max()))
    source = _resized(obj, side)
    frames = []
    for cx, cy, scale, degrees in path:
        # Output pixel o (row, col), centre o + 0.5, shows the object at R^-1 (o + 0.5 - c) / k + side / 2.
        k = d * scale / side
        a = np.deg2rad(degrees)
        inverse = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) / k
        centre = np.array([cy, cx]) * s
        offset = inverse @ (0.5 - centre) + side / 2 - 0.5
        out = np.stack([ndimage.affine_transform(source[..., c], inverse, offset=offset, output_shape=(size * s,) * 2,
                                                 order=1, mode="constant", cval=0.0)
                        for c in range(source.shape[-1])], -1)
        colour, alpha = out[..., :-1], np.clip(out[..., -1:], 0, 1)
        frame = colour + np.asarray(background, np.float32) * (1 - alpha)
        frames.append(frame.reshape(size, s, size, s, -1).mean((1, 3)))
    return np.clip(np.round(np.stack(frames) * 255), 0, 255).astype(np.uint8)


class FashionObjects:
    """Fashion-MNIST's training items: white on black, one channel, labelled by class."""

    channels, background, class_names = 1, (0.0,), fashion_mnist.CLASSES

    def __init__(self, source_dir=""):
        folder = source_dir or fashion_mnist.DEFAULT_DIR
        image_file, label_file = fashion_mnist.FILES["train"]
        if not os.path.exists(os.path.join(folder, image_file)):
            raise ValueError(f"Fashion-MNIST idx files missing in {folder} ({image_file}); apt-get install "
                             "dataset-fashion-mnist, or set --config.data.source_dir=DIR.")
        self.pixels = fashion_mnist.read_idx(os.path.join(folder, image_file))
        self.labels = fashion_mnist.read_idx(os.path.join(folder, label_file))

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, i):
        """(premultiplied (28, 28, 2) float32, label, noun)."""
        a = self.pixels[i].astype(np.float32) / 255
        return np.stack([a, a], -1), int(self.labels[i]), self.class_names[self.labels[i]]


class EmojiObjects:
    """The 1,903 base Twemoji glyphs (no skin-tone variants) on white, labelled by category."""

    channels, background = 3, (1.0, 1.0, 1.0)

    def __init__(self):
        folder = emoji._png_dir()  # pylint: disable=protected-access
        names = set(os.listdir(folder))
        entries = [e for e in emoji._emoji_json() if emoji._png_name(e["unified"], names)]  # pylint: disable=protected-access
        self.class_names = emoji.categories()
        self.items = [(os.path.join(folder, emoji._png_name(e["unified"], names)),  # pylint: disable=protected-access
                       self.class_names.index(e["category"]), emoji._captions(e)[0]) for e in entries]  # pylint: disable=protected-access

    def __len__(self):
        return len(self.items)

    @functools.lru_cache(maxsize=4096)
    def __getitem__(self, i):
        path, label, noun = self.items[i]
        with Image.open(path) as image:
            rgba = np.asarray(image.convert("RGBA"), np.float32) / 255
        alpha = rgba[..., 3:]
        return np.concatenate([rgba[..., :3] * alpha, alpha], -1), label, noun


def turns_visibly(obj, background, degrees=30.0, least=0.05):
    """Whether the object looks different turned by `degrees` about its box's centre: the squared change of
    its difference from the background, relative to that difference's energy, is at least `least`."""
    d = obj[..., :-1] - np.asarray(background, np.float32) * obj[..., -1:]
    turned = ndimage.rotate(d, degrees, axes=(0, 1), reshape=False, order=1)
    return float(((turned - d) ** 2).sum()) >= least * float((d ** 2).sum())


def clip(objects, seed, index, size=32, frames=8, motions=MOTIONS):
    """Clip `index`: (uint8 (frames, size, size, C), caption, label, motion index in MOTIONS, track)."""
    rng = np.random.default_rng([seed, index])
    motion = motions[index % len(motions)]
    obj, label, noun = objects[int(rng.integers(len(objects)))]
    while motion == "spin" and not turns_visibly(obj, objects.background):  # a spinning disc would look still
        obj, label, noun = objects[int(rng.integers(len(objects)))]
    path = track(motion, rng, frames, size)
    return render(obj, objects.background, path, size), caption(noun, motion), label, MOTIONS.index(motion), path


class _Moving(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """`num_examples` clips of `frames` frames at `size` pixels, generated from `seed`."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, num_examples=20_000, seed=0, size=32, frames=8, motions=MOTIONS, source_dir="", **kwargs):
        self.motions = check_motions(motions)
        if num_examples < 1 or size < 16 or frames < 3:
            raise ValueError(f"{self.name} needs data.moving.examples >= 1, data.resolution >= 16 and "
                             f"data.frames >= 3; got {num_examples}, {size} and {frames}.")
        self.num_examples, self.seed, self.size, self.frames = num_examples, seed, size, frames
        self.source_dir = source_dir
        super().__init__(**kwargs)

    def objects(self):
        raise NotImplementedError

    def _info(self):
        s, t = self.size, self.frames
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(s, t * s, self.CHANNELS), encoding_format="png"),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "label": tfds.features.ClassLabel(names=self.class_names()),
                "motion": tfds.features.ClassLabel(names=MOTIONS),
                "track": tfds.features.Tensor(shape=(t, 4), dtype=np.float32),  # cx, cy, scale, degrees
                "key": tfds.features.Text(),
            }),
            homepage=self.HOMEPAGE, license=self.LICENSE)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        objects = self.objects()
        for i in range(self.num_examples):
            frames, text, label, motion, path = clip(objects, self.seed, i, self.size, self.frames, self.motions)
            strip = frames.transpose(1, 0, 2, 3).reshape(self.size, -1, frames.shape[-1])
            yield i, {"image": images.png_bytes(strip), "captions": [text], "label": label, "motion": motion,
                      "track": path, "key": f"{self.name}_{i}"}


class MovingFashion(_Moving, skip_registration=True):
    name = "moving_fashion"
    CHANNELS = 1
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
    LICENSE = "MIT"

    def class_names(self):
        return fashion_mnist.CLASSES

    def objects(self):
        return FashionObjects(self.source_dir)


class MovingEmoji(_Moving, skip_registration=True):
    name = "moving_emoji"
    CHANNELS = 3
    HOMEPAGE = "https://github.com/twitter/twemoji"
    LICENSE = "CC-BY-4.0 (graphics), MIT (emoji names)"

    def class_names(self):
        return emoji.categories()

    def objects(self):
        return EmojiObjects()


def strip_frames(strip, frames):
    """A frame strip (H, frames * W, C) -> (frames, H, W, C)."""
    h, width, c = strip.shape
    if width % frames:
        raise ValueError(f"A frame strip {width} pixels wide does not split into {frames} frames.")
    return strip.reshape(h, frames, width // frames, c).transpose(1, 0, 2, 3)
