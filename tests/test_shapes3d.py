"""The shapes3d renderer against closed-form silhouettes, its cameras, and the builder's records."""

import ml_collections
import numpy as np
import pytest

from dit_jax.data import shapes3d, sources
from dit_jax.utils import cameras


def pixel_offsets(side):
    """(rows, cols) of every pixel centre in pixels from the image centre, row down."""
    c = np.arange(side) + 0.5 - side / 2
    return np.meshgrid(c, c, indexing="ij")


@pytest.mark.parametrize("elevation", [0.0, 30.0, -25.0])
def test_sphere_silhouette_is_the_projected_disc_from_every_camera(elevation):
    side, s, d = 24, 0.6, 3.0
    # A sphere of radius s seen from d away fills the cone of half-angle asin(s / d): radius f * tan(asin(s/d)).
    radius = cameras.focal(side) * s / np.sqrt(d * d - s * s)
    r = np.hypot(*pixel_offsets(side))
    for pose in cameras.ring(5, elevation, d, azimuth=17.0)[3]:
        hit, _ = shapes3d.trace("sphere", s, pose, side, yaw=40.0)
        assert hit[r < radius - 0.05].all() and not hit[r > radius + 0.05].any()
        assert abs(np.sqrt(hit.sum() / np.pi) - radius) < 0.5  # about the disc's area too


def test_cube_from_the_front_is_a_centred_square():
    side, s, d = 24, 0.5, 3.0
    half = cameras.focal(side) * s / (d - s)  # the front face, s nearer than the centre, hides the rest
    rows, cols = pixel_offsets(side)
    box = np.maximum(np.abs(rows), np.abs(cols))
    hit, normal = shapes3d.trace("cube", s, cameras.look_at(0.0, 0.0, d), side)
    assert hit[box < half - 0.05].all() and not hit[box > half + 0.05].any()
    np.testing.assert_allclose(normal[box < half - 0.5], np.broadcast_to([0, 0, 1.0], normal[box < half - 0.5].shape),
                               atol=1e-3)  # what it sees is the +z face


def test_cameras_ring_and_relative_poses():
    elevations, azimuths, distances, poses = cameras.ring(4, 30.0, 3.0)
    np.testing.assert_allclose(azimuths, [0, 90, 180, 270])
    for pose, e, a in zip(poses, elevations, azimuths):
        np.testing.assert_allclose(np.linalg.norm(pose[:3, 3]), 3.0, rtol=1e-6)
        np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-6)
        np.testing.assert_allclose(-pose[:3, 2], -pose[:3, 3] / 3.0, atol=1e-6)  # it looks at the origin
        np.testing.assert_allclose(np.rad2deg(np.arcsin(pose[1, 3] / 3.0)), e, atol=1e-4)
    rel = cameras.relative(poses)
    np.testing.assert_allclose(rel[0], np.eye(4), atol=1e-6)
    # Turning the whole ring (the reference included) leaves the relative cameras as they were.
    np.testing.assert_allclose(cameras.relative(cameras.ring(4, 30.0, 3.0, azimuth=70.0)[3]), rel, atol=1e-5)


def test_unknown_names_fail_in_one_line():
    with pytest.raises(ValueError, match="Unknown shape 'prism'.*choose from cube"):
        shapes3d.check_names("cube,prism")
    with pytest.raises(ValueError, match="Unknown colour 'teal'"):
        shapes3d.Shapes3d(colours=("red", "teal"), data_dir="/nonexistent")
    assert shapes3d.check_names("cube, torus", ["red"]) == (("cube", "torus"), ("red",))


def test_builder_records(tmp_path):
    data = ml_collections.ConfigDict(dict(name="shapes3d", resolution=8, frames=3, source_dir="",
                                          shapes3d=dict(examples=3, seed=1, shapes="sphere,cone",
                                                        random_elevation=10.0)))
    source = sources.load(data, str(tmp_path))
    assert source.frames == 3 and source.class_names == ["sphere", "cone"] and len(source) == 3
    first = source[0]
    e = shapes3d.example(1, 0, size=8, views=3, shapes=("sphere", "cone"), random_elevation=10.0)
    assert first["captions"] == [f"a {e['colour']} sphere"] and first["label"] == 0
    assert source.extra_labels["colour"] == list(shapes3d.COLOURS)
    np.testing.assert_allclose(first["cameras"], e["pose"].reshape(3, 16))
    assert not np.allclose(e["elevation"], 30.0) and np.all(np.abs(e["elevation"] - 30.0) <= 10.0)
