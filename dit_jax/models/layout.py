"""Layout conditioning as GLIGEN reads it (Li et al., 2023): boxes with phrases become grounding tokens.

Each box (x0, y0, x1, y1) in [0, 1] of the image is turned into Fourier
features, joined with its phrase's pooled text embedding and passed through an
MLP: one grounding token a box, (N, K, D). In every block a gated
self-attention (dit.py's GatedSelfAttention) attends over the image tokens and
these together and adds only the image tokens' outputs, times tanh(alpha) with
alpha starting at 0, so a trained text model gains the path unchanged. Boxes
with layout_mask False are left out by the attention's key mask; all of them
left out is the null layout.

With `layout_regions` (not in GLIGEN) each image token also carries, inside the
gated attention only, the grounding tokens of the boxes that cover its patch,
weighted by the share of the patch they cover: the attention then knows which
tokens a box holds without first learning to match the box's Fourier features
to the position table, which a small model on a CPU budget did not learn
(BENCHMARKS.md, issue 12).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dit_jax.models.embeddings import linear

NUM_FREQS, TEMPERATURE = 8, 100.0  # GLIGEN's Fourier embedder of the box coordinates


def fourier_features(boxes, num_freqs=NUM_FREQS, temperature=TEMPERATURE):
    """(..., 4) boxes -> (..., 4 * 2 * num_freqs): [sin(f x), cos(f x)] of every coordinate at frequencies
    temperature ** (i / num_freqs)."""
    freqs = jnp.asarray(temperature ** (np.arange(num_freqs) / num_freqs), jnp.float32)
    args = boxes.astype(jnp.float32)[..., None, :] * freqs[:, None]  # (..., F, 4)
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1).reshape(*boxes.shape[:-1], -1)


class GroundingTokens(nnx.Module):
    """MLP(Fourier(box) ++ phrase embedding) -> one token a box, in the model's width (GLIGEN's PositionNet)."""

    def __init__(self, text_dim, hidden_size, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = linear(4 * 2 * NUM_FREQS + text_dim, hidden_size, (None, "embed"), **kw)
        self.fc2 = linear(hidden_size, hidden_size, ("embed", "mlp"), **kw)
        self.fc3 = linear(hidden_size, hidden_size, ("mlp", "embed"), **kw)

    def __call__(self, boxes, phrases, keep):
        """boxes (N, K, 4), phrases (N, K, text_dim), keep (N, K) bool -> (N, K, D). The inputs of boxes
        left out are zeroed first, so whatever they held cannot reach the output."""
        boxes = jnp.where(keep[..., None], boxes, 0.0)
        phrases = jnp.where(keep[..., None], phrases, 0.0)
        h = jnp.concatenate([fourier_features(boxes), phrases.astype(jnp.float32)], axis=-1)
        h = jax.nn.silu(self.fc1(h))
        return self.fc3(jax.nn.silu(self.fc2(h)))


class Grounding(NamedTuple):
    """What every block's gated self-attention reads: the tokens, their key mask, and per image token the
    region term (None without layout_regions)."""
    tokens: jax.Array             # (N, K, D)
    mask: jax.Array               # (N, K) bool
    regions: jax.Array = None     # (N, T, D)


def box_coverage(boxes, keep, grid_h, grid_w):
    """(N, K, 4) boxes in [0, 1], keep (N, K) -> (N, T, K): the share of each patch (row-major over the
    grid_h x grid_w token grid) that each kept box covers."""
    def overlap(lo, hi, cells):  # (N, K) box edges against cells of 1/cells along one axis -> (N, cells, K)
        edges = jnp.arange(cells + 1, dtype=jnp.float32) / cells
        left, right = edges[:-1][None, :, None], edges[1:][None, :, None]
        return jnp.clip(jnp.minimum(right, hi[:, None]) - jnp.maximum(left, lo[:, None]), 0.0, None) * cells

    # A left-out box becomes (0, 0, 0, 0): no area, so it covers nothing, whatever (NaN included) it held.
    boxes = jnp.where(keep[..., None], boxes.astype(jnp.float32), 0.0)
    rows = overlap(boxes[..., 1], boxes[..., 3], grid_h)  # (N, H, K)
    cols = overlap(boxes[..., 0], boxes[..., 2], grid_w)  # (N, W, K)
    cover = rows[:, :, None] * cols[:, None, :]  # (N, H, W, K)
    return cover.reshape(boxes.shape[0], grid_h * grid_w, -1)


def region_tokens(coverage, tokens):
    """(N, T, K) coverage, (N, K, D) grounding tokens -> (N, T, D): the covering boxes' tokens, weighted by how
    much of the patch each covers (overlapping boxes share a patch; an uncovered patch gets zeros)."""
    weights = coverage / jnp.maximum(coverage.sum(-1, keepdims=True), 1.0)
    return jnp.einsum("ntk,nkd->ntd", weights, tokens.astype(jnp.float32)).astype(tokens.dtype)


def check_layout(boxes, mask, max_boxes):
    """One-line errors for boxes given on the host (before anything compiles): (K', 4) in [0, 1], positive
    area, at most max_boxes of them."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if max_boxes == 0 and len(boxes):
        raise ValueError("This model has no layout path (model.layout_max_boxes=0): drop --box.")
    if len(boxes) > max_boxes:
        raise ValueError(f"{len(boxes)} boxes but the model reads at most {max_boxes} "
                         "(model.layout_max_boxes): give fewer --box.")
    for box in boxes[np.asarray(mask, bool).reshape(-1)] if mask is not None else boxes:
        x0, y0, x1, y1 = shown = tuple(float(v) for v in box)
        if not np.all(np.isfinite(box)) or min(box) < 0 or max(box) > 1:
            raise ValueError(f"Box {shown} is outside the image: give x0,y0,x1,y1 in [0, 1].")
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"Box {shown} has no area: give x0 < x1 and y0 < y1.")


def parse_box(spec):
    """"x0,y0,x1,y1:phrase" (`sample --box`) -> ((x0, y0, x1, y1), phrase), checked to lie in the image."""
    coords, has_phrase, phrase = spec.partition(":")
    try:
        box = tuple(float(v) for v in coords.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not has_phrase or not phrase.strip():
        raise ValueError(f"Bad --box {spec!r}: write x0,y0,x1,y1:phrase with coordinates in [0, 1] of the image, "
                         "e.g. --box='0.1,0.2,0.5,0.9:a sneaker'.")
    check_layout([box], None, 1)
    return box, phrase.strip()
