"""Augmentation of pixel data: random horizontal flip, colour jitter, small rotation.

All of it is drawn from a numpy Generator the pipeline seeds with (seed, index
of the example in the global stream), so a resumed run augments the same way.
Captions that speak of left or right are never flipped. A clip (`augment_clip`)
gets one draw for all its frames.
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
        image = _rotate(image, rng.uniform(-rotation, rotation))
    x = image.astype(np.float32) / 255.0
    if color_jitter:
        x = _jitter(x, rng, color_jitter)
    return x * 2.0 - 1.0


def augment_clip(clip, rng, *, flip=False, color_jitter=0.0, rotation=0.0):
    """uint8 (T, H, W, C) -> float32 (T, H, W, C) in [-1, 1]: one draw for the whole clip, so every frame gets
    the same flip, angle and colour change (contrast about the clip's mean), and the motion stays as it was
    filmed. A flip never meets a caption that says left or right (`flippable`), so captions stay true."""
    if flip and rng.random() < 0.5:
        clip = clip[:, :, ::-1]
    if rotation:
        angle = rng.uniform(-rotation, rotation)
        corners = clip[:, [0, 0, -1, -1], [0, -1, 0, -1]].reshape(-1, clip.shape[-1])
        fill = np.median(corners, axis=0).astype(clip.dtype)  # the background, where an object may touch a corner
        clip = np.stack([_rotate(frame, angle, fill) for frame in clip])
    x = clip.astype(np.float32) / 255.0
    if color_jitter:
        x = _jitter(x, rng, color_jitter)
    return x * 2.0 - 1.0


def _rotate(image, angle, fill=None):
    fill = tuple(int(v) for v in (image[0, 0] if fill is None else fill))  # the background, for emoji and Fashion-MNIST alike
    pil = Image.fromarray(np.ascontiguousarray(image).squeeze(-1) if image.shape[-1] == 1 else image)
    rotated = np.asarray(pil.rotate(angle, Image.Resampling.BILINEAR, fillcolor=fill[0] if len(fill) == 1 else fill))
    return rotated.reshape(image.shape)


def _jitter(x, rng, amount):
    """Brightness, contrast (about the mean of all of x) and saturation, each drawn from [1 - amount, 1 + amount]."""
    brightness, contrast, saturation = rng.uniform(1 - amount, 1 + amount, size=3)
    x = x * brightness
    x = (x - x.mean()) * contrast + x.mean()
    if x.shape[-1] == 3:
        gray = x.mean(-1, keepdims=True)
        x = gray + (x - gray) * saturation
    return np.clip(x, 0.0, 1.0)
