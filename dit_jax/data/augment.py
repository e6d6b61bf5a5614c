"""Augmentation of pixel data: random horizontal flip, colour jitter, small rotation.

All of it is drawn from a numpy Generator the pipeline seeds with (seed, index
of the example in the global stream), so a resumed run augments the same way.
Captions that speak of left or right are never flipped.
"""

import re

import numpy as np
from PIL import Image

SIDES = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def flippable(captions):
    return not any(SIDES.search(c) for c in captions)


def augment(image, rng, *, flip=False, color_jitter=0.0, rotation=0.0):
    """uint8 (H, W, C) -> float32 (H, W, C) in [-1, 1]."""
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
    if rotation:
        angle = rng.uniform(-rotation, rotation)
        fill = tuple(int(v) for v in image[0, 0])  # the background, for emoji and Fashion-MNIST alike
        pil = Image.fromarray(np.ascontiguousarray(image).squeeze(-1) if image.shape[-1] == 1 else image)
        rotated = np.asarray(pil.rotate(angle, Image.Resampling.BILINEAR, fillcolor=fill[0] if len(fill) == 1 else fill))
        image = rotated.reshape(image.shape)
    x = image.astype(np.float32) / 255.0
    if color_jitter:
        brightness, contrast, saturation = rng.uniform(1 - color_jitter, 1 + color_jitter, size=3)
        x = x * brightness
        x = (x - x.mean()) * contrast + x.mean()
        if x.shape[-1] == 3:
            gray = x.mean(-1, keepdims=True)
            x = gray + (x - gray) * saturation
        x = np.clip(x, 0.0, 1.0)
    return x * 2.0 - 1.0
