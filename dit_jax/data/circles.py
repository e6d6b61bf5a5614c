"""`circles`: the ControlNet tutorial's "fill50k" task, generated: a filled circle on a plain background.

Each example is a circle of one colour on a background of another, both from a
small palette of named colours, with the circle's outline (white on black,
the circle's one-pixel inner boundary) as its control and the caption "a red
circle on a light blue background". Example i is drawn from
numpy.random.default_rng([seed, i]), so the set is the same on every machine
and for any order of generation. Labels: the circle's colour (`label`) and the
background's (`background`), so a sample's colours can be scored.
"""

import numpy as np
import tensorflow_datasets as tfds
from scipy import ndimage

from dit_jax.data import images

PALETTE = {"red": (220, 20, 30), "orange": (250, 140, 0), "yellow": (250, 225, 30), "green": (30, 150, 50),
           "light blue": (140, 200, 250), "blue": (20, 50, 200), "purple": (130, 40, 160), "pink": (250, 150, 200),
           "white": (255, 255, 255), "black": (0, 0, 0)}
COLOURS = list(PALETTE)


def circle_mask(size, cx, cy, r):
    """Pixels whose centre lies within r of (cx, cy), in pixel units with (0, 0) the top-left corner."""
    y, x = np.mgrid[:size, :size] + 0.5
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def outline(mask):
    """The mask's inner boundary: its pixels with a 4-neighbour outside it."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def example(seed, index, size=32):
    """Example `index`: (image uint8 (size, size, 3), control uint8 (size, size, 1), circle colour,
    background colour, (cx, cy, r))."""
    rng = np.random.default_rng([seed, index])
    circle, background = rng.choice(len(COLOURS), size=2, replace=False)
    r = rng.uniform(0.15, 0.4) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, size=2)  # wholly inside, so the outline is a closed ring
    mask = circle_mask(size, cx, cy, r)
    image = np.where(mask[..., None], PALETTE[COLOURS[circle]], PALETTE[COLOURS[background]]).astype(np.uint8)
    control = (outline(mask) * np.uint8(255))[..., None]
    return image, control, COLOURS[circle], COLOURS[background], (cx, cy, r)


def caption(circle, background):
    return f"a {circle} circle on a {background} background"


class Circles(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """`num_examples` circles of `size` pixels, generated from `seed`."""

    name = "circles"
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, num_examples=50_000, seed=0, size=32, **kwargs):
        if num_examples < 1 or size < 8:
            raise ValueError(f"circles needs data.circles.examples >= 1 and data.resolution >= 8; "
                             f"got {num_examples} and {size}.")
        self.num_examples, self.seed, self.size = num_examples, seed, size
        super().__init__(**kwargs)

    def _info(self):
        s = self.size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
                "conditioning_image": tfds.features.Image(shape=(s, s, 1), encoding_format="png"),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "label": tfds.features.ClassLabel(names=COLOURS),
                "background": tfds.features.ClassLabel(names=COLOURS),
                "circle": tfds.features.Tensor(shape=(3,), dtype=np.float32),  # cx, cy, r in pixels
                "key": tfds.features.Text(),
            }),
            homepage="https://github.com/lllyasviel/ControlNet/blob/main/docs/train.md",
            license="generated",
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(self.num_examples):
            image, control, circle, background, geometry = example(self.seed, i, self.size)
            yield i, {"image": images.png_bytes(image), "conditioning_image": images.png_bytes(control),
                      "captions": [caption(circle, background)], "label": circle, "background": background,
                      "circle": np.asarray(geometry, np.float32), "key": f"circle_{i}"}
