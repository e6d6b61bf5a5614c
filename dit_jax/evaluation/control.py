"""Control adherence: how well samples follow the control image they were sampled with (ControlNet++'s way).

The control is computed again from the sample with the same detector and
settings it was made with from the training image, and the two maps are compared:

  canny       F1 between the control's edges and the sample's edges, pixel for pixel.
  silhouette  IoU of the control's mask and the sample's foreground mask.
  outline     (circles) IoU of the filled outline and the sample's foreground mask.
  depth       RMSE between the control and the depth model run on the sample, on a 0..1 scale.
  tile, gray  RMSE between the control and the sample's tile / luminance, on a 0..1 scale.

Higher is better for f1 and iou, lower for rmse; each is averaged over images.
For circles, `circle_colours` also checks the colours the caption asked for.
"""

import numpy as np
from scipy import ndimage

from dit_jax.data import controls as controls_lib

# control type -> the metric that scores it
METRIC = {"canny": "f1", "silhouette": "iou", "outline": "iou", "depth": "rmse", "tile": "rmse", "gray": "rmse"}


def check_type(name):
    """A one-line error for a control type this module cannot score."""
    if name not in METRIC:
        raise ValueError(f"--metrics=control scores {', '.join(sorted(METRIC))} controls, not {name!r}.")


def f1(predicted, reference):
    """Per-image F1 (Dice) of two batches of binary maps (B, H, W[, 1]) -> (B,); 1.0 where both are empty."""
    a, b = _binary(predicted), _binary(reference)
    hits, total = (a & b).sum(1), a.sum(1) + b.sum(1)
    return np.where(total == 0, 1.0, 2 * hits / np.maximum(total, 1))


def iou(predicted, reference):
    """Per-image intersection over union of two batches of binary maps -> (B,); 1.0 where both are empty."""
    a, b = _binary(predicted), _binary(reference)
    union = (a | b).sum(1)
    return np.where(union == 0, 1.0, (a & b).sum(1) / np.maximum(union, 1))


def rmse(predicted, reference):
    """Per-image root mean squared difference of two uint8 batches, on a 0..1 scale -> (B,)."""
    a, b = (np.asarray(x, np.float64).reshape(len(x), -1) / 255.0 for x in (predicted, reference))
    return np.sqrt(((a - b) ** 2).mean(1))


def _binary(maps):
    maps = np.asarray(maps)
    return maps.reshape(len(maps), -1) > (127 if maps.dtype == np.uint8 else 0.5)


def filled(outline):
    """Outline controls (B, H, W[, 1]), white rings on black -> the discs they enclose, uint8 0/255."""
    outline = np.asarray(outline).reshape(np.shape(outline)[:3]) > 127
    return np.stack([ndimage.binary_fill_holes(o) for o in outline]).astype(np.uint8)[..., None] * 255


def sample_map(name, samples, **options):
    """The map a sample is scored on: its `name` control (outline: its foreground, as a filled outline is)."""
    if name == "outline":
        return controls_lib.silhouette(samples)
    return controls_lib.compute_control(name, samples, **options)


def score(name, controls, samples, **options):
    """{"control_<metric>": mean, "control_<metric>_per_image": list} of uint8 controls (B, H, W, C) and the uint8
    samples (B, H, W, C) made from them; options: the control's settings in training (thresholds, model)."""
    check_type(name)
    controls, samples = np.asarray(controls), np.asarray(samples)
    if controls.shape[:3] != samples.shape[:3]:
        raise ValueError(f"Controls {controls.shape} and samples {samples.shape} differ in number or size.")
    made = sample_map(name, samples, **options)
    reference = filled(controls) if name == "outline" else controls
    metric = METRIC[name]
    values = {"f1": f1, "iou": iou, "rmse": rmse}[metric](made, reference)
    return {f"control_{metric}": float(values.mean()), f"control_{metric}_per_image": values.tolist()}


def nearest_colour(pixels, palette):
    """uint8 pixels (..., 3) -> the index of the nearest palette colour (Euclidean in RGB) of each."""
    colours = np.asarray(list(palette.values()), np.float64)
    d = ((np.asarray(pixels, np.float64)[..., None, :] - colours) ** 2).sum(-1)
    return d.argmin(-1)


def dominant_colour(image, mask, palette):
    """The palette name most of the image's pixels under `mask` are nearest to (None for an empty mask)."""
    names = list(palette)
    votes = nearest_colour(np.asarray(image)[np.asarray(mask, bool)], palette)
    return names[np.bincount(votes, minlength=len(names)).argmax()] if votes.size else None


def circle_colours(samples, controls, circles, backgrounds, palette):
    """Whether each sample's circle and background have the prompted colours: the dominant palette colour inside
    the control's disc (eroded by a pixel, off the edge) and outside it (dilated by a pixel); controls None
    (a base without ControlNet): inside and outside the sample's own foreground (its silhouette).
    -> {"colours_right": fraction with both right, "circle_colour_right", "background_colour_right"}."""
    discs = (filled(controls) if controls is not None else controls_lib.silhouette(samples))[..., 0] > 0
    circle_ok, background_ok = [], []
    for image, disc, want_circle, want_background in zip(samples, discs, circles, backgrounds):
        inside = ndimage.binary_erosion(disc) if ndimage.binary_erosion(disc).any() else disc
        outside = ~ndimage.binary_dilation(disc)
        circle_ok.append(dominant_colour(image, inside, palette) == want_circle)
        background_ok.append(dominant_colour(image, outside, palette) == want_background)
    circle_ok, background_ok = np.asarray(circle_ok), np.asarray(background_ok)
    return {"colours_right": float((circle_ok & background_ok).mean()),
            "circle_colour_right": float(circle_ok.mean()), "background_colour_right": float(background_ok.mean())}
