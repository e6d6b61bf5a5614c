"""Layout adherence: is each requested garment in its box, and is the drawing inside the boxes?

A sample's ink is each pixel's largest channel difference from the
background (the median of the image's outer pixel ring, which fashion_scenes
keeps empty), so a white-on-black, black-on-white, red or outlined garment
all read as Fashion-MNIST's white on black; differences under 10% are noise.

  box accuracy  each requested box cropped from the ink, padded to a square,
                resized to 28x28 and padded to 32x32 (as Fashion-MNIST's items
                were made: trimmed, longer side 28, centred), judged by the
                project's Fashion-MNIST classifier (evaluation/classifier.py):
                the share judged as the box's phrase's class.
  ink inside    the share of a sample's ink inside the union of its boxes,
                averaged over samples (0 for a blank sample).
"""

import numpy as np
from PIL import Image

from dit_jax.evaluation import classifier

NOISE = 0.1  # ink below this (of the full range) is not counted


def ink(images):
    """uint8 (N, H, W, C) -> float32 (N, H, W) in [0, 1]: the largest channel difference from the background."""
    x = np.asarray(images, np.float32)
    ring = np.concatenate([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)  # (N, 4H - 4, C)
    background = np.median(ring, axis=1)[:, None, None]
    out = np.abs(x - background).max(-1) / 255.0
    return np.where(out < NOISE, 0.0, out).astype(np.float32)


def pixel_box(box, height, width):
    """(x0, y0, x1, y1) in [0, 1] -> integer pixel bounds covering it, at least one pixel wide."""
    x0, x1 = int(np.floor(box[0] * width)), int(np.ceil(box[2] * width))
    y0, y1 = int(np.floor(box[1] * height)), int(np.ceil(box[3] * height))
    x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    return x0, y0, max(min(x1, width), x0 + 1), max(min(y1, height), y0 + 1)


def judge_input(ink_map, box):
    """One box of an ink map as a Fashion-MNIST image: uint8 (32, 32, 1)."""
    x0, y0, x1, y1 = pixel_box(box, *ink_map.shape)
    crop = np.round(ink_map[y0:y1, x0:x1] * 255).astype(np.uint8)
    h, w = crop.shape
    side = max(h, w)
    square = np.zeros((side, side), np.uint8)
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = crop
    resized = np.asarray(Image.fromarray(square).resize((28, 28), Image.Resampling.BICUBIC))
    return np.pad(resized, 2)[..., None]


def judge_inputs(images, boxes, mask):
    """The judge's input for every requested box: uint8 (M, 32, 32, 1), in order of (image, box)."""
    maps = ink(images)
    return np.stack([judge_input(maps[i], boxes[i, j]) for i, j in zip(*np.nonzero(mask))])


def ink_inside(images, boxes, mask):
    """Per sample: the share of its ink inside the union of its requested boxes."""
    maps = ink(images)
    shares = []
    for m, b, keep in zip(maps, boxes, mask):
        inside = np.zeros(m.shape, bool)
        for box in b[keep]:
            x0, y0, x1, y1 = pixel_box(box, *m.shape)
            inside[y0:y1, x0:x1] = True
        total = m.sum()
        shares.append(float(m[inside].sum() / total) if total > 0 else 0.0)
    return np.asarray(shares)


def scores(images, boxes, mask, labels, judge, class_names=()):
    """{layout_box_accuracy, layout_ink_inside, layout_box_accuracy_per_class} of samples against their layouts:
    boxes (N, K, 4) in [0, 1], mask (N, K), labels (N, K) the phrases' classes, judge the Fashion-MNIST CNN."""
    boxes, mask, labels = np.asarray(boxes, np.float32), np.asarray(mask, bool), np.asarray(labels)
    wanted = labels[mask]
    correct = classifier.predict(judge, judge_inputs(images, boxes, mask)) == wanted
    result = {"layout_box_accuracy": float(correct.mean()),
              "layout_ink_inside": float(ink_inside(images, boxes, mask).mean())}
    if class_names:
        result["layout_box_accuracy_per_class"] = {name: float(correct[wanted == k].mean())
                                                   for k, name in enumerate(class_names) if (wanted == k).any()}
    return result
