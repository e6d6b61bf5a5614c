"""The style judge for fashion_scenes samples: a small CNN trained once on real scenes, then cached.

Trained on scenes of the fashion_scenes training split and checked on scenes
of its test split, at the resolution a run samples, so each evaluation at
that resolution uses the same judge. The styles differ in colour and in
edges (inverted, red, blue outline), which three strided convolutions and a
global average see at once: it reaches about 100% on real test scenes.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dit_jax.data import fashion_scenes
from dit_jax.evaluation.classifier import fit, load_cached, save_cached

CACHE = "classifiers/fashion_scenes_style"


class StyleClassifier(nnx.Module):
    """Three stride-2 conv-relu layers, global average and max pooling, then logits: any image size."""

    def __init__(self, rngs, channels=(16, 32, 32), num_styles=len(fashion_scenes.STYLES)):
        widths = (3,) + tuple(channels)
        self.convs = nnx.List([nnx.Conv(a, b, (3, 3), strides=2, rngs=rngs) for a, b in zip(widths, widths[1:])])
        self.logits = nnx.Linear(2 * channels[-1], num_styles, rngs=rngs)

    def __call__(self, images):
        """images: uint8 or [0, 255] floats, (N, H, W, 3)."""
        x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.logits(jnp.concatenate([x.mean((1, 2)), x.max((1, 2))], -1))


@nnx.jit
def _styles(model, images):
    return jnp.argmax(model(images), -1)


def predict(model, images, batch_size=256):
    """Style indices for uint8 (N, H, W, 3) images, in batches of one shape (the last one padded): one compile."""
    images = np.asarray(images)
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(_styles(model, padded))[:len(chunk)])
    return np.concatenate(out)


def real_scenes(split, count, size, source_dir=""):
    """(images uint8 (count, size, size, 3), styles) of the first `count` scenes of a split (seed 0)."""
    scenes = fashion_scenes.scenes(split, range(count), source_dir, size=size)
    return np.stack([s["image"] for s in scenes]), np.asarray([s["style"] for s in scenes], np.int32)


def train(size, source_dir="", train_examples=2000, test_examples=500, steps=300, batch_size=64, lr=3e-3, seed=0):
    """Trains on real training scenes of `size` px; returns (model, accuracy on real test scenes)."""
    images, styles = real_scenes("train", train_examples, size, source_dir)
    test_images, test_styles = real_scenes("test", test_examples, size, source_dir)
    rng = np.random.default_rng(seed)
    batch_size = min(batch_size, len(images))
    batches = (rng.choice(len(images), batch_size, replace=False) for _ in range(steps))
    model = fit(StyleClassifier(nnx.Rngs(seed)), images, styles, batches, steps, lr)
    return model, float(np.mean(predict(model, test_images) == test_styles))


def load_or_train(data_dir, size, source_dir=""):
    """The cached style judge for `size` px samples (trained and cached on first use) and its test accuracy."""
    path = os.path.join(os.path.expanduser(data_dir), f"{CACHE}_{size}px")
    if source_dir:
        from dit_jax.data.sources import short_hash  # pylint: disable=import-outside-toplevel
        path += "_" + short_hash(source_dir)
    if not os.path.exists(path + ".json"):
        print(f"Training the fashion_scenes style judge at {size}px (cached in {path}).", flush=True)
        model, accuracy = train(size, source_dir)
        save_cached(path, model, {"test_accuracy": accuracy, "styles": fashion_scenes.STYLES})
    return load_cached(path, lambda: StyleClassifier(nnx.Rngs(0)))
