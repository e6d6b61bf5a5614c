"""Control images for ControlNet: the spatial map a sample is steered by, computed from the training image.

One function a type, each on a uint8 image (H, W, C) or batch (B, H, W, C), returning uint8 controls of the
same size (float input is read as [0, 1]):

  canny       Canny edges, white on black (1 channel), computed here in NumPy the way OpenCV's cv2.Canny
              does (Sobel gradients, non-maximum suppression, double threshold, hysteresis) after a
              Gaussian blur; thresholds are on OpenCV's scale, so cv2 settings carry over.
  silhouette  the foreground mask (1 channel): the alpha channel when the image has one, else the pixels that
              differ from the background colour, holes filled.
  tile        the image downsampled by `factor` and blurred back to its size (its channels).
  gray        luminance (1 channel), for colourisation.
  depth       relative depth from a transformers depth-estimation model (DPT, Depth Anything): near is white.
  pose        VitPose keypoints drawn as a COCO skeleton on black (3 channels); the whole image is the
              person's box (VitPose is top-down: it needs no detector when one person fills the image).

`compute_control(name, images, **options)` runs one; `control_fn(name, **options)` checks the name and
options and loads the model once (a path that does not load fails here, before any work).
"""

import colorsys
import functools
import inspect

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from dit_jax.utils.hub import weights_source

DEPTH_HOWTO = ("set --config.controls.model_path to a local directory or hub id of a transformers depth-estimation "
               "model (DPT or Depth Anything, e.g. depth-anything/Depth-Anything-V2-Small-hf) that loads with "
               "AutoModelForDepthEstimation")
POSE_HOWTO = ("set --config.controls.model_path to a local directory or hub id of a VitPoseForPoseEstimation "
              "model (e.g. usyd-community/vitpose-base-simple)")

# COCO's 17 keypoints: nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles (left before right).
COCO_SKELETON = [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                 (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]


def as_uint8(images):
    """uint8 as it is; float read as [0, 1], clipped and rounded."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.rint(np.clip(images.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def _batched(fn):
    """Lets a control take one image (H, W[, C]) or a batch (B, H, W, C); works on the batch."""
    @functools.wraps(fn)
    def wrapper(images, *args, **kwargs):
        images = as_uint8(images)
        if images.ndim == 2:
            images = images[..., None]
        if images.ndim == 3:
            return fn(images[None], *args, **kwargs)[0]
        if images.ndim != 4:
            raise ValueError(f"A control needs an image (H, W[, C]) or a batch (B, H, W, C); got shape {images.shape}.")
        return fn(images, *args, **kwargs)
    return wrapper


# ---------------------------------------------------------------------------------------------------- filters

def _correlate1d(x, kernel, axis, mode):
    """x correlated with a short 1-D kernel along `axis`, borders padded by np.pad's `mode`."""
    r = len(kernel) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    padded = np.pad(x, pad, mode=mode)
    n = x.shape[axis]
    out = np.zeros(x.shape, np.result_type(x, np.asarray(kernel)))
    for i, k in enumerate(kernel):
        if k:
            out += k * np.take(padded, np.arange(i, i + n), axis=axis)
    return out


def gaussian_kernel(sigma):
    """OpenCV's kernel for 8-bit images: size round(6 sigma + 1), made odd; exp(-x^2 / 2 sigma^2) in 8-bit
    fixed point (integers summing to 256), each side rounded with the error carried on, the centre the rest."""
    size = int(np.floor(sigma * 6 + 1 + 0.5)) | 1
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-x * x / (2 * sigma * sigma))
    k = k / k.sum() * 256
    fixed, error = np.zeros(size, np.int64), 0.0
    for i in range(size // 2):
        value = k[i] + error
        fixed[i] = fixed[-1 - i] = np.rint(value)
        error = value - fixed[i]
    fixed[size // 2] = 256 - fixed.sum()
    return fixed


def gaussian_blur(images, sigma):
    """(B, H, W, C) uint8 -> blurred uint8: a separable Gaussian in exact integer arithmetic (8-bit fixed-point
    kernel, rounded once at the end, as OpenCV's bit-exact GaussianBlur); borders reflect without repeating
    the edge pixel (OpenCV's default, BORDER_REFLECT_101)."""
    if sigma <= 0:
        return images
    k = gaussian_kernel(sigma)
    x = _correlate1d(images.astype(np.int64), k, 2, "reflect")
    x = _correlate1d(x, k, 1, "reflect")
    return np.clip((x + (1 << 15)) >> 16, 0, 255).astype(np.uint8)


def sobel_kernels(aperture):
    """(derivative, smoothing) 1-D kernels of the aperture x aperture Sobel operator, as OpenCV builds them."""
    if aperture not in (3, 5, 7):
        raise ValueError(f"Canny's aperture must be 3, 5 or 7; got {aperture}.")
    smooth = np.array([1])
    for _ in range(aperture - 1):
        smooth = np.convolve(smooth, [1, 1])
    derivative = np.array([-1, 0, 1])
    for _ in range(aperture - 3):
        derivative = np.convolve(derivative, [1, 1])
    return derivative.astype(np.int64), smooth.astype(np.int64)


# ---------------------------------------------------------------------------------------------------- canny

TG22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)  # tan(22.5 deg) in 15-bit fixed point


def _nonmax(mag, dx, dy):
    """Keeps the pixels whose magnitude is a maximum along the gradient direction, quantised to 4 directions
    with OpenCV's integer test and its tie rule (strictly above one neighbour, at least the other);
    the magnitude is 0 outside the image."""
    m = np.pad(mag, ((0, 0), (1, 1), (1, 1)))
    h, w = mag.shape[1:]
    at = lambda di, dj: m[:, 1 + di:1 + di + h, 1 + dj:1 + dj + w]
    x, y = np.abs(dx), np.abs(dy) << 15
    tg22x = x * TG22
    tg67x = tg22x + (x << 16)
    horizontal = y < tg22x
    vertical = ~horizontal & (y > tg67x)
    diagonal = ~horizontal & ~vertical
    same_sign = (dx < 0) == (dy < 0)  # a gradient pointing down-right or up-left: neighbours on that diagonal
    keep = horizontal & (mag > at(0, -1)) & (mag >= at(0, 1))
    keep |= vertical & (mag > at(-1, 0)) & (mag >= at(1, 0))
    keep |= diagonal & same_sign & (mag > at(-1, -1)) & (mag > at(1, 1))
    keep |= diagonal & ~same_sign & (mag > at(-1, 1)) & (mag > at(1, -1))
    return keep


def _hysteresis(candidates, strong):
    """The candidates 8-connected (through candidates) to a strong pixel."""
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True  # connect within each image of the batch only
    labels, _ = ndimage.label(candidates, structure=structure)
    keep = np.zeros(labels.max() + 1, bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    return keep[labels]


@_batched
def canny(images, low=100.0, high=200.0, sigma=1.0, aperture=3, l2_gradient=False):
    """Canny edges, uint8 (B, H, W, 1) of 0 and 255.

    sigma: the Gaussian blur applied first (0: none, as cv2.Canny alone). low/high: the hysteresis thresholds
    on the Sobel magnitude (|dx| + |dy|, or its Euclidean norm with l2_gradient) of the 8-bit image, OpenCV's
    scale: a pixel is an edge where the magnitude is above `high`, or above `low` and connected to one.
    A colour image takes, at each pixel, the gradient of the channel where it is largest (as OpenCV does).
    """
    if low > high:
        low, high = high, low
    if aperture == 7:  # OpenCV scales the 7x7 Sobel by 1/16 (rounded) to fit 16 bits, and the thresholds with it
        low, high = low / 16, high / 16
    if l2_gradient:
        low, high = (min(32767.0, t) ** 2 if t > 0 else t for t in (low, high))
    low, high = int(np.floor(low)), int(np.floor(high))
    x = gaussian_blur(images, sigma).astype(np.int64)
    derivative, smooth = sobel_kernels(aperture)
    dx = _correlate1d(_correlate1d(x, derivative, 2, "edge"), smooth, 1, "edge")
    dy = _correlate1d(_correlate1d(x, smooth, 2, "edge"), derivative, 1, "edge")
    if aperture == 7:
        dx, dy = (np.rint(d / 16).astype(np.int64) for d in (dx, dy))
    mag = dx * dx + dy * dy if l2_gradient else np.abs(dx) + np.abs(dy)
    channel = np.argmax(mag, axis=-1)[..., None]  # the first of equal maxima, as OpenCV's strict test
    mag, dx, dy = (np.take_along_axis(a, channel, -1)[..., 0] for a in (mag, dx, dy))
    candidates = _nonmax(mag, dx, dy) & (mag > low)
    edges = _hysteresis(candidates, candidates & (mag > high))
    return (edges * np.uint8(255))[..., None].astype(np.uint8)


def edge_f1(predicted, reference):
    """F1 (Dice) of two edge maps, pixel for pixel with no tolerance: 2|A and B| / (|A| + |B|), over everything
    given (a batch is scored as one set of pixels); 1.0 when both are empty."""
    a, b = np.asarray(predicted) > 0, np.asarray(reference) > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


# ---------------------------------------------------------------------------------------------------- the others

def _background(image):
    """The most frequent colour on the image's border."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    colours, counts = np.unique(border, axis=0, return_counts=True)
    return colours[np.argmax(counts)]


@_batched
def silhouette(images, alpha=None, tolerance=24):
    """The foreground, uint8 (B, H, W, 1) of 0 and 255.

    alpha: the images' alpha channels (B, H, W), or a list with None where an image has none: foreground is
    alpha >= 128. Without it, a pixel is foreground when a channel differs from the background colour (the
    commonest on the border) by more than `tolerance`; regions it encloses count too (a white eye in a face).
    """
    out = np.zeros(images.shape[:3] + (1,), np.uint8)
    for i, image in enumerate(images):
        a = None if alpha is None else alpha[i]
        if a is not None:
            mask = np.asarray(a) >= 128
        else:
            diff = np.abs(image.astype(np.int16) - _background(image).astype(np.int16)).max(-1)
            mask = ndimage.binary_fill_holes(diff > tolerance)
        out[i, ..., 0] = mask * np.uint8(255)
    return out


@_batched
def tile(images, factor=4, sigma=1.0):
    """The image at 1/factor of its size (area averages), brought back bicubically and blurred by `sigma`:
    what ControlNet's tile model is conditioned on, the coarse layout and colours without the detail."""
    b, h, w, c = images.shape
    small = (max(1, w // factor), max(1, h // factor))
    out = np.empty_like(images)
    for i, image in enumerate(images):
        for j in range(c):
            plane = Image.fromarray(image[..., j]).resize(small, Image.Resampling.BOX)
            out[i, ..., j] = np.asarray(plane.resize((w, h), Image.Resampling.BICUBIC))
    return gaussian_blur(out, sigma)


@_batched
def gray(images):
    """ITU-R 601 luma, uint8 (B, H, W, 1): 0.299 R + 0.587 G + 0.114 B, rounded in 16-bit fixed point as
    Pillow's convert("L") does; a 1-channel image as it is."""
    if images.shape[-1] == 1:
        return images
    r, g, b = (images[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]


# ---------------------------------------------------------------------------------------------------- models

def _load(what, model_path, howto, load):
    if not model_path:
        raise ValueError(f"controls.model_path is empty: the {what} control needs a model; {howto}.")
    source = weights_source(model_path, f"The {what} model", howto)
    try:
        return load(source)
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"Cannot load a {what} model from {model_path!r} ({first}); {howto}.") from None


@functools.lru_cache(maxsize=2)
def depth_model(model_path):
    """(image processor, model) of a transformers depth-estimation model, loaded once a path."""
    def load(source):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation  # pylint: disable=import-outside-toplevel
        return AutoImageProcessor.from_pretrained(source), AutoModelForDepthEstimation.from_pretrained(source).eval()
    return _load("depth", model_path, DEPTH_HOWTO, load)


@functools.lru_cache(maxsize=2)
def pose_model(model_path):
    """(image processor, model) of a VitPoseForPoseEstimation model, loaded once a path."""
    def load(source):
        from transformers import AutoConfig, AutoImageProcessor, VitPoseForPoseEstimation  # pylint: disable=import-outside-toplevel
        kind = AutoConfig.from_pretrained(source).model_type
        if kind != "vitpose":  # from_pretrained would build a VitPose from another model's config, untrained
            raise ValueError(f"it holds a {kind} model, not VitPose")
        return AutoImageProcessor.from_pretrained(source), VitPoseForPoseEstimation.from_pretrained(source).eval()
    return _load("pose", model_path, POSE_HOWTO, load)


def _rgb(images):
    return [Image.fromarray(im if im.shape[-1] == 3 else np.repeat(im, 3, -1)) for im in images]


@_batched
def depth(images, model_path=""):
    """Relative depth, uint8 (B, H, W, 1): the model's output at the image's size, scaled per image to 0..255
    with near white (DPT and Depth Anything predict inverse depth; a metric model's depth is inverted)."""
    import torch  # pylint: disable=import-outside-toplevel
    processor, model = depth_model(model_path)
    b, h, w, _ = images.shape
    with torch.no_grad():
        outputs = model(**processor(images=_rgb(images), return_tensors="pt"))
    maps = processor.post_process_depth_estimation(outputs, target_sizes=[(h, w)] * b)
    out = np.empty((b, h, w, 1), np.uint8)
    metric = getattr(model.config, "depth_estimation_type", "relative") == "metric"
    for i, result in enumerate(maps):
        d = result["predicted_depth"].float().numpy()
        d = -d if metric else d
        span = d.max() - d.min()
        out[i, ..., 0] = np.rint(255 * (d - d.min()) / span if span > 0 else np.zeros_like(d))
    return out


def draw_skeleton(keypoints, scores, size, threshold=0.3):
    """Keypoints (K, 2) in pixels (x, y) with scores (K,) -> uint8 (H, W, 3): COCO's limbs (the first 17
    keypoints) in hues around the colour wheel, joints as dots, on black; a keypoint under `threshold`
    is left out."""
    h, w = size
    canvas = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(h, w) / 64))
    seen = [float(s) >= threshold for s in scores]
    limbs = COCO_SKELETON if len(keypoints) >= 17 else []
    for n, (a, b) in enumerate(limbs):
        if seen[a] and seen[b]:
            colour = tuple(round(255 * v) for v in colorsys.hsv_to_rgb(n / len(limbs), 1.0, 1.0))
            draw.line([tuple(map(float, keypoints[a])), tuple(map(float, keypoints[b]))], fill=colour, width=width)
    for (x, y), ok in zip(keypoints, seen):
        if ok:
            draw.ellipse([x - width, y - width, x + width, y + width], fill=(255, 255, 255))
    return np.asarray(canvas, np.uint8)


@_batched
def pose(images, model_path="", threshold=0.3):
    """VitPose keypoints drawn as a skeleton, uint8 (B, H, W, 3); the whole image is the person's box."""
    import torch  # pylint: disable=import-outside-toplevel
    processor, model = pose_model(model_path)
    b, h, w, _ = images.shape
    boxes = [np.array([[0.0, 0.0, w, h]], np.float32) for _ in range(b)]  # COCO boxes: x, y, width, height
    inputs = processor(images=_rgb(images), boxes=boxes, return_tensors="pt")
    kwargs = {}
    if getattr(model.config.backbone_config, "num_experts", 1) > 1:  # ViTPose+: the COCO expert
        kwargs["dataset_index"] = torch.zeros(b, dtype=torch.long)
    with torch.no_grad():
        outputs = model(**inputs, **kwargs)
    results = processor.post_process_pose_estimation(outputs, boxes=boxes)
    return np.stack([draw_skeleton(r[0]["keypoints"].numpy(), r[0]["scores"].numpy(), (h, w), threshold)
                     for r in results])


# ---------------------------------------------------------------------------------------------------- registry

CONTROL_TYPES = {"canny": canny, "silhouette": silhouette, "tile": tile, "gray": gray, "depth": depth, "pose": pose}
MODELS = {"depth": depth_model, "pose": pose_model}


def channels(name, image_channels):
    """Channels of the `name` control of an image with `image_channels`."""
    return {"tile": image_channels, "pose": 3}.get(name, 1)


def check_name(name, extra=()):
    known = sorted(CONTROL_TYPES) + sorted(extra)
    if name not in CONTROL_TYPES and name not in extra:
        raise ValueError(f"Unknown control type {name!r}; use one of {', '.join(known)}.")


def options_of(name):
    """The options `name` takes, with their defaults."""
    check_name(name)
    parameters = list(inspect.signature(inspect.unwrap(CONTROL_TYPES[name])).parameters.values())[1:]
    return {p.name: p.default for p in parameters if p.name != "alpha"}


def control_fn(name, **options):
    """The control `name` as a function of images with `options` bound, its model loaded: an unknown name or
    option, or a model that does not load, fails here in one line."""
    check_name(name)
    unknown = sorted(set(options) - set(options_of(name)) - {"alpha"})
    if unknown:
        raise ValueError(f"The {name} control takes no option {unknown[0]!r}; its options: "
                         f"{', '.join(options_of(name)) or 'none'}.")
    if name in MODELS:
        MODELS[name](options.get("model_path", ""))
    return functools.partial(CONTROL_TYPES[name], **options)


def compute_control(name, images, **options):
    """The `name` control of uint8 images (H, W, C) or (B, H, W, C); see the module docstring."""
    return control_fn(name, **options)(images)


def model_path_for(value, name):
    """controls.model_path is one path (for whichever of depth and pose is asked for) or "depth=A,pose=B"."""
    if "=" not in value:
        return value
    paths = dict(part.split("=", 1) for part in value.split(",") if part.strip())
    return paths.get(name, "")


def options_from_config(controls_config, name):
    """The options of `name` in a config's `controls` dict: keys `<name>_<option>` (canny_low=50), and
    model_path for the types that run a model."""
    prefix = name + "_"
    options = {k[len(prefix):]: v for k, v in dict(controls_config or {}).items() if k.startswith(prefix)}
    if name in MODELS:
        options["model_path"] = model_path_for((controls_config or {}).get("model_path", ""), name)
    return options
