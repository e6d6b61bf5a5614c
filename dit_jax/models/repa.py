"""REPA's network side (Yu et al. 2025, representation alignment): the projector from the DiT's tokens to an
encoder's feature space, the cosine alignment loss, and the encoder features on the token grid.

The DiT's tokens after block k, through the projector, are pulled toward a frozen encoder's patch features of
the clean image; the config and the encoders that `prepare` runs are in dit_jax/data/repa.py, the train step's
side in dit_jax/training/repa.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dit_jax.models import inception
from dit_jax.models.embeddings import param_axes

INCEPTION_DIM = 768  # Mixed_6e's channels


class Projector(nnx.Module):
    """REPA's projector: Linear, SiLU, Linear, SiLU, Linear, from the DiT's width to the encoder's, in float32."""

    def __init__(self, hidden_size, projector_dim, out_dim, *, rngs):
        layer = lambda din, dout, axes: nnx.Linear(din, dout, kernel_metadata=param_axes(*axes),
                                                   bias_metadata=param_axes(axes[1]), rngs=rngs)
        self.fc1 = layer(hidden_size, projector_dim, ("embed", "mlp"))
        self.fc2 = layer(projector_dim, projector_dim, ("mlp", None))
        self.fc3 = layer(projector_dim, out_dim, (None, None))

    def __call__(self, tokens):
        """(N, T, D) -> (N, T, out_dim)."""
        h = jax.nn.silu(self.fc1(tokens.astype(jnp.float32)))
        return self.fc3(jax.nn.silu(self.fc2(h)))


class WithProjector(nnx.Module):
    """A REPA run's trained parameters: the DiT and the projector side by side, so the DiT exports alone."""

    def __init__(self, dit, projector):
        self.dit, self.projector = dit, projector


def alignment_loss(projected, target):
    """Per example: minus the cosine similarity of each token's projection and its target feature, averaged over
    the tokens. (N, T, C) each -> (N,)."""
    normalize = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    p, t = normalize(projected.astype(jnp.float32)), normalize(target.astype(jnp.float32))
    return -(p * t).sum(-1).mean(-1)


def pool_matrix(n_in, n_out):
    """(n_out, n_in) area-average weights: output cell i averages the input cells by their overlap with
    [i n_in / n_out, (i + 1) n_in / n_out) (a plain average pool when n_out divides n_in)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    cells = np.arange(n_in)
    overlap = np.clip(np.minimum(edges[1:, None], cells + 1) - np.maximum(edges[:-1, None], cells), 0, None)
    return (overlap / overlap.sum(1, keepdims=True)).astype(np.float32)


def to_tokens(features, grid):
    """(N, f, f, C) encoder features, f >= grid -> (N, grid * grid, C), area-averaged to the token grid and in
    the DiT's row-major token order."""
    if features.shape[1] < grid:
        raise ValueError(f"a {features.shape[1]}x{features.shape[2]} feature grid cannot map to {grid}x{grid} tokens")
    xp = jnp if isinstance(features, jax.Array) else np
    m = pool_matrix(features.shape[1], grid)
    out = xp.einsum("ih,nhwc,jw->nijc", m, features, m)
    return out.reshape(out.shape[0], grid * grid, out.shape[-1])


def inception_features(params, images, resolution):
    """(N, H, W, 1 or 3) in [-1, 1] -> (N, f, f, 768): the FID Inception's Mixed_6e map of the images resized
    (bilinear) to resolution x resolution; f = inception.mixed_6e_grid(resolution)."""
    x = jnp.asarray(images, jnp.float32)
    x = jnp.repeat(x, 3, -1) if x.shape[-1] == 1 else x
    x = jax.image.resize((x + 1) / 2, (x.shape[0], resolution, resolution, 3), "bilinear")
    lo, hi = inception.INPUT_RANGE_TF
    return inception.mixed_6e(params, jnp.clip(x * (hi - lo) + lo, lo, hi))
