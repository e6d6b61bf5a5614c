"""The Fashion-MNIST classifier that judges prompt adherence: trained once by the project, then cached.

A small CNN (about 90k parameters) reaches about 91% on the real test set in
a few CPU minutes; its weights and measured test accuracy are cached under
DATA_DIR/classifiers/ so every evaluation uses the same judge.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx
from safetensors.numpy import load_file, save_file

from dit_jax.data import fashion_mnist
from dit_jax.models.pretrained import flat_weights, load_flat_weights

CACHE = "classifiers/fashion_mnist"


class Classifier(nnx.Module):
    """Three conv-relu-maxpool stages on 32x32x1, then a hidden layer and 10 logits."""

    def __init__(self, rngs, channels=(16, 32, 64), hidden=128, num_classes=10):
        widths = (1,) + tuple(channels)
        self.convs = nnx.List([nnx.Conv(a, b, (3, 3), rngs=rngs) for a, b in zip(widths, widths[1:])])
        self.hidden = nnx.Linear(channels[-1] * 16, hidden, rngs=rngs)
        self.logits = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, images):
        """images: uint8 or [0, 255] floats, (N, 32, 32, 1)."""
        x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
        for conv in self.convs:
            x = nnx.max_pool(jax.nn.relu(conv(x)), (2, 2), strides=(2, 2))
        return self.logits(jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1))))


def load_split(split, source_dir=""):
    """(images uint8 (N, 32, 32, 1) padded as the dataset builder pads them, labels int32)."""
    folder = source_dir or fashion_mnist.DEFAULT_DIR
    image_file, label_file = fashion_mnist.FILES[split]
    if not os.path.exists(os.path.join(folder, image_file)):
        raise FileNotFoundError(f"Fashion-MNIST idx files missing in {folder}; apt-get install dataset-fashion-mnist "
                                "or pass the directory.")
    images = fashion_mnist.read_idx(os.path.join(folder, image_file))
    labels = fashion_mnist.read_idx(os.path.join(folder, label_file)).astype(np.int32)
    return np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None], labels


def predict(model, images, batch_size=1000):
    """Class indices for uint8 images, in batches."""
    logits = nnx.jit(lambda m, x: m(x))
    return np.concatenate([np.asarray(jnp.argmax(logits(model, images[i:i + batch_size]), -1))
                           for i in range(0, len(images), batch_size)])


def train(source_dir="", epochs=4, batch_size=128, lr=2e-3, seed=0, limit=0):
    """Trains on the 60k training images; returns (model, test accuracy). `limit` caps the examples (tests)."""
    images, labels = load_split("train", source_dir)
    test_images, test_labels = load_split("test", source_dir)
    if limit:
        images, labels = images[:limit], labels[:limit]
    batch_size = min(batch_size, len(images))  # a small slice (tests) still takes steps
    per_epoch = len(images) // batch_size
    rng = np.random.default_rng(seed)
    batches = (order[i * batch_size:(i + 1) * batch_size]
               for order in (rng.permutation(len(images)) for _ in range(epochs)) for i in range(per_epoch))
    model = fit(Classifier(nnx.Rngs(seed)), images, labels, batches, epochs * per_epoch, lr,
                desc="train Fashion-MNIST classifier")
    accuracy = float(np.mean(predict(model, test_images) == test_labels))
    return model, accuracy


def fit(model, images, labels, batches, steps, lr, desc=None):
    """Trains `model` (images -> logits) on softmax cross-entropy with Adam and a cosine decay from `lr` over
    `steps`: one step for each index array of `batches`. `desc` shows a progress bar. Returns the model."""
    optimizer = nnx.Optimizer(model, optax.adam(optax.cosine_decay_schedule(lr, steps)), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    with tqdm.tqdm(total=steps, desc=desc, unit="step", disable=desc is None) as bar:
        for i, idx in enumerate(batches):
            loss = step(model, optimizer, images[idx], labels[idx])
            if i % 50 == 0 and desc is not None:
                bar.set_postfix(loss=f"{float(loss):.3f}")
            bar.update()
    return model


def load_or_train(data_dir, source_dir=""):
    """The cached classifier (trained and cached on first use) and its test accuracy on real images."""
    path = os.path.join(os.path.expanduser(data_dir), CACHE)
    if not os.path.exists(path + ".json"):
        model, accuracy = train(source_dir)
        save_cached(path, model, {"test_accuracy": accuracy})
    return load_cached(path, lambda: Classifier(nnx.Rngs(0)))


def save_cached(path, model, info):
    """A judge's weights (path.safetensors), then `info` with its test accuracy (path.json), each written whole:
    the json, written last, means the weights are complete."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(flat_weights(model), path + ".safetensors.tmp")
    os.replace(path + ".safetensors.tmp", path + ".safetensors")
    with open(path + ".json.tmp", "w") as f:
        json.dump(info, f)
    os.replace(path + ".json.tmp", path + ".json")


def load_cached(path, build):
    """(model, test accuracy) of a judge save_cached wrote; `build` () -> its architecture."""
    with open(path + ".json") as f:
        accuracy = json.load(f)["test_accuracy"]
    return load_flat_weights(nnx.eval_shape(build), load_file(path + ".safetensors")), accuracy
