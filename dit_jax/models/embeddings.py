"""Input and condition embeddings of the DiT: patches, positions (sin-cos or rotary), timesteps, labels, text.

Each matches facebookresearch/DiT (and PixArt-alpha for text) numerically, so
that official weights load and reproduce their outputs. Parameters are created
as zeros of the right shape and sharding; their values are set in one place,
DiT.initialize_weights (dit.py).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def param_axes(*names):
    """Metadata that gives a parameter logical axis names, mapped to the mesh by rules."""
    return {"out_sharding": names, "eager_sharding": False}


def param(shape, axes, param_dtype):
    """A parameter of zeros with logical axes; DiT.initialize_weights gives it its value."""
    return nnx.Param(jnp.zeros(shape, param_dtype), **param_axes(*axes))


def linear(din, dout, axes, *, dtype, param_dtype, rngs):
    """A Linear with logical axes on its weight (din, dout) and bias; zeros until DiT.initialize_weights."""
    return nnx.Linear(
        din,
        dout,
        kernel_init=nnx.initializers.zeros,
        bias_init=nnx.initializers.zeros,
        kernel_metadata=param_axes(*axes),
        bias_metadata=param_axes(axes[1]),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def sincos_1d(dim, pos):
    """[sin, cos] of positions at dim/2 frequencies, in float64 like the reference."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim, grid_h, grid_w):
    """The fixed 2-D position table, (grid_h * grid_w, dim), rows in raster order.

    The reference builds its grid with meshgrid(w, h), so the first half of each
    row encodes the column and the second half the row; we keep that order.
    """
    cols, rows = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))
    return np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)


def rope_2d(head_dim, grid_h, grid_w, theta=10000.0):
    """2-D axial rotary embedding (LightningDiT's): cos and sin of each token's angles, (grid_h * grid_w, head_dim)
    in float32, tokens in raster order.

    The first half of a head's dimensions rotates by the token's row, the second half by its column, each at
    head_dim / 4 frequencies theta^(-i / (head_dim / 4)); dimensions 2i and 2i + 1 form a pair turned by one angle.
    """
    quarter = head_dim // 4
    freqs = theta ** (-np.arange(quarter, dtype=np.float64) / quarter)  # (D/4,)
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    angles = np.concatenate([np.outer(rows.reshape(-1), freqs), np.outer(cols.reshape(-1), freqs)], axis=1)
    angles = np.repeat(angles, 2, axis=1)  # (T, D): one angle a pair
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x, cos, sin):
    """x (N, T, H, D) with each pair (x[2i], x[2i+1]) rotated by its angle in (T, D) cos, sin; in float32."""
    x32 = x.astype(jnp.float32)
    pairs = x32.reshape(*x.shape[:-1], -1, 2)
    turned = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)  # (x0, x1) -> (-x1, x0)
    return (x32 * cos[:, None] + turned * sin[:, None]).astype(x.dtype)


def timestep_frequencies(t, dim=256, max_period=10000, freq_shift=0.0):
    """[cos, sin] timestep features. DiT divides by dim/2; diffusers' port by dim/2 - 1 (shift 1)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class PatchEmbed(nnx.Module):
    """p x p patches of an NHWC image, linearly projected to tokens (a strided conv)."""

    def __init__(self, patch_size, in_channels, hidden_size, *, dtype, param_dtype, rngs):
        self.patch_size = patch_size
        self.proj = nnx.Conv(
            in_channels,
            hidden_size,
            kernel_size=(patch_size, patch_size),
            strides=(patch_size, patch_size),
            padding="VALID",
            kernel_init=nnx.initializers.zeros,
            bias_init=nnx.initializers.zeros,
            kernel_metadata=param_axes(None, None, None, "embed"),
            bias_metadata=param_axes("embed"),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x):
        x = self.proj(x)  # (N, H/p, W/p, D)
        return x.reshape(x.shape[0], -1, x.shape[-1])  # (N, T, D), T = HW/p^2 in raster order


class TimestepEmbedder(nnx.Module):
    """Timestep features -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size, *, freq_dim=256, freq_shift=0.0, dtype, param_dtype, rngs):
        self.freq_dim, self.freq_shift = freq_dim, freq_shift
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear1 = linear(freq_dim, hidden_size, (None, "embed"), **kw)
        self.linear2 = linear(hidden_size, hidden_size, ("embed", "embed"), **kw)

    def __call__(self, t):
        h = timestep_frequencies(t, self.freq_dim, freq_shift=self.freq_shift)  # (N, 256)
        return self.linear2(jax.nn.silu(self.linear1(h)))  # (N, D)


class LabelEmbedder(nnx.Module):
    """A class table with one extra row, the null class used for classifier-free guidance (kept without
    dropout when `null` is True: the style table's, which composable guidance needs)."""

    def __init__(self, num_classes, hidden_size, dropout_prob, *, param_dtype, null=None):
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        rows = num_classes + int(dropout_prob > 0 if null is None else null)
        self.embedding_table = param((rows, hidden_size), ("vocab", "embed"), param_dtype)

    def __call__(self, labels, drop):
        labels = jnp.where(drop, self.num_classes, labels)  # (N,)
        return jnp.take(self.embedding_table[...], labels, axis=0)  # (N, D)


class TextEmbedder(nnx.Module):
    """Projects per-token and pooled text embeddings into the model width.

    Tokens go through PixArt-alpha's caption projection (Linear, tanh-GELU,
    Linear) to feed cross-attention; the pooled vector through Linear-SiLU-Linear
    to join the timestep embedding. A dropped caption is replaced by the null
    text (learned, or zeros) with every token attended.
    """

    def __init__(
        self,
        text_dim,
        text_len,
        hidden_size,
        *,
        cross,
        pooled,
        null_text,
        dropout_prob,
        dtype,
        param_dtype,
        rngs,
    ):
        if null_text not in ("learned", "zeros"):
            raise ValueError(f"null_text must be 'learned' or 'zeros', got {null_text!r}")
        self.cross, self.pooled, self.dropout_prob = cross, pooled, dropout_prob
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.text_len, self.text_dim, self.learned_null = text_len, text_dim, null_text == "learned"
        null = lambda *shape: param(shape, (None,) * len(shape), param_dtype)
        if cross:
            self.caption_fc1 = linear(text_dim, hidden_size, (None, "embed"), **kw)
            self.caption_fc2 = linear(hidden_size, hidden_size, ("embed", "embed"), **kw)
            if self.learned_null:
                self.null_tokens = null(text_len, text_dim)
        if pooled:
            self.pooled_fc1 = linear(text_dim, hidden_size, (None, "embed"), **kw)
            self.pooled_fc2 = linear(hidden_size, hidden_size, ("embed", "embed"), **kw)
            if self.learned_null:
                self.null_pooled = null(text_dim)

    def null_text(self):
        """(tokens (L, D), pooled (D,)) that stand for "no caption"."""
        if self.learned_null:
            tokens = self.null_tokens[...] if self.cross else None
            pooled = self.null_pooled[...] if self.pooled else None
            return tokens, pooled
        return jnp.zeros((self.text_len, self.text_dim)), jnp.zeros((self.text_dim,))

    def tokens(self, text, mask, drop):
        """(N, L, D_text) tokens and (N, L) mask -> (N, L, D) context and its key mask."""
        text = jnp.where(drop[:, None, None], self.null_text()[0].astype(text.dtype), text)  # (N, L, D_text)
        mask = jnp.where(drop[:, None], True, mask.astype(bool))  # (N, L)
        h = self.caption_fc2(jax.nn.gelu(self.caption_fc1(text), approximate=True))  # (N, L, D)
        return h, mask

    def pooled_embedding(self, pooled, drop):
        """(N, D_text) -> (N, D), added to the timestep embedding."""
        pooled = jnp.where(drop[:, None], self.null_text()[1].astype(pooled.dtype), pooled)
        return self.pooled_fc2(jax.nn.silu(self.pooled_fc1(pooled)))
