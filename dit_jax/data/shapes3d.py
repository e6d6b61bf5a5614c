"""`shapes3d`: one simple 3-D object seen from V cameras on a circle around it, rendered here (multi-view data).

Each example is one object, a cube, sphere, cylinder, cone, torus or pyramid of one colour and size (its
half-height: small, medium or large), turned by a random angle about the vertical axis, on a white
background, seen by `views` cameras evenly spaced in azimuth on a circle of radius `distance` at `elevation`
degrees (with `random_elevation` > 0 each view's elevation is drawn within that many degrees of it), all looking
at the object's centre (utils/cameras.py: axes, poses, field of view). Example i takes its shape from i's place
in the cycle over the shapes (so each is equally common) and the rest from numpy.random.default_rng([seed, i]):
the set is the same on every machine and in any order of generation.

The renderer is a NumPy sphere tracer over each shape's signed distance (exact for the sphere, cube, cylinder
and torus; a distance bound, the largest of its faces' plane distances, for the cone and pyramid, which the
tracer only needs to never overshoot), with Lambert shading (an ambient term plus one light from the upper
front right), supersampled twice per axis and box-averaged.

A record's `image` is the views as a strip (size, views * size, 3), left to right; `label` the shape, `colour`
and `size` its other labels; `elevation`, `azimuth`, `distance` (V,) and `pose` (V, 4, 4) each view's camera;
`yaw` the object's turn in degrees; the caption "a red cube".
"""

import numpy as np
import tensorflow_datasets as tfds

from dit_jax.data import images
from dit_jax.utils import cameras

SHAPES = ("cube", "sphere", "cylinder", "cone", "torus", "pyramid")
PALETTE = {"red": (0.86, 0.1, 0.12), "orange": (0.98, 0.55, 0.0), "yellow": (0.95, 0.85, 0.1),
           "green": (0.12, 0.6, 0.2), "blue": (0.1, 0.25, 0.85), "purple": (0.5, 0.16, 0.65),
           "pink": (0.98, 0.55, 0.75), "brown": (0.55, 0.33, 0.14)}
COLOURS = tuple(PALETTE)
SIZES = {"small": 0.45, "medium": 0.575, "large": 0.7}  # half-height in world units (the camera is 3 away)
AMBIENT = 0.35
LIGHT = np.array([0.4, 1.0, 0.6]) / np.linalg.norm([0.4, 1.0, 0.6])
SUPERSAMPLE = 2
HIT, STEPS = 1e-4, 160  # the tracer's surface tolerance (world units) and its most steps


def check_names(shapes=SHAPES, colours=COLOURS):
    """The shape and colour names as tuples (a string may list them with commas); one-line error for an
    unknown one."""
    out = []
    for key, names, known in (("shapes", shapes, SHAPES), ("colours", colours, COLOURS)):
        names = tuple(n.strip() for n in names.split(",") if n.strip()) if isinstance(names, str) else tuple(names)
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise ValueError(f"Unknown {key[:-1]} {unknown[0] if unknown else '(none given)'!r} in "
                             f"data.shapes3d.{key}; choose from {', '.join(known)}.")
        out.append(names)
    return tuple(out)


def _box(q):
    """Signed distance from the per-axis excess q (..., k) over a box's half-extents."""
    outside = np.linalg.norm(np.maximum(q, 0), axis=-1)
    return outside + np.minimum(q.max(-1), 0)


def distance(shape, p, s):
    """Signed distance (or a bound that never exceeds it) from points p (..., 3) to `shape` of half-height s,
    centred on the origin, its axis along y."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    radial = np.hypot(x, z)
    if shape == "sphere":
        return np.linalg.norm(p, axis=-1) - s
    if shape == "cube":
        return _box(np.abs(p) - s)
    if shape == "cylinder":  # radius s, height 2s
        return _box(np.stack([radial - s, np.abs(y) - s], -1))
    if shape == "cone":  # apex at y = s, base of radius s at y = -s: half-angle atan(1/2)
        c, k = 2 / np.sqrt(5), 1 / np.sqrt(5)  # cos, sin of the half-angle
        return np.maximum(radial * c - (s - y) * k, -y - s)
    if shape == "torus":  # in the horizontal plane: ring radius 0.7s, tube radius 0.3s
        return np.hypot(radial - 0.7 * s, y) - 0.3 * s
    if shape == "pyramid":  # square base of side 2s at y = -s, apex at y = s
        sides = (2 * np.maximum(np.abs(x), np.abs(z)) + y - s) / np.sqrt(5)
        return np.maximum(sides, -y - s)
    raise ValueError(f"Unknown shape {shape!r}; choose from {', '.join(SHAPES)}.")


def _turn(p, yaw):
    """Points p (..., 3) in world space -> the frame of an object turned by `yaw` degrees about y."""
    a = np.deg2rad(yaw)
    c, s = np.cos(a), np.sin(a)
    return np.stack([c * p[..., 0] - s * p[..., 2], p[..., 1], s * p[..., 0] + c * p[..., 2]], -1)


def trace(shape, size, pose, side, yaw=0.0):
    """Sphere-traces a side x side view: (hit (side, side) bool, world normals (side, side, 3))."""
    origin, directions = cameras.rays(pose, side)
    sdf = lambda p: distance(shape, _turn(p, yaw), size)
    far = np.linalg.norm(origin) + 2 * size
    t = np.zeros(directions.shape[:-1])
    hit = np.zeros(t.shape, bool)
    for _ in range(STEPS):
        live = ~hit & (t < far)
        if not live.any():
            break
        d = sdf(origin + t[live][:, None] * directions[live])
        hit[live] = d < HIT
        t[live] += np.where(d < HIT, 0.0, d)
    p = origin + t[..., None] * directions
    eps = 1e-4
    normal = np.stack([sdf(p + eps * e) - sdf(p - eps * e) for e in np.eye(3)], -1)
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    return hit, normal


def render(shape, colour, size, pose, side=32, yaw=0.0):
    """One view: uint8 (side, side, 3), Lambert-shaded `colour` (RGB in [0, 1]) on white."""
    hit, normal = trace(shape, size, pose, side * SUPERSAMPLE, yaw)
    shade = AMBIENT + (1 - AMBIENT) * np.clip(normal @ LIGHT, 0, None)
    pixels = np.where(hit[..., None], shade[..., None] * np.asarray(colour), 1.0)
    pixels = pixels.reshape(side, SUPERSAMPLE, side, SUPERSAMPLE, 3).mean((1, 3))
    return np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)


def caption(shape, colour):
    return f"a {colour} {shape}"


def example(seed, index, *, size=32, views=4, elevation=30.0, random_elevation=0.0, distance=3.0, shapes=SHAPES,
            colours=COLOURS):
    """Example `index`: a dict of views uint8 (V, size, size, 3), shape, colour and size names, yaw, and the
    cameras' elevation, azimuth, distance (V,) and pose (V, 4, 4)."""
    rng = np.random.default_rng([seed, index])
    shape = shapes[index % len(shapes)]
    colour = colours[int(rng.integers(len(colours)))]
    size_name = tuple(SIZES)[int(rng.integers(len(SIZES)))]
    yaw = float(rng.uniform(0, 360))
    elevations = elevation + rng.uniform(-random_elevation, random_elevation, views) if random_elevation else elevation
    elevations, azimuths, distances, poses = cameras.ring(views, elevations, distance)
    pictures = np.stack([render(shape, PALETTE[colour], SIZES[size_name], p, size, yaw) for p in poses])
    return dict(views=pictures, shape=shape, colour=colour, size=size_name, yaw=yaw, elevation=elevations,
                azimuth=azimuths, distance=distances, pose=poses)


class Shapes3d(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """`num_examples` objects, each seen from `views` cameras at `size` pixels, generated from `seed`."""

    name = "shapes3d"
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, num_examples=20_000, seed=0, size=32, views=4, elevation=30.0, random_elevation=0.0,
                 distance=3.0, shapes=SHAPES, colours=COLOURS, **kwargs):
        self.shapes, self.colours = check_names(shapes, colours)
        if num_examples < 1 or size < 8 or views < 1:
            raise ValueError(f"shapes3d needs data.shapes3d.examples >= 1, data.resolution >= 8 and data.frames "
                             f"(views) >= 1; got {num_examples}, {size} and {views}.")
        if not 1.5 <= distance <= 20 or abs(elevation) + random_elevation >= 90:
            raise ValueError(f"shapes3d's cameras need 1.5 <= distance <= 20 (the objects are up to 0.7 from the "
                             f"centre) and |elevation| + random_elevation < 90; got {distance}, {elevation} and "
                             f"{random_elevation}.")
        self.num_examples, self.seed, self.size, self.views = num_examples, seed, size, views
        self.frames = views  # the views travel as a clip's frames (sources, prepare)
        self.cameras = dict(elevation=float(elevation), random_elevation=float(random_elevation),
                            distance=float(distance))
        super().__init__(**kwargs)

    def _info(self):
        s, v = self.size, self.views
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(s, v * s, 3), encoding_format="png"),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "label": tfds.features.ClassLabel(names=self.shapes),
                "colour": tfds.features.ClassLabel(names=self.colours),
                "size": tfds.features.ClassLabel(names=list(SIZES)),
                "elevation": tfds.features.Tensor(shape=(v,), dtype=np.float32),
                "azimuth": tfds.features.Tensor(shape=(v,), dtype=np.float32),
                "distance": tfds.features.Tensor(shape=(v,), dtype=np.float32),
                "pose": tfds.features.Tensor(shape=(v, 4, 4), dtype=np.float32),
                "yaw": tfds.features.Tensor(shape=(), dtype=np.float32),
                "key": tfds.features.Text(),
            }),
            license="generated")

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(self.num_examples):
            e = example(self.seed, i, size=self.size, views=self.views, shapes=self.shapes, colours=self.colours,
                        **self.cameras)
            strip = e["views"].transpose(1, 0, 2, 3).reshape(self.size, -1, 3)
            yield i, {"image": images.png_bytes(strip), "captions": [caption(e["shape"], e["colour"])],
                      "label": e["shape"], "colour": e["colour"], "size": e["size"], "elevation": e["elevation"],
                      "azimuth": e["azimuth"], "distance": e["distance"], "pose": e["pose"],
                      "yaw": np.float32(e["yaw"]), "key": f"shapes3d_{i}"}
