"""`fashion_mnist`: Zalando's Fashion-MNIST (MIT) from its idx files, padded to 32x32 and captioned.

The files come from the Debian package `dataset-fashion-mnist` or a directory
the user names (`data.source_dir`). Each image gets one caption, a template over
its class name chosen by its index ("a photo of a sneaker"; one, not all four,
keeps the prepared text embeddings small); the label is kept.
"""

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

from dit_jax.data import images

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
TEMPLATES = ["a photo of a {}", "a {}", "a black and white photo of a {}", "a small picture of a {}"]
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path):
    """A gzipped idx file -> uint8 array (big-endian dims after a 4-byte magic)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


class FashionMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Fashion-MNIST 28x28 grayscale padded with black to 32x32."""

    name = "fashion_mnist"
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, source_dir="", **kwargs):
        self.source_dir = source_dir or DEFAULT_DIR
        super().__init__(**kwargs)

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(32, 32, 1), encoding_format="png"),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "label": tfds.features.ClassLabel(names=CLASSES),
                "key": tfds.features.Text(),
            }),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            license="MIT",
        )

    def _split_generators(self, dl_manager):
        missing = [f for pair in FILES.values() for f in pair if not os.path.exists(os.path.join(self.source_dir, f))]
        if missing:
            raise ValueError(f"Fashion-MNIST idx files missing in {self.source_dir} ({missing[0]}); "
                             "apt-get install dataset-fashion-mnist, or set --config.data.source_dir=DIR.")
        return {split: self._generate_examples(split) for split in FILES}

    def _generate_examples(self, split):
        image_file, label_file = FILES[split]
        pixels = read_idx(os.path.join(self.source_dir, image_file))
        labels = read_idx(os.path.join(self.source_dir, label_file))
        for i, (image, label) in enumerate(zip(pixels, labels)):
            name = CLASSES[label]
            yield f"{split}_{i}", {"image": images.png_bytes(np.pad(image, 2)[..., None]),
                                   "captions": [TEMPLATES[i % len(TEMPLATES)].format(name)],
                                   "label": int(label), "key": f"{split}_{i}"}
