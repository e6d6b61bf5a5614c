"""Pinhole cameras looking at the origin, as the multi-view data renders them and the multi-view model reads them.

World axes: y up; azimuth 0 puts the camera on the +z axis (the object's front), azimuth grows towards +x;
elevation is the angle above the horizontal plane. A pose is the 4x4 camera-to-world matrix (OpenGL's
convention: the camera looks down its -z axis, +y up, +x right). The field of view is FOV_DEGREES across the
image's side, so a point at camera coordinates (x, y, z), z < 0, lands at focal * (x, -y) / -z pixels from the
image centre (row down), focal = (side / 2) / tan(FOV / 2).
"""

import numpy as np

FOV_DEGREES = 50.0


def focal(side, fov_degrees=FOV_DEGREES):
    """The focal length in pixels of an image `side` pixels wide."""
    return side / 2 / np.tan(np.deg2rad(fov_degrees) / 2)


def position(elevation, azimuth, distance):
    """The camera centre (3,) for angles in degrees."""
    e, a = np.deg2rad(elevation), np.deg2rad(azimuth)
    return distance * np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])


def look_at(elevation, azimuth, distance):
    """(4, 4) float32 camera-to-world pose of a camera at (elevation, azimuth, distance) looking at the origin."""
    eye = position(elevation, azimuth, distance)
    back = eye / np.linalg.norm(eye)  # the camera's +z: from the origin to the camera
    right = np.cross([0.0, 1.0, 0.0], back)
    if np.linalg.norm(right) < 1e-8:  # straight above or below: keep the azimuth's right
        a = np.deg2rad(azimuth)
        right = np.array([np.cos(a), 0.0, -np.sin(a)])
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, back, eye
    return pose.astype(np.float32)


def ring(views, elevation=20.0, distance=3.0, azimuth=0.0):
    """`views` cameras evenly spaced on a circle, the first at `azimuth`: (elevations, azimuths, distances),
    each (V,) float32 in degrees / world units, and poses (V, 4, 4). `elevation` may be one angle or (V,)."""
    elevations = np.broadcast_to(np.asarray(elevation, np.float32), (views,)).astype(np.float32)
    azimuths = ((azimuth + 360.0 * np.arange(views) / views) % 360.0).astype(np.float32)
    distances = np.full((views,), distance, np.float32)
    poses = np.stack([look_at(e, a, d) for e, a, d in zip(elevations, azimuths, distances)])
    return elevations, azimuths, distances, poses


def relative(poses, reference=0):
    """Poses (..., V, 4, 4) in the frame of view `reference` (Zero123's relative cameras): inv(P_ref) @ P_v,
    so the reference view's own pose becomes the identity."""
    poses = np.asarray(poses, np.float32)
    return np.linalg.inv(poses[..., reference:reference + 1, :, :]) @ poses


def rays(pose, side, fov_degrees=FOV_DEGREES):
    """The world-space rays through the centres of a side x side image's pixels: origins (3,) and unit
    directions (side, side, 3), row-major from the top-left pixel."""
    f = focal(side, fov_degrees)
    centre = (np.arange(side) + 0.5 - side / 2) / f
    y, x = np.meshgrid(-centre, centre, indexing="ij")  # rows go down the image, up in camera y
    d = np.stack([x, y, -np.ones_like(x)], -1) @ np.asarray(pose, np.float64)[:3, :3].T
    return np.asarray(pose, np.float64)[:3, 3], d / np.linalg.norm(d, axis=-1, keepdims=True)
