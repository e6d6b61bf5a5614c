"""PNG pictures: captioned grids, denoising trajectories, sampler comparisons and loss curves."""

import json

import numpy as np
import pytest
from PIL import Image

from dit_jax.diffusion import Trajectory
from dit_jax.utils.visualization import (CAPTION_HEIGHT, captioned_grid, loss_curves, read_metrics, sampler_comparison, to_uint8,
                                         trajectory_frames, trajectory_strip)


def test_captioned_grid_size():
    images = np.zeros((5, 16, 16, 1), np.uint8)
    grid = captioned_grid(images, [f"image {i}" for i in range(5)], columns=3)
    assert grid.size == (3 * 128, 2 * (128 + CAPTION_HEIGHT))


def test_captioned_grid_shows_two_caption_lines_whole():
    grid = np.asarray(captioned_grid(np.full((1, 16, 16, 3), 255, np.uint8), ["a long caption that wraps onto "
                                                                                "a second line of text"]).convert("L"))
    band = grid[128:]
    inked_rows = np.flatnonzero((band < 128).any(axis=1))
    assert inked_rows.min() < CAPTION_HEIGHT // 2 < inked_rows.max()  # two lines of text
    assert inked_rows.max() < CAPTION_HEIGHT - 2  # the second is not cut off at the band's edge


def test_trajectory_strip_shows_evenly_spaced_steps(tmp_path):
    steps, batch = 10, 2
    rng = np.random.default_rng(0)
    trajectory = Trajectory(np.arange(900, -100, -100), rng.uniform(-1, 1, (steps, batch, 8, 8, 3)),
                            rng.uniform(-1, 1, (steps, batch, 8, 8, 3)))
    frames = trajectory_frames(trajectory, index=1, frames=4)
    np.testing.assert_array_equal(frames.t, [900, 600, 300, 0])
    np.testing.assert_array_equal(frames.x0[-1], trajectory.x0[-1, 1])
    path = tmp_path / "strip.png"
    trajectory_strip(frames).save(path)
    strip = np.asarray(Image.open(path))
    assert strip.shape == (14 + 2 * 96, 24 + 4 * 96, 3)  # a header, then x_t and x0 rows of 96 px tiles
    np.testing.assert_array_equal(strip[14 + 96:, 24:24 + 96], np.kron(to_uint8(frames.x0[0]), np.ones((12, 12, 1))))


def test_sampler_comparison_draws_every_series(tmp_path):
    results = {"ddpm": {250: 10.0, 50: 30.0, 10: 50.0}, "dpmpp_2m": {10: 20.0, 25: 12.0}}
    path = tmp_path / "samplers.png"
    sampler_comparison(results, metric="FID-1k").save(path)
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (400, 640, 3)
    for color in ((0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28)):  # the first two series colours
        assert np.all(pixels == color, axis=-1).sum() > 50


def test_loss_curves_from_metrics_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with open(path, "w") as f:
        for step in range(1, 41):
            f.write(json.dumps({"step": step, "loss": 1.0 / step, "lr": 1e-4}) + "\n")
    assert read_metrics(path)["loss"][0] == list(range(1, 41))
    out = tmp_path / "loss.png"
    loss_curves(path, names=("loss", "lr"), smoothing=0.9).save(out)
    assert Image.open(out).size == (640, 600)
    with pytest.raises(ValueError, match="no \\['fid'\\]"):
        loss_curves(path, names=("fid",))
