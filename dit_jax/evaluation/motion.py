"""Does a clip move as its prompt says, stay the same object, and show the prompted class in every frame?

Clips are (N, T, H, W, C), uint8 or [-1, 1] floats, of one object on a plain
background (moving_fashion, moving_emoji, and samples of models trained on them).

- `motion_adherence`: each clip's motion is read off the object: its
  centroid track (right, left, up, down; bounce: down to a lowest point
  mid-clip and back up), its area (zoom: grows), and the rotation that best
  maps each frame's object onto the next (spin: turns the same way). A mask's
  second-moment orientation would be blind to round objects (faces, a bag
  seen square) and is only known modulo 180 degrees, so the turn is found by
  search: each frame's object, rotated about its centroid by each of -60..60
  degrees, against the next one. The first that fits of zoom, spin,
  bounce, then the direction of travel is the clip's motion ("none" if
  none does); the score is the share of clips read as prompted.
- `frame_consistency`: mean cosine similarity of adjacent frames' features
  (VBench's subject consistency; `inception_features()` gives the FID
  Inception's, tests pass cheaper ones).
- `class_adherence`: the share of frames the Fashion judge
  (evaluation/classifier.py) gives the prompted class, each frame's object
  first cropped and centred at Fashion-MNIST's scale (the judge was trained
  on centred 28 px items).
"""

import functools

import numpy as np
from PIL import Image
from scipy import ndimage

from dit_jax.data.moving import MOTIONS

MASK_THRESHOLD = 0.3   # in [-1, 1] units: the object differs from the background by more than ~38 grey levels
MOVE = 0.1             # net travel that counts as moving, as a share of the frame's side
STEADY = 0.7           # share of steps that must go the motion's way
ZOOM = 1.8             # area growth, first frame to last, that counts as zooming in
SPIN = 45.0            # degrees turned in all that counts as spinning
TURN_STEP = 4.0        # degrees a step must turn to count as turning
ANGLES = np.arange(-60.0, 61.0, 3.0)


def as_floats(clips, min_frames=3):
    """uint8 -> [-1, 1] float32; floats as given. Checks the shape (N, T, H, W, C)."""
    clips = np.asarray(clips)
    if clips.ndim != 5 or clips.shape[1] < min_frames:
        raise ValueError(f"expected clips (N, T, H, W, C) with T >= {min_frames}, got shape {clips.shape}")
    return clips.astype(np.float32) / 127.5 - 1 if clips.dtype == np.uint8 else clips.astype(np.float32)


def foreground(clips):
    """(object, mask): each pixel's difference from the clip's background (N, T, H, W, C), the background being
    the per-channel median of all frames' border pixels, and where it exceeds MASK_THRESHOLD (N, T, H, W)."""
    x = as_floats(clips, min_frames=1)
    n, _, _, _, c = x.shape
    border = np.concatenate([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], axis=2)
    background = np.median(border.reshape(n, -1, c), axis=1)
    diff = x - background[:, None, None, None]
    mask = np.abs(diff).max(-1) > MASK_THRESHOLD
    return diff * mask[..., None], mask


@functools.lru_cache(maxsize=8)
def _rotated_grid(h, w):
    """R(theta) applied to every pixel centre (row, col), for each of ANGLES: (2, A, h, w)."""
    rows, cols = np.mgrid[:h, :w] + 0.5
    theta = np.deg2rad(ANGLES)[:, None, None]
    return np.stack([np.cos(theta) * rows + np.sin(theta) * cols, -np.sin(theta) * rows + np.cos(theta) * cols])


def _turn(a, b, ca, cb):
    """Degrees that best rotate object a (H, W) about its centroid ca (x, y) onto object b at cb: the least
    squared difference over ANGLES, refined by a parabola through the best three. Same sign as moving.track's."""
    grid = _rotated_grid(*a.shape)
    theta = np.deg2rad(ANGLES)
    # Output pixel p shows a at R^-1 (p - cb) + ca - 0.5 (index coordinates), with moving.render's R^-1.
    shift_r = -(np.cos(theta) * cb[1] + np.sin(theta) * cb[0]) + ca[1] - 0.5
    shift_c = -(-np.sin(theta) * cb[1] + np.cos(theta) * cb[0]) + ca[0] - 0.5
    coords = np.stack([grid[0] + shift_r[:, None, None], grid[1] + shift_c[:, None, None]]).reshape(2, -1)
    rotated = ndimage.map_coordinates(a, coords, order=1, mode="constant", cval=0.0).reshape(len(ANGLES), *a.shape)
    error = ((rotated - b) ** 2).sum((1, 2))
    i = int(np.argmin(error))
    if 0 < i < len(ANGLES) - 1:
        left, mid, right = error[i - 1:i + 2]
        curve = left - 2 * mid + right
        shift = 0.5 * (left - right) / curve if curve > 0 else 0.0
        return float(ANGLES[i] + shift * (ANGLES[1] - ANGLES[0]))
    return float(ANGLES[i])


def tracks(clips):
    """{"centroid": (N, T, 2) x, y in pixels (NaN for an empty frame), "area": (N, T) mask pixels,
    "turn": (N, T-1) degrees from each frame to the next}."""
    objects, mask = foreground(as_floats(clips))
    n, t, h, w, _ = objects.shape
    weight = np.abs(objects).max(-1)
    total = weight.sum((2, 3))
    rows, cols = np.mgrid[:h, :w] + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = np.stack([(weight * cols).sum((2, 3)) / total, (weight * rows).sum((2, 3)) / total], -1)
    grey = objects.sum(-1)  # one map for the turn search: colour differences kept as brightness
    turn = np.zeros((n, t - 1))
    for i in range(n):
        for j in range(t - 1):
            if total[i, j] > 0 and total[i, j + 1] > 0:
                turn[i, j] = _turn(grey[i, j], grey[i, j + 1], centroid[i, j], centroid[i, j + 1])
    return {"centroid": centroid, "area": mask.sum((2, 3)).astype(np.float64), "turn": turn}


def _steady(steps, sign):
    return np.mean(np.sign(steps) == sign) >= STEADY


def read_motion(centroid, area, turn, size):
    """The MOTIONS word a clip's track shows, or "none"."""
    if not np.all(np.isfinite(centroid)) or area[0] <= 0:
        return "none"
    move = MOVE * size
    if area[-1] / area[0] >= ZOOM and _steady(np.diff(area), 1):
        return "zoom"
    if abs(turn.sum()) >= SPIN and np.mean((np.abs(turn) >= TURN_STEP) & (np.sign(turn) == np.sign(turn.sum()))) >= STEADY:
        return "spin"
    x, y = centroid[:, 0], centroid[:, 1]
    low = int(np.argmax(y))  # image rows grow downwards
    if 0 < low < len(y) - 1 and y[low] - y[0] >= move and y[low] - y[-1] >= move:
        return "bounce"
    dx, dy = x[-1] - x[0], y[-1] - y[0]
    if abs(dx) >= move and abs(dx) >= 2 * abs(dy) and _steady(np.diff(x), np.sign(dx)):
        return "right" if dx > 0 else "left"
    if abs(dy) >= move and abs(dy) >= 2 * abs(dx) and _steady(np.diff(y), np.sign(dy)):
        return "down" if dy > 0 else "up"
    return "none"


def read_motions(clips):
    """The motion each clip shows (a MOTIONS word, or "none")."""
    tr, size = tracks(clips), np.shape(clips)[2]
    return [read_motion(c, a, t, size) for c, a, t in zip(tr["centroid"], tr["area"], tr["turn"])]


def motion_adherence(clips, motions):
    """{"motion_adherence": share of clips that move as prompted, "motion_adherence/<word>": the share among
    the clips prompted with that word}. motions: MOTIONS words or indices, one a clip."""
    wanted = [MOTIONS[int(m)] if not isinstance(m, str) else m for m in motions]
    if len(wanted) != len(clips):
        raise ValueError(f"{len(clips)} clips but {len(wanted)} motions.")
    unknown = sorted(set(wanted) - set(MOTIONS))
    if unknown:
        raise ValueError(f"Unknown motion {unknown[0]!r}; choose from {', '.join(MOTIONS)}.")
    hits = np.array([a == b for a, b in zip(read_motions(clips), wanted)])
    out = {"motion_adherence": float(hits.mean())}
    for word in MOTIONS:
        chosen = [i for i, m in enumerate(wanted) if m == word]
        if chosen:
            out[f"motion_adherence/{word}"] = float(hits[chosen].mean())
    return out


def clip_consistency(clips, features):
    """Each clip's mean cosine similarity of adjacent frames' features (N,). features: (M, H, W, C) [-1, 1]
    floats -> (M, D)."""
    x = as_floats(clips, min_frames=2)
    n, t = x.shape[:2]
    f = np.asarray(features(x.reshape(n * t, *x.shape[2:])), np.float64).reshape(n, t, -1)
    f /= np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    return (f[:, 1:] * f[:, :-1]).sum(-1).mean(1)


def frame_consistency(clips, features):
    """Mean cosine similarity of adjacent frames' features, over all clips (`clip_consistency`)."""
    return float(clip_consistency(clips, features).mean())


def inception_features(path=None, batch_size=100):
    """The FID Inception's 2048-d pool features of [-1, 1] frames, for `frame_consistency`."""
    from dit_jax.evaluation import inception  # pylint: disable=import-outside-toplevel
    network = inception.load_fid_inception(path, batch_size)
    return lambda frames: network(np.clip(np.round((frames + 1) * 127.5), 0, 255).astype(np.uint8))


def centre_object(frame, mask, size=32, side=28):
    """A frame's object (grey, on black) cropped to its mask's box, resized so its longer side is `side` and
    centred in size x size: uint8 (size, size, 1), as Fashion-MNIST items are drawn."""
    out = np.zeros((size, size), np.uint8)
    if not mask.any():
        return out[..., None]
    rows, cols = np.nonzero(mask)
    crop = frame[rows.min():rows.max() + 1, cols.min():cols.max() + 1, 0]
    pixels = np.clip(np.round((crop + 1) * 127.5), 0, 255).astype(np.uint8)
    h, w = pixels.shape
    k = side / max(h, w)
    nh, nw = max(1, round(h * k)), max(1, round(w * k))
    resized = np.asarray(Image.fromarray(pixels).resize((nw, nh), Image.Resampling.BICUBIC))
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out[..., None]


def turn(image, centre, degrees):
    """image (H, W) turned by `degrees` about centre (x, y), as moving.render turns objects (zeros outside)."""
    h, w = image.shape
    rows, cols = np.mgrid[:h, :w] + 0.5
    a = np.deg2rad(degrees)
    dr, dc = rows - centre[1], cols - centre[0]
    coords = np.stack([np.cos(a) * dr + np.sin(a) * dc + centre[1] - 0.5,
                       -np.sin(a) * dr + np.cos(a) * dc + centre[0] - 0.5])
    return ndimage.map_coordinates(image, coords.reshape(2, -1), order=1, cval=0.0).reshape(h, w)


def class_adherence(clips, labels, predict, turn_back=True):
    """Share of frames judged as their clip's class. clips: grey objects on black (moving_fashion);
    predict: uint8 (M, 32, 32, 1) -> (M,) classes, e.g. the Fashion judge's
    `lambda x: classifier.predict(model, x)`. With turn_back, in a clip read as spinning each frame's object
    is first turned back by the rotation `tracks` measured since the first frame, so the item is judged as it
    stood (the judge knows upright items only)."""
    x = as_floats(clips, min_frames=1)
    if x.shape[-1] != 1:
        raise ValueError(f"The Fashion judge reads grey frames; these clips have {x.shape[-1]} channels.")
    objects, mask = foreground(x)
    n, t = x.shape[:2]
    if turn_back and t >= 3:
        tr = tracks(x)
        angles = np.concatenate([np.zeros((n, 1)), np.cumsum(tr["turn"], axis=1)], axis=1)
        background = x[..., 0] - objects[..., 0]
        spinning = [i for i in range(n) if read_motion(tr["centroid"][i], tr["area"][i], tr["turn"][i],
                                                       x.shape[2]) == "spin"]
        for i in spinning:
            for j in range(1, t):
                    upright = turn(objects[i, j, :, :, 0], tr["centroid"][i, j], -angles[i, j])
                    x[i, j, :, :, 0] = background[i, j] + upright
                    mask[i, j] = np.abs(upright) > MASK_THRESHOLD
    frames = np.stack([centre_object(x[i, j], mask[i, j]) for i in range(n) for j in range(t)])
    judged = np.asarray(predict(frames)).reshape(n, t)
    return float(np.mean(judged == np.asarray(labels).reshape(n, 1)))


def real_clip_figures(name="moving_fashion", clips=70, frames=8, seed=0, data_dir="~/.cache/dit_jax", features=None):
    """The figures a model's samples are held against, on `clips` real clips of a builder (seed's first ones):
    motion adherence, frame consistency (of the clips, and of the same clips with their frames shuffled), and
    for moving_fashion the Fashion judge's per-frame class adherence (the judge trained and cached on first use)."""
    from dit_jax.data import moving  # pylint: disable=import-outside-toplevel,redefined-outer-name
    objects = {"moving_fashion": moving.FashionObjects, "moving_emoji": moving.EmojiObjects}[name]()
    made = [moving.clip(objects, seed, i, 32, frames) for i in range(clips)]
    x, motions, labels = np.stack([m[0] for m in made]), [m[3] for m in made], np.array([m[2] for m in made])
    out = motion_adherence(x, motions)
    features = features or inception_features()
    rng = np.random.default_rng(seed)
    out["frame_consistency"] = frame_consistency(x, features)
    out["frame_consistency/shuffled"] = frame_consistency(np.stack([c[rng.permutation(frames)] for c in x]), features)
    if name == "moving_fashion":
        from dit_jax.evaluation import classifier  # pylint: disable=import-outside-toplevel
        judge, _ = classifier.load_or_train(data_dir)
        predict = lambda images: classifier.predict(judge, images)
        out["class_adherence"] = class_adherence(x, labels, predict)
        for word in MOTIONS:
            chosen = [i for i, m in enumerate(motions) if MOTIONS[m] == word]
            out[f"class_adherence/{word}"] = class_adherence(x[chosen], labels[chosen], predict)
    return out


if __name__ == "__main__":  # python -m dit_jax.evaluation.motion [moving_fashion|moving_emoji] [clips] [frames]
    import json
    import sys
    print(json.dumps(real_clip_figures(*sys.argv[1:2], *[int(a) for a in sys.argv[2:4]]), indent=1))
