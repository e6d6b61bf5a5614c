"""Pictures of what a model does, written as PNG with PIL alone: captioned sample grids, denoising
trajectories, metric-against-steps plots (sampler comparisons) and training curves from metrics.jsonl."""

import json
import math
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_SIZE = 12  # the default 10 px font runs words together
CAPTION_HEIGHT = 2 * (FONT_SIZE + 4) + 4  # two lines of captions under each grid picture
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def to_uint8(images):
    """[-1, 1] floats -> uint8, grayscale kept as one channel."""
    images = np.asarray(images, np.float32)
    return np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)


def captioned_grid(images, captions=None, columns=4, scale=None, caption_height=CAPTION_HEIGHT, boxes=None):
    """(N, H, W, C) uint8 -> one PIL image: each picture enlarged to ~128 px with its caption under it.
    `boxes`: each picture's layout, ((x0, y0, x1, y1) in [0, 1], phrase) pairs, drawn over it (draw_boxes)."""
    images = np.asarray(images)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n, h, w, _ = images.shape
    scale = scale or max(1, 128 // max(h, w))
    cell_w, cell_h = w * scale, h * scale + (caption_height if captions else 0)
    rows = -(-n // columns)
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default(size=FONT_SIZE)
    for i, image in enumerate(images):
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        grid.paste(Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST), (x, y))
        if boxes is not None:
            draw_boxes(draw, boxes[i], (x, y, w * scale, h * scale), font)
        if captions:
            lines = textwrap.wrap(captions[i], width=max(8, cell_w // 6))[:2]
            draw.multiline_text((x + 2, y + h * scale + 2), "\n".join(lines), fill="black", font=font, spacing=4)
    return grid


def draw_boxes(draw, boxes, cell, font=None):
    """Outlines ((x0, y0, x1, y1) in [0, 1] of the picture, phrase or None) pairs on the picture at `cell` (left,
    top, width, height) of a PIL ImageDraw, each in its own color with its phrase inside its top-left corner."""
    left, top, width, height = cell
    for k, (box, phrase) in enumerate(boxes):
        x0, y0, x1, y1 = box
        color = COLORS[k % len(COLORS)]
        corners = (left + x0 * width, top + y0 * height, left + x1 * width - 1, top + y1 * height - 1)
        draw.rectangle(corners, outline=color, width=2)
        if phrase:
            draw.text((corners[0] + 3, corners[1] + 2), phrase, fill=color, font=font)


def trajectory_frames(trajectory, index=0, frames=8):
    """The `frames` evenly spaced steps (the last included) of sample `index` of a sampler's Trajectory
    (t (S,), x and x0 (S, B, H, W, C)), as a Trajectory of numpy arrays (F,) and (F, H, W, C)."""
    steps = len(trajectory.t)
    keep = np.unique(np.round(np.linspace(0, steps - 1, min(frames, steps))).astype(int))
    return trajectory._replace(t=np.asarray(trajectory.t)[keep], x=np.asarray(trajectory.x)[keep, index],
                               x0=np.asarray(trajectory.x0)[keep, index])


def trajectory_strip(frames, scale=None, label_width=24, header=14):
    """Two rows from `trajectory_frames` (values in [-1, 1], decoded to pixels for latent models): the sample
    x_t after each step, and the model's prediction of the clean image at that step, each headed by t."""
    x, x0 = to_uint8(frames.x), to_uint8(frames.x0)
    f, h, w, _ = x.shape
    scale = scale or max(1, 96 // max(h, w))
    cw, ch = w * scale, h * scale
    strip = Image.new("RGB", (label_width + f * cw, header + 2 * ch), "white")
    draw, font = ImageDraw.Draw(strip), ImageFont.load_default(size=FONT_SIZE)
    for row, (name, images) in enumerate((("x_t", x), ("x0", x0))):
        draw.text((2, header + row * ch + ch // 2 - 5), name, fill="black", font=font)
        for i, image in enumerate(images):
            tile = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).convert("RGB")
            strip.paste(tile.resize((cw, ch), Image.NEAREST), (label_width + i * cw, header + row * ch))
    for i, t in enumerate(frames.t):
        draw.text((label_width + i * cw + 2, 1), f"t={int(t)}", fill="black", font=font)
    return strip


def _ticks(low, high, log):
    """About five round tick values covering [low, high]."""
    if log:
        return [10.0**k * m for k in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
                for m in (1, 2, 5) if low <= 10.0**k * m <= high]
    step = 10 ** math.floor(math.log10((high - low) / 4 or 1))
    step *= next(m for m in (1, 2, 5, 10) if (high - low) / (step * m) <= 5)
    return [t for t in np.arange(math.ceil(low / step) * step, high + step / 2, step) if t <= high]


def line_plot(series, title="", xlabel="", ylabel="", log_x=False, size=(640, 400)):
    """{name: (xs, ys)} -> a PIL line chart with axes, ticks and a legend (one colour a series)."""
    width, height = size
    left, right, top, bottom = 64, 16, 28, 44
    image = Image.new("RGB", size, "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=FONT_SIZE)
    xs = np.concatenate([np.asarray(x, np.float64) for x, _ in series.values()])
    ys = np.concatenate([np.asarray(y, np.float64) for _, y in series.values()])
    fx = np.log10 if log_x else (lambda v: np.asarray(v, np.float64))
    x_lo, x_hi = fx(xs.min()), fx(xs.max())
    y_lo, y_hi = ys.min(), ys.max()
    pad = (y_hi - y_lo) * 0.05 or abs(y_hi) * 0.05 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_hi = x_hi if x_hi > x_lo else x_lo + 1

    def point(x, y):
        px = left + (fx(x) - x_lo) / (x_hi - x_lo) * (width - left - right)
        py = height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom)
        return float(px), float(py)

    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    for tick in _ticks(xs.min(), xs.max(), log_x):
        px, _ = point(tick, y_lo)
        draw.line((px, height - bottom, px, height - bottom + 4), fill="black")
        draw.text((px - 8, height - bottom + 6), f"{tick:g}", fill="black", font=font)
    for tick in _ticks(y_lo, y_hi, False):
        _, py = point(xs.min(), tick)
        draw.line((left - 4, py, left, py), fill="black")
        draw.text((2, py - 5), f"{tick:.4g}", fill="black", font=font)
    draw.text((width // 2 - 3 * len(title), 6), title, fill="black", font=font)
    draw.text((width // 2 - 3 * len(xlabel), height - 16), xlabel, fill="black", font=font)
    draw.text((2, 6), ylabel, fill="black", font=font)
    for i, (name, (x, y)) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        points = [point(a, b) for a, b in zip(x, y)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for px, py in points if len(points) <= 50 else []:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=color)
        lx, ly = width - right - 120, top + 6 + 14 * i
        draw.line((lx, ly + 6, lx + 16, ly + 6), fill=color, width=2)
        draw.text((lx + 20, ly), name, fill="black", font=font)
    return image


def sampler_comparison(results, metric="FID", size=(640, 400)):
    """{sampler: {steps: value}} -> a plot of the metric against the number of steps (log axis)."""
    series = {name: (sorted(values), [values[s] for s in sorted(values)]) for name, values in results.items()}
    return line_plot(series, f"{metric} against sampling steps", "steps", metric, log_x=True, size=size)


def read_metrics(path):
    """metrics.jsonl (one {"step": ..., name: value} object a line, as training writes) -> {name: (steps, values)}."""
    curves = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                for name, value in row.items():
                    if name != "step":
                        steps, values = curves.setdefault(name, ([], []))
                        steps.append(row["step"])
                        values.append(value)
    return curves


def loss_curves(path, names=("loss",), smoothing=0.0, size=(640, 300)):
    """Training curves from a run's metrics.jsonl: one panel a metric, stacked, with an optional
    exponential moving average (smoothing in [0, 1)) drawn over the raw values."""
    curves = read_metrics(path)
    missing = [n for n in names if n not in curves]
    if missing:
        raise ValueError(f"{path} has no {missing}; it logs {sorted(curves)}.")
    panels = []
    for name in names:
        steps, values = curves[name]
        series = {name: (steps, values)}
        if smoothing:
            ema, smooth = values[0], []
            for v in values:
                ema = smoothing * ema + (1 - smoothing) * v
                smooth.append(ema)
            series[f"{name} (EMA {smoothing:g})"] = (steps, smooth)
        panels.append(line_plot(series, name, "step", name, size=size))
    out = Image.new("RGB", (size[0], size[1] * len(panels)), "white")
    for i, panel in enumerate(panels):
        out.paste(panel, (0, i * size[1]))
    return out
