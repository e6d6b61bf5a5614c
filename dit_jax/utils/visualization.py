"""Image grids with captions, written as PNG."""

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images):
    """[-1, 1] floats -> uint8, grayscale kept as one channel."""
    images = np.asarray(images, np.float32)
    return np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)


def captioned_grid(images, captions=None, columns=4, scale=None, caption_height=28):
    """(N, H, W, C) uint8 -> one PIL image: each picture enlarged to ~128 px with its caption under it."""
    images = np.asarray(images)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n, h, w, _ = images.shape
    scale = scale or max(1, 128 // max(h, w))
    cell_w, cell_h = w * scale, h * scale + (caption_height if captions else 0)
    rows = -(-n // columns)
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    for i, image in enumerate(images):
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        grid.paste(Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST), (x, y))
        if captions:
            lines = textwrap.wrap(captions[i], width=max(8, cell_w // 6))[:2]
            draw.multiline_text((x + 2, y + h * scale + 2), "\n".join(lines), fill="black", font=font)
    return grid
