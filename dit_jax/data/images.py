"""Image decoding and resizing shared by the builders and `prepare`."""

import io

import numpy as np
from PIL import Image


def png_bytes(array):
    """uint8 (H, W) or (H, W, C) -> PNG bytes (tfds stores encoded images; encoding them needs no TensorFlow)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8).squeeze()).save(buffer, format="PNG")
    return buffer.getvalue()


def decode(data, channels=3):
    """Encoded bytes -> PIL image in mode RGB (channels=3) or L (1); transparency is composited on white.

    Raises PIL's errors (OSError, SyntaxError, ValueError...) for a corrupt image.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "P", "PA") and (image.mode != "P" or "transparency" in image.info):
            image = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
        return image.convert("RGB" if channels == 3 else "L")


def fit(image, resolution):
    """Center-crops to a square and resizes to resolution x resolution -> uint8 (H, W, C)."""
    w, h = image.size
    side = min(w, h)
    image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC, reducing_gap=2.0)
    array = np.asarray(image, np.uint8)
    return array[..., None] if array.ndim == 2 else array


def alpha(data):
    """Encoded bytes -> the image's alpha channel as a PIL image in mode L, or None when it has none."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
            return None
        return image.convert("RGBA").getchannel("A")
