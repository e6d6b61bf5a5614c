"""Pallas attention kernels: GPU (Triton) flash, TPU flash and TPU splash, padded to their blocks;
and the plain softmax attention they are checked and (where a kernel has no backward) differentiated by.

Each takes q (B, Lq, H, D), k and v (B, Lk, H, D) and an optional key mask
(B, Lk), True meaning "attend", and returns (B, Lq, H, D). Lengths are padded
up to the kernel's block size and the padded keys masked, so any length works;
the padded query rows are cut off again. interpret=True runs the same kernels
on CPU (slowly), which is how the tests check them.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.gpu import attention as gpu_attention
from jax.experimental.pallas.ops.tpu import flash_attention as tpu_attention
from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib

TPU_BLOCK = 128  # TPU kernels tile sequences by 128 (the lane width).
_MASKED = -1e9   # added to the logits of masked keys in the GPU kernel (its exp is exactly 0)


def reference(q, k, v, allowed=None, scale=None):
    """softmax(q k^T * scale) v, logits and softmax in float32; `allowed` a boolean mask broadcastable
    to (B, H, Lq, Lk). scale defaults to 1 / sqrt(D)."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * (q.shape[-1] ** -0.5 if scale is None else scale)
    if allowed is not None:
        logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def round_up(n, multiple):
    return -(-n // multiple) * multiple


def pad_inputs(q, k, v, mask, q_multiple, k_multiple):
    """Zero-pads the sequence axes to multiples; the key mask marks padded keys False."""
    lq, lk = q.shape[1], k.shape[1]
    pad = lambda x, n: jnp.pad(x, [(0, 0), (0, n - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
    q = pad(q, round_up(lq, q_multiple))
    new_lk = round_up(lk, k_multiple)
    if new_lk != lk:
        mask = jnp.ones(k.shape[:2], bool) if mask is None else mask
        k, v, mask = pad(k, new_lk), pad(v, new_lk), pad(mask, new_lk)
    return q, k, v, mask


def _gpu_block(length):
    """Triton tiles are powers of two: the largest of 128, 64, 32, 16 that divides the length."""
    return next(b for b in (128, 64, 32, 16) if length % b == 0)


def gpu_flash(q, k, v, mask=None, *, interpret=False):
    """jax.experimental.pallas.ops.gpu.attention.mha (Triton) with padding and key masks.

    The kernel masks only through segment ids shared by queries and keys, which
    expresses padding of self-attention but not a key mask in general. A key
    mask is folded into the logits instead: one more head dimension, 1 in q and
    0 or -1e9 in k, adds -1e9 to each masked key's logit. Cross-attention
    (Lq != Lk, e.g. to text tokens) uses the kernel forward and XLA's backward,
    since the fused backward tiles queries and keys into equal block counts.
    """
    b, lq, h, d = q.shape
    lk = k.shape[1]
    self_attention = lq == lk
    q, k, v, padded_mask = pad_inputs(q, k, v, mask, 16, 16)
    segment_ids = None
    if mask is None and self_attention:
        if padded_mask is not None:  # padded self-attention: padding only meets padding
            segment_ids = padded_mask.astype(jnp.int32)
    elif padded_mask is not None:
        q = jnp.concatenate([q, jnp.ones((*q.shape[:3], 1), q.dtype)], axis=-1)
        bias = jnp.where(padded_mask, 0.0, _MASKED).astype(k.dtype)
        k = jnp.concatenate([k, jnp.broadcast_to(bias[:, :, None, None], (*k.shape[:3], 1))], axis=-1)
        v = jnp.concatenate([v, jnp.zeros((*v.shape[:3], 1), v.dtype)], axis=-1)
    block_q, block_k = _gpu_block(q.shape[1]), _gpu_block(k.shape[1])
    back = min(32, block_q, block_k)
    sizes = gpu_attention.BlockSizes(block_q=block_q, block_k=block_k, block_q_dkv=back, block_kv_dkv=back,
                                     block_q_dq=back, block_kv_dq=back)
    kernel = functools.partial(gpu_attention.mha, segment_ids=segment_ids, sm_scale=d ** -0.5,
                               block_sizes=sizes, interpret=interpret)
    out = kernel(q, k, v) if self_attention else _with_xla_backward(kernel, d ** -0.5)(q, k, v)
    return out[:, :lq, :, :d]


def _with_xla_backward(kernel, scale):
    """kernel(q, k, v) forward, differentiated as plain softmax attention (any mask is inside k)."""
    @jax.custom_vjp
    def run(q, k, v):
        return kernel(q, k, v)

    run.defvjp(lambda q, k, v: (kernel(q, k, v), (q, k, v)),
               lambda res, cotangent: jax.vjp(functools.partial(reference, scale=scale), *res)[1](cotangent))
    return run


def _tpu_interpreted(fn):
    """fn with its forward and backward both traced in TPU interpret mode.

    force_tpu_interpret_mode acts on kernels traced inside it, but jax.grad
    traces a custom_vjp's backward later, outside any `with` in the forward.
    """
    @jax.custom_vjp
    def run(*args):
        with pltpu.force_tpu_interpret_mode():
            return fn(*args)

    def forward(*args):
        with pltpu.force_tpu_interpret_mode():
            return jax.vjp(fn, *args)

    def backward(vjp, cotangent):
        with pltpu.force_tpu_interpret_mode():
            return vjp(cotangent)

    run.defvjp(forward, backward)
    return run


def tpu_flash(q, k, v, mask=None, *, interpret=False):
    """jax.experimental.pallas.ops.tpu.flash_attention: separate q and kv segment ids mask the keys."""
    lq, d = q.shape[1], q.shape[-1]
    q, k, v, mask = pad_inputs(q, k, v, mask, TPU_BLOCK, TPU_BLOCK)
    heads_major = lambda x: x.transpose(0, 2, 1, 3)

    def attend(q, k, v, *mask):
        segment_ids = None
        if mask:
            segment_ids = tpu_attention.SegmentIds(q=jnp.ones(q.shape[:2], jnp.int32),
                                                   kv=mask[0].astype(jnp.int32))
        return tpu_attention.flash_attention(heads_major(q), heads_major(k), heads_major(v),
                                             segment_ids=segment_ids, sm_scale=d ** -0.5)

    if interpret:
        attend = _tpu_interpreted(attend)
    out = attend(q, k, v, *([] if mask is None else [mask]))
    return heads_major(out)[:, :lq]


@functools.lru_cache(maxsize=64)
def _splash_kernel(q_len, k_len, valid_q, heads, sparsity, interpret):
    """A splash kernel for one shape and static pattern (building its block map costs a NumPy pass).

    Built with compile-time evaluation, so its block maps are constants even when first asked for
    inside a trace, and the cached kernel can serve later traces.
    """
    if sparsity is None:
        mask = splash_lib.FullMask((q_len, k_len))
    else:
        rows, cols = np.arange(q_len)[:, None], np.arange(k_len)[None, :]
        # Padded query rows may see every key, so that no row is empty; they are cut off anyway.
        mask = splash_lib.NumpyMask(sparsity.allowed(rows, cols) | (rows >= valid_q))
    with jax.ensure_compile_time_eval():
        return splash_lib.make_splash_mha_single_device(splash_lib.MultiHeadMask([mask] * heads),
                                                        interpret=interpret)


def splash(q, k, v, mask=None, *, sparsity=None, interpret=False):
    """TPU splash attention: a block-sparse static pattern (sparsity) and the key mask as segment ids.

    Blocks the pattern leaves empty are skipped, so a local window costs
    about window / length of the dense kernel.
    """
    b, lq, h, d = q.shape
    q, k, v, mask = pad_inputs(q, k, v, mask, TPU_BLOCK, TPU_BLOCK)
    kernel = _splash_kernel(q.shape[1], k.shape[1], lq, h, sparsity, interpret)
    heads_major = lambda x: x.transpose(0, 2, 1, 3)
    q = heads_major(q * jnp.asarray(d ** -0.5, q.dtype))  # splash does not scale the logits itself
    if mask is None:
        out = jax.vmap(kernel)(q, heads_major(k), heads_major(v))
    else:
        ids = splash_lib.SegmentIds(q=jnp.ones((b, q.shape[2]), jnp.int32), kv=mask.astype(jnp.int32))
        out = jax.vmap(kernel)(q, heads_major(k), heads_major(v), ids)
    return heads_major(out)[:, :lq]
