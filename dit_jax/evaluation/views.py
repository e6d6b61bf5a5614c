"""Do a multi-view model's views show one object, the prompted one, from the cameras asked for; and how close
are its novel views to the truth?

Sets of views are (N, V, H, W, 3) uint8, of shapes3d objects (dit_jax/data/shapes3d.py) and samples of models
trained on them. Two judges, small CNNs trained on single shapes3d renders and cached per resolution and
camera ring (`load_or_train`), read each view:

  object   its shape and colour (one class per pair, of every shapes3d shape and colour);
  azimuth  its camera's azimuth, in 8 bins of 45 degrees centred on 0, 45, ... 315. The objects turn at random
           about the vertical axis, so their outline alone cannot tell where the camera is; the light can: it is
           fixed in the world (shapes3d.LIGHT), and which sides are lit moves with the camera. A cube, the same
           every 90 degrees and flat-lit, is the hardest (at 32 px: 56% of cubes, 80-94% of the other shapes).

Their training renders are drawn as the data's are (any shape, colour, size and turn; elevation within the
run's range, its distance) but at azimuths uniform over the circle, and they are checked on renders of
another seed (their test accuracies go into the metrics).

  `set_scores`    views_agree: the share of sets whose views all get one shape and colour; views_match: the
                  share whose every view gets the prompt's shape and colour; camera_adherence: the share of views
                  whose azimuth bin is that of the camera they were asked for.
  `novel_scores`  novel-view PSNR and SSIM of the generated views (all but the given first) against the true
                  renders, beside the copy baseline: the given view copied to every camera.

`ssim` is the gaussian-window SSIM of Wang et al. (2004): an 11-tap window of sigma 1.5 (shorter on smaller
images), K1 = 0.01, K2 = 0.03, over the positions where the window fits, averaged over positions and channels.
"""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dit_jax.data import shapes3d
from dit_jax.evaluation.classifier import fit, load_cached, save_cached
from dit_jax.utils import cameras

CACHE = "classifiers/shapes3d_views"
BINS = 8  # azimuth bins of 360 / BINS degrees, centred on multiples of it
OBJECTS = len(shapes3d.SHAPES) * len(shapes3d.COLOURS)


class ViewClassifier(nnx.Module):
    """Three stride-2 conv-relu layers, flattened (where the light falls matters), a hidden layer, logits."""

    def __init__(self, rngs, size, num_classes, channels=(16, 32, 32), hidden=64):
        widths = (3,) + tuple(channels)
        self.convs = nnx.List([nnx.Conv(a, b, (3, 3), strides=2, rngs=rngs) for a, b in zip(widths, widths[1:])])
        side = -(-size // 8)
        self.hidden = nnx.Linear(side * side * channels[-1], hidden, rngs=rngs)
        self.logits = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, images):
        """images: uint8 or [0, 255] floats, (N, size, size, 3)."""
        x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.logits(jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1))))


@nnx.jit
def _classes(model, images):
    return jnp.argmax(model(images), -1)


def predict(model, images, batch_size=256):
    """Class indices of uint8 (N, H, W, 3) images, in batches of one shape (the last one padded): one compile."""
    images = np.asarray(images)
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(_classes(model, padded))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0,), np.int64)


def azimuths(poses):
    """Each camera's azimuth in degrees [0, 360) (utils/cameras.py: 0 on +z, growing towards +x), from poses
    (..., 4, 4) or flattened (..., 16)."""
    poses = np.asarray(poses, np.float64)
    poses = poses.reshape(*poses.shape[:-1], 4, 4) if poses.shape[-1] == 16 else poses
    return np.rad2deg(np.arctan2(poses[..., 0, 3], poses[..., 2, 3])) % 360.0


def azimuth_bin(degrees):
    """The azimuth judge's class of an angle: the nearest multiple of 45 degrees, 0..7."""
    return np.round(np.asarray(degrees) / (360.0 / BINS)).astype(np.int64) % BINS


def object_class(shape, colour):
    """The object judge's class of a shape and colour (names)."""
    return shapes3d.SHAPES.index(shape) * len(shapes3d.COLOURS) + shapes3d.COLOURS.index(colour)


def renders(count, seed, size, elevation=30.0, random_elevation=0.0, distance=3.0):
    """Single views for the judges: (images uint8 (count, size, size, 3), object classes, azimuths in degrees).
    View i cycles through the shapes; the rest is drawn from default_rng([seed, i, 1]), three seeds where the
    data's examples take two, so no judge's view is a training example's."""
    images, objects, angles = [], [], []
    for i in range(count):
        rng = np.random.default_rng([seed, i, 1])
        shape = shapes3d.SHAPES[i % len(shapes3d.SHAPES)]
        colour = shapes3d.COLOURS[int(rng.integers(len(shapes3d.COLOURS)))]
        half = tuple(shapes3d.SIZES.values())[int(rng.integers(len(shapes3d.SIZES)))]
        yaw, azimuth = rng.uniform(0, 360, 2)
        e = elevation + rng.uniform(-random_elevation, random_elevation)
        images.append(shapes3d.render(shape, shapes3d.PALETTE[colour], half, cameras.look_at(e, azimuth, distance),
                                      size, yaw))
        objects.append(object_class(shape, colour))
        angles.append(azimuth)
    return np.stack(images), np.asarray(objects, np.int32), np.asarray(angles)


def train(size, elevation=30.0, random_elevation=0.0, distance=3.0, count=8000, test_count=1000, steps=3000,
          batch_size=64, lr=3e-3, seed=0):
    """Trains both judges on `count` renders; returns {"object": (model, test accuracy), "azimuth": (...)}, the
    accuracies on `test_count` renders of another seed."""
    ring = dict(elevation=elevation, random_elevation=random_elevation, distance=distance)
    images, objects, angles = renders(count, seed, size, **ring)
    test_images, test_objects, test_angles = renders(test_count, seed + 1, size, **ring)
    out = {}
    for name, labels, test_labels, classes in (("object", objects, test_objects, OBJECTS),
                                               ("azimuth", azimuth_bin(angles), azimuth_bin(test_angles), BINS)):
        rng = np.random.default_rng(seed)
        batches = (rng.choice(len(images), min(batch_size, len(images)), replace=False) for _ in range(steps))
        model = fit(ViewClassifier(nnx.Rngs(seed), size, classes), images, labels.astype(np.int32), batches, steps,
                    lr)
        out[name] = model, float(np.mean(predict(model, test_images) == test_labels))
    return out


def cache_path(data_dir, size, elevation=30.0, random_elevation=0.0, distance=3.0):
    """Where the judges of one resolution and camera ring are cached (their names: _object, _azimuth)."""
    ring = json.dumps([float(elevation), float(random_elevation), float(distance)])
    return os.path.join(os.path.expanduser(data_dir),
                        f"{CACHE}_{size}px_{hashlib.sha256(ring.encode()).hexdigest()[:8]}")


def load_or_train(data_dir, size, elevation=30.0, random_elevation=0.0, distance=3.0, **train_kw):
    """The cached judges for `size` px views on this ring (trained and cached on first use):
    {"object": (model, test accuracy), "azimuth": (model, test accuracy)}."""
    ring = dict(elevation=elevation, random_elevation=random_elevation, distance=distance)
    path = cache_path(data_dir, size, **ring)
    if not all(os.path.exists(f"{path}_{name}.json") for name in ("object", "azimuth")):
        print(f"Training the shapes3d view judges at {size}px (cached in {path}_*).", flush=True)
        for name, (model, accuracy) in train(size, **ring, **train_kw).items():
            save_cached(f"{path}_{name}", model, {"test_accuracy": accuracy, **ring})
    return {name: load_cached(f"{path}_{name}", lambda c=classes: ViewClassifier(nnx.Rngs(0), size, c))
            for name, classes in (("object", OBJECTS), ("azimuth", BINS))}


def check_sets(views):
    views = np.asarray(views)
    if views.ndim != 5 or views.shape[-1] != 3 or views.dtype != np.uint8:
        raise ValueError(f"expected sets of views uint8 (N, V, H, W, 3), got {views.dtype} {views.shape}")
    return views


def set_scores(views, shapes, colours, poses, judges):
    """views_agree, views_match (and their shape-only and colour-only parts) and camera_adherence of sets of
    views (N, V, H, W, 3) uint8, prompted with shapes[i] and colours[i] (names) at cameras poses (N, V, 16)
    or (N, V, 4, 4); judges: what `load_or_train` returns."""
    views = check_sets(views)
    n, v = views.shape[:2]
    flat = views.reshape(n * v, *views.shape[2:])
    objects = predict(judges["object"][0], flat).reshape(n, v)
    shape, colour = objects // len(shapes3d.COLOURS), objects % len(shapes3d.COLOURS)
    wanted_shape = np.asarray([shapes3d.SHAPES.index(s) for s in shapes])[:, None]
    wanted_colour = np.asarray([shapes3d.COLOURS.index(c) for c in colours])[:, None]
    agree = lambda k: (k == k[:, :1]).all(1)
    bins = predict(judges["azimuth"][0], flat).reshape(n, v)
    return {"views_agree": float(agree(objects).mean()),
            "views_agree/shape": float(agree(shape).mean()), "views_agree/colour": float(agree(colour).mean()),
            "views_match": float(((shape == wanted_shape) & (colour == wanted_colour)).all(1).mean()),
            "views_match/shape": float((shape == wanted_shape).all(1).mean()),
            "views_match/colour": float((colour == wanted_colour).all(1).mean()),
            "camera_adherence": float(np.mean(bins == azimuth_bin(azimuths(poses)))),
            "object_classifier_test_accuracy": judges["object"][1],
            "azimuth_classifier_test_accuracy": judges["azimuth"][1]}


def psnr(x, y, data_range=255.0):
    """PSNR in dB of each pair of images (..., H, W, C): 10 log10(range^2 / MSE); inf where they are equal."""
    mse = np.mean((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2, axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        return 10 * np.log10(data_range ** 2 / mse)


def gaussian_window(size=11, sigma=1.5):
    """The normalised 1-D gaussian (size,) whose outer product is SSIM's window."""
    x = np.arange(size) - (size - 1) / 2
    w = np.exp(-x ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def _local_mean(x, w):
    """Gaussian-weighted means of x (..., H, W, C) over every window position that fits (..., H-k+1, W-k+1, C)."""
    k = len(w)
    x = np.lib.stride_tricks.sliding_window_view(x, k, axis=-3) @ w
    return np.lib.stride_tricks.sliding_window_view(x, k, axis=-2) @ w


def ssim(x, y, data_range=255.0, window=11, sigma=1.5):
    """Mean SSIM of each pair of images (..., H, W, C) -> (...): 1 for equal images."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim < 3:
        raise ValueError(f"ssim compares images (..., H, W, C) of one shape, got {x.shape} and {y.shape}")
    k = min(window, x.shape[-3], x.shape[-2])
    w = gaussian_window(k - (k % 2 == 0), sigma)  # odd, so the window has a centre
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _local_mean(x, w), _local_mean(y, w)
    vx, vy = _local_mean(x * x, w) - mx * mx, _local_mean(y * y, w) - my * my
    cxy = _local_mean(x * y, w) - mx * my
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(axis=(-3, -2, -1))


def novel_scores(generated, truth):
    """Novel-view PSNR and SSIM of generated sets (N, V, H, W, 3) uint8 against the true renders, over views
    1..V-1 (view 0 is the given one), and the same figures of the copy baseline (truth's view 0 at every
    camera); psnr_gain: ours less the baseline's, in dB."""
    generated, truth = check_sets(generated), check_sets(truth)
    if generated.shape != truth.shape or generated.shape[1] < 2:
        raise ValueError(f"novel views need generated and true sets of one shape with V >= 2, got {generated.shape} "
                         f"and {truth.shape}")
    novel, target = generated[:, 1:], truth[:, 1:]
    copy = np.broadcast_to(truth[:, :1], target.shape)
    out = {"novel_psnr": float(np.mean(psnr(novel, target))), "novel_ssim": float(np.mean(ssim(novel, target))),
           "copy_psnr": float(np.mean(psnr(copy, target))), "copy_ssim": float(np.mean(ssim(copy, target)))}
    out["psnr_gain"] = out["novel_psnr"] - out["copy_psnr"]
    return out


def held_out(options, count):
    """`count` objects the run never saw, rendered as its data renders them: examples num_examples,
    num_examples + 1, ... of its shapes3d builder options (sources.shapes3d_options). Returns {"views" uint8
    (count, V, H, W, 3), "poses" (count, V, 16), "shapes", "colours", "captions"}."""
    kw = {k: options[k] for k in ("size", "views", "elevation", "random_elevation", "distance", "shapes", "colours")}
    made = [shapes3d.example(options["seed"], options["num_examples"] + i, **kw) for i in range(count)]
    return {"views": np.stack([e["views"] for e in made]),
            "poses": np.stack([e["pose"].reshape(len(e["pose"]), 16) for e in made]).astype(np.float32),
            "shapes": [e["shape"] for e in made], "colours": [e["colour"] for e in made],
            "captions": [shapes3d.caption(e["shape"], e["colour"]) for e in made]}
