"""`fashion_scenes`: 1-3 Fashion-MNIST garments placed in boxes on a canvas, with a style, for layout control.

Scene `index` of a split is drawn from numpy.random.default_rng([seed, split,
index]) over that split's Fashion-MNIST items (train scenes from the 60,000
training items, test scenes from the 10,000 test items), so the set is the
same on every machine and in any order of generation. Each garment is trimmed
to its ink and resized, aspect kept, into a box whose longer side is a random
share of the canvas; boxes do not overlap (at least a pixel apart) and keep
clear of the canvas' outer pixel, so the border is background. The box is the
garment's tight box: everything it draws lies inside it.

A style per scene, each easy to judge: "plain" (white garments on black, as
Fashion-MNIST), "inverted" (dark on white), "red tint" (red on black) and
"blue outline" (plain with each garment's inner boundary in blue).

Captions say what is where, objects from left to right: "a sneaker on the
left and a bag at the top right", from a 3x3 grid of the box centres. The
layout is the boxes as (x0, y0, x1, y1) in [0, 1] of the image, each with its
phrase ("a sneaker") and class. `label` is the class of the largest garment
(by box area; the first in caption order on a tie), `style` the style.
"""

import functools
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from scipy import ndimage

from dit_jax.data import fashion_mnist, images

STYLES = ["plain", "inverted", "red tint", "blue outline"]
CLASSES = fashion_mnist.CLASSES
MAX_OBJECTS = 3
SPLITS = {"train": 0, "test": 1}
INK = 10  # a pixel above this (of 255) is ink when trimming a garment
BLUE = (40, 90, 255)
# The longer side of each box as a share of the canvas, by the number of garments in the scene.
SIDES = {1: (0.45, 0.85), 2: (0.35, 0.6), 3: (0.3, 0.5)}


def phrase(label):
    name = CLASSES[label]
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def where(box):
    """A box's centre on a 3x3 grid, in words: "on the left", "at the top right", "in the middle"."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    h = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    v = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    if h and v:
        return f"at the {v} {h}"
    return f"on the {h}" if h else f"at the {v}" if v else "in the middle"


def caption(labels, boxes):
    parts = [f"{phrase(label)} {where(box)}" for label, box in zip(labels, boxes)]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def trim(item):
    """A 28x28 item cut to the rows and columns that hold ink."""
    rows, cols = np.flatnonzero((item > INK).any(1)), np.flatnonzero((item > INK).any(0))
    if not len(rows):
        return item
    return item[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def place(rng, shapes, size):
    """Integer pixel boxes (x0, y0, x1, y1), one for each (h, w) shape, inside [1, size - 1), a pixel apart."""
    low, high = SIDES[len(shapes)]
    for _ in range(1000):
        boxes = []
        for h, w in shapes:
            side = rng.uniform(low, high) * (size - 2)
            bh, bw = (max(2, round(side * h / max(h, w))), max(2, round(side * w / max(h, w))))
            for _ in range(50):
                x0, y0 = rng.integers(1, size - 1 - bw + 1), rng.integers(1, size - 1 - bh + 1)
                box = (int(x0), int(y0), int(x0 + bw), int(y0 + bh))
                if all(box[0] > b[2] or b[0] > box[2] or box[1] > b[3] or b[1] > box[3] for b in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == len(shapes):
            return boxes
    raise RuntimeError(f"could not place {len(shapes)} boxes on a {size}px canvas")  # never at size >= 16


def render(items, boxes, style, size):
    """The scene: each trimmed item resized into its box on black, then styled -> uint8 (size, size, 3)."""
    gray = np.zeros((size, size), np.uint8)
    outline = np.zeros((size, size), bool)
    for item, (x0, y0, x1, y1) in zip(items, boxes):
        resized = np.asarray(Image.fromarray(item).resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS))
        gray[y0:y1, x0:x1] = resized
        mask = resized > INK
        outline[y0:y1, x0:x1] |= mask & ~ndimage.binary_erosion(mask, border_value=0)
    g = gray.astype(np.float32)
    name = STYLES[style]
    if name == "plain":
        rgb = np.stack([g, g, g], -1)
    elif name == "inverted":
        rgb = 255 - np.stack([g, g, g], -1)
    elif name == "red tint":
        rgb = np.stack([g, 0.25 * g, 0.25 * g], -1)
    else:  # blue outline
        rgb = np.stack([g, g, g], -1)
        rgb[outline] = BLUE
    return np.round(rgb).astype(np.uint8)


def scene(items, labels, split, index, seed=0, size=64, style=None):
    """Scene `index` of `split` from its Fashion-MNIST items (N, 28, 28) and labels -> dict of image, boxes in
    [0, 1] (n, 4), labels (n,), phrases, caption, style, label; objects in caption order (left to right).
    `style` overrides the scene's own (the same garments in the same boxes)."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    chosen = rng.integers(len(items), size=n)
    drawn = int(rng.integers(len(STYLES)))
    style = drawn if style is None else int(style)
    trimmed = [trim(items[i]) for i in chosen]
    pixel_boxes = place(rng, [t.shape for t in trimmed], size)
    order = sorted(range(n), key=lambda j: (pixel_boxes[j][0] + pixel_boxes[j][2], pixel_boxes[j][1]))
    trimmed, pixel_boxes = [trimmed[j] for j in order], [pixel_boxes[j] for j in order]
    object_labels = [int(labels[chosen[j]]) for j in order]
    boxes = np.asarray(pixel_boxes, np.float32) / size
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in pixel_boxes]
    return {"image": render(trimmed, pixel_boxes, style, size), "boxes": boxes, "labels": object_labels,
            "phrases": [phrase(k) for k in object_labels], "caption": caption(object_labels, boxes),
            "style": style, "label": object_labels[int(np.argmax(areas))]}


@functools.lru_cache(maxsize=4)
def fashion_split(source_dir, split):
    """(items uint8 (N, 28, 28), labels) of a Fashion-MNIST split."""
    image_file, label_file = fashion_mnist.FILES[split]
    return (fashion_mnist.read_idx(os.path.join(source_dir, image_file)),
            fashion_mnist.read_idx(os.path.join(source_dir, label_file)))


def check_source(source_dir):
    missing = [f for pair in fashion_mnist.FILES.values() for f in pair
               if not os.path.exists(os.path.join(source_dir, f))]
    if missing:
        raise ValueError(f"Fashion-MNIST idx files missing in {source_dir} ({missing[0]}); "
                         "apt-get install dataset-fashion-mnist, or set --config.data.source_dir=DIR.")


def scenes(split, indices, source_dir="", seed=0, size=64, style=None):
    """Scenes by index, straight from the idx files (what the builder stores; evaluation trains its style judge
    on them)."""
    source_dir = source_dir or fashion_mnist.DEFAULT_DIR
    check_source(source_dir)
    items, labels = fashion_split(source_dir, split)
    return [scene(items, labels, split, int(i), seed, size, style) for i in indices]


class FashionScenes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """`train_examples` and `test_examples` scenes of `size` pixels from the Fashion-MNIST splits."""

    name = "fashion_scenes"
    VERSION = tfds.core.Version("1.0.0")
    MAX_OBJECTS = MAX_OBJECTS

    def __init__(self, *, source_dir="", train_examples=60_000, test_examples=10_000, seed=0, size=64, **kwargs):
        if train_examples < 1 or test_examples < 1 or size < 16:
            raise ValueError(f"fashion_scenes needs data.fashion_scenes.train_examples and test_examples >= 1 and "
                             f"data.resolution >= 16; got {train_examples}, {test_examples} and {size}.")
        self.source_dir = source_dir or fashion_mnist.DEFAULT_DIR
        self.counts = {"train": train_examples, "test": test_examples}
        self.seed, self.size = seed, size
        super().__init__(**kwargs)

    def _info(self):
        s = self.size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "label": tfds.features.ClassLabel(names=CLASSES),
                "style": tfds.features.ClassLabel(names=STYLES),
                "objects": tfds.features.Sequence({
                    "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),  # x0, y0, x1, y1 in [0, 1]
                    "label": tfds.features.ClassLabel(names=CLASSES),
                    "phrase": tfds.features.Text(),
                }),
                "key": tfds.features.Text(),
            }),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            license="MIT (Fashion-MNIST items)",
        )

    def _split_generators(self, dl_manager):
        check_source(self.source_dir)
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split):
        items, labels = fashion_split(self.source_dir, split)
        for i in range(self.counts[split]):
            s = scene(items, labels, split, i, self.seed, self.size)
            yield f"{split}_{i}", {
                "image": images.png_bytes(s["image"]), "captions": [s["caption"]], "label": s["label"],
                "style": s["style"], "key": f"{split}_{i}",
                "objects": {"box": s["boxes"], "label": s["labels"], "phrase": s["phrases"]}}
